"""A saved `Embedder` is a folder: a versioned config that rebuilds the same embedder, and its adapter.

``promptlab_embedder.json`` records what the vectors depend on: the model (its spec and SHA-256), the
template (its full text, kind, pooling and input rules, a demonstration already solved into the text), the
layer, the token budget, dtype, quantization and backend. A LoRA adapter is copied beside it into
``adapter/``. Loading checks the model against the recorded SHA-256 and refuses a mismatch, so a folder
never silently embeds with other weights; runtime options (device, batch sizes, cache) are not saved and
can be given at load time.

A fine-tuning adapter folder (``promptlab finetune``'s ``best/``, with ``promptlab_adapter.json``) loads
as an embedder too: its base model, template and layer are the ones it was trained with.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptlab.errors import PromptlabError

if TYPE_CHECKING:
    from promptlab.embedder import Embedder

CONFIG_NAME = "promptlab_embedder.json"
FORMAT = "promptlab-embedder"
FORMAT_VERSION = 1
ADAPTER_DIR = "adapter"
# Options that change only speed or placement, never the vectors: given at load time, not saved.
RUNTIME_OPTIONS = (
    "device",
    "batch_size",
    "batch_tokens",
    "padding_side",
    "prefix_cache",
    "cache_dir",
    "compile",
    "merge_adapter",
    "engine_options",
)
# Options that change the vectors: saved, and overridable at load time only by naming them.
OVERRIDES = (
    "template",
    "layer",
    "pooling",
    "max_length",
    "dtype",
    "quantization",
    "backend",
    "demonstration",
)
_UNBOUNDED = 10**8  # a tokenizer without a length limit reports a huge max_length: saved as None


# -- saving -------------------------------------------------------------------------------------------------
def template_record(template) -> dict[str, Any]:
    return {
        "name": template.name,
        "kind": template.kind,
        "text": template.text,
        "pooling": template.pooling,
        "normalize": template.normalize,
        "paper": template.paper,
        "members": list(template.members),
    }


def _model_record(described: dict[str, Any]) -> dict[str, Any]:
    spec = described.get("model_spec")
    if not spec:
        raise PromptlabError(
            "this embedder's model was given as a ready backend, so nothing records where its weights come "
            "from; build the Embedder from a model spec (packaged name, local dir, .gguf, hub id) to save it."
        )
    source = described.get("model_source")
    if source == "local":
        spec = described["model_path"]  # absolute: the folder loads from any working directory
    elif source == "gguf":
        spec = str(Path(spec).expanduser().resolve())
    record = {
        "spec": spec,
        "name": described.get("model"),
        "source": source,
        "revision": described.get("model_revision"),
        "sha256": described.get("model_file_sha256"),
        "architecture": described.get("architecture"),
        "num_layers": described.get("num_layers"),
        "hidden_size": described.get("hidden_size"),
    }
    if source in ("packaged", "gguf"):  # the catalog/GGUF hash covers the download; this the converted dir
        record["weights_sha256"] = _weights_sha256(Path(described["model_path"]))
    return record


def _weights_sha256(folder: Path) -> str:
    from promptlab.models.convert import weight_files
    from promptlab.models.hashing import FileHashCache
    from promptlab.models.paths import cache_root

    return FileHashCache(cache_root() / "hashes.json").sha256_tree(folder, weight_files(folder))


def embedder_config(embedder: Embedder) -> dict[str, Any]:
    """The versioned config of a saved embedder (without the adapter's new location)."""
    from promptlab.version import __version__

    described = embedder.describe()
    max_length = embedder.prompts.max_length
    members = {}
    for member in embedder.members:
        members[member.template.name] = template_record(member.template)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "promptlab": __version__,
        "model": _model_record(described),
        "template": template_record(embedder.template),
        "template_members": members,
        "demonstration": described.get("demonstration"),
        "layer": embedder.layer,
        "max_length": None if max_length is None or max_length >= _UNBOUNDED else max_length,
        "dtype": described.get("dtype"),
        "quantization": described.get("quantization"),
        "backend": described.get("backend", "transformers"),
        "adapter": None,
    }


