"""A BM25 baseline for reranking tasks: the lexical score an embedding should beat.

BM25 Okapi (Robertson & Zaragoza, 2009) as `rank_bm25.BM25Okapi` computes it (k1 = 1.5, b = 0.75, negative
IDFs floored at 0.25 x the mean IDF), with term statistics over every distinct candidate sentence of the
split, and lower-cased word tokens (``\\w+``), no stemming, no stop words. Needs the ``[bm25]`` extra.

    python -m promptlab.evaluation.bm25 --tasks TRECQA-rerank --split dev --output bm25.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from promptlab.errors import PromptlabError
from promptlab.evaluation.data import fingerprint
from promptlab.evaluation.results import EvalResult, format_table
from promptlab.evaluation.task_types import RerankingTask

_TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def bm25_ranker(
    task: RerankingTask, *, k1: float = 1.5, b: float = 0.75
) -> Callable[[str, Sequence[str]], np.ndarray]:
    """``ranker(query, candidates)`` -> BM25 scores, with statistics over all candidates of ``task``."""
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        raise PromptlabError(
            "the BM25 baseline needs the rank-bm25 package: pip install 'promptlab[bm25]'."
        ) from None
    docs = list(dict.fromkeys(s for cands in task.candidates for s in cands))
    row = {s: i for i, s in enumerate(docs)}
    bm25 = BM25Okapi([tokenize(d) for d in docs], k1=k1, b=b)

    def ranker(query: str, candidates: Sequence[str]) -> np.ndarray:
        return np.asarray(
            bm25.get_batch_scores(tokenize(query), [row[c] for c in candidates]), dtype=np.float64
        )

    return ranker


def evaluate_bm25(
    tasks: Iterable[str] | str = ("TRECQA-rerank",), *, data_dir=None, split: str = "dev"
) -> EvalResult:
    """BM25 on reranking tasks, as an `EvalResult` (so it prints and records like a model's)."""
    from promptlab.evaluation.runner import load_suite

    suite = load_suite(tasks, data_dir=data_dir, split=split)
    wrong = [t.name for t in suite.tasks if not isinstance(t, RerankingTask)]
    if wrong:
        raise PromptlabError(
            f"the BM25 baseline scores reranking tasks only, not {', '.join(wrong)}; ask for TRECQA-rerank."
        )
    start = time.perf_counter()
    scores = {t.name: t.score_ranker(bm25_ranker(t)) for t in suite.tasks}
    seconds = time.perf_counter() - start
    digests = {k: v for t in suite.tasks for k, v in t.digests.items()}
    return EvalResult(
        details=scores,
        average=float(np.mean([s.score for s in scores.values()])),
        partial=True,
        split=split,
        source=suite.source,
        data_dir=suite.data_dir,
        data_fingerprint=fingerprint(digests),
        n_pairs=suite.n_pairs,
        n_sentences=len(suite.sentences),
        encode_seconds=seconds,
        sentences_per_second=len(suite.sentences) / seconds if seconds > 0 else float("inf"),
    )


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m promptlab.evaluation.bm25", description=__doc__.splitlines()[0]
    )
    p.add_argument("--tasks", default="TRECQA-rerank", help="comma-separated reranking tasks")
    p.add_argument("--split", default="dev")
    p.add_argument("--data-dir", default=None, help="the data folder (default: $PROMPTLAB_DATA)")
    p.add_argument("--output", default=None, help="write a JSON record here")
    return p


def main(argv: list[str] | None = None) -> int:
    from promptlab.version import __version__

    args = make_parser().parse_args(argv)
    try:
        result = evaluate_bm25(args.tasks.split(","), data_dir=args.data_dir, split=args.split)
    except PromptlabError as err:
        print(f"error: {err.cli or err}", file=sys.stderr)
        return 2
    print(format_table({"BM25 (rank-bm25 Okapi)": result}))
    if args.output:
        record = {
            "kind": "eval",
            "command": [
                "python",
                "-m",
                "promptlab.evaluation.bm25",
                *(argv if argv is not None else sys.argv[1:]),
            ],
            "promptlab": __version__,
            "config": {"model": "bm25", "k1": 1.5, "b": 0.75, "tokens": r"lower-cased \w+"},
            **result.to_dict(),
        }
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
