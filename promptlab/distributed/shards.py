"""Embed a corpus into a folder of shards, so that a killed job resumes where it stopped.

A corpus is one text/JSONL file, a folder of them, or a glob (``data/part-*.jsonl``); its files are taken
in sorted order. Each input file is cut into shards of ``shard_size`` sentences, and each shard becomes
two files in ``DIR/shards/``::

    00003-00012.lines.npy   int64 [n]     the 1-based line number of each row in its input file
    00003-00012.npy         float32 [n,H] the vectors, row i for line lines[i]

(file 3 of the corpus, its 13th shard). A shard's vectors are written last, each file under a temporary
name and then renamed, so a shard whose ``.npy`` exists is complete; a killed job recomputes only the
shards that were being embedded (one per worker). ``DIR/manifest.json`` records the corpus (each file's
path, size and SHA-256), the embedder options that decide the vectors, and the shards done; a rerun with
other inputs or options is refused rather than mixing vectors of two configurations in one folder.

A malformed input file (a blank line in a text file, a JSONL line without the field) is reported with
its file and line and left out; the other files are still embedded, and the command fails at the end.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from promptlab.errors import PromptlabError

MANIFEST = "manifest.json"
SHARDS = "shards"
FORMAT = "promptlab-shards"
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 10_000
INPUT_SUFFIXES = (".txt", ".jsonl")


# -- the corpus -------------------------------------------------------------------------------------------
def corpus_files(spec: str) -> list[Path]:
    """The input files of a corpus: one file, every .txt/.jsonl file of a folder, or a glob's matches."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in INPUT_SUFFIXES)
        where = f"folder {path}"
    elif any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        where = f"glob {spec!r}"
    elif path.is_file():
        return [path]
    else:
        raise PromptlabError(
            f"input {spec} does not exist; pass a .txt/.jsonl file, a folder of them or a glob."
        )
    if not files:
        raise PromptlabError(
            f"no input files in {where}; give a folder or glob of .txt (one sentence a line) or .jsonl files."
        )
    return files


def is_corpus(spec: str) -> bool:
    """Whether ``--input`` names several files (a folder or a glob) rather than one file or stdin."""
    return spec != "-" and (Path(spec).is_dir() or any(c in spec for c in "*?["))


def _file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


@dataclasses.dataclass(frozen=True)
class Shard:
    """Up to ``shard_size`` consecutive sentences of one input file."""

    name: str  # "FFFFF-PPPPP": input file index, shard index within the file
    source: int  # index of the input file
    lines: list[int]  # 1-based line numbers in the input file
    sentences: list[str]


def _read_file(path: Path, field: str) -> list[tuple[int, str]]:
    from promptlab.inputs import read_numbered_sentences

    return read_numbered_sentences(str(path), field)


