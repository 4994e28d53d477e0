"""SHA-256 of files and directories, verification against an expected hash, and a small hash cache.

A directory's hash is the SHA-256 of its `sha256sum`-style listing (one "<hex>  <relative/path>" line per
file, sorted by path), so it can be recomputed with standard tools:
`(cd DIR && find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum) | sha256sum`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from promptlab.errors import PromptlabError

_BLOCK = 1 << 22  # 4 MiB reads: fast and flat in memory for multi-GB weights


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of one file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def sha256_listing(entries: Iterable[tuple[str, str]]) -> str:
    """The SHA-256 of a `sha256sum` listing built from (relative posix path, file sha256) pairs."""
    lines = "".join(f"{digest}  {rel}\n" for rel, digest in sorted(entries))
    return hashlib.sha256(lines.encode()).hexdigest()


def sha256_tree(root: str | Path, files: Iterable[Path] | None = None) -> str:
    """The SHA-256 of a directory: of every regular file under `root`, or only of `files` (under root)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if files is None else list(files)
    return sha256_listing((p.relative_to(root).as_posix(), sha256_file(p)) for p in files)


def sha256_of(path: str | Path) -> str:
    """`sha256_file` for a file, `sha256_tree` for a directory."""
    return sha256_tree(path) if Path(path).is_dir() else sha256_file(path)


def verify_sha256(path: str | Path, expected: str, *, fix: str = "delete it and re-pull") -> str:
    """Check that the file or directory at `path` hashes to `expected`; return the hash.

    Raises PromptlabError naming the path and both hashes when they differ: the download is corrupt, or
    the package was re-published with other content (then the catalog's hash needs updating).
    """
    actual = sha256_of(path)
    if actual != expected.lower():
        raise PromptlabError(
            f"SHA-256 mismatch for {path}: expected {expected}, got {actual}; the download is corrupt "
            f"or the package changed: {fix}."
        )
    return actual


class FileHashCache:
    """SHA-256 of files remembered by (absolute path, size, mtime), in a JSON file in the cache dir.

    Hashing a multi-GB checkpoint takes seconds; this makes it a one-time cost per file version.
    Concurrent writers may drop each other's entries (the file is replaced atomically), which only
    costs a recomputation.
    """

    def __init__(self, path: Path):
        self.path = path

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def sha256(self, file: str | Path) -> str:
        file = Path(file).resolve()
        stat = file.stat()
        key = str(file)
        entries = self._load()
        hit = entries.get(key)
        if hit and hit.get("size") == stat.st_size and hit.get("mtime_ns") == stat.st_mtime_ns:
            return hit["sha256"]
        digest = sha256_file(file)
        entries = self._load()  # re-read: another process may have added entries meanwhile
        entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache only loses the memo, not the result
        return digest

    def sha256_tree(self, root: str | Path, files: Iterable[Path]) -> str:
        """Like `sha256_tree`, with each file's hash taken from the cache."""
        root = Path(root)
        return sha256_listing((p.relative_to(root).as_posix(), self.sha256(p)) for p in files)
