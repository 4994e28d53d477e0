"""``promptlab sweep``, ``promptlab search-demos`` and ``promptlab report``: parsing and printing only."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from promptlab.cli_options import add_batch_args, add_dtype_arg, given, mark_defaults, max_length_arg
from promptlab.errors import PromptlabError


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_ray_args(p, what: str) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help=f"run the {what} on Ray workers, each loading the model once: a local Ray, or a cluster's "
        "host:port / ray://host:port / auto (extra [ray]); this process writes --output",
    )
    p.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="Ray workers (default: as many as the cluster fits, one per GPU where it has GPUs, else per CPU)",
    )


def ray_workers(args: argparse.Namespace):
    """The `RayWorkers` that --ray asks for (its address checked now, before any work), or None."""
    if not args.ray:
        return None
    from promptlab.distributed.ray import _import_ray, check_address
    from promptlab.distributed.sweep import RayWorkers

    workers = RayWorkers(args.ray, args.ray_workers)
    _import_ray()  # a missing extra is named before any work
    check_address(args.ray)
    return workers


# -- sweep ----------------------------------------------------------------------------------------------
def make_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="models x templates x layers x demonstrations x dtypes on STS-B dev")
    p.add_argument("config", help="sweep config (.toml), e.g. experiments/sweep-smollm2-templates.toml")
    p.add_argument("--output", required=True, help="results JSONL; an existing one is resumed")
    p.add_argument("--data-dir", default=None, help="SentEval layout folder (default: $PROMPTLAB_DATA)")
    p.add_argument("--check", action="store_true", help="validate the config and print the plan, run nothing")
    p.add_argument(
        "--select-on",
        default=None,
        metavar="TASK",
        help="score on the dev split of this task instead (any task: STSBenchmark, TRECQA-rerank, "
        "SICK-pairclass, STSB-retrieval...); the row's score is its main metric x 100",
    )
    add_ray_args(p, "forward passes")
    p.set_defaults(handler=sweep_command)


def sweep_command(args: argparse.Namespace) -> int:
    from promptlab.experiments.sweep import SweepConfig, plan, run_sweep

    config = SweepConfig.from_toml(args.config, data_dir=args.data_dir)
    if args.select_on:
        benchmark = replace(config.benchmark, tasks=(args.select_on,), split="dev")
        config = replace(config, benchmark=benchmark)
    if args.check:
        for job in plan(config):
            print(f"{job.model} {job.dtype} {job.template_name} demo={job.demo_id} layers={list(job.layers)}")
        return 0
    started = time.perf_counter()
    rows = run_sweep(config, args.output, log=_log, workers=ray_workers(args))
    best = max((r for r in rows if r.get("score") is not None), key=lambda r: r["score"], default=None)
    if best:
        k = best["key"]
        print(
            f"best: {k['model']} {k['template']} demo={k['demonstration']} layer {k['layer']} {k['dtype']}: "
            f"{best['score']:.2f}"
        )
    _log(f"{len(rows)} rows in {args.output}; {time.perf_counter() - started:.0f} s")
    return 0


# -- search-demos ---------------------------------------------------------------------------------------
def make_search_parser(sub) -> None:
    p = sub.add_parser("search-demos", help="score every demonstration of a pool on STS-B dev")
    p.add_argument("--model", default="smollm2-135m", help="packaged name, local dir, .gguf file or hub id")
    p.add_argument(
        "--pool", default="all", help="all | a shipped file name (definitions, ...) | a .jsonl path"
    )
    p.add_argument("--template", default="prompteol", help="a next_token (or mask) template")
    p.add_argument(
        "--layer", type=int, default=-1, help="hidden-state layer to read; -1 is the last, 0 the embeddings"
    )
    add_dtype_arg(p)
    p.add_argument(
        "--dev-pairs", type=int, default=None, help="a seeded subset of STS-B dev (default: all 1500)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --dev-pairs subset")
    p.add_argument(
        "--screen",
        default=None,
        metavar="PAIRS:KEEP",
        help="two rounds: every candidate on PAIRS STS-B dev pairs (into OUTPUT's .screen.jsonl), then the KEEP "
        "best on --dev-pairs; e.g. 50:16 scores 143 candidates with about a third of a full search's sentences",
    )
    p.add_argument("--top", type=int, default=10, help="print the k best")
    p.add_argument("--output", required=True, help="results JSONL; an existing one is resumed")
    add_batch_args(p)
    p.add_argument(
        "--max-length",
        type=max_length_arg,
        default=None,
        help="token budget per prompt, cut inside the sentence slot (default: the model's own limit)",
    )
    p.add_argument("--data-dir", default=None, help="SentEval layout folder (default: $PROMPTLAB_DATA)")
    p.add_argument(
        "--select-on",
        default=None,
        metavar="TASK",
        help="select on the dev split of this task instead of STS-B dev (any task: STSBenchmark, TRECQA-rerank, "
        "SICK-pairclass, STSB-retrieval...); the row's score is its main metric x 100",
    )
    p.add_argument(
        "--embedder",
        default=None,
        help="search for a saved embedder folder (`promptlab export`) or a finetune adapter folder: its model, "
        "adapter, template and layer (--template/--layer/--dtype given with it override what it saved)",
    )
    add_ray_args(p, "candidates")
    mark_defaults(p, ("model", "template", "layer", "dtype"))
    p.set_defaults(handler=search_command)


def _saved_embedder_for_search(args: argparse.Namespace):
    """(embedder, template) of ``--embedder`` for a search: loaded once, searched without a demonstration."""
    from promptlab.embedder import Embedder

    if given(args.model):
        raise PromptlabError("--embedder brings its own model; drop --model (or drop --embedder).")
    if args.ray is not None:
        raise PromptlabError(
            "--embedder runs the search in this process; drop --ray, or give --model/--template for Ray workers."
        )
    overrides = {
        name: getattr(args, name) for name in ("template", "layer", "dtype") if given(getattr(args, name))
    }
    options = {"batch_size": args.batch_size, "batch_tokens": args.batch_tokens}
    embedder = Embedder.load(args.embedder, **overrides, **options)
    if embedder.demonstration is not None:
        raise PromptlabError(
            f"the embedder in {args.embedder} already holds demonstration {embedder.demonstration.id!r}; a search "
            "picks one, so name the template to search on with --template."
        )
    return embedder, embedder.template


def search_command(args: argparse.Namespace) -> int:
    from promptlab.demonstrations import load_pool
    from promptlab.experiments.scoring import Benchmark
    from promptlab.experiments.search import Screen, format_top, run_search

    screen = Screen.parse(args.screen) if args.screen else None  # before any work
    pool, excluded = load_pool(args.pool)
    if excluded:
        _log(
            f"left out {len(excluded)} demonstration(s) whose sentence occurs in STS dev/test data: "
            + ", ".join(d.id for d in excluded)
        )
    tasks = (args.select_on,) if args.select_on else ("STSBenchmark",)
    benchmark = Benchmark(tasks=tasks, dev_pairs=args.dev_pairs, seed=args.seed, data_dir=args.data_dir)
    started = time.perf_counter()
    model, template, layer, backend, adapter = args.model, args.template, args.layer, None, None
    if args.embedder:
        embedder, template = _saved_embedder_for_search(args)
        described = embedder.describe()
        model, layer, backend = described["model_spec"], embedder.layer, embedder.backend
        adapter = described.get("adapter_sha256")
    rows = run_search(
        model,
        pool,
        args.output,
        template=template,
        layer=layer,
        dtype=args.dtype,
        backend=backend,
        adapter=adapter,
        benchmark=benchmark,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        max_length=args.max_length,
        pool_name=args.pool,
        log=_log,
        workers=ray_workers(args),
        screen=screen,
    )
    print(format_top(rows, args.top))
    _log(
        f"{len(rows)} rows in {args.output}; {time.perf_counter() - started:.0f} s. "
        f"Use the best with --demonstration best-of:{args.output}"
    )
    return 0


# -- report ---------------------------------------------------------------------------------------------
def make_report_parser(sub) -> None:
    p = sub.add_parser("report", help="markdown tables and PNG plots from sweep/search results")
    p.add_argument(
        "results", nargs="+", help="results JSONL files, or one scaling plan (.toml) for the scaling report"
    )
    p.add_argument(
        "--output-dir", default=None, help="where report.md and the PNGs go (default: beside the first)"
    )
    p.set_defaults(handler=report_command)


def report_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from promptlab.experiments.report import write_report

    if len(args.results) == 1 and args.results[0].endswith(".toml"):  # a scaling plan
        from promptlab.experiments.scaling_cli import scaling_report_command

        return scaling_report_command(
            argparse.Namespace(plan=args.results[0], output_dir=args.output_dir, root=None)
        )
    output_dir = args.output_dir or str(Path(args.results[0]).parent)
    print(write_report(args.results, output_dir))
    return 0
