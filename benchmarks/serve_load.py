"""A bounded load test of ``promptlab serve``: concurrent clients on loopback, against in-process `encode`.

For each concurrency level (default 1, 4 and 16 clients), every client sends requests of 1-32 STS-B test
sentences (seeded) to ``POST /v1/embeddings`` over one keep-alive connection, until the level has sent
``--requests`` requests or run ``--seconds`` seconds, whichever comes first. Reported per level:
sentences/s (all clients together), p50/p99 request latency, failed requests, and the ratio to the
in-process rate: `Embedder.encode` on the same sentences in one call, timed in this process first.

The server runs in this process on a background thread (`promptlab.serve.serving`), on 127.0.0.1 with a
free port; ``--url`` points the clients at a server started elsewhere instead (``promptlab serve``), which
keeps the client threads from sharing the server's interpreter. Nothing leaves the machine.

    python benchmarks/serve_load.py --model smollm2-135m --requests 200 --seconds 30
    python benchmarks/serve_load.py --embedder my-embedder --clients 1,4 --requests 20 --seconds 5  # smoke
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path


def sts_sentences(data_dir: str | None, count: int, seed: int) -> list[str]:
    """``count`` distinct STS-B test sentences, seeded."""
    from promptlab.evaluation import load_task

    pool = []
    for part in load_task("STSBenchmark", split="test", data_dir=data_dir):
        pool += part.sentences1 + part.sentences2
    pool = sorted(set(pool))
    return random.Random(seed).sample(pool, min(count, len(pool)))


def run_level(url: str, key: str | None, clients: int, sentences: list[str], args) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    lock = threading.Lock()
    sent = {"requests": 0}
    latencies: list[float] = []
    failures: list[str] = []
    embedded = [0]
    stop_at = time.perf_counter() + args.seconds

    def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
            while time.perf_counter() < stop_at:
                with lock:
                    if sent["requests"] >= args.requests:
                        return
                    sent["requests"] += 1
                batch = rng.sample(sentences, rng.randint(args.min_inputs, args.max_inputs))
                start = time.perf_counter()
                try:
                    response = http.post("/v1/embeddings", json={"input": batch, "encoding_format": "base64"})
                    ok = response.status_code == 200 and len(response.json()["data"]) == len(batch)
                    reason = f"HTTP {response.status_code}"
                except httpx.HTTPError as err:
                    ok, reason = False, type(err).__name__
                seconds = time.perf_counter() - start
                with lock:
                    if ok:
                        latencies.append(seconds)
                        embedded[0] += len(batch)
                    else:
                        failures.append(reason)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

    return {
        "clients": clients,
        "requests": len(latencies) + len(failures),
        "failed": len(failures),
        "failures": sorted(set(failures)),
        "sentences": embedded[0],
        "seconds": wall,
        "sentences_per_second": embedded[0] / wall if wall > 0 else 0.0,
        "latency_p50_s": pct(0.50),
        "latency_p99_s": pct(0.99),
        "latency_mean_s": statistics.fmean(latencies) if latencies else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--template", default="prompteol")
    p.add_argument("--embedder", default=None, help="a saved embedder folder (instead of --model/--template)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--url", default=None, help="an already running server (default: start one in-process)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=200, help="most requests per level")
    p.add_argument("--seconds", type=float, default=30.0, help="most seconds per level")
    p.add_argument("--min-inputs", type=int, default=1)
    p.add_argument("--max-inputs", type=int, default=32)
    p.add_argument("--sentences", type=int, default=512, help="distinct STS-B test sentences to draw from")
    p.add_argument("--batch-window-ms", type=float, default=5.0)
    p.add_argument("--data-dir", default=None, help="SentEval folder (default: $PROMPTLAB_DATA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if not 1 <= args.min_inputs <= args.max_inputs:
        p.error("need 1 <= --min-inputs <= --max-inputs")
    levels = [int(c) for c in args.clients.split(",")]

    from promptlab.embedder import Embedder
    from promptlab.serve import serving

    if args.embedder:
        embedder = (
            Embedder.load(args.embedder, dtype=args.dtype)
            if args.dtype != "auto"
            else Embedder.load(args.embedder)
        )
    else:
        embedder = Embedder(args.model, args.template, dtype=args.dtype)
    sentences = sts_sentences(args.data_dir, args.sentences, args.seed)
    embedder.encode(sentences[:8], show_progress_bar=False)  # warm-up
    start = time.perf_counter()
    embedder.encode(sentences, show_progress_bar=False)
    in_process = len(sentences) / (time.perf_counter() - start)
    print(
        f"in-process Embedder.encode: {in_process:.1f} sentences/s on {len(sentences)} sentences",
        file=sys.stderr,
    )

    results = []

    def measure(url: str, key: str | None) -> None:
        import httpx

        httpx.post(url + "/v1/embeddings", json={"input": sentences[:4]},
                   headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=120)  # fmt: skip
        for clients in levels:
            row = run_level(url, key, clients, sentences, args)
            row["vs_in_process"] = row["sentences_per_second"] / in_process
            results.append(row)
            p50 = row["latency_p50_s"] or float("nan")
            p99 = row["latency_p99_s"] or float("nan")
            print(
                f"{clients:>3} clients: {row['sentences_per_second']:8.1f} sent/s "
                f"({row['vs_in_process']:.2f}x in-process), p50 {p50 * 1000:7.1f} ms, p99 {p99 * 1000:7.1f} ms, "
                f"{row['requests']} requests, {row['failed']} failed",
                file=sys.stderr,
            )

    if args.url:
        measure(args.url.rstrip("/"), args.api_key)
    else:
        with serving(embedder, window=args.batch_window_ms / 1000, api_key=args.api_key) as url:
            measure(url, args.api_key)
    if args.output:
        record = {
            "kind": "serve_load",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": sys.argv,
            "config": {**embedder.describe(), **{k: v for k, v in vars(args).items() if k != "api_key"}},
            "in_process_sentences_per_second": in_process,
            "levels": results,
        }
        Path(args.output).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 1 if any(r["failed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
