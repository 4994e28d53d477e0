"""Model specs → loadable paths: catalog names (pulled from PyPI), local dirs, GGUF files, hub ids."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from promptlab.errors import PromptlabError, unknown_name
from promptlab.models.catalog import get_model, is_catalog_name, list_models
from promptlab.models.convert import (
    convert_gguf,
    copy_model_dir,
    find_model_dir,
    install,
    staging_dir,
    weight_files,
    write_manifest,
)
from promptlab.models.fetch import assemble, extract_zip, find_wheels, pip_download, step
from promptlab.models.hashing import FileHashCache, verify_sha256
from promptlab.models.integrity import MISSING, FolderState, check_folder
from promptlab.models.paths import cache_root, file_lock
from promptlab.version import __version__

KEEP_DOWNLOADS_BELOW = 32 * 2**20  # wheels of a pulled model are deleted after conversion unless this small
_HUB_ID = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec resolved to a path `from_pretrained` loads offline, and what identifies its weights."""

    spec: str  # what the user passed
    name: str  # short display name: catalog name, dir name, GGUF file stem, or hub id
    path: str  # a local dir, or the hub id for hub models
    source: str  # "packaged" | "local" | "gguf" | "hub"
    file_hash: str | None  # sha256 of the weights (verified artifact, GGUF file, or local weight files)
    revision: str | None = None  # hub revision from "org/name@rev"; None means the default branch
    # A converted folder (packaged or GGUF): the hash of the files `path` holds, checked against the
    # hashes recorded at conversion (see `integrity.py`); None for local dirs and hub ids.
    converted_hash: str | None = None


def _hash_cache(cache_dir: str | Path | None) -> FileHashCache:
    return FileHashCache(cache_root(cache_dir) / "hashes.json")


def model_state(name: str, *, cache_dir: str | Path | None = None, full: bool = False) -> FolderState:
    """The state of the packaged model `name` in the cache: ok, missing, unverified or damaged.

    The quick check by default; `full` compares every file's whole SHA-256 (`promptlab models verify`).
    """
    entry = get_model(name)
    return check_folder(
        entry.local_dir(cache_dir), artifact_sha256=entry.sha256, full=full, hash_cache=_hash_cache(cache_dir)
    )


def _repair_fix(spec: str, folder: Path, state: FolderState) -> PromptlabError:
    return PromptlabError(
        f"the converted files of {spec} in {folder} cannot be used: {state.problem}; run "
        f"`promptlab models pull {spec}` to convert them again."
    )


def _cached_wheels(entry, downloads: Path) -> list | None:
    """The entry's wheels when all of them are still in `downloads` (they are verified after assembly)."""
    try:
        return find_wheels(entry.packages, downloads)
    except PromptlabError:
        return None


def pull_model(
    name: str, *, cache_dir: str | Path | None = None, progress: bool = True, full: bool = False
) -> Path:
    """Fetch, verify and convert the packaged model `name` into the cache; return its loadable dir.

    Idempotent: a model already pulled, whose files pass the check against the hashes recorded at
    conversion (`full`: every file's whole SHA-256), returns at once; a damaged one is converted again.
    Wheels still in the download folder are used without asking PyPI. Concurrent pulls of one model
    wait for each other.
    """
    entry = get_model(name)
    final = entry.local_dir(cache_dir)
    if model_state(name, cache_dir=cache_dir, full=full).ok:
        return final
    root = cache_root(cache_dir)
    with file_lock(root / "models" / f".{name}.lock"):
        state = model_state(name, cache_dir=cache_dir, full=full)
        if state.ok:  # another process finished it while we waited
            return final
        if state.status != MISSING:
            step(f"{entry.name} in {final}: {state.problem}; converting it again…", progress)
        for stale in final.parent.glob(f".tmp-{name}-*"):  # left by an interrupted pull
            shutil.rmtree(stale, ignore_errors=True)
        downloads = root / "downloads" / name
        wheels = _cached_wheels(entry, downloads)
        if wheels is None:
            size = f"{len(entry.packages)} package(s), {entry.size / 2**20:.0f} MB"
            step(f"downloading {entry.name} ({size})…", progress)
            wheels = pip_download(entry.packages, downloads, progress=progress)
        with staging_dir(final) as work:
            artifact = work / "artifact" / entry.artifact
            step(f"assembling {entry.artifact}…", progress)
            assemble(entry, wheels, artifact, progress=progress)
            step("verifying SHA-256…", progress)
            fix = f"delete {downloads} and run `promptlab models pull {name}` again"
            verify_sha256(artifact, entry.sha256, fix=fix)
            model_dir = work / "model"
            facts = {}
            if entry.format == "gguf":
                step(f"converting GGUF to {entry.dtype} safetensors (a minute or more)…", progress)
                facts = convert_gguf(artifact, model_dir, dtype=entry.dtype, progress=progress)
            elif entry.assembly == "split-zip":
                step("unzipping…", progress)
                extract_zip(artifact, work / "unzipped")
                copy_model_dir(find_model_dir(work / "unzipped"), model_dir)
            else:  # wheel-dir: the artifact is already the model dir
                copy_model_dir(find_model_dir(artifact), model_dir)
            write_manifest(
                model_dir,
                name=entry.name,
                source="packaged",
                upstream=entry.upstream,
                packages=list(entry.packages),
                artifact=entry.artifact,
                artifact_sha256=entry.sha256,
                format=entry.format,
                **facts,
                promptlab_version=__version__,
            )
            install(model_dir, final)
        if sum(p.stat().st_size for p in downloads.glob("*")) > KEEP_DOWNLOADS_BELOW:
            shutil.rmtree(downloads, ignore_errors=True)
    step(f"{entry.name} ready in {final}", progress)
    return final


