"""Append-only, resumable JSONL results: one finished row per line, durable as soon as it is written.

Every row carries ``kind`` (``sweep`` | ``demo-search``), a ``key`` that identifies what it measured, and
``config_hash``: the hash of the experiment's *fixed* settings (data, split, subset, seed, max_length...),
which are also stored in full as ``fixed``. Reopening a file to resume checks that hash and refuses a
file written under other settings, naming what differs; rows whose key is already present are skipped.

Each row is written with one ``os.write`` on an ``O_APPEND`` descriptor and then fsynced, so an
interruption (Ctrl-C, a crash) loses at most the row being computed, never a finished one. A last line
cut short by a hard kill is ignored by readers (with a warning) and cut off when the file is reopened to
resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from promptlab.errors import PromptlabError


def config_hash(fixed: dict[str, Any]) -> str:
    """A short, stable hash of the settings every row of a results file shares."""
    blob = json.dumps(fixed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def key_string(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a results file; a malformed line (other than a torn last one) names its line."""
    path = Path(path)
    if not path.is_file():
        raise PromptlabError(f"results file {path} does not exist; pass the JSONL a sweep or search wrote.")
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number == len(lines) and not data.endswith(b"\n"):  # torn by a hard kill mid-write
                warnings.warn(
                    f"{path}: ignoring an incomplete last line (an interrupted write).", stacklevel=2
                )
                continue
            raise PromptlabError(
                f"{path}:{number}: not a JSON row; remove the line or use another file."
            ) from None
        if not isinstance(row, dict):
            raise PromptlabError(
                f"{path}:{number}: expected a JSON object; remove the line or use another file."
            )
        rows.append(row)
    return rows


class ResultsFile:
    """A results file opened for one experiment: resume checks, done keys, durable appends."""

    def __init__(self, path: str | Path, kind: str, fixed: dict[str, Any]):
        self.path = Path(path)
        self.kind = kind
        self.fixed = fixed
        self.hash = config_hash(fixed)
        if not self.path.parent.is_dir():
            raise PromptlabError(
                f"folder {self.path.parent} does not exist; create it or choose another output."
            )
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            _cut_torn_tail(self.path)
            for row in read_rows(self.path):
                self._check(row)
                self.rows[key_string(row["key"])] = row

    def _check(self, row: dict[str, Any]) -> None:
        if row.get("kind") != self.kind:
            raise PromptlabError(
                f"{self.path} holds {row.get('kind')!r} rows, not {self.kind!r} rows; "
                "write to another output."
            )
        if row.get("config_hash") == self.hash:
            return
        theirs = row.get("fixed", {})
        diff = [
            f"{name}: {theirs.get(name)!r} there, {self.fixed.get(name)!r} now"
            for name in sorted(set(theirs) | set(self.fixed))
            if theirs.get(name) != self.fixed.get(name)
        ]
        raise PromptlabError(
            f"{self.path} was written by a different configuration ({'; '.join(diff) or 'settings differ'}); "
            "resume with the same settings, or write to another output."
        )

    def done(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The finished row for ``key``, or None."""
        return self.rows.get(key_string(key))

    def append(self, key: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        """Write one finished row (flushed and fsynced) and return it."""
        row = {
            "kind": self.kind,
            "key": key,
            "config_hash": self.hash,
            "fixed": self.fixed,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **payload,
        }
        data = (json.dumps(row, ensure_ascii=False, default=_json_default) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if os.fstat(fd).st_size and not _ends_with_newline(fd):
                os.write(fd, b"\n")  # after a torn last line: start on a fresh line
            written = os.write(fd, data)  # one write on O_APPEND: a row is never interleaved or split
            if written != len(data):
                raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.rows[key_string(key)] = row
        return row

    def __iter__(self) -> Iterable[dict[str, Any]]:
        return iter(self.rows.values())


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line that a hard kill left unfinished (not valid JSON, no newline)."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except (json.JSONDecodeError, UnicodeDecodeError):
        warnings.warn(f"{path}: dropping an incomplete last line (an interrupted write).", stacklevel=3)
        os.truncate(path, start)


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return os.pread(fd, 1, size - 1) == b"\n"


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)
