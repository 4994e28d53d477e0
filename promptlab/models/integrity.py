"""Recorded hashes of converted model folders: checked cheaply on every load, fully by `models verify`.

When promptlab converts a model into its cache it records every file of the folder in the folder's
manifest (`promptlab.json`, key ``files``): size, mtime, SHA-256, and the SHA-256 of a sample (the file's
header and evenly spaced blocks). Loading runs the quick check: sizes and samples, plus the full SHA-256 of
any file whose mtime is not the recorded one. `promptlab models verify` compares every file's full SHA-256,
which also finds a change inside a file that kept its size, sample and mtime.

The folder's hash (`FolderState.sha256`) is the SHA-256 of the `sha256sum` listing of its recorded files
(see `hashing.py`); backends report it, so the embedding cache never serves vectors computed from
other weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from promptlab.models.hashing import FileHashCache, sha256_file, sha256_listing
from promptlab.models.paths import MANIFEST

FILES = "files"  # the manifest key holding the file records
SAMPLE_BLOCK = 1 << 16  # bytes per sampled block
SAMPLE_BLOCKS = 16  # blocks sampled per file, evenly spaced, the last one ending at the end of the file
HEAD = 1 << 16  # bytes of a file's start always sampled (a safetensors file: its whole JSON header)
MAX_HEAD = 1 << 26  # the most header bytes sampled
IGNORED = {"desktop.ini", "Thumbs.db", ".DS_Store"}  # files a desktop may drop into any folder

OK, MISSING, UNVERIFIED, DAMAGED = "ok", "missing", "unverified", "damaged"


def sample_sha256(path: str | Path) -> str:
    """SHA-256 of a file's size, header and `SAMPLE_BLOCKS` evenly spaced blocks (the whole of a small file).

    The header is the first `HEAD` bytes, or for a ``.safetensors`` file its 8-byte length and whole JSON
    header (tensor names, dtypes, shapes and offsets), up to `MAX_HEAD` bytes.
    """
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        digest.update(size.to_bytes(8, "little"))
        head = HEAD
        if path.suffix == ".safetensors" and size >= 8:
            f.seek(0)
            head = max(head, 8 + int.from_bytes(f.read(8), "little"))
        head = min(head, MAX_HEAD, size)
        if size <= head + SAMPLE_BLOCKS * SAMPLE_BLOCK:
            offsets, head = [], size
        else:
            offsets = [i * (size - SAMPLE_BLOCK) // (SAMPLE_BLOCKS - 1) for i in range(SAMPLE_BLOCKS)]
        f.seek(0)
        digest.update(f.read(head))
        for offset in offsets:
            f.seek(offset)
            digest.update(f.read(SAMPLE_BLOCK))
    return digest.hexdigest()


def _files_in(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and p.name not in IGNORED
    )


def record_files(folder: Path) -> dict[str, dict]:
    """The record of every file under `folder` but the manifest: {relative path: size, mtime, hashes}."""
    records = {}
    for rel in _files_in(folder):
        path = folder / rel
        stat = path.stat()
        records[rel] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": sha256_file(path),
            "sample_sha256": sample_sha256(path),
        }
    return records


@dataclass(frozen=True)
class FolderState:
    """What a check found in a converted folder."""

    status: str  # "ok" | "missing" (not converted) | "unverified" (no recorded hashes) | "damaged"
    problem: str | None = None  # what is wrong, for one line
    sha256: str | None = None  # the folder's hash (of its recorded files' listing); set when status is ok

    @property
    def ok(self) -> bool:
        return self.status == OK


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, or None when it has none (not converted, or interrupted)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def check_folder(
    folder: Path,
    *,
    artifact_sha256: str | None = None,
    full: bool = False,
    hash_cache: FileHashCache | None = None,
) -> FolderState:
    """Check the converted `folder` against its recorded hashes (`full`: every file's whole SHA-256).

    `artifact_sha256`: the artifact the folder must have been made from (else it counts as missing).
    `hash_cache` memoizes the full hashes the quick check takes of files whose mtime changed.
    """
    manifest = read_manifest(folder)
    if manifest is None:
        return FolderState(MISSING, "not converted")
    if artifact_sha256 is not None and manifest.get("artifact_sha256") != artifact_sha256:
        return FolderState(MISSING, "converted from another artifact")
    records = manifest.get(FILES)
    if not isinstance(records, dict) or not records or not all(isinstance(r, dict) for r in records.values()):
        return FolderState(UNVERIFIED, "no file hashes were recorded at conversion (an older promptlab)")
    problems = []
    for rel, record in sorted(records.items()):
        path = folder / rel
        try:
            stat = path.stat()
        except OSError:
            problems.append(f"{rel} is missing")
            continue
        if stat.st_size != record.get("size"):
            problems.append(f"{rel} has {stat.st_size} bytes, {record.get('size')} recorded (truncated?)")
        elif full:
            if sha256_file(path) != record.get("sha256"):
                problems.append(f"{rel} has another SHA-256 than recorded at conversion")
        elif sample_sha256(path) != record.get("sample_sha256"):
            problems.append(f"{rel} has other content than recorded at conversion")
        elif stat.st_mtime_ns != record.get("mtime_ns"):
            digest = hash_cache.sha256(path) if hash_cache is not None else sha256_file(path)
            if digest != record.get("sha256"):
                problems.append(f"{rel} has another SHA-256 than recorded at conversion")
    problems += [f"{rel} was not there at conversion" for rel in _files_in(folder) if rel not in records]
    if problems:
        return FolderState(DAMAGED, "; ".join(problems))
    listing = sha256_listing((rel, record["sha256"]) for rel, record in records.items())
    return FolderState(OK, None, listing)
