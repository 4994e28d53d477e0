"""STS cost, speed and peak memory of quantization (bitsandbytes int8/nf4/fp4, torchao int8-weight-only,
llama.cpp on the model's GGUF file) against promptlab's default, float32 and bfloat16, in one run.

Each configuration runs in its own child process (peak RSS from wait4) on the same pairs: the test sets of
the seven STS tasks (STS12-16 pooled over their subsets, as the "all" score), whole or a seeded sample of
``--pairs`` pairs of each (bitsandbytes' CPU kernels make the full 26k sentences an hour per configuration
here). Reports Spearman x 100 per task, the change of the average against ``--reference`` (default: the
first configuration) with a paired bootstrap 95% interval (the same resampled pairs for both
configurations, so the interval is that of the difference, not of either score), the cosine between each
configuration's vectors and the reference's, peak memory, sentences/s and its ratio to the reference.
For the transformers rows, the achieved FLOP/s (2 x non-embedding parameters x tokens computed, a shared
prefix counted once) as a fraction of the matmul peak of the row's compute dtype, measured in the same run.
The record and its table are rewritten after every row. Each finished row's vectors stay in ``<output>.work/``:
the same command run again (same model, pairs and CPU) keeps those rows and runs only the others.

    python benchmarks/quant_sts.py --pairs 300 --configs default,int8-weight-only,nf4,llamacpp \
        --output experiments/bench/quant-table-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import cpu_name, matmul_peak, non_embedding_params, spawn  # noqa: E402

# The quantized rows compute in float32, so their difference to fp32 is the weights' quantization alone.
CONFIGS = {
    "default": {},  # promptlab's defaults: dtype auto (bf16 where the CPU has bf16 matmuls, else fp32)
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "fp16": {"dtype": "float16"},
    "int8": {"quantization": "int8", "dtype": "float32"},
    "nf4": {"quantization": "nf4", "dtype": "float32"},
    "fp4": {"quantization": "fp4", "dtype": "float32"},
    "int8-weight-only": {"quantization": "int8-weight-only", "dtype": "float32"},  # torchao
    "llamacpp": {"backend": "llamacpp"},  # the model's own GGUF file (Q4_1, Q4_K_M...) through llama.cpp
}
TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness")


def load_pairs(
    data_dir, pairs: int, seed: int, tasks=TASKS
) -> dict[str, tuple[list[str], list[str], list[float]]]:
    from promptlab.evaluation import load_task

    out = {}
    for task in tasks:
        first, second, gold = [], [], []
        for part in load_task(task, split="test", data_dir=data_dir):
            first += part.sentences1
            second += part.sentences2
            gold += [float(score) for score in part.scores]
        rows = list(range(len(first)))
        if pairs and pairs < len(rows):
            rows = sorted(random.Random(seed).sample(rows, pairs))
        out[task] = ([first[i] for i in rows], [second[i] for i in rows], [gold[i] for i in rows])
    return out


def paired_bootstrap(cosines: dict, reference: dict, gold: dict, *, rounds: int, seed: int):
    """95% interval of (average Spearman of ``cosines``) - (that of ``reference``) over resampled pairs."""
    import numpy as np
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(rounds):
        total = 0.0
        for task, g in gold.items():
            idx = rng.integers(0, len(g), len(g))
            total += spearmanr(cosines[task][idx], g[idx]).statistic
            total -= spearmanr(reference[task][idx], g[idx]).statistic
        deltas.append(100 * total / len(gold))
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high)


def child(args) -> int:
    import numpy as np
    import torch

    from promptlab.embedder import Embedder

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    data = json.loads(Path(args.pairs_file).read_text())
    sentences = sorted({s for a, b, _ in data.values() for s in a + b})
    embedder = Embedder(args.model, "prompteol", **CONFIGS[args.child])
    start = time.perf_counter()
    vectors = embedder.encode(sentences, show_progress_bar=False)
    seconds = time.perf_counter() - start
    np.save(args.vectors, vectors)
    stats, described = embedder.last_stats, embedder.describe()
    result = {"seconds": seconds, "sentences": len(sentences), "dtype": described["dtype"]}
    result["backend"] = described.get("backend", "transformers")
    net = getattr(embedder.backend, "model", None) if result["backend"] == "transformers" else None
    if net is not None:  # what the forward computed: each prompt's tokens, the shared prefix once
        prefix = stats.get("prefix_length", 0)
        result["tokens"] = stats["tokens"] - prefix * stats["unique_sentences"] + prefix
        result["params"] = non_embedding_params(net)
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=300, help="pairs sampled per task (0: the whole test set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default="fp32,bf16,int8,nf4,fp4", help=f"of {', '.join(CONFIGS)}")
    p.add_argument(
        "--reference", default=None, help="the configuration compared against (default: the first)"
    )
    p.add_argument("--peak-seconds", type=float, default=3.0, help="per matmul shape (0: no peak measured)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated STS tasks (test sets)")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap rounds (0: none)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", default=None, help="the record (JSON; its table beside it as .md)")
    p.add_argument(
        "--render", default=None, metavar="JSON", help="recompute and rewrite a saved record's table"
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--pairs-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--vectors", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.render:
        return rerender(args.render)
    if not args.output:
        p.error("give --output FILE.json (or --render FILE.json)")

    import numpy as np
    from scipy.stats import spearmanr

    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    reference = args.reference or names[0]
    if reference not in names:
        p.error(f"--reference {reference} is not among --configs")
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    data = load_pairs(args.data_dir, args.pairs, args.seed, tasks)
    sentences = sorted({s for a, b, _ in data.values() for s in a + b})
    index = {s: i for i, s in enumerate(sentences)}
    out = Path(args.output)
    # Each finished row's vectors and result stay in a folder beside the record, so a run stopped mid-way (a
    # 1.5B model's table takes hours on a small CPU) and started again with the same command keeps them.
    # Only rows of the same model, pairs and CPU are kept: speed ratios mean nothing across machines.
    work = out.with_suffix(".work")
    pairs_json = json.dumps(data)
    run = {"model": args.model, "pairs_sha256": hashlib.sha256(pairs_json.encode()).hexdigest()}
    run["cpu"] = cpu_name()
    if (work / "run.json").exists() and (kept := json.loads((work / "run.json").read_text())) != run:
        differ = ", ".join(f"{k} {kept.get(k)!r} here {v!r}" for k, v in run.items() if kept.get(k) != v)
        p.error(f"{work} holds rows of another run ({differ}); remove that folder, or give another --output")
    work.mkdir(parents=True, exist_ok=True)
    (work / "run.json").write_text(json.dumps(run))
    (work / "pairs.json").write_text(pairs_json)
    results, vectors, cosines, peaks = {}, {}, {}, {}
    for name in names:
        saved, npy = work / f"{name}.json", work / f"{name}.npy"
        if saved.exists() and npy.exists():
            row = json.loads(saved.read_text())
            print(f"{name}: kept from the run of {row['measured']}", flush=True)
        else:
            files = ["--pairs-file", str(work / "pairs.json"), "--vectors", str(npy)]
            argv_child = [__file__, "--child", name, "--model", args.model, *files, "--output", "-"]
            load = os.getloadavg()
            result, rss, tail = spawn(sys.executable, argv_child, 4 * 3600)
            if result is None:
                print(f"{name}: FAILED\n{tail}", flush=True)
                results[name] = {"error": tail[-600:]}
                continue
            row = {"result": result, "peak_rss_mib": rss, "load_average_at_start": load}
            row["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_whole(saved, json.dumps(row))  # the row counts as done only once whole
        v = np.load(npy)
        vectors[name] = v
        scores, cosines[name] = {}, {}
        for task, (a, b, gold) in data.items():
            x, y = v[[index[s] for s in a]], v[[index[s] for s in b]]
            cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
            cosines[name][task] = cos
            scores[task] = 100 * spearmanr(cos, gold).statistic
        results[name] = {
            **row["result"],
            "scores": scores,
            "average": sum(scores.values()) / len(scores),
            "peak_rss_mib": row["peak_rss_mib"],
            "sentences_per_second": row["result"]["sentences"] / row["result"]["seconds"],
            "measured": row["measured"],
            "load_average_at_start": row["load_average_at_start"],
        }
        print(f"{name}: {scores} avg {results[name]['average']:.2f}, {row['peak_rss_mib']:.0f} MiB, "
              f"{results[name]['sentences_per_second']:.1f} sent/s", flush=True)  # fmt: skip
        compare(results, vectors, cosines, data, reference, args)
        write_record(out, args, tasks, data, reference, peaks, len(sentences), results)  # the rows so far
    # The matmul peak of each compute dtype the transformers rows used, measured after them (in this process,
    # with the rows' threads), so a dtype no row computes in (bf16 emulated on a CPU without it) costs nothing.
    if args.peak_seconds > 0:
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        for r in results.values():
            if "tokens" in r and r["dtype"] not in peaks:
                peaks[r["dtype"]] = matmul_peak(r["dtype"], args.peak_seconds)
                print(f"matmul peak {r['dtype']}: {peaks[r['dtype']] / 1e9:.0f} GFLOP/s", flush=True)
        add_peak_fractions(results, peaks)
    record = write_record(out, args, tasks, data, reference, peaks, len(sentences), results)
    print(render(record))
    return 0


def compare(results: dict, vectors: dict, cosines: dict, data: dict, reference: str, args) -> None:
    """Each finished row against the reference row: cosines, score change with its bootstrap interval,
    speed and memory ratios."""
    import numpy as np

    if reference not in vectors:
        return
    ref, base = vectors[reference], results[reference]
    gold = {task: np.asarray(d[2]) for task, d in data.items()}
    for name, v in vectors.items():
        if "speed_ratio" in results[name]:
            continue
        cos = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
        results[name]["cosine_to_reference"] = {"mean": float(cos.mean()), "min": float(cos.min())}
        results[name]["delta_average"] = results[name]["average"] - base["average"]
        results[name]["speed_ratio"] = results[name]["sentences_per_second"] / base["sentences_per_second"]
        results[name]["rss_ratio"] = results[name]["peak_rss_mib"] / base["peak_rss_mib"]
        if args.bootstrap and name != reference:
            results[name]["delta_average_ci95"] = paired_bootstrap(
                cosines[name], cosines[reference], gold, rounds=args.bootstrap, seed=args.seed
            )


def write_record(out: Path, args, tasks, data, reference, peaks, unique_sentences, results) -> dict:
    """The record (JSON) and its table (markdown) beside it, written whole each time."""
    loads = [r["load_average_at_start"][0] for r in results.values() if "load_average_at_start" in r]
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.executable, *sys.argv],
        "model": args.model,
        "tasks": list(tasks),
        "bootstrap_rounds": args.bootstrap,
        "pairs_per_task": {t: len(d[0]) for t, d in data.items()},
        "seed": args.seed,
        "reference": reference,
        "matmul_peak_flops": peaks,
        "cpu": cpu_name(),
        "unique_sentences": unique_sentences,
        "load_average_at_start": [max(loads, default=0.0)],  # the busiest row's, as the table states it
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_whole(out, json.dumps(record, indent=2) + "\n")
    write_whole(out.with_suffix(".md"), render(record))
    return record


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and move it into place, so a stopped run never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def add_peak_fractions(results: dict, peaks: dict) -> None:
    """Each transformers row's FLOP/s (2 x non-embedding parameters x tokens computed) and its fraction of
    the matmul peak of its compute dtype. The parameters are the model's full count, the largest any row
    reports (a 4-bit layer stores two weights per element), so a quantized row's rate is the float work
    it stands in for."""
    params = max((r["params"] for r in results.values() if "params" in r), default=0)
    for r in results.values():
        if "tokens" in r and r["dtype"] in peaks:
            r["flops_per_second"] = 2 * params * r["tokens"] / r["seconds"]
            r["fraction_of_matmul_peak"] = r["flops_per_second"] / peaks[r["dtype"]]


def render(record: dict) -> str:
    """The markdown table of a record."""
    tasks, reference, peaks = record["tasks"], record["reference"], record["matmul_peak_flops"]
    lines = [
        f"{record['model']}, prompteol, {record['pairs_per_task']} test pairs (seed {record['seed']}), "
        f"{record['unique_sentences']} unique sentences; load average at a row's start (highest) "
        f"{record['load_average_at_start'][0]:.2f}; {record['cpu']}; {record['created']}",
        "",
        ("matmul peak (same run): " + ", ".join(f"{d} {f / 1e9:.0f} GFLOP/s" for d, f in peaks.items()))
        if peaks
        else "matmul peak not measured",
        "",
        "| config | dtype | "
        + " | ".join(tasks)
        + f" | avg | Δ vs {reference} | Δ 95% CI | cos to {reference} (mean/min) | peak RSS MiB (ratio) "
        "| sent/s (ratio) | % of matmul peak |",
        "|---|---|" + "---:|" * (len(tasks) + 7),
    ]
    for name, r in record["results"].items():
        if "error" in r:
            lines.append(f"| {name} | failed |")
            continue
        cos = r.get("cosine_to_reference", {"mean": float("nan"), "min": float("nan")})
        ci = r.get("delta_average_ci95")
        ci = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "-"
        peak = r.get("fraction_of_matmul_peak")
        lines.append(
            f"| {name} | {r['dtype']} | " + " | ".join(f"{r['scores'][t]:.2f}" for t in tasks)
            + f" | {r['average']:.2f} | {r.get('delta_average', float('nan')):+.2f} | {ci} | "
            f"{cos['mean']:.4f} / {cos['min']:.4f} | {r['peak_rss_mib']:.0f} ({r.get('rss_ratio', float('nan')):.2f}) | "
            f"{r['sentences_per_second']:.1f} ({r.get('speed_ratio', float('nan')):.2f}×) | "
            f"{f'{100 * peak:.0f} %' if peak is not None else '-'} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def rerender(path: str) -> int:
    """Recompute the matmul-peak fractions of a saved record from its own measurements; rewrite its table."""
    out = Path(path)
    record = json.loads(out.read_text())
    add_peak_fractions(record["results"], record["matmul_peak_flops"])
    out.write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
