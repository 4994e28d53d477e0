"""Append-only, resumable JSONL results: one finished row per line, durable as soon as it is written.

Every row carries ``kind`` (``sweep`` | ``demo-search``), a ``key`` that identifies what it measured, and
``config_hash``: the hash of the experiment's *fixed* settings (data, split, subset, seed, max_length...),
which are also stored in full as ``fixed``. Reopening a file to resume checks that hash and refuses a
file written under other settings, naming what differs; rows whose key is already present are skipped.

Each row is written with one ``os.write`` on an ``O_APPEND`` descriptor and then fsynced, so an
interruption (Ctrl-C, a crash) loses at most the row being computed, never a finished one. A last line
cut short by a hard kill is ignored by readers (with a warning) and cut off when the file is reopened to
resume.

One run writes a results file at a time: opening it takes an exclusive lock on a sidecar file beside it
(``.NAME.lock``, which records who holds it), and a second run on the same output is refused, naming the
first, instead of doing the same work again and appending duplicate rows. The lock goes with the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from promptlab.errors import PromptlabError
from promptlab.jsonl import read_rows

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None


def config_hash(fixed: dict[str, Any]) -> str:
    """A short, stable hash of the settings every row of a results file shares."""
    blob = json.dumps(fixed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def key_string(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def lock_path(path: str | Path) -> Path:
    """The sidecar lock file of results file ``path``: ``.NAME.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def lock_output(path: str | Path):
    """Take the exclusive lock on results file ``path`` (non-blocking); returns the open lock file.

    Raises PromptlabError naming the run that holds it. Closing the returned file (or the process ending)
    releases the lock.
    """
    if fcntl is None:
        return None
    path = Path(path)
    try:
        handle = open(lock_path(path), "a+", encoding="utf-8")  # held until close()
    except OSError as err:
        raise PromptlabError(
            f"cannot create the lock file {lock_path(path)} ({err.strerror}); write to a folder you can write."
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "details unknown"
        handle.close()
        raise PromptlabError(
            f"{path} is being written by another run ({holder}); wait for it to finish, or write to another "
            "output."
        ) from None
    command = " ".join(sys.argv)
    handle.seek(0)
    handle.truncate()
    handle.write(
        f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
        f"{command if len(command) <= 200 else command[:197] + '...'}\n"
    )
    handle.flush()
    return handle


class ResultsFile:
    """A results file opened for one experiment: resume checks, done keys, durable appends.

    Opening it locks the output against other runs (`lock_output`) until `close` (or the ``with`` block
    ends, or the process exits).
    """

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
        self._lock = lock_output(self.path)  # before reading: the rows read stay the rows on disk
        try:
            if self.path.exists():
                _cut_torn_tail(self.path)
                for row in read_rows(self.path):
                    self._check(row)
                    self.rows[key_string(row["key"])] = row
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the output's lock (the rows stay readable)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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


def open_task_log(path: str | Path, embedder) -> ResultsFile:
    """A task log for `evaluate(..., task_log=...)` of `embedder`: one row per finished task, locked.

    Its fixed settings are what the embedder computes (`promptlab.cache.computes`: its whole configuration
    without where the model lies, and a probe prompt's token ids), so a log written by another model,
    template, layer, dtype or demonstration is refused, naming what differs.
    """
    from promptlab.evaluation.runner import TASK_LOG_KIND

    return ResultsFile(path, TASK_LOG_KIND, embedder.computes())
