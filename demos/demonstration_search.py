"""PromptEOL's in-context demonstration: search a pool on STS-B dev, then check the best one on STS-B test.

    python demos/demonstration_search.py                           # the PromptEOL paper's demonstrations
    python demos/demonstration_search.py --pool definitions --dev-pairs 500 --output search.jsonl

The same steps as `promptlab search-demos` followed by `promptlab eval --demonstration best-of:...`, through
the Python API. Selection uses STS-B dev only; the test split is scored once, for the best candidate and
for no demonstration. Candidates whose sentence occurs in an STS test set are left out of every pool. The
results file is resumable: a rerun scores only the candidates it does not hold yet.
"""

from __future__ import annotations

import argparse
import sys

from promptlab import Embedder
from promptlab.backends import DTYPE_NAMES
from promptlab.demonstrations import best_demonstration, load_pool
from promptlab.errors import PromptlabError
from promptlab.evaluation import load_task, score_encoder, subset_pairs
from promptlab.experiments.scoring import Benchmark
from promptlab.experiments.search import format_top, run_search


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="packaged name, local dir, .gguf or hub id")
    parser.add_argument("--template", default="prompteol", help="a next_token (or mask) template")
    parser.add_argument("--pool", default="prompteol-paper", help="all | a shipped file name | a .jsonl path")
    parser.add_argument("--limit", type=int, default=None, help="search only the pool's first N candidates")
    parser.add_argument("--dev-pairs", type=int, default=300, help="seeded STS-B dev subset for the search")
    parser.add_argument(
        "--test-pairs", type=int, default=None, help="seeded STS-B test subset (default: all)"
    )
    parser.add_argument("--dtype", default="auto", choices=DTYPE_NAMES)
    parser.add_argument("--output", default="demonstration-search.jsonl", help="results JSONL (resumed)")
    parser.add_argument("--data-dir", default=None, help="SentEval layout folder (default: $PROMPTLAB_DATA)")
    args = parser.parse_args(argv)

    try:
        pool, excluded = load_pool(args.pool)
        pool = pool[: args.limit] if args.limit else pool
        if excluded:
            print(f"left out (sentence in an STS test set): {', '.join(d.id for d in excluded)}")
        backend = Embedder(args.model, args.template, dtype=args.dtype).backend  # loaded once, shared
        dtype = backend.describe()["dtype"]
        rows = run_search(
            args.model,
            pool,
            args.output,
            template=args.template,
            dtype=dtype,
            benchmark=Benchmark(dev_pairs=args.dev_pairs, data_dir=args.data_dir),
            backend=backend,
            log=lambda message: print(message, flush=True),
        )
        print(format_top(rows, k=5))
        best = best_demonstration(args.output)

        (test,) = load_task("STSBenchmark", data_dir=args.data_dir, split="test")
        test = subset_pairs(test, args.test_pairs or None)
        print(f"\nSTS-B test ({len(test)} pairs), {args.template}, {dtype}:")
        for label, demonstration in (("no demonstration", None), (f"best: {best.id}", best)):
            score = score_encoder(Embedder(backend, args.template, demonstration=demonstration).encode, test)
            print(f"  {label:32} {score:6.2f}")
    except PromptlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
