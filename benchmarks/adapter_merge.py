"""Speed, memory and vectors of a LoRA adapter merged into its base against the adapter kept apart, in one run.

Rows, each in its own child process on the same seeded sample of STS test sentences (throughput excludes
loading; peak memory is the child's maximum resident set, from wait4):

  apart    the adapter on its base as loaded (``--quantization``: a QLoRA adapter on its 4-bit base)
  merged   ``merge_adapter=True`` (a 4-bit base dequantized to ``--dtype`` and the adapter folded in)
  base     the base in ``--dtype``, unquantized, no adapter: the speed a merged model should reach

Reports sentences/s and its ratio to ``apart``, peak RSS, and the largest difference between ``merged`` and
``apart`` vectors (max |difference| over max |value|, and the smallest cosine), so a faster merge that moved
the vectors shows. Run it with nothing else on the machine.

    python benchmarks/adapter_merge.py --model qwen2.5-coder-1.5b --quantization nf4 \\
        --adapter experiments/scaling/runs/qwen2.5-coder-1.5b-cse/best --sentences 128 \\
        --output experiments/bench/adapter-merge-qwen2.5-coder-1.5b.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench import measured_on, print_and_write, sample_sentences, spawn  # noqa: E402

ROWS = ("apart", "merged", "base")


def child_main(args) -> int:
    import torch

    from promptlab.embedder import Embedder

    torch.set_num_threads(args.threads)
    sentences = json.loads(Path(args.sentences_file).read_text())
    options = {"dtype": args.dtype, "template": args.template, "layer": args.layer}
    if args.child != "base":
        options.update(adapter=args.adapter, merge_adapter=args.child == "merged")
        if args.quantization:
            options["quantization"] = args.quantization
    started = time.perf_counter()
    embedder = Embedder(args.model, options.pop("template"), options.pop("layer"), **options)
    loaded = time.perf_counter() - started
    embedder.encode(sentences[:4])  # first-call costs (kernels, allocator) stay out of the rate
    started = time.perf_counter()
    vectors = embedder.encode(sentences)
    seconds = time.perf_counter() - started
    np.save(args.vectors, vectors)
    result = {
        "load_seconds": loaded,
        "encode_seconds": seconds,
        "sentences_per_second": len(sentences) / seconds,
    }
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    return 0


def compare(merged: np.ndarray, apart: np.ndarray) -> dict:
    cosine = (merged * apart).sum(1) / np.linalg.norm(merged, axis=1) / np.linalg.norm(apart, axis=1)
    return {
        "max_abs_difference_over_max_abs": float(np.abs(merged - apart).max() / np.abs(apart).max()),
        "min_cosine": float(cosine.min()),
    }


def markdown(record: dict) -> str:
    lines = [
        f"{record['model']}, adapter {record['adapter']}, quantization {record['quantization']}, dtype "
        f"{record['dtype']}; {record['sentences']} STS test sentences (seed {record['seed']}), "
        f"{record['threads']} thread(s); {record['cpu']}; {record['measured']}, commit {record['commit']}",
        "",
        "| row | sentences/s | ratio to apart | peak RSS MiB | load s |",
        "|---|---:|---:|---:|---:|",
    ]
    apart = record["rows"].get("apart", {}).get("sentences_per_second")
    for name, row in record["rows"].items():
        if "error" in row:
            lines.append(f"| {name} | failed | | | |")
            continue
        rate = row["sentences_per_second"]
        ratio = f"{rate / apart:.2f}×" if apart else "-"
        lines.append(
            f"| {name} | {rate:.2f} | {ratio} | {row['peak_rss_mib']:.0f} | {row['load_seconds']:.1f} |"
        )
    if "merged_vs_apart" in record:
        diff = record["merged_vs_apart"]
        lines += [
            "",
            f"merged vs apart: max |difference| / max |value| {diff['max_abs_difference_over_max_abs']:.2e}, "
            f"smallest cosine {diff['min_cosine']:.7f}",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument(
        "--adapter", required=True, help="a LoRA adapter folder (a `promptlab finetune` run's best/)"
    )
    p.add_argument(
        "--quantization", default=None, help="how the base is loaded for the adapter (nf4 for QLoRA)"
    )
    p.add_argument("--dtype", default="float32")
    p.add_argument("--template", default="prompteol")
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--sentences", type=int, default=128, help="sentences encoded per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("PROMPTLAB_DATA"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--output", default=None, help="a JSON record (and a .md table beside it)")
    p.add_argument("--child", choices=ROWS, help=argparse.SUPPRESS)
    p.add_argument("--sentences-file", help=argparse.SUPPRESS)
    p.add_argument("--vectors", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        p.error(f"--rows {','.join(unknown)}: choose from {', '.join(ROWS)}")
    sentences = sample_sentences(args.data_dir, (args.sentences + 1) // 2, args.seed)[: args.sentences]
    record = {
        "model": args.model,
        "adapter": args.adapter,
        "quantization": args.quantization,
        "dtype": args.dtype,
        "template": args.template,
        "layer": args.layer,
        "sentences": len(sentences),
        "seed": args.seed,
        "threads": args.threads,
        **measured_on(),
        "rows": {},
    }
    vectors = {}
    with tempfile.TemporaryDirectory() as work:
        sentences_file = Path(work) / "sentences.json"
        sentences_file.write_text(json.dumps(sentences))
        for name in rows:
            npy = Path(work) / f"{name}.npy"
            forwarded = ["--model", args.model, "--adapter", args.adapter, "--dtype", args.dtype]
            forwarded += [
                "--template",
                args.template,
                "--layer",
                str(args.layer),
                "--threads",
                str(args.threads),
            ]
            forwarded += ["--quantization", args.quantization] if args.quantization else []
            child = [__file__, "--child", name, *forwarded, "--sentences-file", str(sentences_file)]
            result, rss, tail = spawn(sys.executable, [*child, "--vectors", str(npy)], 4 * 3600)
            if result is None:
                print(f"{name}: FAILED\n{tail}", flush=True)
                record["rows"][name] = {"error": tail[-600:]}
                continue
            record["rows"][name] = {**result, "peak_rss_mib": rss}
            vectors[name] = np.load(npy)
            print(f"{name}: {result['sentences_per_second']:.2f} sentences/s, {rss:.0f} MiB", flush=True)
    if "apart" in vectors and "merged" in vectors:
        record["merged_vs_apart"] = compare(vectors["merged"], vectors["apart"])
    print_and_write(record, markdown(record), args.output)
    return 0 if all("error" not in row for row in record["rows"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
