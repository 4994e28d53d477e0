"""Throughput and memory of promptlab's embedding paths against a naive loop and sentence-transformers.

One run, side by side, on a seeded sample of STS-suite sentence pairs (all seven tasks' test sets, pairs
kept in file order, duplicates kept: deduplication is part of what is measured):

  (a) naive   the PromptEOL reference code's way: file order, fixed batch, float32, left padding,
              the LM head called with all hidden states returned, the last position read
  (b) default promptlab's defaults (dtype "auto": bf16 on CPUs with AMX/AVX512-BF16, else fp32), and fp32
  (c) bf16  promptlab, bfloat16
  (d) int8 / nf4  bitsandbytes                         (e) vllm  --backend vllm (its own venv: --vllm-python)
  (f) demo    a prompt with an in-context demonstration, with and without the prefix KV cache (bfloat16)
  (g) st      sentence-transformers on the same pre-formatted prompts, last-token pooling (fp32 and bf16)

Throughput is reported per wall-clock second and per CPU-second of the row's process (the second is the
steadier number on a shared machine). Every row runs in its own child process, one after the other, so
each row's peak memory (the child's maximum resident set, from wait4) is its own; throughput excludes model
loading. FLOPs are estimated as 2 x non-embedding parameters x tokens processed (real tokens; a cached
prefix counts once), and compared with a bf16 (and fp32) matmul peak measured in the same run.

    python benchmarks/bench.py --pairs 500 --output experiments/bench/smollm2-135m.json \\
        --vllm-python /work/vllm-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = (
    "a", "b", "b-transformers", "b-fp32", "c", "c-compile", "d-int8", "d-nf4", "e", "e-bf16",
    "f-nocache", "f-cache", "f-best-nocache", "f-best-cache", "g", "g-bf16",
)  # fmt: skip
LABELS = {
    "a": "(a) naive loop (PromptEOL reference style), fp32",
    "b": "(b) promptlab default (dtype auto)",
    "b-transformers": "(b) promptlab default, transformers forward, 32-row batches (before the fast decoder)",
    "b-fp32": "(b) promptlab, float32",
    "c": "(c) promptlab bf16",
    "c-compile": "(c) promptlab bf16, --compile (torch.compile)",
    "d-int8": "(d) promptlab int8 (bitsandbytes)",
    "d-nf4": "(d) promptlab nf4 (bitsandbytes, bf16 compute)",
    "e": "(e) promptlab --backend vllm, fp32",
    "e-bf16": "(e) promptlab --backend vllm, bf16",
    "f-nocache": "(f) demonstration prompt, no prefix cache, bf16",
    "f-cache": "(f) demonstration prompt, prefix cache, bf16",
    "f-best-nocache": "(f) searched best prompt (eol-topic + stsb-train-0022), no prefix cache, bf16",
    "f-best-cache": "(f) searched best prompt (eol-topic + stsb-train-0022), prefix cache, bf16",
    "g": "(g) sentence-transformers, last-token, fp32",
    "g-bf16": "(g) sentence-transformers, last-token, bf16",
}
DEMONSTRATION = "eol-opt-125m"  # PromptEOL's demonstration for its smallest model
# The configuration experiments/README.md found best on STS-B dev (template, demonstration, layer 28).
BEST = {"template": "eol-topic", "demonstration": "stsb-train-0022", "layer": 28}


# -- data -----------------------------------------------------------------------------------------------
def sample_sentences(data_dir: str | None, pairs: int, seed: int) -> list[str]:
    """Both sentences of ``pairs`` seeded-random STS test pairs (all 7 tasks), in file order."""
    from promptlab.evaluation import TASKS, load_task

    everything = []
    for task in TASKS:
        for part in load_task(task, split="test", data_dir=data_dir):
            everything += list(zip(part.sentences1, part.sentences2, strict=True))
    chosen = sorted(random.Random(seed).sample(range(len(everything)), pairs))
    return [s for i in chosen for s in everything[i]]


def cpu_name() -> str:
    """The CPU's model name, core count and the matmul instruction sets torch can use (for the record)."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    isa = [flag for flag in ("avx512f", "avx512_bf16", "amx_bf16") if f" {flag}" in text]
    return (
        f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} CPUs, {' '.join(isa) or 'no AVX512/AMX'}"
    )


