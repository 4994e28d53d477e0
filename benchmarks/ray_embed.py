"""Sharded corpus embedding: Ray actors against one local process, in one run, on the same corpus.

Writes a corpus of distinct STS sentences (seeded) to a temporary folder, then embeds it twice into shard
folders, exactly as ``promptlab embed --input CORPUS --output DIR/`` does:

1. locally: one process, one `Embedder` with torch's default threads (every core), shards in turn;
2. on Ray: a local Ray started with ``--cpus`` CPUs and ``--actors`` `EmbedShard` actors of one CPU each
   (Ray gives each actor one torch thread), each actor writing the shards it embeds.

Reported for each: the end-to-end seconds (model loads included: each Ray actor loads its own model) and
sentences/s over the embedding alone (the local run's model load is timed apart; Ray's actors load theirs
while the first shards are dispatched, so its rate includes those loads), the steady rate between the first
and the last shard written (start-up and loads left out), the Ray/local ratios, and the smallest cosine
between the two runs' vectors. Nothing leaves the machine.

    python benchmarks/ray_embed.py --model smollm2-135m --sentences 2000 --shard-size 100
    python benchmarks/ray_embed.py --sentences 200 --shard-size 50   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from promptlab.version import source_commit


def sts_sentences(data_dir: str | None, count: int, seed: int) -> list[str]:
    """``count`` distinct sentences from the STS-B splits and SICK test, seeded."""
    from promptlab.evaluation import load_task

    pool: set[str] = set()
    for task, split in (("STSBenchmark", "test"), ("STSBenchmark", "dev"), ("SICKRelatedness", "test")):
        for part in load_task(task, split=split, data_dir=data_dir):
            pool.update(part.sentences1 + part.sentences2)
    ordered = sorted(s for s in pool if "\n" not in s and s.strip())
    if count > len(ordered):
        raise SystemExit(f"--sentences {count}: only {len(ordered)} distinct sentences are at hand.")
    return random.Random(seed).sample(ordered, count)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--template", default="prompteol")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs the local Ray is started with")
    p.add_argument("--data-dir", default=None, help="SentEval folder (default: $PROMPTLAB_DATA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    import ray

    from promptlab.distributed.ray import embed_shards_ray
    from promptlab.distributed.shards import ShardFolder, corpus_files, embed_shards, load_shards
    from promptlab.embedder import Embedder

    options = {"model": args.model, "template": args.template, "dtype": args.dtype}
    sentences = sts_sentences(args.data_dir, args.sentences, args.seed)
    with tempfile.TemporaryDirectory(prefix="promptlab-ray-bench-") as tmp:
        corpus = Path(tmp, "corpus")
        corpus.mkdir()
        (corpus / "sentences.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
        inputs = corpus_files(str(corpus))
        config = {"embedder": options, "shard_size": args.shard_size, "field": "text", "normalize": False}

        start = time.perf_counter()
        embedder = Embedder(**options)
        load_seconds = time.perf_counter() - start
        local_times: list[float] = []
        local = embed_shards(
            lambda batch: embedder.encode(batch, show_progress_bar=False),
            ShardFolder(Path(tmp, "local"), config, inputs),
            shard_size=args.shard_size,
            on_shard=lambda shard: local_times.append(time.perf_counter()),
        )
        local_total = time.perf_counter() - start
        threads = __import__("torch").get_num_threads()
        embedder = None  # the local model is freed before the actors load theirs

        ray_times: list[float] = []
        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            init_seconds = time.perf_counter() - start
            remote = embed_shards_ray(
                options,
                ShardFolder(Path(tmp, "ray"), config, inputs),
                shard_size=args.shard_size,
                actors=args.actors,
                cpus_per_actor=1.0,
                on_shard=lambda shard: ray_times.append(time.perf_counter()),
            )
        finally:
            ray.shutdown()
        ray_total = time.perf_counter() - start

        _, lines_a, vectors_a = load_shards(Path(tmp, "local"))
        _, lines_b, vectors_b = load_shards(Path(tmp, "ray"))
        assert np.array_equal(lines_a, lines_b), "the two runs wrote different lines"
        a = vectors_a.astype(np.float64)
        b = vectors_b.astype(np.float64)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    def steady(times: list[float]) -> float | None:
        """Sentences/s between the first and the last shard written: model loads and start-up left out."""
        return args.shard_size * (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else None

    row = {
        "kind": "ray_embed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "commit": source_commit(),  # "+changes" when the package differs from it
        "cpu": next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            None,
        ),  # fmt: skip
        "load_average_after": os.getloadavg(),  # 1/5/15-min: the machine was quiet if about 2 (these jobs)
        "config": {**options, **{k: v for k, v in vars(args).items() if k not in options}},
        "local": {
            "threads": threads,
            "model_load_seconds": load_seconds,
            "embed_seconds": local.seconds,
            "total_seconds": local_total,
            "sentences_per_second": local.sentences_per_second,
            "steady_sentences_per_second": steady(local_times),
        },
        "ray": {
            "actors": args.actors,
            "ray_init_seconds": init_seconds,
            "embed_seconds": remote.seconds,  # actors' model loads included
            "total_seconds": ray_total,
            "sentences_per_second": remote.sentences_per_second,
            "steady_sentences_per_second": steady(ray_times),
        },
        "ray_vs_local_embed_rate": remote.sentences_per_second / local.sentences_per_second,
        "ray_vs_local_end_to_end": local_total / ray_total,
        "ray_vs_local_steady": (steady(ray_times) or 0) / (steady(local_times) or float("inf")),
        "min_cosine_ray_vs_local": float(cosine.min()),
    }
    print(
        f"local ({threads} threads): {local.sentences_per_second:.1f} sent/s embedding "
        f"(+{load_seconds:.1f} s model load), {local_total:.1f} s end to end\n"
        f"ray ({args.actors} actors x 1 CPU): {remote.sentences_per_second:.1f} sent/s embedding incl. actor "
        f"loads, {ray_total:.1f} s end to end (ray.init {init_seconds:.1f} s)\n"
        f"ray / local: {row['ray_vs_local_embed_rate']:.2f}x embedding rate, "
        f"{row['ray_vs_local_end_to_end']:.2f}x end to end, {row['ray_vs_local_steady']:.2f}x steady "
        f"(first to last shard); min cosine {row['min_cosine_ray_vs_local']:.6f}",
        file=sys.stderr,
    )
    if args.output:
        Path(args.output).write_text(json.dumps(row, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