def save_embedder(embedder: Embedder, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``embedder`` as a folder: ``promptlab_embedder.json`` and, if it has one, ``adapter/``."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise PromptlabError(f"{folder} already exists and is not empty; pass overwrite=True / --overwrite.")
    config = embedder_config(embedder)
    described = embedder.describe()
    adapter = described.get("adapter")
    if not folder.parent.exists():
        raise PromptlabError(f"folder {folder.parent} does not exist; create it or choose another output.")
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if adapter:
            shutil.copytree(adapter, staging / ADAPTER_DIR)
            config["adapter"] = {
                "path": ADAPTER_DIR,
                "sha256": described.get("adapter_sha256"),
                "merged": bool(described.get("adapter_merged")),
            }
        text = json.dumps(config, indent=2, default=str) + "\n"
        (staging / CONFIG_NAME).write_text(text, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


# -- loading ------------------------------------------------------------------------------------------------
def read_config(folder: str | Path) -> dict[str, Any]:
    """The saved config of an embedder folder, or one built from a fine-tuning adapter folder."""
    from promptlab.adapters import ADAPTER_META

    folder = Path(folder)
    path = folder / CONFIG_NAME
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise PromptlabError(f"{path} is not valid JSON ({err.msg}); save the embedder again.") from None
        _check_version(config, path)
        return config
    if (folder / ADAPTER_META).is_file():
        return _adapter_config(folder)
    if not folder.is_dir():
        raise PromptlabError(
            f"{folder} does not exist; pass a folder written by Embedder.save / `promptlab export`."
        )
    raise PromptlabError(
        f"{folder} has neither {CONFIG_NAME} nor {ADAPTER_META}; pass a folder written by Embedder.save / "
        "`promptlab export`, or the best/ folder of a `promptlab finetune` run."
    )


def _check_version(config: dict, path: Path) -> None:
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PromptlabError(f"{path} is not a promptlab embedder config; save the embedder again.")
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise PromptlabError(f"{path} has no valid format_version; save the embedder again.")
    if version > FORMAT_VERSION:
        raise PromptlabError(
            f"{path} is format version {version}, newer than this promptlab reads ({FORMAT_VERSION}); "
            f"upgrade promptlab (it was saved by promptlab {config.get('promptlab', '?')})."
        )


def _adapter_config(folder: Path) -> dict[str, Any]:
    """An embedder config for a fine-tuning adapter folder: its base, template and layer as trained."""
    from promptlab.adapters import read_adapter_meta

    meta = read_adapter_meta(folder)
    base = meta.get("base") or {}
    trained = meta.get("config") or {}
    spec = trained.get("model") or base.get("model")
    if not spec:
        raise PromptlabError(
            f"{folder} does not record its base model; load it with --model NAME --adapter {folder}."
        )
    template = meta.get("template") or {}
    quantization = trained.get("quantization")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {
            "spec": spec,
            "name": base.get("model"),
            "sha256": base.get("model_file_sha256"),
        },
        "template": {
            "name": template.get("name"),
            "kind": template.get("kind"),
            "text": template.get("text"),
            "pooling": template.get("pooling"),
        }
        if template.get("text")
        else None,
        "template_members": {},
        "demonstration": None,
        "layer": meta.get("layer", -1),
        "max_length": trained.get("max_length"),
        "dtype": trained.get("dtype", "auto"),
        "quantization": None if quantization in (None, "none") else quantization,
        "backend": "transformers",
        "adapter": {"path": ".", "sha256": None, "merged": False},
    }


def _template(record: dict[str, Any] | None, members: dict[str, Any]):
    """The saved `Template`, exactly as saved (not looked up again in a registry that may have changed)."""
    from promptlab.registry import default_registry
    from promptlab.templates import Template

    if record is None:
        return None
    if record.get("kind") == "ensemble":
        registry = default_registry()
        for name, member in members.items():
            current = registry.get(name) if name in registry else None
            if current is None or current.text != member["text"]:
                raise PromptlabError(
                    f"the saved ensemble's member template {name!r} is no longer in the registry with the text "
                    "it was saved with; restore that template, or save the embedder again."
                )
    normalize = record.get("normalize")
    if normalize is None:  # an adapter folder records no input rules: the registry template's, if it is one
        registry = default_registry()
        known = registry.get(record["name"]) if record.get("name") in registry else None
        normalize = known.normalize if known is not None and known.text == record["text"] else True
    return Template(
        name=record.get("name") or "custom",
        kind=record["kind"],
        text=record.get("text") or "",
        paper=record.get("paper") or "",
        pooling=record.get("pooling"),
        normalize=normalize,
        members=tuple(record.get("members") or ()),
        source="saved embedder",
    )


def _resolve_checked(model: dict[str, Any], folder: Path):
    """The saved model, resolved, after checking its SHA-256 against the one recorded."""
    from promptlab.models import resolve_model

    resolved = resolve_model(model["spec"])
    expected = model.get("sha256")
    fix = (
        f"the embedder in {folder} was saved with other weights; restore the original model, or rebuild the "
        "embedder on this one and save it again."
    )
    if expected and resolved.file_hash != expected:
        raise PromptlabError(
            f"model {model['spec']!r} has SHA-256 {str(resolved.file_hash)[:12]}…, not {expected[:12]}… as "
            f"saved: {fix}"
        )
    weights = model.get("weights_sha256")
    if weights and _weights_sha256(Path(resolved.path)) != weights:
        raise PromptlabError(f"the weight files of model {model['spec']!r} in {resolved.path} changed: {fix}")
    return resolved


def _check_adapter(adapter: dict[str, Any], path: Path) -> None:
    from promptlab.models.hashing import sha256_file

    expected = adapter.get("sha256")
    weights = path / "adapter_model.safetensors"
    if expected and (not weights.is_file() or sha256_file(weights) != expected):
        raise PromptlabError(
            f"the adapter weights in {path} do not match the SHA-256 saved with the embedder; save it again."
        )


def load_embedder(embedder_class: type[Embedder], folder: str | Path, **options) -> Embedder:
    """Rebuild a saved embedder (or a fine-tuning adapter folder) from ``folder`` (`Embedder.load`).

    ``options``: runtime options of `Embedder` (``device``, ``batch_size``, ``cache_dir``…) and, named
    explicitly, overrides of what was saved (``template``, ``layer``, ``max_length``, ``dtype``…).
    """
    folder = Path(folder)
    unknown = set(options) - set(RUNTIME_OPTIONS) - set(OVERRIDES) - {"normalize_input"}
    if unknown:
        raise PromptlabError(
            f"unknown option(s) {', '.join(sorted(unknown))} for a saved embedder; "
            f"choose from {', '.join(RUNTIME_OPTIONS + OVERRIDES)}."
        )
    config = read_config(folder)
    template = _template(config.get("template"), config.get("template_members") or {})
    overridden = {k: v for k, v in options.items() if k in OVERRIDES}
    saved_demo = config.get("demonstration")
    demonstration = overridden.pop("demonstration", None)
    if "template" in overridden:  # a new template keeps the saved demonstration unless that is named too
        template = overridden.pop("template")
        if demonstration is None and saved_demo:
            from promptlab.demonstrations import Demonstration

            demonstration = Demonstration(**saved_demo)
    elif demonstration is not None and saved_demo:
        raise PromptlabError(
            f"the template saved in {folder} already includes demonstration {saved_demo.get('id')!r}; to "
            "change the demonstration, name the template too (template=..., --template)."
        )
    template = "prompteol" if template is None else template
    resolved = _resolve_checked(config["model"], folder)
    adapter = config.get("adapter")
    adapter_path = None
    if adapter:
        adapter_path = (folder / adapter.get("path", ADAPTER_DIR)).resolve()
        _check_adapter(adapter, adapter_path)
    runtime = {k: v for k, v in options.items() if k in RUNTIME_OPTIONS or k == "normalize_input"}
    if adapter and adapter.get("merged") and "merge_adapter" not in runtime:
        runtime["merge_adapter"] = True
    embedder = embedder_class(
        resolved,
        template,
        layer=overridden.pop("layer", config.get("layer", -1)),
        dtype=overridden.pop("dtype", None) or config.get("dtype") or "auto",
        pooling=overridden.pop("pooling", None),
        backend=overridden.pop("backend", None) or config.get("backend") or "transformers",
        max_length=overridden.pop("max_length", None) or config.get("max_length"),
        quantization=overridden.pop("quantization", None) or config.get("quantization"),
        adapter=str(adapter_path) if adapter_path else None,
        demonstration=demonstration,
        **runtime,
    )
    if demonstration is None and saved_demo:
        from promptlab.demonstrations import Demonstration

        embedder.demonstration = Demonstration(**saved_demo)  # already solved into the saved template text
    return embedder
