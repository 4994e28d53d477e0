"""Semantic search over your own sentences with a local, optionally quantized, prompt-based embedder.

    python demos/semantic_search.py                                   # a built-in corpus and queries
    python demos/semantic_search.py --corpus my_sentences.txt --query "how do I reset my password?"
    python demos/semantic_search.py --quantization int8               # bitsandbytes: pip install 'promptlab[quant]'

By default it embeds with the best training-free configuration the lab found for SmolLM2-135M on STS-B
dev (template `eol-topic`, layer 28, the demonstration its search chose: see the README); plain PromptEOL
is `--template prompteol --layer -1 --demonstration none`.

The corpus (one sentence per line) is embedded once and its vectors kept in promptlab's on-disk embedding
cache (keyed by model file, template, layer, dtype, quantization and sentence), so a second search over the
same corpus only embeds the queries. `--no-cache` switches that off.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from promptlab import Embedder
from promptlab.backends import DTYPE_NAMES
from promptlab.errors import PromptlabError

CORPUS = [
    "The central bank raised interest rates by half a point.",
    "Inflation climbed to its highest level in a decade.",
    "The striker scored twice in the second half.",
    "The team lost the final on penalties.",
    "Preheat the oven and bake the bread for forty minutes.",
    "Whisk the eggs with sugar until the mixture is pale.",
    "The telescope captured images of a distant galaxy.",
    "Astronauts repaired the space station's solar panel.",
    "Water the tomato plants every morning in summer.",
    "Prune the roses in late winter before new growth starts.",
    "The laptop will not turn on after the latest update.",
    "Restart the router if the wifi connection keeps dropping.",
]
# (query, the corpus sentence a good embedding ranks first)
QUERIES = [
    ("Borrowing money became more expensive.", CORPUS[0]),
    ("Who won the football match?", CORPUS[3]),
    ("How long should the loaf stay in the oven?", CORPUS[4]),
    ("My internet keeps disconnecting.", CORPUS[11]),
    ("News about planets and stars", CORPUS[6]),
]


# The demonstration search behind the default configuration (`promptlab search-demos`, STS-B dev).
BEST_SEARCH = Path(__file__).resolve().parents[1] / "experiments/results/search-smollm2-eol-topic-l28.jsonl"


def read_corpus(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise PromptlabError(
            f"cannot read --corpus {path}: {err.strerror}; pass a text file, one sentence a line."
        ) from None
    corpus = [line.strip() for line in lines if line.strip()]
    if not corpus:
        raise PromptlabError(f"--corpus {path} has no sentences; write one sentence a line.")
    return corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=None, help="text file, one sentence a line (default: built in)")
    parser.add_argument(
        "--query", action="append", default=None, help="repeat for several (default: built in)"
    )
    parser.add_argument("--top", type=int, default=3, help="hits to print per query")
    parser.add_argument("--model", default="smollm2-135m", help="packaged name, local dir, .gguf or hub id")
    parser.add_argument("--template", default="eol-topic", help="registry name or text with [X]")
    parser.add_argument("--layer", type=int, default=28, help="hidden-state layer (-1: the last)")
    parser.add_argument(
        "--demonstration",
        default=f"best-of:{BEST_SEARCH}",
        help="a demonstration id, best-of:SEARCH.jsonl, or none (default: the search's best for eol-topic)",
    )
    parser.add_argument("--dtype", default="auto", choices=DTYPE_NAMES)
    parser.add_argument("--quantization", default=None, choices=["int8", "nf4", "fp4"])
    parser.add_argument("--cache-dir", default=None, help="embedding cache (default: CACHE/embeddings)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top {args.top}: print at least 1 hit per query")

    from promptlab.cache import default_cache_dir

    try:
        corpus = read_corpus(args.corpus) if args.corpus else CORPUS
        queries = args.query or [query for query, _ in QUERIES]
        embedder = Embedder(
            args.model,
            args.template,
            layer=args.layer,
            demonstration=args.demonstration,
            dtype=args.dtype,
            quantization=args.quantization,
            cache_dir=None if args.no_cache else args.cache_dir or str(default_cache_dir()),
        )
        started = time.perf_counter()
        documents = embedder.encode(corpus, normalize_embeddings=True)
        corpus_seconds = time.perf_counter() - started
        asked = embedder.encode(queries, normalize_embeddings=True)
    except PromptlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(corpus)} corpus sentences embedded in {corpus_seconds:.2f} s, {len(queries)} queries")
    expected = dict(QUERIES) if not args.corpus and not args.query else {}
    hits = 0
    for query, scores in zip(queries, asked @ documents.T, strict=True):  # cosine: rows are unit length
        ranked = scores.argsort()[::-1][: args.top]
        print(f"\n{query}")
        for rank, index in enumerate(ranked, start=1):
            print(f"  {rank}. {scores[index]:.3f}  {corpus[index]}")
        if query in expected:
            hit = corpus[ranked[0]] == expected[query]
            hits += hit
            print(f"  top hit: {'ok' if hit else f'MISS (expected: {expected[query]})'}")
    if expected:
        print(f"\n{hits}/{len(expected)} queries found the expected sentence first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
