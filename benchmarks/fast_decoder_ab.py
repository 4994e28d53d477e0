"""The fast decoder forward against the transformers forward: same process, same batching, same weights.

Interleaved rounds (each forward in turn, best round kept) on the sentences of `bench.py`, for PromptEOL,
and for the searched best prompt with and without the prefix cache; then, with ``--sts``, the STS-B and
SICK-R test scores of both forwards (bf16 rounds differently in each; float32 is exact, see the tests).

    python benchmarks/fast_decoder_ab.py --output experiments/bench/fast-decoder-ab.json --sts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench import BEST, sample_sentences  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=250)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sts", action="store_true", help="also score STS-B and SICK-R test with both forwards")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)

    import torch

    from promptlab.backends import load_backend
    from promptlab.embedder import Embedder

    torch.set_num_threads(2)
    sentences = sample_sentences(args.data_dir, args.pairs, 0)
    unique = len(set(sentences))
    backend = load_backend("transformers", args.model, dtype="bfloat16")
    prompts = {
        "prompteol": Embedder(backend, "prompteol"),
        "best prompt, prefix cache": Embedder(backend, **BEST),
        "best prompt, no prefix cache": Embedder(backend, prefix_cache=False, **BEST),
    }
    rates: dict[str, dict[str, list[float]]] = {name: {"fast": [], "transformers": []} for name in prompts}
    for _ in range(args.rounds):
        for forward in ("fast", "transformers"):
            backend.use_fast_decoder = forward == "fast"
            for name, embedder in prompts.items():
                backend.clear_caches()
                start = time.perf_counter()
                embedder.encode(sentences)
                rates[name][forward].append(unique / (time.perf_counter() - start))
    record: dict = {"model": args.model, "sentences": len(sentences), "rounds": args.rounds, "rates": rates}
    lines = [
        f"{args.model}, bf16, {len(sentences)} sentences ({unique} unique), promptlab's default batching, "
        f"best of {args.rounds} interleaved rounds",
        "",
        "| prompt | transformers forward, sent/s | fast decoder, sent/s | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for name, r in rates.items():
        a, b = max(r["transformers"]), max(r["fast"])
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    if args.sts:
        from promptlab.evaluation.runner import evaluate

        tasks = ["STSBenchmark", "SICKRelatedness"]
        record["sts"] = {}
        lines += ["", "| forward | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for forward in ("transformers", "fast"):
            backend.use_fast_decoder = forward == "fast"
            result = evaluate(Embedder(backend, "prompteol").encode, tasks, data_dir=args.data_dir)
            scores = {task: float(getattr(s, "score", s)) for task, s in result.scores.items()}
            record["sts"][forward] = scores
            lines.append(f"| {forward} | " + " | ".join(f"{scores[t]:.2f}" for t in tasks) + " |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