def measured_on() -> dict[str, str | None]:
    """Where and when a record was measured: the CPU, the time, and the commit of promptlab's source."""
    from promptlab.version import source_commit

    return {
        "cpu": cpu_name(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": source_commit(),  # "+changes" when the package differs from it
    }


def print_and_write(record: dict, table: str, output: str | None) -> None:
    """Print a record's markdown table; with ``output``, write the JSON record and the table beside it."""
    print(table)
    if output:
        path = Path(output)
        path.write_text(json.dumps(record, indent=2) + "\n")
        path.with_suffix(".md").write_text(table)


# -- peak ------------------------------------------------------------------------------------------------
# Square matmuls of two sizes and one skinny linear-layer shape (M x N x K). A single 1024-wide square
# understates this CPU's bf16 peak by half (0.95-1.15 TFLOP/s against 1.8-2.4 for the others), which
# earlier versions of this benchmark used: fractions measured against it were twice too high.
PEAK_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (2048, 3072, 576))


def matmul_peak(dtype_name: str, seconds: float = 3.0) -> float:
    """Best FLOP/s of a matmul in ``dtype`` over `PEAK_SHAPES`, ``seconds`` per shape."""
    import torch

    dtype = getattr(torch, dtype_name)
    best = 0.0
    for m, n, k in PEAK_SHAPES:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b  # warm-up
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            for _ in range(4):
                a @ b
            best = max(best, 4 * 2 * m * n * k / (time.perf_counter() - start))
    return best


def layer_matmul_rate(
    model_path: str, tokens: int, dtype_name: str = "bfloat16", seconds: float = 2.0
) -> float:
    """FLOP/s of one decoder layer's linear layers alone, on ``tokens`` rows, at this model's shapes.

    The ceiling of an eager forward that runs these matmuls unfused: everything else it does (norms,
    attention, activations) only adds time.
    """
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    c = c.get_text_config() if hasattr(c, "get_text_config") else c
    heads, hidden = c.num_attention_heads, c.hidden_size
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    inner = c.intermediate_size
    shapes = [(heads * head_dim, hidden), (kv * head_dim, hidden), (kv * head_dim, hidden),
              (hidden, heads * head_dim), (inner, hidden), (inner, hidden), (hidden, inner)]  # fmt: skip
    dtype = getattr(torch, dtype_name)
    weights = [torch.randn(n, k, dtype=dtype) * 0.02 for n, k in shapes]
    inputs = {k: torch.randn(tokens, k, dtype=dtype) for _, k in shapes}
    flops = sum(2 * tokens * n * k for n, k in shapes)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for w in weights:
            F.linear(inputs[w.shape[1]], w)
        best = max(best, flops / (time.perf_counter() - start))
    return best


# -- rows (each in a child process) -----------------------------------------------------------------------
def non_embedding_params(model) -> int:
    embeddings = sum(
        p.numel() for m in model.modules() if m.__class__.__name__ == "Embedding" for p in m.parameters()
    )
    return sum(p.numel() for p in model.parameters()) - embeddings


