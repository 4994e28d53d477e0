"""Handlers for `promptlab models list`, `promptlab models pull NAME` and `promptlab models verify [NAME]`
(wired into promptlab.cli).

Each takes the parsed argparse.Namespace (`name`, `cache_dir`) and returns an exit status; errors are
PromptlabError, which the main CLI prints as one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from promptlab.errors import PromptlabError
from promptlab.models.catalog import get_model, is_catalog_name, list_models
from promptlab.models.hashing import FileHashCache
from promptlab.models.integrity import MISSING, check_folder, read_manifest
from promptlab.models.paths import cache_root
from promptlab.models.resolve import model_state, pull_model, resolve_model

# How `models list` shows a model's state (see `integrity.FolderState`).
PULLED = {"ok": "yes", "missing": "no", "unverified": "unverified", "damaged": "damaged"}


def list_command(args: argparse.Namespace) -> int:
    """Print the packaged models as a table: name, architecture, size, pulled, cache path.

    PULLED is "yes", "no", "damaged" (a file differs from the hashes recorded at conversion: run
    `promptlab models pull NAME`) or "unverified" (converted by a promptlab that recorded no hashes).
    """
    cache_dir = getattr(args, "cache_dir", None)
    header = ("NAME", "ARCHITECTURE", "PARAMS", "DOWNLOAD", "PULLED", "PATH")
    rows = [
        (
            m.name,
            m.architecture,
            m.params,
            f"{m.size / 2**20:.0f} MB",
            PULLED[model_state(m.name, cache_dir=cache_dir).status],
            str(m.local_dir(cache_dir)),
        )
        for m in list_models()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def pull_command(args: argparse.Namespace) -> int:
    """Pull a catalog model (or convert a .gguf file) into the cache and print the loadable dir.

    A model already pulled is checked in full against the hashes recorded at conversion and converted
    again when a file differs, so this also repairs what `models verify` reports.
    """
    cache_dir = getattr(args, "cache_dir", None)
    if is_catalog_name(args.name) or not args.name.lower().endswith(".gguf"):
        path = pull_model(args.name, cache_dir=cache_dir, full=True)
    else:
        path = resolve_model(args.name, cache_dir=cache_dir, full=True).path
    print(path)
    return 0


def verify_command(args: argparse.Namespace) -> int:
    """Check converted models against the SHA-256 of each file recorded at conversion; print one line each.

    `name`: a catalog name or a .gguf file; None checks every packaged model pulled and every converted
    GGUF file in the cache. Returns 0 when all are intact, 1 when one is damaged or unverified.
    """
    cache_dir = getattr(args, "cache_dir", None)
    name = getattr(args, "name", None)
    root = cache_root(cache_dir)
    if name is None:
        folders = [(m.name, m.local_dir(cache_dir), m.sha256) for m in list_models()]
        for folder in sorted((root / "gguf").glob("[0-9a-f]*")):
            manifest = read_manifest(folder) or {}
            source = manifest.get("gguf_file") or str(folder)
            folders.append((source, folder, manifest.get("artifact_sha256")))
    elif is_catalog_name(name) or not name.lower().endswith(".gguf"):
        entry = get_model(name)
        folders = [(entry.name, entry.local_dir(cache_dir), entry.sha256)]
    else:
        if not Path(name).expanduser().is_file():
            raise PromptlabError(f"GGUF file {name} does not exist; check the path.")
        digest = FileHashCache(root / "hashes.json").sha256(Path(name).expanduser().resolve())
        folders = [(name, root / "gguf" / digest[:16], digest)]

    failed = checked = 0
    for spec, folder, artifact_sha256 in folders:
        state = check_folder(folder, artifact_sha256=artifact_sha256, full=True)
        if state.status == MISSING:
            if name is not None:
                raise PromptlabError(f"{name} is not pulled in {root}; run `promptlab models pull {name}`.")
            continue
        checked += 1
        if state.ok:
            print(f"{spec}  ok  {folder}  sha256 {state.sha256}")
        else:
            failed += 1
            print(
                f"{spec}  {state.status}  {folder}  ({state.problem}); repair: promptlab models pull {spec}"
            )
    if not checked:
        print(f"no converted models in {root}", file=sys.stderr)
    return 1 if failed else 0
