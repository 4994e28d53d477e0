"""``promptlab finetune CONFIG``: parsing and printing only; the work is `promptlab.finetune.trainer`."""

from __future__ import annotations

import argparse
import sys


def make_finetune_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="contrastive LoRA/QLoRA fine-tuning of a prompt embedding (CSE); configs: experiments/finetune",
    )
    p.add_argument("config", help="a .toml run config (model, template, objective, data, LoRA, lr, steps…)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (TOML value)"
    )
    p.add_argument("--output-dir", default=None, help="override the config's output_dir")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in output_dir from its last checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in output_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=finetune_command)


def finetune_command(args: argparse.Namespace) -> int:
    from promptlab.errors import PromptlabError
    from promptlab.finetune.config import FinetuneConfig, parse_override
    from promptlab.finetune.trainer import train

    if args.resume and args.overwrite:
        raise PromptlabError("--resume and --overwrite contradict each other; pass one.")
    overrides = dict(parse_override(s) for s in args.set)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    config = FinetuneConfig.from_toml(args.config, overrides)
    from promptlab.distributed.ddp import DataParallel

    parallel = DataParallel.from_environment()  # under torchrun: this rank of the data-parallel run
    try:
        result = train(
            config,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=False if args.no_progress else None,
            parallel=parallel,
        )
    finally:
        if parallel is not None:
            parallel.close()
    if parallel is not None and not parallel.is_main:
        return 0
    best = f"{result.best_dev:.2f} at step {result.best_step}" if result.best_dev is not None else "none"
    note = " (stopped at max_minutes)" if result.stopped == "time_limit" else ""
    print(
        f"{result.steps} steps in {result.train_seconds / 60:.1f} min{note}; best STS-B dev {best}; "
        f"peak RSS {result.peak_rss_mib:.0f} MiB\nadapter: {result.output_dir / 'best'}",
        file=sys.stderr,
    )
    return 0