def row_naive(model_path: str, sentences: list[str], batch_size: int) -> dict:
    """(a): what the PromptEOL reference evaluation does, written out plainly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    template = 'This sentence : "*sent 0*" means in one word:"'
    start, cpu, tokens = time.perf_counter(), time.process_time(), 0
    for begin in range(0, len(sentences), batch_size):
        batch = [template.replace("*sent 0*", s).strip() for s in sentences[begin : begin + batch_size]]
        inputs = tokenizer(batch, return_tensors="pt", padding=True)
        tokens += int(inputs["attention_mask"].sum())
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states
        hidden[-1][:, -1, :].float().numpy()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens": tokens,
        "params": non_embedding_params(model.model),
    }


def row_promptlab(model: str, sentences: list[str], rows: int | None, **options) -> dict:
    """A promptlab row; ``rows`` None keeps promptlab's own batching (`promptlab.batching`)."""
    from promptlab.embedder import Embedder

    template = options.pop("template", "prompteol")
    fast_decoder = options.pop("fast_decoder", True)
    embedder = Embedder(model, template, **{"batch_size": rows, **options})
    if not fast_decoder:
        embedder.backend.use_fast_decoder = False
    warmup = time.perf_counter()
    embedder.encode(sentences[:32])  # warm-up (the engine start for vllm, the compile for --compile)
    warmup = time.perf_counter() - warmup
    embedder.backend.clear_caches()  # the timed run computes its prefix itself
    cached = embedder.backend.name == "transformers"  # the backend that keeps a prefix KV cache
    start, cpu = time.perf_counter(), time.process_time()
    embedder.encode(sentences)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    stats = embedder.last_stats
    prefix = stats["prefix_length"] if options.get("prefix_cache", True) and cached else 0
    processed = stats["tokens"] - prefix * stats["unique_sentences"] + prefix
    net = getattr(embedder.backend, "model", None)
    if net is not None:
        params = non_embedding_params(net)
    else:  # vllm: count from the checkpoint
        from transformers import AutoModel

        params = non_embedding_params(AutoModel.from_pretrained(embedder.backend.path))
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens": processed,
        "prompt_tokens": stats["tokens"],
        "prefix_length": prefix,
        "unique_sentences": stats["unique_sentences"],
        "params": params,
        "dtype": embedder.describe()["dtype"],
        "fast_decoder": bool(embedder.describe().get("fast_decoder")),
        "batch_size": embedder.batch_size,
        "batch_tokens": embedder.batch_tokens,
        "warmup_seconds": warmup,
    }


