"""Choose the SmolLM2-135M combination's CSE member, layers and weights on the full STS-B dev set (1,500 pairs).

The searched prompt untrained (the first member of `smollm2-combination.toml`) is combined with each of the
study's three SmolLM2 CSE runs at each layer range and untrained weight below, and each variant's STS-B dev
Spearman x 100 is printed, beside each CSE model alone at layer 28; the best is the one the TOML uses.
Vectors go to promptlab's embedding cache, so after one forward pass per member every variant is read from
there.

    python experiments/scaling/combination_dev.py          # from the repository root, $PROMPTLAB_DATA set
"""

from __future__ import annotations

from promptlab.cache import default_cache_dir
from promptlab.combination import Combination, Member
from promptlab.embedder import Embedder
from promptlab.evaluation import evaluate, load_suite

SEARCH = "best-of:experiments/results/search-smollm2-eol-topic-l28.jsonl"
CSE_RUNS = {  # column name: adapter folder
    "demo, lr 5e-4": "experiments/scaling/runs/smollm2-combined-demo-lora/best",
    "demo, lr 1e-4": "experiments/scaling/runs/smollm2-combined-demo-lr1e-4-lora/best",
    "no demo, lr 5e-4": "experiments/scaling/runs/smollm2-combined-lora/best",
}
VARIANTS = [((28,), w) for w in (0.3, 0.5, 0.7)] + [
    (tuple(range(low, 30)), w) for low in (24, 25, 26) for w in (0.5, 0.6, 0.7)
]


def main() -> None:
    cache = str(default_cache_dir())
    untrained = Embedder("smollm2-135m", "eol-topic", dtype="float32", demonstration=SEARCH, cache_dir=cache)
    trained = {name: Embedder.load(path, dtype="float32", cache_dir=cache) for name, path in CSE_RUNS.items()}
    suite = load_suite(["STSBenchmark"], split="dev")
    for embedder in (untrained, *trained.values()):  # one forward pass per member fills the cache
        embedder.encode_layers(list(suite.sentences), list(range(24, 30)))

    def dev_score(encode) -> str:
        return f"{evaluate(encode, suite).scores['STSBenchmark']:.2f}"

    print("| layers | untrained weight | " + " | ".join(f"+ CSE {name}" for name in trained) + " |")
    print("|---|---:|" + "---:|" * len(trained))
    alone = [dev_score(lambda batch, cse=cse: cse.encode_layers(batch, [28])[28]) for cse in trained.values()]
    print("| 28 | 0 (CSE alone) | " + " | ".join(alone) + " |", flush=True)
    for layers, weight in VARIANTS:
        scores = [
            dev_score(
                Combination([Member(untrained, layers, weight), Member(cse, layers, 1 - weight)]).encode
            )
            for cse in trained.values()
        ]
        shown = f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
        print(f"| {shown} | {weight} | " + " | ".join(scores) + " |", flush=True)


if __name__ == "__main__":
    main()
