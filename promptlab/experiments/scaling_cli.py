"""``promptlab scaling run|report``: parsing and printing only (`promptlab.experiments.scaling`)."""

from __future__ import annotations

import argparse
import sys


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def make_scaling_parser(sub) -> None:
    p = sub.add_parser("scaling", help="run a scaling plan's cells (model x method) resumably; report them")
    verbs = p.add_subparsers(dest="verb", title="commands", metavar="COMMAND")

    def show_help(args: argparse.Namespace) -> int:
        p.print_help()
        return 0

    p.set_defaults(handler=show_help)
    run = verbs.add_parser(
        "run",
        help="run the cells whose record is missing, dependencies first; never overwrites a record",
        description="Run the cells of a scaling plan whose record is missing, in dependency order, each with "
        "its own promptlab commands (which resume: eval from the embedding cache, sweeps and searches from "
        "their JSONL, fine-tuning from its checkpoint). A cell whose dependency is not done is refused in one "
        "line; a finished record is never overwritten.",
    )
    run.add_argument("plan", help="the plan (.toml), e.g. experiments/scaling/plan.toml")
    run.add_argument("--models", default=None, help="comma-separated models of the plan (default: all)")
    run.add_argument("--methods", default=None, help="comma-separated methods of the plan (default: all)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print each cell's state, commands and estimated hours; run nothing",
    )
    run.add_argument(
        "--threads", type=int, default=1, help="torch threads of each command (OMP_NUM_THREADS; default 1)"
    )
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="cells run at the same time, each a process of --threads threads, a cell starting once its "
        "dependencies are done (default 1; e.g. --jobs 2 --threads 1 on 2 cores)",
    )
    run.add_argument("--root", default=None, help="folder the plan's paths are relative to (default: here)")
    run.set_defaults(handler=scaling_run_command)
    report = verbs.add_parser(
        "report",
        help="the plan's table (markdown) and the average-against-parameters plot (PNG)",
        description="Write report.md (every model x method, not-run cells marked) and scaling.png (7-task "
        "average against parameters, one line per method, beside the published OPT curves).",
    )
    report.add_argument("plan", help="the plan (.toml)")
    report.add_argument(
        "--output-dir",
        default=None,
        help="where report.md and scaling.png go (default: beside the plan, report/)",
    )
    report.add_argument(
        "--root", default=None, help="folder the plan's paths are relative to (default: here)"
    )
    report.set_defaults(handler=scaling_report_command)


def scaling_run_command(args: argparse.Namespace) -> int:
    from promptlab.experiments.scaling import load_plan, run_plan

    if args.threads < 1:
        from promptlab.errors import PromptlabError

        raise PromptlabError(f"--threads {args.threads}: give 1 or more.")
    plan = load_plan(args.plan, root=args.root)
    result = run_plan(
        plan,
        models=_names(args.models),
        methods=_names(args.methods),
        dry_run=args.dry_run,
        threads=args.threads,
        jobs=args.jobs,
    )
    if args.dry_run:
        return 0
    print(
        f"ran {len(result.ran)}, already done {len(result.skipped)}, refused {len(result.refused)}, "
        f"failed {len(result.failed)}, dropped {len(result.dropped)}, held {len(result.held)}",
        file=sys.stderr,
    )
    return 1 if result.refused or result.failed else 0


def scaling_report_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from promptlab.experiments.scaling import load_plan
    from promptlab.experiments.scaling_report import write_scaling_report

    plan = load_plan(args.plan, root=args.root, check_models=False)
    print(write_scaling_report(plan, args.output_dir or Path(args.plan).parent / "report"))
    return 0
