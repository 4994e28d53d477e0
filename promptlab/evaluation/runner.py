"""`evaluate`: encode every unique sentence of the requested tasks once, then score each task."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from promptlab.errors import PromptlabError
from promptlab.evaluation.data import fingerprint, load_with_digests, resolve_data_dir
from promptlab.evaluation.results import EvalResult
from promptlab.evaluation.scoring import aggregate, cosine_pairs
from promptlab.evaluation.tasks import SPECS, TASKS, canonical_task

Encode = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Suite:
    """Loaded, checked STS data for an evaluation: the tasks, their pairs, and every unique sentence."""

    names: list[str]
    loaded: list  # one `load_with_digests` result per name
    sentences: dict[str, int]  # sentence -> row in the encoder's output (first-seen order)
    split: str
    source: str
    data_dir: str | None

    @property
    def n_pairs(self) -> int:
        return sum(len(p) for ld in self.loaded for p in ld.pairs)


def load_suite(
    tasks: Iterable[str] | str | None = None,
    *,
    data_dir=None,
    split: str = "test",
    source: str = "senteval",
) -> Suite:
    """Resolve task names and load their data, with every check that needs no model (names, files, rows).

    Callers that load a model run this first, so a wrong task name or data folder fails in a second, not
    after the model has loaded. `tasks=None` means every task that has `split`: all seven for "test",
    STS-B and SICK-R for "dev" (model selection) and "train".
    """
    if tasks is None:
        tasks = [t for t in TASKS if split in SPECS[t].available_splits(source)]
    names = list(dict.fromkeys(canonical_task(t) for t in ([tasks] if isinstance(tasks, str) else tasks)))
    if not names:
        raise PromptlabError(f"no tasks given; choose from {', '.join(TASKS)}.")
    loaded = [load_with_digests(t, data_dir=data_dir, split=split, source=source) for t in names]
    sentences: dict[str, int] = {}
    for pairs in (p for ld in loaded for p in ld.pairs):
        for s in (*pairs.sentences1, *pairs.sentences2):
            sentences.setdefault(s, len(sentences))
    where = str(resolve_data_dir(data_dir)) if source == "senteval" else None
    return Suite(names, loaded, sentences, split, source, where)


def evaluate(
    encode: Encode,
    tasks: Iterable[str] | str | Suite | None = None,
    *,
    data_dir=None,
    split: str = "test",
    source: str = "senteval",
    progress: bool = False,
) -> EvalResult:
    """Score `encode` on STS tasks with SentEval's conventions (see `promptlab.evaluation`).

    `encode(sentences)` must return one vector per sentence, in order, as an (n, d) array. It is called
    exactly once, with the unique sentences of all tasks (first-seen order), so the encoder can sort,
    batch and report one throughput figure. `progress` prints a status line before and after encoding
    to stderr (the encoder draws its own progress bar).

    `tasks` is a list of names (None: every task that has `split`, see `load_suite`) or a `Suite` that
    `load_suite` already loaded (then `data_dir`, `split` and `source` come from it).
    """
    suite = (
        tasks
        if isinstance(tasks, Suite)
        else load_suite(tasks, data_dir=data_dir, split=split, source=source)
    )
    names, loaded, sentences = suite.names, suite.loaded, suite.sentences
    n_pairs = suite.n_pairs
    if progress:
        print(
            f"STS {suite.split}: {n_pairs} pairs, {len(sentences)} unique sentences ({', '.join(names)})",
            file=sys.stderr,
        )

    start = time.perf_counter()
    vecs = encode(list(sentences))
    seconds = time.perf_counter() - start
    vecs = _check_vectors(vecs, len(sentences))
    if progress:
        rate = len(sentences) / max(seconds, 1e-9)
        print(f"encoded in {seconds:.1f} s ({rate:.1f} sentences/s)", file=sys.stderr)

    scores = {}
    for name, ld in zip(names, loaded, strict=True):
        predicted, gold = {}, {}
        for pairs in ld.pairs:
            rows1 = np.fromiter((sentences[s] for s in pairs.sentences1), dtype=np.int64, count=len(pairs))
            rows2 = np.fromiter((sentences[s] for s in pairs.sentences2), dtype=np.int64, count=len(pairs))
            predicted[pairs.subset] = cosine_pairs(vecs[rows1], vecs[rows2])
            gold[pairs.subset] = pairs.scores
        scores[name] = aggregate(name, predicted, gold)

    values = [t.score for t in scores.values()]
    digests = {k: v for ld in loaded for k, v in ld.digests.items()}
    return EvalResult(
        details=scores,
        average=float(np.mean(values)),
        partial=set(names) != set(TASKS),
        split=suite.split,
        source=suite.source,
        data_dir=suite.data_dir,
        data_fingerprint=fingerprint(digests),
        n_pairs=n_pairs,
        n_sentences=len(sentences),
        encode_seconds=seconds,
        sentences_per_second=len(sentences) / seconds if seconds > 0 else float("inf"),
    )


def _check_vectors(vecs, n: int) -> np.ndarray:
    """The encoder's output as an (n, d) float array, or a PromptlabError saying what is wrong."""
    try:
        arr = np.asarray(vecs)
    except (TypeError, ValueError, RuntimeError) as err:
        raise PromptlabError(
            f"encode returned {type(vecs).__name__}, which is not convertible to a numpy array ({err}); "
            "return an (n_sentences, dim) float32 numpy array."
        ) from None
    if arr.ndim != 2 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.floating):
        raise PromptlabError(
            f"encode returned an array of shape {arr.shape} and dtype {arr.dtype} for {n} sentences; "
            "it must return one float vector per input sentence, in input order: shape (n_sentences, dim)."
        )
    return arr
