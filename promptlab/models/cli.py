"""Handlers for `promptlab models list` and `promptlab models pull NAME` (wired into promptlab.cli).

Each takes the parsed argparse.Namespace (`name`, `cache_dir`) and returns an exit status; errors are
PromptlabError, which the main CLI prints as one line.
"""

from __future__ import annotations

import argparse

from promptlab.models.catalog import is_catalog_name, list_models
from promptlab.models.resolve import pull_model, resolve_model


def list_command(args: argparse.Namespace) -> int:
    """Print the packaged models as a table: name, architecture, size, pulled, cache path."""
    cache_dir = getattr(args, "cache_dir", None)
    header = ("NAME", "ARCHITECTURE", "PARAMS", "DOWNLOAD", "PULLED", "PATH")
    rows = [
        (
            m.name,
            m.architecture,
            m.params,
            f"{m.size / 2**20:.0f} MB",
            "yes" if m.is_pulled(cache_dir) else "no",
            str(m.local_dir(cache_dir)),
        )
        for m in list_models()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def pull_command(args: argparse.Namespace) -> int:
    """Pull a catalog model (or convert a .gguf file) into the cache and print the loadable dir."""
    cache_dir = getattr(args, "cache_dir", None)
    if is_catalog_name(args.name) or not args.name.lower().endswith(".gguf"):
        path = pull_model(args.name, cache_dir=cache_dir)
    else:
        path = resolve_model(args.name, cache_dir=cache_dir).path
    print(path)
    return 0