def _gguf_folder(digest: str, cache_dir, full: bool) -> tuple[Path, FolderState]:
    final = cache_root(cache_dir) / "gguf" / digest[:16]
    state = check_folder(final, artifact_sha256=digest, full=full, hash_cache=_hash_cache(cache_dir))
    return final, state


def convert_gguf_file(
    gguf_file: str | Path, *, cache_dir: str | Path | None = None, progress: bool = True, full: bool = False
) -> Path:
    """Convert a user's GGUF file once into the cache (keyed by its SHA-256); return the loadable dir.

    A converted folder that fails the check against the hashes recorded at conversion (`full`: every
    file's whole SHA-256) is converted again.
    """
    path = Path(gguf_file).expanduser().resolve()
    if not path.is_file():
        raise PromptlabError(f"GGUF file {path} does not exist; check the path.")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":  # every GGUF file starts with these four bytes
        raise PromptlabError(
            f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'); pass a llama.cpp .gguf "
            "model file, or a transformers model folder or hub id."
        )
    root = cache_root(cache_dir)
    digest = _hash_cache(cache_dir).sha256(path)
    final, state = _gguf_folder(digest, cache_dir, full)
    if state.ok:
        return final
    with file_lock(root / "gguf" / f".{digest[:16]}.lock"):
        final, state = _gguf_folder(digest, cache_dir, full)
        if state.ok:
            return final
        if state.status != MISSING:
            step(f"{final}: {state.problem}; converting {path.name} again…", progress)
        with staging_dir(final) as work:
            step(f"converting {path.name} to safetensors (once; cached in {final})…", progress)
            facts = convert_gguf(path, work / "model", progress=progress)
            write_manifest(work / "model", name=path.stem, source="gguf", gguf_file=str(path),
                           artifact_sha256=digest, **facts, promptlab_version=__version__)  # fmt: skip
            install(work / "model", final)
    return final


def _not_found(spec: str) -> PromptlabError:
    base = str(unknown_name("model", spec, [m.name for m in list_models()])).rstrip(".")
    return PromptlabError(f"{base}; or pass a local directory, a .gguf file or a hub id (org/name).")


def resolve_model(
    spec: str, *, cache_dir: str | Path | None = None, pull: bool = True, full: bool = False
) -> ResolvedModel:
    """Resolve `spec` to a loadable model, in this order:

    1. a catalog name (`promptlab models list`): pulled on first use when `pull`, then read from the cache;
    2. an existing local directory with a config.json: used as is;
    3. a path ending in `.gguf`: converted once into the cache, keyed by the file's SHA-256;
    4. a hub id `org/name` (optionally `@revision`): left for transformers to fetch; no network call here.

    A converted folder (1, 3) is checked against the hashes recorded at conversion (`full`: every file's
    whole SHA-256, else the quick check); when it fails, it is converted again from the GGUF file or the
    wheels still in the download folder, or refused with the command that repairs it.
    """
    root = cache_root(cache_dir)
    if is_catalog_name(spec):
        entry = get_model(spec)
        folder = entry.local_dir(cache_dir)
        state = model_state(spec, cache_dir=cache_dir, full=full)
        if not state.ok:
            if state.status == MISSING and not pull:
                raise PromptlabError(f"model {spec!r} is not pulled yet; run `promptlab models pull {spec}`.")
            if state.status != MISSING and _cached_wheels(entry, root / "downloads" / spec) is None:
                raise _repair_fix(spec, folder, state)
            pull_model(spec, cache_dir=cache_dir, full=full)
            state = model_state(spec, cache_dir=cache_dir)
            if not state.ok:
                raise _repair_fix(spec, folder, state)
        return ResolvedModel(spec, entry.name, str(folder), "packaged", entry.sha256, None, state.sha256)

    path = Path(spec).expanduser()
    if path.is_dir():
        path = path.resolve()
        if not (path / "config.json").is_file():
            raise PromptlabError(f"{spec} has no config.json; pass a transformers model dir or a .gguf file.")
        weights = weight_files(path)
        if not weights:
            raise PromptlabError(f"{spec} has no weights (*.safetensors, *.bin); pass a complete model dir.")
        digest = FileHashCache(root / "hashes.json").sha256_tree(path, weights)
        return ResolvedModel(spec, path.name, str(path), "local", digest)

    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise PromptlabError(f"GGUF file {spec} does not exist; check the path.")
        digest = _hash_cache(cache_dir).sha256(path)
        final, state = _gguf_folder(digest, cache_dir, full)
        if not state.ok:
            if state.status == MISSING and not pull:
                raise PromptlabError(f"{spec} is not converted yet; run `promptlab models pull {spec}`.")
            final = convert_gguf_file(path, cache_dir=cache_dir, full=full)
            final, state = _gguf_folder(digest, cache_dir, False)
            if not state.ok:
                raise _repair_fix(spec, final, state)
        return ResolvedModel(spec, path.stem, str(final), "gguf", digest, None, state.sha256)

    hub = _HUB_ID.match(spec)
    if hub and not path.exists() and not spec.startswith((".", "~")):
        return ResolvedModel(spec, hub["id"], hub["id"], "hub", None, hub["rev"])

    if path.is_file():
        raise PromptlabError(f"{spec} is a file; pass the model directory (config.json) or a .gguf file.")
    raise _not_found(spec)
