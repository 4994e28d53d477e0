"""Turn an artifact into a directory that transformers' `from_pretrained` loads offline in seconds.

GGUF files are dequantized by transformers (`from_pretrained(dir, gguf_file=...)`), which takes 15-40 s
per load; the dequantized model cannot be saved directly ("not serializable": it keeps the GGUF
quantization config), so it is copied into a fresh model built from the config and saved as safetensors.
Every output is built in a temp dir beside its destination and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from promptlab.errors import PromptlabError
from promptlab.models.integrity import FILES, record_files
from promptlab.models.paths import MANIFEST

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
JUNK = {"desktop.ini", "Thumbs.db", ".DS_Store", ".gitattributes"}
AUTO_FLOAT32_MAX_PARAMS = 600_000_000  # keep float32 up to ~0.5B parameters, bfloat16 above


def weight_files(folder: Path) -> list[Path]:
    """Weight files under `folder` (safetensors, PyTorch .bin/.pt, ...), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A temp dir beside `final`, removed on exit; `install(staged, final)` it once it is complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install(staged: Path, final: Path) -> Path:
    """Move the complete dir `staged` to `final` by rename (replacing an old `final`)."""
    for path in staged.rglob("*"):
        if path.is_file():  # save_pretrained writes 0600 files; colleagues sharing a cache need to read them
            path.chmod(0o644)
    staged.chmod(0o755)
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(staged, final)
    return final


def write_manifest(folder: Path, **fields) -> None:
    """`promptlab.json`: where the dir came from, and the size and hashes of each of its files (see
    `integrity.py`). Written last, so its presence marks a complete dir."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = {**fields, "created": created, FILES: record_files(folder)}
    (folder / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")


def find_model_dir(root: Path) -> Path:
    """The one directory under `root` (shallowest first) holding a config.json beside weight files."""
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    candidates = [p.parent for p in configs if any(w.parent == p.parent for w in weight_files(p.parent))]
    if not candidates:
        raise PromptlabError(
            f"no transformers model (config.json beside weights) inside {root}; the package changed: "
            "update promptlab/models/catalog.toml."
        )
    return candidates[0]


def copy_model_dir(src: Path, dst: Path) -> Path:
    """Copy a transformers model dir (weights, config, tokenizer, sentence-transformers files), minus junk."""
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.name not in JUNK:
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dst


def convert_gguf(gguf_file: Path, out: Path, *, dtype: str | None = None, progress: bool = True) -> dict:
    """Dequantize `gguf_file` into a safetensors model dir `out` (model, config, tokenizer); return facts.

    `dtype`: "float32" or "bfloat16"; None picks float32 up to ~0.5B parameters, bfloat16 above.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def quiet():
        return contextlib.nullcontext() if progress else _quiet_transformers(transformers)

    with quiet():
        source = AutoModelForCausalLM.from_pretrained(
            str(gguf_file.parent), gguf_file=gguf_file.name, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf_file.parent), gguf_file=gguf_file.name, local_files_only=True
        )
    _honour_gguf_bos_eos(tokenizer, gguf_file)
    n_params = sum(p.numel() for p in source.parameters())
    if dtype is None:
        dtype = "float32" if n_params <= AUTO_FLOAT32_MAX_PARAMS else "bfloat16"
    config = source.config
    # The dequantized weights are plain floats: drop the GGUF quantization config that blocks saving.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    fresh.load_state_dict(source.state_dict(), strict=True)  # casts to `dtype`; tied weights stay tied
    fresh.generation_config = source.generation_config
    del source
    gc.collect()
    out.mkdir(parents=True, exist_ok=True)
    with quiet():
        fresh.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return {"architecture": config.model_type, "params": n_params, "dtype": dtype}


def _honour_gguf_bos_eos(tokenizer, gguf_file: Path) -> None:
    """Apply the GGUF's `tokenizer.ggml.add_bos_token` / `add_eos_token` flags to the converted tokenizer.

    transformers' GGUF tokenizer conversion drops them (Gemma's GGUF says add BOS; the converted tokenizer
    would not, and Gemma degrades badly without its BOS).
    """
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_file)).fields
    changed = False
    for flag in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{flag}")
        if field is not None and hasattr(tokenizer, flag):
            wanted = bool(field.parts[field.data[0]][0])
            if getattr(tokenizer, flag) != wanted:
                setattr(tokenizer, flag, wanted)
                changed = True
    if changed and hasattr(tokenizer, "update_post_processor"):
        tokenizer.update_post_processor()


@contextlib.contextmanager
def _quiet_transformers(transformers) -> Iterator[None]:
    utils = transformers.utils.logging
    bars, level = utils.is_progress_bar_enabled(), utils.get_verbosity()
    utils.disable_progress_bar()
    utils.set_verbosity_error()
    try:
        # The GGUF dequantization bar is a plain tqdm that ignores transformers' switch.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            yield
    finally:
        utils.set_verbosity(level)
        if bars:
            utils.enable_progress_bar()
