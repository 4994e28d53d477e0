"""LoRA adapter folders (Hu et al., 2021), as `promptlab finetune` writes them, and attaching one to a backend.

An adapter folder holds peft's ``adapter_config.json`` + ``adapter_model.safetensors`` and our
``promptlab_adapter.json``: the base model's identity, the template and layer trained, and the full
fine-tuning config. `attach_adapter` refuses an adapter whose base differs from the model given, and
attaches the adapter through the backend's training contract (`promptlab.backends.base.TrainableBackend`).
Inference needs only this module; training (`promptlab.finetune`) writes the folders.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptlab.errors import PromptlabError

if TYPE_CHECKING:
    from promptlab.backends.base import TrainableBackend

ADAPTER_META = "promptlab_adapter.json"
_IDENTITY = ("model", "model_file_sha256", "architecture", "num_layers", "hidden_size")


def require(module: str, extra: str):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PromptlabError(f"{module} is not installed; pip install 'promptlab[{extra}]'.") from None


# -- identity ----------------------------------------------------------------------------------------------
def base_identity(backend) -> dict[str, Any]:
    described = backend.describe()
    return {k: described.get(k) for k in _IDENTITY}


def same_base(a: dict, b: dict) -> bool:
    if a.get("model_file_sha256") and b.get("model_file_sha256"):
        return a["model_file_sha256"] == b["model_file_sha256"]
    return all(a.get(k) == b.get(k) for k in ("model", "architecture", "num_layers", "hidden_size"))


def _describe_base(identity: dict) -> str:
    sha = identity.get("model_file_sha256")
    return (
        f"{identity.get('model')!r} ({identity.get('architecture')}, {identity.get('num_layers')} layers"
        + (f", sha256 {sha[:12]}…)" if sha else ")")
    )


# -- reading -----------------------------------------------------------------------------------------------
def read_adapter_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise PromptlabError(
            f"{folder} is not a LoRA adapter folder (no adapter_config.json); pass the `best/` folder of a "
            "`promptlab finetune` run or another peft adapter."
        )
    _check_adapter_files(folder)
    meta = folder / ADAPTER_META
    return _read_json(meta) if meta.is_file() else {}


_ADAPTER_FIX = (
    "pass the `best/` folder of a `promptlab finetune` run, or a folder saved by peft's save_pretrained"
)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PromptlabError(f"{path} is not valid JSON ({err}); {_ADAPTER_FIX}.") from None


def _check_adapter_files(folder: Path) -> None:
    """Refuse an adapter folder peft cannot load, naming the file at fault."""
    config_path = folder / "adapter_config.json"
    config = _read_json(config_path)
    if not isinstance(config, dict) or "peft_type" not in config:
        raise PromptlabError(
            f"{config_path} has no peft_type, so it is no peft adapter config; {_ADAPTER_FIX}."
        )
    if config["peft_type"] != "LORA":
        raise PromptlabError(
            f"{config_path}: peft_type {config['peft_type']!r} is not 'LORA'; promptlab loads LoRA adapters only: pass a LoRA adapter folder."
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        if (folder / "adapter_model.bin").is_file():
            return  # peft's older pickle format: read by peft itself
        raise PromptlabError(f"{folder} has no adapter weights (adapter_model.safetensors); {_ADAPTER_FIX}.")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise PromptlabError(
            f"{weights} is not a readable safetensors file ({err}); the file is damaged: copy the adapter "
            "folder again, or train it again."
        ) from None


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- attaching ---------------------------------------------------------------------------------------------
def attach_adapter(
    backend: TrainableBackend,
    folder: str | Path,
    *,
    merge: bool = False,
    template=None,
    layer: int | None = None,
) -> TrainableBackend:
    """Load a LoRA adapter onto the backend's model (refusing a different base); ``merge`` folds it in.

    The adapter goes in through the training contract (`TrainableBackend.model` and `replace_model`), so a
    backend that declares ``capabilities.adapters`` needs nothing else for it.
    """
    peft = require("peft", "train")
    folder = Path(folder)
    meta = read_adapter_meta(folder)
    base = meta.get("base")
    if base is None:
        warnings.warn(
            f"{folder} has no {ADAPTER_META}: cannot check that it was trained on this model.", stacklevel=3
        )
    else:
        mine = base_identity(backend)
        if not same_base(base, mine):
            raise PromptlabError(
                f"adapter {folder} was trained on {_describe_base(base)}, but the model given is "
                f"{_describe_base(mine)}; load the adapter with --model {base.get('model')}."
            )
    trained = meta.get("template", {})
    if template is not None and trained and trained.get("text") != template.text:
        warnings.warn(
            f"adapter {folder} was trained with template {trained.get('name')!r} ({trained.get('text')!r}); "
            f"embedding with {template.name!r} instead.",
            stacklevel=3,
        )
    if layer is not None and "layer" in meta and meta["layer"] != layer:
        warnings.warn(
            f"adapter {folder} was trained at layer {meta['layer']}; reading layer {layer}.", stacklevel=3
        )
    model = backend.model
    dequantized = {}
    if merge:
        from promptlab.backends.quantization import dequantize_4bit_layers

        # Merged exactly into the weights the 4-bit layers compute with, not quantized again (see there).
        if dequantize_4bit_layers(model):
            dequantized = {"adapter_merged_into": "dequantized 4-bit weights"}
    try:
        peft_model = peft.PeftModel.from_pretrained(model, str(folder))  # injects LoRA into `model` in place
    except (KeyError, ValueError, RuntimeError) as err:  # a config peft rejects, weights of other shapes
        raise PromptlabError(
            f"peft cannot load the adapter in {folder} onto this model ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else 'no details'}); {_ADAPTER_FIX} for this model."
        ) from None
    if merge:
        model = peft_model.merge_and_unload()
    info = {
        "adapter": str(folder),
        "adapter_sha256": _file_sha256(folder / "adapter_model.safetensors"),
        "adapter_merged": merge,
        **dequantized,
    }
    backend.replace_model(model, info=info)
    return backend
