"""Peak memory and step time of a CSE fine-tuning config with and without gradient checkpointing, in one run.

Each run is its own child process (peak RSS from wait4, model loading included), `promptlab finetune CONFIG`
for ``--steps`` steps with a 2-pair dev score at the end only, so the steps dominate; the rounds alternate
the two settings, so a change in the machine's load hits both. A load-only run (1 step of batch 2) splits
the peak into what loading takes and what the batch's activations add. Prints, and writes as JSON, each
run's peak RSS and seconds a step, and the ratios of the medians (checkpointing / plain).

    python benchmarks/finetune_memory.py experiments/finetune/smollm2-sup-lora.toml --set dtype=float32 \
        --set num_threads=2 --steps 3 --rounds 2 --output experiments/bench/finetune-memory-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import spawn  # noqa: E402


def toml_value(value: object) -> str:
    """A config value as `--set` reads it (TOML): true/false, numbers and quoted strings."""
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


def finetune_run(config: str, overrides: dict[str, object], timeout: float) -> dict:
    """One `promptlab finetune` child: its peak RSS (MiB) and training seconds a step, from its log."""
    with tempfile.TemporaryDirectory() as folder:
        sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={toml_value(value)}")]
        argv = ["-m", "promptlab.cli", "finetune", config, "--output-dir", folder, "--overwrite", *sets]
        _, rss, tail = spawn(sys.executable, argv, timeout)
        log = Path(folder) / "log.jsonl"
        ends = (
            [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "end"]
            if log.exists()
            else []
        )
        if not ends:
            raise SystemExit(f"the finetune run did not finish ({overrides}); its output ends:\n{tail}")
        end = ends[-1]
    return {"peak_rss_mib": round(rss, 1), "seconds_per_step": round(end["train_seconds"] / end["steps"], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a finetune .toml (its model, batch size, layers and quantization)")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps a run")
    p.add_argument("--rounds", type=int, default=1, help="runs of each setting, alternated")
    p.add_argument("--timeout", type=float, default=3600, help="seconds a run may take")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run"
    )
    p.add_argument("--output", required=True, help="JSON record")
    args = p.parse_args(argv)

    from promptlab.finetune.config import parse_override

    common = {**dict(map(parse_override, args.set)), "steps": args.steps, "eval_every": 0, "dev_pairs": 2}
    load_only = finetune_run(args.config, {**common, "steps": 1, "batch_size": 2}, args.timeout)
    print(f"load + 1 step of batch 2: peak {load_only['peak_rss_mib']:.0f} MiB", flush=True)
    runs: dict[str, list[dict]] = {"plain": [], "gradient checkpointing": []}
    for _ in range(args.rounds):
        for name in runs:
            overrides = {**common, "gradient_checkpointing": name != "plain"}
            runs[name].append(finetune_run(args.config, overrides, args.timeout))
            run = runs[name][-1]
            print(
                f"{name}: peak {run['peak_rss_mib']:.0f} MiB, {run['seconds_per_step']:.1f} s a step",
                flush=True,
            )

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    ratios = {
        key: round(median("gradient checkpointing", key) / median("plain", key), 3)
        for key in ("peak_rss_mib", "seconds_per_step")
    }
    activations = {name: round(median(name, "peak_rss_mib") - load_only["peak_rss_mib"], 1) for name in runs}
    print(
        f"gradient checkpointing / plain: peak RSS x{ratios['peak_rss_mib']:.2f}, "
        f"step time x{ratios['seconds_per_step']:.2f}; above the load-only peak: "
        f"{activations['plain']:.0f} MiB plain, {activations['gradient checkpointing']:.0f} MiB checkpointed"
    )
    record = {
        "config": args.config,
        "steps": args.steps,
        "rounds": args.rounds,
        "overrides": args.set,
        "load_only": load_only,
        "runs": runs,
        "above_load_only_mib": activations,
        "ratio_checkpointing_over_plain": ratios,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