def row_st(model_path: str, sentences: list[str], batch_size: int, dtype: str) -> dict:
    """(g): sentence-transformers on promptlab's rendered prompts, last-token pooling."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer

    from promptlab.registry import get_template

    template = get_template("prompteol")
    prompts = [template.render(s, None).text for s in sentences]
    body = Transformer(model_path, model_kwargs={"dtype": getattr(torch, dtype)})
    tokenizer = getattr(body, "tokenizer", None) or body.processor
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = SentenceTransformer(
        modules=[body, Pooling(body.get_embedding_dimension(), "lasttoken")], device="cpu"
    )
    model.encode(prompts[:batch_size], batch_size=batch_size)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    model.encode(prompts, batch_size=batch_size, convert_to_numpy=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = sum(len(tokenizer(p)["input_ids"]) for p in prompts)
    params = non_embedding_params(body.auto_model)
    return {"seconds": seconds, "cpu_seconds": cpu, "tokens": tokens, "params": params}


def run_row(row: str, model: str, sentences: list[str], batch_size: int, promptlab_batch: int | None) -> dict:
    import torch

    from promptlab.models import resolve_model

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    path = resolve_model(model).path
    if row == "a":
        return row_naive(path, sentences, batch_size)
    if row in ("g", "g-bf16"):
        return row_st(path, sentences, batch_size, "bfloat16" if row == "g-bf16" else "float32")
    options = {
        "b": {},
        "b-transformers": {"fast_decoder": False, "batch_size": 32, "batch_tokens": None},
        "b-fp32": {"dtype": "float32"},
        "c": {"dtype": "bfloat16"},
        "c-compile": {"dtype": "bfloat16", "compile": True},
        "d-int8": {"quantization": "int8"},
        "d-nf4": {"quantization": "nf4", "dtype": "bfloat16"},
        "e": {"backend": "vllm"},
        "e-bf16": {"backend": "vllm", "dtype": "bfloat16"},
        "f-nocache": {"dtype": "bfloat16", "demonstration": DEMONSTRATION, "prefix_cache": False},
        "f-cache": {"dtype": "bfloat16", "demonstration": DEMONSTRATION},
        "f-best-nocache": {"dtype": "bfloat16", "prefix_cache": False, **BEST},
        "f-best-cache": {"dtype": "bfloat16", **BEST},
    }[row]
    return row_promptlab(model, sentences, promptlab_batch, **options)


def child_main(args) -> int:
    sentences = json.loads(Path(args.sentences).read_text())
    if args.limit:
        sentences = sentences[: args.limit]
    result = run_row(args.child, args.model, sentences, args.batch_size, args.promptlab_batch_size)
    result["sentences"] = len(sentences)
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    return 0


# -- driver ----------------------------------------------------------------------------------------------
def spawn(python: str, argv: list[str], timeout: float) -> tuple[dict | None, float, str]:
    """Run a child; return (its result, its peak RSS in MiB, the tail of its output)."""
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([python, *argv], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.5)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    result = None
    for line in output.splitlines():
        if line.startswith("BENCH-RESULT "):
            result = json.loads(line[len("BENCH-RESULT ") :])
    return result, usage.ru_maxrss / 1024, output[-2000:]


def baseline_rss(python: str) -> float:
    code = "import torch, transformers, numpy; from transformers import AutoModel"
    _, rss, _ = spawn(python, ["-c", code], 300)
    return rss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=500, help="STS test pairs sampled (2 sentences each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--batch-size", type=int, default=32, help="batch of the naive and sentence-transformers rows"
    )
    p.add_argument(
        "--promptlab-batch-size",
        type=int,
        default=None,
        help="promptlab rows (default: promptlab's own batching)",
    )
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--quantized-limit", type=int, default=128, help="sentences for the bitsandbytes rows")
    p.add_argument(
        "--vllm-python", default=None, help="python of a venv with vllm (row e is skipped without)"
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per row")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all rows; each row keeps its best")
    p.add_argument("--output", required=True, help="JSON results; a Markdown table goes beside it")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--sentences", default=None, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)

    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load = os.getloadavg()
    print(
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)",
        flush=True,
    )
    sentences = sample_sentences(args.data_dir, args.pairs, args.seed)
    print(
        f"{len(sentences)} sentences ({len(set(sentences))} unique) from {args.pairs} STS test pairs",
        flush=True,
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(sentences, f)
        sentence_file = f.name
    # One inductor cache for the run: the first --compile row compiles cold (what a user's first run pays),
    # later rounds reuse it.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")
    baseline = {"main": baseline_rss(sys.executable)}
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    measured: dict[str, list[dict]] = {name: [] for name in names}
    failed: dict[str, dict] = {}
    peaks = {"bfloat16": 0.0, "float32": 0.0}
    from promptlab.batching import CPU_BATCH_TOKENS
    from promptlab.models import resolve_model

    ceiling_tokens = (512, CPU_BATCH_TOKENS)
    ceilings = dict.fromkeys(ceiling_tokens, 0.0)
    # Rounds over all rows, interleaved: this shared machine's speed drifts by tens of percent within
    # minutes, so each row keeps its best round (the least disturbed one) and every round's rate is kept.
    for round_index in range(args.repeat):
        for d in peaks:
            peaks[d] = max(peaks[d], matmul_peak(d))
        for tokens in ceiling_tokens:
            ceilings[tokens] = max(
                ceilings[tokens], layer_matmul_rate(resolve_model(args.model).path, tokens)
            )
        print(
            f"round {round_index + 1}/{args.repeat}: matmul peak so far bf16 {peaks['bfloat16'] / 1e9:.1f} "
            f"GFLOP/s, fp32 {peaks['float32'] / 1e9:.1f}",
            flush=True,
        )
        for row in names:
            python = sys.executable
            if row.startswith("e"):
                if not args.vllm_python:
                    print(f"{row}: skipped (no --vllm-python)", flush=True)
                    continue
                python = args.vllm_python
                baseline.setdefault("vllm", baseline_rss(python))
            limit = args.quantized_limit if row.startswith("d") else 0
            child = [__file__, "--child", row, "--model", args.model, "--sentences", sentence_file,
                     "--batch-size", str(args.batch_size), "--limit", str(limit), "--output", "-"]  # fmt: skip
            if args.promptlab_batch_size:
                child += ["--promptlab-batch-size", str(args.promptlab_batch_size)]
            load_now = os.getloadavg()[0]
            result, rss, tail = spawn(python, child, args.timeout)
            if result is None:
                print(f"{row}: FAILED\n{tail}", flush=True)
                failed[row] = {"error": tail[-600:]}
                continue
            result.update(
                sentences_per_second=result["sentences"] / result["seconds"],
                sentences_per_cpu_second=result["sentences"] / result["cpu_seconds"],
                peak_rss_mib=rss,
                load_at_start=load_now,
                flops=2 * result["params"] * result["tokens"],
            )
            measured[row].append(result)
            print(
                f"{row}: {result['sentences_per_second']:.1f} sentences/s, {rss:.0f} MiB peak RSS", flush=True
            )
    rows = {}
    for row in names:
        if not measured[row]:
            if row in failed:
                rows[row] = failed[row]
            continue
        best = dict(max(measured[row], key=lambda r: r["sentences_per_second"]))
        best["rounds_sentences_per_second"] = [r["sentences_per_second"] for r in measured[row]]
        best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in measured[row])
        if "warmup_seconds" in best:
            best["warmup_seconds_first_round"] = measured[row][0]["warmup_seconds"]
        dtype = best.get("dtype") or ("float32" if row in ("a", "d-int8", "e", "g") else "bfloat16")
        best["peak_dtype"] = dtype
        best["fraction_of_bf16_peak"] = best["flops"] / best["seconds"] / peaks["bfloat16"]
        best["fraction_of_own_dtype_peak"] = best["flops"] / best["seconds"] / peaks[dtype]
        rows[row] = best
    naive = rows.get("a", {})
    for result in rows.values():
        if naive.get("sentences_per_second") and "sentences_per_second" in result:
            result["ratio_to_a"] = result["sentences_per_second"] / naive["sentences_per_second"]
            result["cpu_ratio_to_a"] = result["sentences_per_cpu_second"] / naive["sentences_per_cpu_second"]
    record = {
        "created": started,
        "command": [sys.executable, *sys.argv],
        "model": args.model,
        "pairs": args.pairs,
        "seed": args.seed,
        "sentences": len(sentences),
        "unique_sentences": len(set(sentences)),
        "batch_size": args.batch_size,
        "quantized_limit": args.quantized_limit,
        "threads": torch.get_num_threads(),
        "rounds": args.repeat,
        "load_average_at_start": load,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "matmul_peak_flops": peaks,
        "layer_matmul_flops": {str(t): f for t, f in ceilings.items()},
        "baseline_rss_mib": baseline,
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


def markdown(record: dict) -> str:
    lines = [
        f"{record['model']}, {record['sentences']} sentences ({record['unique_sentences']} unique) from "
        f"{record['pairs']} STS test pairs, seed {record['seed']}, batch {record['batch_size']} (naive, "
        "sentence-transformers; promptlab rows: their own batching), "
        f"{record['threads']} threads, best of {record.get('rounds', 1)} interleaved round(s) per row; "
        f"load average at start {record['load_average_at_start'][0]:.2f}; "
        f"matmul peak bf16 {record['matmul_peak_flops']['bfloat16'] / 1e9:.1f} GFLOP/s, fp32 "
        f"{record['matmul_peak_flops']['float32'] / 1e9:.1f} GFLOP/s; bitsandbytes rows on the first "
        f"{record['quantized_limit']} sentences; baseline RSS (python+torch) {record['baseline_rss_mib']}",
        "",
        "The model's own linear layers alone (one decoder layer's seven matmuls, bf16, the ceiling of an "
        "unfused eager forward): "
        + ", ".join(
            f"{f / 1e9:.0f} GFLOP/s = {100 * f / record['matmul_peak_flops']['bfloat16']:.0f}% of peak at {t} tokens"
            for t, f in record.get("layer_matmul_flops", {}).items()
        ),
        "",
        "| row | sentences/s | x (a) | sent/CPU-s | x (a), CPU | peak RSS MiB | GFLOP/s | % bf16 peak "
        "| % own-dtype peak | load | every round, sent/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row, r in record["rows"].items():
        if "error" in r:
            lines.append(f"| {LABELS[row]} | failed | | | | | | | | | |")
            continue
        lines.append(
            f"| {LABELS[row]} | {r['sentences_per_second']:.1f} | {r.get('ratio_to_a', float('nan')):.2f} | "
            f"{r['sentences_per_cpu_second']:.2f} | {r.get('cpu_ratio_to_a', float('nan')):.2f} | "
            f"{r['peak_rss_mib']:.0f} | {r['flops'] / r['seconds'] / 1e9:.1f} | "
            f"{100 * r['fraction_of_bf16_peak']:.0f} | {100 * r['fraction_of_own_dtype_peak']:.0f} | "
            f"{r['load_at_start']:.1f} | "
            + " / ".join(f"{x:.1f}" for x in r.get("rounds_sentences_per_second", []))
            + " |"
        )
    lines += ["", *targets(record["rows"])]
    return "\n".join(lines) + "\n"


def targets(rows: dict) -> list[str]:
    """The issue's speed targets, read off this run's rows (only those measured)."""

    def rate(name):
        return rows.get(name, {}).get("sentences_per_second")

    out = ["Targets (this run):", ""]
    if rate("a") and rate("b"):
        out.append(f"- default vs naive loop: {rate('b') / rate('a'):.2f}x (target >= 4x)")
    default_dtype = rows.get("b", {}).get("dtype")
    pairs = [("b-fp32", "g", "float32"), ("c", "g-bf16", "bfloat16")]
    if default_dtype:  # the default against the peer in the same dtype
        pairs.insert(0, ("b", "g-bf16" if default_dtype == "bfloat16" else "g", default_dtype))
    for ours, peer, dtype in pairs:
        if rate(ours) and rate(peer):
            out.append(
                f"- {LABELS[ours][4:]} vs sentence-transformers, {dtype}: {rate(ours):.1f} vs {rate(peer):.1f} "
                f"sentences/s, {rate(ours) / rate(peer):.2f}x (target >= 1x)"
            )
    for off, on in (("f-nocache", "f-cache"), ("f-best-nocache", "f-best-cache")):
        if rate(off) and rate(on):
            token_ratio = rows[off]["tokens"] / rows[on]["tokens"]
            out.append(
                f"- prefix cache, {LABELS[on].split(', prefix')[0][4:]}: {rate(on) / rate(off):.2f}x faster "
                f"than without (target >= 2x); it runs {token_ratio:.2f}x fewer tokens"
            )
    if rate("c") and rate("c-compile"):
        out.append(
            f"- --compile: {rate('c-compile') / rate('c'):.2f}x the eager bf16 rate, after a "
            f"{rows['c-compile'].get('warmup_seconds_first_round', rows['c-compile'].get('warmup_seconds', 0)):.0f} s cold compile (warm-up, not in the rate)"
        )
    for name in ("b", "b-transformers", "c", "c-compile", "e-bf16", "f-cache", "f-best-cache"):
        if name in rows and "fraction_of_bf16_peak" in rows[name]:
            out.append(
                f"- {LABELS[name]}: {100 * rows[name]['fraction_of_bf16_peak']:.0f}% of the measured bf16 "
                "matmul peak (target >= 50%)"
            )
    return out


if __name__ == "__main__":
    sys.exit(main())
