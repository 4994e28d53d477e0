"""What each prompt method costs to encode, relative to PromptEOL, on one model in one run.

A scaling plan's `cost` is in units of one PromptEOL test eval; this measures the units instead of borrowing
them from another model. Every row encodes the same seeded STS test sentences through one loaded backend
(the prefix KV cache on, as in an eval), rows interleaved round by round, the fastest round kept:

  prompteol, ke, metaeol, ...   a registered template (an ensemble such as MetaEOL runs each member)
  none:mean                     a template with its pooling
  eol-topic+stsb-train-0072     a template with an in-context demonstration (a shipped id or best-of:FILE)

For each row: seconds, sentences/s, its prompts' tokens, the tokens its forwards ran (a prefix all prompts
of a call share runs once per call, per member of an ensemble), and the ratio of its seconds to the first row's (PromptEOL by default): the row's `cost` in a scaling plan. Run
it with nothing else on the machine.

    python benchmarks/template_cost.py --model qwen2.5-coder-0.5b --layer 23 --pairs 60 \\
        --rows prompteol,eol-topic,ke,metaeol,none:mean,eol-topic+stsb-train-0072 \\
        --output experiments/bench/template-cost-qwen2.5-coder-0.5b.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import measured_on, print_and_write, sample_sentences  # noqa: E402

DEFAULT_ROWS = "prompteol,prompteol-noquote,eol-topic,eol-summarize,ke,metaeol,none:mean"


def parse_row(spec: str) -> dict[str, str | None]:
    """``TEMPLATE[:POOLING][+DEMONSTRATION]`` as Embedder options.

    >>> parse_row("eol-topic+stsb-train-0072")
    {'template': 'eol-topic', 'pooling': None, 'demonstration': 'stsb-train-0072'}
    >>> parse_row("none:mean")
    {'template': 'none', 'pooling': 'mean', 'demonstration': None}
    """
    prompt, _, demonstration = spec.partition("+")
    template, _, pooling = prompt.partition(":")
    return {"template": template, "pooling": pooling or None, "demonstration": demonstration or None}


def tokens_run(embedder) -> int:
    """Tokens the last `encode` ran through the model: each member's prompts, their shared prefix once."""
    total = 0
    for part in embedder.members or [embedder]:
        stats = part.last_stats
        total += stats["tokens"] - stats["prefix_length"] * max(stats["embedded"] - 1, 0)
    return total


def check_rows(rows: list[str]) -> None:
    """Every row's template, pooling and demonstration exist: a typo fails before the model loads."""
    from promptlab.demonstrations import resolve_demonstration
    from promptlab.registry import get_template

    for row in rows:
        options = parse_row(row)
        get_template(options["template"], pooling=options["pooling"])
        resolve_demonstration(options["demonstration"])


def measure(
    model: str, rows: list[str], sentences: list[str], *, dtype: str, layer: int, rounds: int
) -> dict:
    """{row: {seconds, rounds_seconds, sentences_per_second, prompt_tokens, tokens_run, ratio}}, one backend."""
    from promptlab.backends import load_backend
    from promptlab.embedder import Embedder

    backend = load_backend("transformers", model, dtype=dtype)
    embedders = {row: Embedder(backend, layer=layer, **parse_row(row)) for row in rows}
    for embedder in embedders.values():  # first-call costs (kernels, the prefix cache's check) stay out
        embedder.encode(sentences[:2])
    unique = len(set(sentences))
    times: dict[str, list[float]] = {row: [] for row in rows}
    tokens: dict[str, tuple[int, int]] = {}
    for _ in range(rounds):
        for row, embedder in embedders.items():
            backend.clear_caches()  # each round computes its shared prefix again, as an eval's call does
            started = time.perf_counter()
            embedder.encode(sentences)
            times[row].append(time.perf_counter() - started)
            tokens[row] = (embedder.last_stats["tokens"], tokens_run(embedder))
    first = min(times[rows[0]])
    return {
        row: {
            "seconds": min(times[row]),
            "rounds_seconds": times[row],
            "sentences_per_second": unique / min(times[row]),
            "prompt_tokens": tokens[row][0],
            "tokens_run": tokens[row][1],
            "ratio": min(times[row]) / first,
        }
        for row in rows
    }


def markdown(record: dict) -> str:
    first = next(iter(record["rows"]))
    lines = [
        f"{record['model']}, {record['dtype']}, layer {record['layer']}; {record['sentences']} STS test sentences "
        f"({record['unique_sentences']} unique, seed {record['seed']}), {record['threads']} thread(s), fastest of "
        f"{record['rounds']} interleaved rounds; {record['cpu']}; {record['measured']}, commit {record['commit']}",
        "",
        f"| row | seconds | sentences/s | prompt tokens | tokens run | cost (× {first}) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in record["rows"].items():
        lines.append(
            f"| {name} | {row['seconds']:.1f} | {row['sentences_per_second']:.2f} | {row['prompt_tokens']:,} | "
            f"{row['tokens_run']:,} | {row['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--layer", type=int, default=-1, help="the layer read (the fast decoder stops there)")
    p.add_argument("--rows", default=DEFAULT_ROWS, help="comma-separated TEMPLATE[:POOLING][+DEMONSTRATION]")
    p.add_argument("--pairs", type=int, default=60, help="STS test pairs (both sentences encoded)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--data-dir", default=os.environ.get("PROMPTLAB_DATA"))
    p.add_argument("--output", default=None, help="a JSON record (and a .md table beside it)")
    args = p.parse_args(argv)
    rows = list(dict.fromkeys(r.strip() for r in args.rows.split(",") if r.strip()))
    if not rows or args.pairs < 1 or args.rounds < 1:
        p.error("--rows needs at least one row, --pairs and --rounds at least 1")

    import torch

    from promptlab.errors import PromptlabError

    torch.set_num_threads(args.threads)
    try:
        check_rows(rows)
        sentences = sample_sentences(args.data_dir, args.pairs, args.seed)
        rows_measured = measure(
            args.model, rows, sentences, dtype=args.dtype, layer=args.layer, rounds=args.rounds
        )
    except PromptlabError as err:
        p.error(str(err))
    record = {
        "model": args.model,
        "dtype": args.dtype,
        "layer": args.layer,
        "sentences": len(sentences),
        "unique_sentences": len(set(sentences)),
        "seed": args.seed,
        "rounds": args.rounds,
        "threads": args.threads,
        **measured_on(),
        "rows": rows_measured,
    }
    print_and_write(record, markdown(record), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
