"""On-disk embedding cache: re-running an evaluation or a sweep point reads vectors instead of recomputing.

Layout: ``ROOT/<namespace>/layer<k>/shard-*.npz`` (+ ``ROOT/<namespace>/config.json`` for people).
The namespace is a SHA-256 of everything that shapes a vector besides the sentence: the embedder's full
`describe()` record (model file hash, template text, pooling, dtype, quantization, backend, runtime
versions…), the token ids of a probe prompt (so demonstrations, the tokenizer and input normalisation are
covered whatever `describe()` records), and a fingerprint of promptlab's own code (a code change never
reads vectors computed by older code; docstrings, comments and layout are not part of it). Each shard
holds the SHA-256 of each sentence, its vectors, and a digest over both.

Safety: a shard is written to a temporary file and renamed into place, so readers never see half a file and
concurrent runs never write the same file. A shard that fails to load or whose digest does not match is
removed (warned about once) and its vectors recomputed; a directory that cannot be written is warned about once and the vectors are
simply computed. Vectors are returned only for an exact sentence hash in a verified shard.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Fields of `describe()` that name where a model lies, not what it computes.
LOCATION_FIELDS = ("model_path", "model_spec", "model_source")
# Excluded from the key: the location, and the layer (each layer has its own folder in the namespace).
_NOT_IN_KEY = (*LOCATION_FIELDS, "layer", "layer_index")
_warned: set[tuple[str, str]] = set()
# Rendered and tokenized into the key: demonstrations, tokenizer and input rules change its ids.
PROBE_SENTENCE = "A probe sentence, with punctuation"


def _warn_once(where: Path, kind: str, message: str) -> None:
    if (str(where), kind) not in _warned:
        _warned.add((str(where), kind))
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _code_only(source: str) -> str:
    """The syntax tree of `source` without docstrings, comments, layout or line numbers.

    Editing documentation then keeps a cache that took hours to fill; any change to what the code does
    (a statement, a constant, a name) still changes the tree.
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def source_fingerprint(root: Path) -> str:
    """SHA-256 over the code (see `_code_only`) of every ``*.py`` under `root`, with its relative path."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        code = _code_only(path.read_text(encoding="utf-8"))
        digest.update(str(path.relative_to(root).as_posix()).encode() + b"\0" + code.encode() + b"\0")
    return digest.hexdigest()


@functools.cache
def code_fingerprint() -> str:
    """The `source_fingerprint` of the installed promptlab package."""
    return source_fingerprint(Path(__file__).resolve().parent)


def sentence_key(sentence: str) -> bytes:
    return hashlib.sha256(sentence.encode("utf-8")).digest()


def _digest(keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(keys.tobytes() + vectors.tobytes()).digest(), dtype=np.uint8)


class EmbeddingCache:
    """Vectors on disk under ``root``, keyed by (configuration, layer, sentence)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self._shards: dict[Path, dict[bytes, np.ndarray]] = {}  # shards already read and verified
        self.hits = 0
        self.misses = 0

    @staticmethod
    def namespace(config: dict[str, Any]) -> str:
        """The key of everything but the sentence and the layer (see the module docstring)."""
        record = {k: v for k, v in config.items() if k not in _NOT_IN_KEY}
        record["promptlab_code"] = code_fingerprint()
        text = json.dumps(record, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def key_for(self, embedder) -> str | None:
        """The namespace of an `Embedder`'s configuration; None (no caching) when its weights have no hash."""
        config = computes(embedder)
        if not config.get("model_file_sha256"):
            _warn_once(
                self.root,
                "unhashed",
                f"embedding cache: model {config.get('model')!r} has no weight-file hash (a hub id or an "
                "in-memory model), so its vectors are not cached; pass a local model dir or a packaged name.",
            )
            return None
        return self.namespace(config)

    # -- reading ---------------------------------------------------------------------------------------
    def _read_shard(self, path: Path, dim: int) -> dict[bytes, np.ndarray] | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                keys, vectors, digest = data["keys"], data["vectors"], data["digest"]
            ok = (
                keys.dtype == np.uint8
                and keys.ndim == 2
                and keys.shape[1] == 32
                and vectors.dtype == np.float32
                and vectors.shape == (keys.shape[0], dim)
                and np.array_equal(digest, _digest(keys, vectors))
            )
        except Exception:  # truncated, not a zip, missing arrays, bad CRC…
            ok = False
        if not ok:
            # Shards appear only by rename once complete, so a bad one is damage, never a write in progress:
            # remove it, so the warning is not repeated on every run and the recomputed vectors replace it.
            with contextlib.suppress(OSError):
                path.unlink()
            _warn_once(
                path.parent,
                "corrupt",
                f"embedding cache: removed unreadable or corrupt file(s) in {path.parent} "
                f"(e.g. {path.name}); those vectors are recomputed.",
            )
            return None
        return {bytes(k): v for k, v in zip(keys, vectors, strict=True)}

    def _index(self, folder: Path, dim: int) -> dict[bytes, np.ndarray]:
        index: dict[bytes, np.ndarray] = {}
        try:
            paths = sorted(p for p in folder.glob("shard-*.npz") if p.is_file())
        except OSError:
            return index
        for path in paths:
            if path not in self._shards:
                shard = self._read_shard(path, dim)
                if shard is None:
                    continue
                self._shards[path] = shard
            index.update(self._shards[path])
        return index

    def fill(self, namespace: str, sentences: Sequence[str], out: dict[int, np.ndarray]) -> list[int]:
        """Copy cached vectors into ``out[layer][row]``; return the rows missing for some layer."""
        found = np.ones(len(sentences), dtype=bool)
        keys = [sentence_key(s) for s in sentences]
        for layer, array in out.items():
            index = self._index(self.root / namespace / f"layer{layer}", array.shape[1])
            for row, key in enumerate(keys):
                vector = index.get(key) if found[row] else None
                if vector is None:
                    found[row] = False
                else:
                    array[row] = vector
        self.hits += int(found.sum())
        self.misses += int((~found).sum())
        return [int(i) for i in np.flatnonzero(~found)]

    # -- writing ---------------------------------------------------------------------------------------
    def store(
        self, namespace: str, sentences: Sequence[str], vectors: dict[int, np.ndarray], config: dict[str, Any]
    ) -> None:
        """Write one new shard per layer (temp file + rename); warn once and go on if that fails."""
        if not sentences:
            return
        keys = np.frombuffer(b"".join(sentence_key(s) for s in sentences), dtype=np.uint8).reshape(-1, 32)
        folder = self.root / namespace
        try:
            folder.mkdir(parents=True, exist_ok=True)
            info = folder / "config.json"
            if not info.exists():
                self._atomic(info, lambda f: f.write(json.dumps(config, indent=2, default=str).encode()))
            for layer, array in vectors.items():
                array = np.ascontiguousarray(array, dtype=np.float32)
                sub = folder / f"layer{layer}"
                sub.mkdir(exist_ok=True)
                name = f"shard-{os.getpid()}-{uuid.uuid4().hex}.npz"
                self._atomic(
                    sub / name, lambda f, a=array: np.savez(f, keys=keys, vectors=a, digest=_digest(keys, a))
                )
        except OSError as err:
            _warn_once(
                self.root,
                "write",
                f"embedding cache: cannot write to {self.root} ({err.strerror or err}); vectors are computed "
                "but not cached. Pass a writable --cache-dir or --no-cache.",
            )

    @staticmethod
    def _atomic(path: Path, write) -> None:
        tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}-{path.name}")
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def computes(embedder) -> dict[str, Any]:
    """What shapes `embedder`'s vectors: its `describe()` record without where the model or its adapter lies,
    and the token ids of a probe prompt (demonstrations, the tokenizer and input rules change them). So a
    moved or copied checkout keeps its cached vectors and resumes its task logs."""
    config = {k: v for k, v in embedder.describe().items() if k not in LOCATION_FIELDS}
    # An adapter's weights are named by their hash; its folder is only where it lies.
    if config.get("adapter_sha256"):
        config.pop("adapter", None)
    members = getattr(embedder, "members", None)
    if members:  # an ensemble (MetaEOL) has no prompt of its own: its members' prompts, in order
        return {**config, "probe_prompt_ids": [list(m.prompts.encode(PROBE_SENTENCE).ids) for m in members]}
    return {**config, "probe_prompt_ids": list(embedder.prompts.encode(PROBE_SENTENCE).ids)}


def default_cache_dir() -> Path:
    """``<promptlab cache root>/embeddings`` (the root honours $PROMPTLAB_CACHE)."""
    from promptlab.models import cache_root

    return cache_root() / "embeddings"