# -- the output folder ------------------------------------------------------------------------------------
def _save_atomically(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def write_shard_files(shards: Path, name: str, lines: Sequence[int], vectors: np.ndarray) -> None:
    """Write a shard into the folder ``shards``: its line numbers, then its vectors (whose presence marks
    it complete), each under a temporary name and renamed; safe from several processes at once."""
    if vectors.shape[0] != len(lines):
        raise RuntimeError(f"shard {name}: {vectors.shape[0]} vectors for {len(lines)} lines")
    _save_atomically(shards / f"{name}.lines.npy", np.asarray(lines, dtype=np.int64))
    _save_atomically(shards / f"{name}.npy", np.ascontiguousarray(vectors, dtype=np.float32))


class ShardFolder:
    """The output folder of a sharded embedding job: its manifest and the shards already written.

    ``config`` is what decides the vectors (embedder options, normalisation, field, shard size); it and the
    input files must match those of an earlier job in the folder, which is then resumed.
    """

    def __init__(
        self, folder: str | Path, config: dict[str, Any], inputs: Sequence[Path], *, overwrite=False
    ):
        self.folder = Path(folder)
        self.shards = self.folder / SHARDS
        self.inputs = [_file_record(p) for p in inputs]
        self.config = json.loads(json.dumps(config))  # as it reads back from JSON
        manifest = self.folder / MANIFEST
        if self.folder.exists() and not self.folder.is_dir():
            raise PromptlabError(
                f"{self.folder} is a file; give a folder (new or earlier shards) as --output."
            )
        if self.folder.is_dir() and any(self.folder.iterdir()):
            if not manifest.is_file():
                raise PromptlabError(
                    f"{self.folder} is not empty and holds no {MANIFEST}; choose a new or empty folder as --output."
                )
            if overwrite:
                shutil.rmtree(self.shards, ignore_errors=True)
                manifest.unlink()
            else:
                self._check_resume(json.loads(manifest.read_text(encoding="utf-8")))
        if not self.folder.parent.exists():
            raise PromptlabError(
                f"folder {self.folder.parent} does not exist; create it or choose another --output."
            )
        self.shards.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, str] = {}
        self.described: dict[str, Any] | None = None
        self.dim: int | None = None
        for path in sorted(self.shards.glob("*.lines.npy")):
            name = path.name.removesuffix(".lines.npy")
            if self.is_done(name):
                lines = np.load(path)
                vectors = np.load(self.shards / f"{name}.npy", mmap_mode="r")
                self.dim = vectors.shape[1]
                self.records[name] = self._record(name, lines)

    def _check_resume(self, saved: dict[str, Any]) -> None:
        if saved.get("format") != FORMAT or saved.get("version") != FORMAT_VERSION:
            raise PromptlabError(
                f"{self.folder / MANIFEST} is not a shard manifest this version reads; pass --overwrite or "
                "choose another --output."
            )
        changed = [
            k
            for k in sorted(set(saved["config"]) | set(self.config))
            if saved["config"].get(k) != self.config.get(k)
        ]
        if saved["inputs"] != self.inputs:
            changed.append("input files")
        if changed:
            raise PromptlabError(
                f"{self.folder} holds shards of another job (different {', '.join(changed)}); rerun with the "
                "same input and options to resume, pass --overwrite to start afresh, or choose another --output."
            )

    def _record(self, name: str, lines: np.ndarray) -> dict[str, Any]:
        source = int(name.split("-")[0])
        return {
            "source": self.inputs[source]["path"],
            "rows": int(len(lines)),
            "first_line": int(lines[0]),
            "last_line": int(lines[-1]),
        }

    def is_done(self, name: str) -> bool:
        return (self.shards / f"{name}.npy").is_file() and (self.shards / f"{name}.lines.npy").is_file()

    def plan(self, shard_size: int, field: str) -> Iterator[Shard]:
        """The shards not written yet, file by file; a malformed file is recorded in `failed` and skipped."""
        for index, record in enumerate(self.inputs):
            path = Path(record["path"])
            try:
                rows = _read_file(path, field)
            except PromptlabError as err:
                self.fail(path, str(err))
                continue
            for part, start in enumerate(range(0, len(rows), shard_size)):
                name = f"{index:05d}-{part:05d}"
                if self.is_done(name):
                    continue
                chunk = rows[start : start + shard_size]
                yield Shard(name, index, [n for n, _ in chunk], [s for _, s in chunk])

    def write(self, shard: Shard, vectors: np.ndarray) -> None:
        """Write one shard's files (see `write_shard_files`) and record it in the manifest."""
        write_shard_files(self.shards, shard.name, shard.lines, vectors)
        self.mark_written(shard, int(vectors.shape[1]))

    def mark_written(self, shard: Shard, dim: int) -> None:
        """Record a shard whose files are in place (written here or by a worker) in the manifest."""
        if not self.is_done(shard.name):
            raise PromptlabError(
                f"shard {shard.name} was reported written but {self.shards} does not hold it: the workers "
                "write the shards, so give --output a folder on a filesystem every node shares."
            )
        self.dim = dim
        self.records[shard.name] = self._record(shard.name, np.asarray(shard.lines, dtype=np.int64))
        self.save_manifest()

    def fail(self, path: Path, message: str) -> None:
        self.failed[str(path)] = message
        self.save_manifest()

    def save_manifest(self) -> None:
        from promptlab.version import __version__

        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "promptlab": __version__,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": self.config,
            "inputs": self.inputs,
            "dim": self.dim,
            "embedder": self.described,
            "shards": dict(sorted(self.records.items())),
            "failed": self.failed,
        }
        path = self.folder / MANIFEST
        tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(manifest, indent=1, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def failure(self) -> PromptlabError | None:
        """The error that ends a job some of whose input files could not be read (None: all were)."""
        if not self.failed:
            return None
        first = next(iter(self.failed.values()))
        more = (
            f" (and {len(self.failed) - 1} more file(s), listed in {self.folder / MANIFEST})"
            if len(self.failed) > 1
            else ""
        )
        return PromptlabError(
            f"{first}{more}; the other files were embedded: fix the file(s) and rerun the same command to "
            "embed only what is missing."
        )


# -- reading shards back ----------------------------------------------------------------------------------
def load_shards(folder: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every shard of a folder, in corpus order: (source file of each row, line numbers, vectors [N, H])."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise PromptlabError(f"{folder} holds no {MANIFEST}; give a folder written by `promptlab embed`.")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    sources, lines, vectors = [], [], []
    for name, record in sorted(manifest["shards"].items()):
        rows = np.load(folder / SHARDS / f"{name}.lines.npy")
        sources += [record["source"]] * len(rows)
        lines.append(rows)
        vectors.append(np.load(folder / SHARDS / f"{name}.npy"))
    if not vectors:
        return [], np.empty(0, dtype=np.int64), np.empty((0, manifest.get("dim") or 0), dtype=np.float32)
    return sources, np.concatenate(lines), np.concatenate(vectors)


# -- building an embedder from options --------------------------------------------------------------------
def make_embedder(options: dict[str, Any]):
    """An `Embedder` from keyword options: ``embedder`` (a saved folder) plus load-time options, or the
    arguments of `Embedder` (``model``, ``template``, ``layer``...). Used by every worker of a job."""
    from promptlab.embedder import Embedder

    options = dict(options)
    saved = options.pop("embedder", None)
    if saved:
        return Embedder.load(saved, **options)
    if "model" not in options:
        raise PromptlabError(
            "give the embedder as embedder=FOLDER (a saved one) or model=SPEC (and options)."
        )
    return Embedder(options.pop("model"), **options)


def vector_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options that decide the vectors (speed and placement options left out), for a manifest."""
    from promptlab.artifact import RUNTIME_OPTIONS

    return {k: v for k, v in sorted(options.items()) if k not in RUNTIME_OPTIONS}


# -- the local job ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class ShardedResult:
    folder: Path
    written: int  # shards written by this job
    skipped: int  # shards found complete from an earlier job
    sentences: int  # sentences embedded by this job
    seconds: float
    failed: dict[str, str]

    @property
    def sentences_per_second(self) -> float | None:
        return self.sentences / self.seconds if self.sentences and self.seconds > 0 else None


def embed_shards(
    encode: Callable[[list[str]], np.ndarray],
    out: ShardFolder,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    field: str = "text",
    on_shard: Callable[[Shard], None] | None = None,
) -> ShardedResult:
    """Embed every shard not yet in ``out`` with ``encode`` (sentences -> float32 [n, H]), one at a time."""
    check_shard_size(shard_size)
    skipped = len(out.records)
    written = sentences = 0
    start = time.perf_counter()
    for shard in out.plan(shard_size, field):
        out.write(shard, encode(shard.sentences))
        written += 1
        sentences += len(shard.sentences)
        if on_shard is not None:
            on_shard(shard)
    out.save_manifest()
    return ShardedResult(
        out.folder, written, skipped, sentences, time.perf_counter() - start, dict(out.failed)
    )


def check_shard_size(shard_size: int) -> None:
    if not isinstance(shard_size, int) or shard_size < 1:
        raise PromptlabError(f"shard size {shard_size!r}: give a positive number of sentences per shard.")
