"""Int8 routes for CPU embedding against float, in one process: speed, memory, and STS-B dev quality.

Every candidate is an `Embedder` built by promptlab (PromptEOL, promptlab's own batching and fast decoder),
so the rates are what users get; the ones not offered as a ``--quantization`` value are that float32
embedder with its model quantized in place:

    fp32, bf16, default       --dtype float32 / bfloat16 / auto (the default row is left out where auto
                              resolves to float32: fp32 is the default then)
    int8                      --quantization int8 (bitsandbytes LLM.int8)
    torch-dynamic-per-channel torch.ao quantize_dynamic: int8 weights with a scale per output channel, inputs
                              quantized per call over the whole batch (7-bit on x86: reduce_range)
    torch-dynamic-per-tensor  the same with torch's default qconfig (one scale per weight matrix)
    torchao-da8w8[-compile]   torchao Int8DynamicActivationInt8WeightConfig, eager / torch.compile
    torchao-w8[-compile]      torchao Int8WeightOnlyConfig, eager / torch.compile

The same seeded STS-B dev pairs for all. Each candidate: load (RSS growth, bytes of its weights), a warm-up
encode of 32 sentences (a compile happens here), a probe of the next 32; one under ``--min-rate``
sentences/s is reported from its probe alone (a full pass would take too long). The others encode all the
sentences in ``--rounds`` interleaved rounds (this machine's speed drifts between minutes) and keep their
best rate; their first round's vectors give the Spearman x 100 on the pairs, the cosine to fp32's vectors,
and the paired-bootstrap 95% interval of the Spearman change against fp32. "batch-1 cos" compares the first
16 sentences encoded one by one with the same sentences encoded in the batches: a quantization whose
activation scales span the batch makes a sentence's vector depend on its neighbours.

    python benchmarks/int8_candidates.py --output experiments/bench/int8-candidates.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quant_sts import paired_bootstrap  # noqa: E402

CANDIDATES = (
    "fp32", "default", "bf16", "int8", "torch-dynamic-per-channel", "torch-dynamic-per-tensor",
    "torchao-da8w8", "torchao-da8w8-compile", "torchao-w8", "torchao-w8-compile",
)  # fmt: skip
LIBRARY = {
    "fp32": "torch", "default": "torch", "bf16": "torch", "int8": "bitsandbytes", "torch-dynamic-per-channel": "torch.ao",
    "torch-dynamic-per-tensor": "torch.ao", "torchao-da8w8": "torchao", "torchao-da8w8-compile": "torchao",
    "torchao-w8": "torchao", "torchao-w8-compile": "torchao",
}  # fmt: skip


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tensor_bytes(value, seen: set) -> int:
    """Bytes held by a state-dict value: plain, quantized (qint8) or subclass tensors, or tuples of them."""
    import torch

    if isinstance(value, tuple | list):
        return sum(tensor_bytes(v, seen) for v in value)
    if not isinstance(value, torch.Tensor):
        return 0
    if hasattr(type(value), "__tensor_flatten__"):  # torchao's Int8Tensor: its int8 data and scales
        names, _ = value.__tensor_flatten__()
        return sum(tensor_bytes(getattr(value, n), seen) for n in names)
    try:
        key = (value.data_ptr(), value.numel())
    except RuntimeError:
        key = (id(value), value.numel())
    if key in seen:
        return 0
    seen.add(key)
    return value.numel() * value.element_size()


def weights_mib(model) -> float:
    seen: set = set()
    return sum(tensor_bytes(v, seen) for v in model.state_dict().values()) / 2**20


def build(name: str, model: str):
    """The `Embedder` of one candidate."""
    import torch

    from promptlab.embedder import Embedder

    if name in ("fp32", "default", "bf16"):
        return Embedder(model, "prompteol", dtype={"fp32": "float32", "bf16": "bfloat16"}.get(name, "auto"))
    if name == "int8":
        return Embedder(model, "prompteol", quantization=name)
    embedder = Embedder(model, "prompteol", dtype="float32", compile=name.endswith("-compile"))
    net = embedder.backend.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name.startswith("torch-dynamic"):
            from torch.ao.quantization import (
                default_dynamic_qconfig,
                per_channel_dynamic_qconfig,
                quantize_dynamic,
            )

            qconfig = per_channel_dynamic_qconfig if name.endswith("channel") else default_dynamic_qconfig
            quantize_dynamic(net, {torch.nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
        else:
            from torchao.quantization import (
                Int8DynamicActivationInt8WeightConfig,
                Int8WeightOnlyConfig,
                quantize_,
            )

            da8w8 = name.startswith("torchao-da8w8")
            quantize_(net, Int8DynamicActivationInt8WeightConfig() if da8w8 else Int8WeightOnlyConfig())
    return embedder


def timed_encode(embedder, sentences, **kwargs):
    cache = getattr(embedder.backend, "prefix_cache", None)
    if cache is not None:
        cache.clear()  # each timed run computes the template's prefix itself
    start = time.perf_counter()
    vectors = embedder.encode(sentences, show_progress_bar=False, **kwargs)
    return vectors, time.perf_counter() - start


def cosines(a, b):
    import numpy as np

    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line)
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=256, help="seeded STS-B dev pairs (both sentences encoded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--rounds", type=int, default=2, help="interleaved timed passes; each keeps its best")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--min-rate", type=float, default=4.0, help="sentences/s below which a row is probed only")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from scipy.stats import spearmanr

    import promptlab
    from promptlab.backends import resolve_dtype
    from promptlab.evaluation import sts_dev

    torch.set_num_threads(args.threads)
    for limit in ("recompile_limit", "cache_size_limit"):  # two compiled models share LlamaModel.forward
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    default_dtype = resolve_dtype("auto", "cpu")
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    if default_dtype == "float32" and "default" in names and "fp32" in names:
        names.remove("default")  # the same row
    reference = "fp32" if "fp32" in names else None
    baseline = "fp32" if default_dtype == "float32" else "default"

    pairs = sts_dev(args.data_dir, n_pairs=args.pairs, seed=args.seed)
    sentences = list(dict.fromkeys([*pairs.sentences1, *pairs.sentences2]))
    index = {s: i for i, s in enumerate(sentences)}
    first = np.array([index[s] for s in pairs.sentences1])
    second = np.array([index[s] for s in pairs.sentences2])
    gold = np.asarray(pairs.scores, dtype=float)
    load_at_start = os.getloadavg()

    rows: dict[str, dict] = {}
    embedders = {}
    for name in names:
        gc.collect()
        before, start = rss_mib(), time.perf_counter()
        try:
            embedder = build(name, args.model)
            row = {"library": LIBRARY.get(name, "?"), "load_seconds": time.perf_counter() - start}
            row["rss_growth_mib"] = rss_mib() - before
            row["weights_mib"] = weights_mib(embedder.backend.model)
            row["dtype"] = embedder.describe().get("dtype")
            _, row["warmup_seconds"] = timed_encode(embedder, sentences[:32])
            _, seconds = timed_encode(embedder, sentences[32:64])
            row["probe_rate"] = 32 / seconds
        except Exception as err:  # a candidate this torch/library cannot run: record why
            rows[name] = {"library": LIBRARY.get(name, "?"), "error": f"{type(err).__name__}: {err}"[:500]}
            print(f"{name}: FAILED {rows[name]['error']}", flush=True)
            continue
        rows[name] = row
        if row["probe_rate"] < args.min_rate:
            row["rates"] = [row["probe_rate"]]
            row["timed_sentences"] = 32
            row["probed_only"] = True
            print(f"{name}: {row['probe_rate']:.2f} sent/s on 32 sentences; probed only", flush=True)
            del embedder
            continue
        embedders[name] = embedder
        print(f"{name}: loaded in {row['load_seconds']:.1f} s, warm-up {row['warmup_seconds']:.1f} s, "
              f"probe {row['probe_rate']:.1f} sent/s, weights {row['weights_mib']:.0f} MiB", flush=True)  # fmt: skip

    vectors = {}
    for round_ in range(args.rounds):
        for name, embedder in embedders.items():
            v, seconds = timed_encode(embedder, sentences)
            rows[name].setdefault("rates", []).append(len(sentences) / seconds)
            rows[name]["timed_sentences"] = len(sentences)
            vectors.setdefault(name, v)
            print(f"round {round_ + 1} {name}: {len(sentences) / seconds:.1f} sent/s", flush=True)

    ref_cos = None
    for name, v in vectors.items():
        row = rows[name]
        pair_cos = cosines(v[first], v[second])
        row["spearman"] = 100 * spearmanr(pair_cos, gold).statistic
        if not name.endswith("-compile"):  # batch 1 would recompile; the eager row has the same numerics
            alone = np.stack([embedders[name].encode(s) for s in sentences[:16]])
            row["batch1_cosine_min"] = float(cosines(alone, v[:16]).min())
        if reference in vectors:
            c = cosines(v, vectors[reference])
            row["cosine_to_fp32"] = {"mean": float(c.mean()), "min": float(c.min())}
            ref_cos = cosines(vectors[reference][first], vectors[reference][second])
            row["delta_spearman"] = row["spearman"] - 100 * spearmanr(ref_cos, gold).statistic
            if args.bootstrap and name != reference:
                row["delta_spearman_ci95"] = paired_bootstrap(
                    {"stsb": pair_cos},
                    {"stsb": ref_cos},
                    {"stsb": gold},
                    rounds=args.bootstrap,
                    seed=args.seed,
                )
    for row in rows.values():
        if "rates" in row:
            row["sentences_per_second"] = max(row["rates"])
    base_rate = rows.get(baseline, {}).get("sentences_per_second")
    for row in rows.values():
        if base_rate and "sentences_per_second" in row:
            row["ratio_to_default"] = row["sentences_per_second"] / base_rate

    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.executable, *sys.argv],
        "model": args.model,
        "template": "prompteol",
        "data": f"STS-B dev, {len(gold)} seeded pairs (seed {args.seed}), {len(sentences)} unique sentences",
        "threads": args.threads,
        "rounds": args.rounds,
        "cpu": cpu_model(),
        "default_dtype": default_dtype,
        "baseline": baseline,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "versions": {"promptlab": promptlab.__version__, "torch": torch.__version__, **_versions()},
        "rows": rows,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(record)
    out.with_suffix(".table.md").write_text(table)
    print(table)
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("transformers", "bitsandbytes", "torchao"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def markdown(record: dict) -> str:
    lines = [
        f"{record['model']}, PromptEOL, {record['data']}; {record['threads']} threads, {record['rounds']} "
        f"rounds; {record['cpu']}; dtype auto = {record['default_dtype']}; load average "
        f"{record['load_average_at_start'][0]:.2f} at start, {record['load_average_at_end'][0]:.2f} at end",
        "",
        f"| candidate | library | sent/s (best) | rounds | × default ({record['baseline']}) | weights MiB "
        "| RSS growth at load MiB | cos to fp32 mean / min | batch-1 cos min | STS-B dev Spearman "
        "| Δ vs fp32 | Δ 95% CI | warm-up s |",
        "|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for name, r in record["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['library']} | failed: {r['error'][:120]} |" + " |" * 10)
            continue
        rounds = " / ".join(f"{x:.1f}" for x in r["rates"])
        if r.get("probed_only", r["timed_sentences"] == 32):
            rounds += f" ({r['timed_sentences']} sentences only)"
        cos = r.get("cosine_to_fp32")
        cos = f"{cos['mean']:.4f} / {cos['min']:.4f}" if cos else "–"
        ci = r.get("delta_spearman_ci95")
        ci = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "–"
        batch1 = f"{r['batch1_cosine_min']:.5f}" if "batch1_cosine_min" in r else "–"
        lines.append(
            f"| {name} | {r['library']} | {r['sentences_per_second']:.1f} | {rounds} "
            f"| {r.get('ratio_to_default', float('nan')):.2f} | {r['weights_mib']:.0f} | {r['rss_growth_mib']:.0f} "
            f"| {cos} | {batch1} | {r['spearman']:.2f} | {r.get('delta_spearman', float('nan')):+.2f} "
            f"| {ci} | {r['warmup_seconds']:.1f} |"
            if "spearman" in r
            else f"| {name} | {r['library']} | {r['sentences_per_second']:.2f} | {rounds} "
            f"| {r.get('ratio_to_default', float('nan')):.2f} | {r['weights_mib']:.0f} | {r['rss_growth_mib']:.0f} "
            f"| – | – | – | – | – | {r['warmup_seconds']:.1f} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
