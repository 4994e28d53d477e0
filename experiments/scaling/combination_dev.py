"""Choose the SmolLM2-135M combination's layers and weights on the full STS-B dev set (1,500 pairs).

The two members of `smollm2-combination.toml` (the searched prompt untrained, and the same prompt with the
combined-demo cell's CSE adapter) are combined at each layer range and untrained weight below, and each
variant's STS-B dev Spearman x 100 is printed; the best is the one the TOML uses. Vectors go to promptlab's
embedding cache, so after one forward pass per member every variant is read from there.

    python experiments/scaling/combination_dev.py          # from the repository root, $PROMPTLAB_DATA set
"""

from __future__ import annotations

from promptlab.cache import default_cache_dir
from promptlab.combination import Combination, Member
from promptlab.embedder import Embedder
from promptlab.evaluation import evaluate, load_suite

SEARCH = "best-of:experiments/results/search-smollm2-eol-topic-l28.jsonl"
ADAPTER = "experiments/scaling/runs/smollm2-combined-demo-lora/best"
VARIANTS = [((28,), w) for w in (0.3, 0.5, 0.7)] + [
    (tuple(range(low, 30)), w) for low in (24, 25, 26) for w in (0.5, 0.6, 0.7)
]


def main() -> None:
    cache = str(default_cache_dir())
    untrained = Embedder("smollm2-135m", "eol-topic", dtype="float32", demonstration=SEARCH, cache_dir=cache)
    trained = Embedder.load(ADAPTER, dtype="float32", cache_dir=cache)
    suite = load_suite(["STSBenchmark"], split="dev")
    for embedder in (untrained, trained):  # one forward pass per member fills the cache for every variant
        embedder.encode_layers(list(suite.sentences), list(range(24, 30)))
    print("| layers | untrained weight | STS-B dev |\n|---|---:|---:|")
    for layers, weight in VARIANTS:
        combination = Combination([Member(untrained, layers, weight), Member(trained, layers, 1 - weight)])
        score = evaluate(combination.encode, suite).scores["STSBenchmark"]
        shown = f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
        print(f"| {shown} | {weight} | {score:.2f} |", flush=True)


if __name__ == "__main__":
    main()
