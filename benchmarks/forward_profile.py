"""Where the default bf16 forward spends its time, and the share of the matmul peak that split allows.

Issue 5 asks the default bf16 path for >= 50 % of a bf16 matmul peak (FLOPs = 2 x non-embedding parameters
x tokens). This measures, in one run, on the sentences of `bench.py`:

- the bf16 matmul peak (`bench.matmul_peak`) and the default path's throughput (best of ``--rounds``);
- a `torch.profiler` run of the same encode, its op time split into matmuls (``aten::mm`` and kin),
  attention (SDPA) and everything else (norms, RoPE, SiLU, residual adds, copies);
- from that split, two ceilings: the share of peak if every non-matmul op took no time (the matmuls alone,
  at the rate they run at inside the forward), and if only the matmuls and attention remained.

With ``--compile`` the same is measured for ``torch.compile`` (inductor fuses the element-wise ops), and
with ``--freezing`` for inductor's freezing mode too (weights folded in as constants and prepacked for
oneDNN, element-wise epilogues fused into the linear layers; inference only, so not promptlab's
``--compile``).

    python benchmarks/forward_profile.py --output experiments/bench/forward-profile.json --compile
    python benchmarks/forward_profile.py --output experiments/bench/forward-profile-freezing.json --freezing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench import matmul_peak, non_embedding_params, sample_sentences  # noqa: E402

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_weight_int8pack_mm"}


def category(op_name: str) -> str:
    if op_name in MATMUL_OPS or ("linear" in op_name and "mkldnn" in op_name):  # mkldnn: frozen inductor
        return "matmul"
    if "scaled_dot_product" in op_name or "flash_attention" in op_name:
        return "attention"
    return "other"


def measure(embedder, sentences: list[str], rounds: int, flops_per_token: float, peak: float) -> dict:
    from torch.profiler import ProfilerActivity, profile

    unique = len(set(sentences))
    best = float("inf")
    for _ in range(rounds):
        embedder.backend.clear_caches()
        start = time.perf_counter()
        embedder.encode(sentences)
        best = min(best, time.perf_counter() - start)
    tokens = embedder.last_stats["tokens"]
    flops = flops_per_token * tokens
    embedder.backend.clear_caches()
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # the same encode as the timed ones above
        start = time.perf_counter()
        embedder.encode(sentences)
        profiled = time.perf_counter() - start
    split = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        # Only leaf time: an op's self time excludes the ops it calls, so nothing is counted twice.
        split[category(event.key)] += event.self_cpu_time_total / 1e6
    ops = sum(split.values())
    matmul_rate = flops / split["matmul"]
    return {
        "sentences_per_s": unique / best,
        "tokens": tokens,
        "seconds": best,
        "percent_of_peak": 100 * flops / best / peak,
        "profiled_seconds": profiled,
        # The ceilings bound this one: they take time away from this same (profiled) run.
        "profiled_percent_of_peak": 100 * flops / profiled / peak,
        "op_seconds": split,
        "op_share_percent": {k: 100 * v / ops for k, v in split.items()},
        "matmul_gflops_in_forward": matmul_rate / 1e9,
        "ceiling_matmuls_only_percent": 100 * matmul_rate / peak,
        "ceiling_matmuls_and_attention_percent": 100 * flops / (split["matmul"] + split["attention"]) / peak,
    }


def markdown(record: dict) -> str:
    lines = [
        f"# Forward profile: {record['model']}, bf16, {record['sentences']} sentences, {record['threads']} threads",
        "",
        f"bf16 matmul peak {record['peak_gflops']:.0f} GFLOP/s; FLOPs = 2 x {record['non_embedding_params'] / 1e6:.1f}M"
        " non-embedding parameters x tokens.",
        "",
        "| path | sent/s | % of peak | matmul / attention / other (% of op time) | matmuls inside the forward, "
        "% of peak | ceiling: matmuls + attention only |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, row in record["paths"].items():
        share = row["op_share_percent"]
        lines.append(
            f"| {name} | {row['sentences_per_s']:.1f} | {row['percent_of_peak']:.0f} | "
            f"{share['matmul']:.0f} / {share['attention']:.0f} / {share['other']:.0f} | "
            f"{row['ceiling_matmuls_only_percent']:.0f} | {row['ceiling_matmuls_and_attention_percent']:.0f} |"
        )
    if "compile_seconds" in record:
        lines += ["", f"torch.compile: first encode (compile included) {record['compile_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=250)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also measure the torch.compile path")
    p.add_argument(
        "--freezing", action="store_true", help="compile with inductor's freezing (implies --compile)"
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", required=True, help="JSON results; a Markdown table goes beside it")
    args = p.parse_args(argv)

    import torch

    from promptlab.embedder import Embedder

    torch.set_num_threads(2)
    sentences = sample_sentences(args.data_dir, args.pairs, 0)
    peak = matmul_peak("bfloat16")
    embedder = Embedder(args.model, "prompteol", dtype="bfloat16")
    params = non_embedding_params(embedder.backend.model)
    embedder.encode(sentences[:32])  # warm-up
    record = {
        "model": args.model,
        "sentences": len(sentences),
        "threads": torch.get_num_threads(),
        "peak_gflops": peak / 1e9,
        "non_embedding_params": params,
        "fast_decoder": bool(embedder.describe().get("fast_decoder")),
        "paths": {"default (eager)": measure(embedder, sentences, args.rounds, 2 * params, peak)},
    }
    if args.compile or args.freezing:
        if args.freezing:
            import torch._inductor.config

            torch._inductor.config.freezing = True
        record["freezing"] = args.freezing
        embedder.backend.compile()
        start = time.perf_counter()
        embedder.encode(sentences)
        record["compile_seconds"] = time.perf_counter() - start
        record["paths"]["--compile" + (", freezing" if args.freezing else "")] = measure(
            embedder, sentences, args.rounds, 2 * params, peak
        )
    out = Path(args.output)
    out.write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
