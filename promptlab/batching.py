"""Which prompts share a forward pass: length-sorted prompts cut into batches that waste the least.

A padded batch costs about ``rows × longest row`` tokens of compute, plus a fixed cost per forward (the
kernel launches and weight reads of every layer). Cutting the length-sorted list into fixed chunks of
``batch_size`` pads the long tail heavily: on 500 STS sentences with PromptEOL, chunks of 32 run 15% padding,
chunks of 64 run 33%. `plan_batches` instead picks the cut points that minimise
``sum(batch_cost + rows × longest)``, an exact dynamic program over the sorted lengths (N × batch_size steps).

``batch_cost`` (in tokens) was measured on SmolLM2-135M, bf16, 2 CPU cores: a forward costs ~50 ms plus
~0.32 ms per padded token, so one more batch is worth ~150 tokens of padding.
"""

from __future__ import annotations

from collections.abc import Sequence

BATCH_COST_TOKENS = 150
# Defaults when the caller does not say (``batch_size=None``, ``batch_tokens="auto"``). On CPU a forward of
# more than ~1.5k tokens slows down per token (its activations outgrow the caches): on SmolLM2-135M, bf16,
# 2 cores, 500 STS sentences, 128 rows / 1536 tokens ran 126 sentences/s with PromptEOL and 59 with a
# 49-token demonstration prompt, against 109 and 62 for fixed chunks of 32, and 113 and 49 for a
# 2048-token budget. Elsewhere (CUDA) the fixed 32 rows of earlier versions stand, uncapped.
CPU_BATCH_ROWS, CPU_BATCH_TOKENS = 128, 1536
OTHER_BATCH_ROWS = 32
BATCH_SIZE_HELP = f"most sentences per forward (default: {CPU_BATCH_ROWS} on CPU, else {OTHER_BATCH_ROWS})"


def parse_batch_tokens(value) -> int | str | None:
    """A ``batch_tokens`` setting: ``"auto"``, ``None``/``"none"`` (no cap) or a positive integer (or its digits).

    Raises ValueError naming the accepted forms.
    """
    if value is None or value in ("auto", "none"):
        return None if value in (None, "none") else "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"batch_tokens {value!r}: give a positive number of tokens, 'auto' or 'none'")


def default_batching(device) -> tuple[int, int | None]:
    """(rows, padded tokens) per forward for a backend on ``device`` (a torch device or its name)."""
    if str(device).split(":")[0] == "cpu":
        return CPU_BATCH_ROWS, CPU_BATCH_TOKENS
    return OTHER_BATCH_ROWS, None


def plan_batches(
    lengths: Sequence[int],
    max_rows: int,
    *,
    max_tokens: int | None = None,
    batch_cost: float = BATCH_COST_TOKENS,
) -> list[range]:
    """Cut ``lengths`` (sorted longest first) into consecutive batches of at most ``max_rows`` rows.

    Returns index ranges covering ``0..len(lengths)`` in order, minimising the padded tokens plus
    ``batch_cost`` per batch. ``max_tokens`` also bounds each batch's padded size (rows × longest row)
    unless a single row is longer.

    >>> plan_batches([40, 10, 10, 10], 4, batch_cost=5)  # the long row alone: 5+40 + 5+30 < 5+160
    [range(0, 1), range(1, 4)]
    """
    n = len(lengths)
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if any(a < b for a, b in zip(lengths, lengths[1:], strict=False)):
        raise ValueError("lengths must be sorted longest first")
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest plan for the first j rows
    cut = [0] * (n + 1)  # cut[j]: where the last batch of that plan starts
    for j in range(1, n + 1):
        for i in range(j - 1, max(0, j - max_rows) - 1, -1):  # the batch is rows i..j-1
            if max_tokens is not None and j - i > 1 and (j - i) * lengths[i] > max_tokens:
                break  # longer batches starting earlier are larger still
            cost = best[i] + batch_cost + (j - i) * lengths[i]  # lengths[i] is the batch's longest row
            if cost <= best[j]:
                best[j], cut[j] = cost, i
    batches = []
    j = n
    while j > 0:
        batches.append(range(cut[j], j))
        j = cut[j]
    return batches[::-1]
