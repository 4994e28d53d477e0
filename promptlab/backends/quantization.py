"""Quantized linear layers behind the same `Embedder` and CLI as full-precision models.

Two libraries run them (`QUANTIZATIONS` is the table the CLI's choices and the checks read):

- bitsandbytes, placed while transformers loads the model (a ``BitsAndBytesConfig``): ``int8`` (LLM.int8,
  Dettmers et al., 2022) and 4-bit ``nf4``/``fp4`` (QLoRA, Dettmers et al., 2023).
- torchao, applied to the loaded model: ``int8-weight-only`` stores every ``nn.Linear`` weight in int8 with
  one scale per output row (torchao's ``Int8WeightOnlyConfig``); activations stay in the model's dtype, so
  a sentence's vector does not depend on the sentences batched with it, and it stays within a cosine of
  0.999 of float32.

All of them save memory (the weights of a billion-parameter base), none is faster than float32 on a CPU
without int8 matrix instructions: `experiments/bench/int8-candidates.md` measures the int8 routes on
SmolLM2-135M. Routes that also quantize activations per batch (torch's ``quantize_dynamic``) were faster
there but cost most of the STS score.

`check_quantization` is a cached availability check (as in peft's ``is_bnb_available``) that runs one
tiny quantized layer on the target device, so a missing package or a platform that cannot serve fails at
load time with a message that says what to install, instead of deep inside a forward pass.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from promptlab.errors import PromptlabError, unknown_name

INSTALL_HINT = "pip install 'promptlab[quant]'"  # bitsandbytes
TORCHAO_HINT = "pip install 'promptlab[torchao]'"


@dataclass(frozen=True)
class Quantization:
    """One ``--quantization`` value: which library runs it and how it is applied."""

    name: str
    library: str  # the package whose kernels run it: "bitsandbytes" | "torchao"
    summary: str  # what it is, for --help
    at_load: bool  # True: a ``quantization_config`` for ``from_pretrained``; False: rewrites a loaded model
    four_bit: bool = False  # bitsandbytes 4-bit layers: `dequantize_4bit_layers` gives their exact weights


QUANTIZATIONS: dict[str, Quantization] = {
    q.name: q
    for q in (
        Quantization("int8", "bitsandbytes", "LLM.int8", at_load=True),
        Quantization("nf4", "bitsandbytes", "4-bit NormalFloat", at_load=True, four_bit=True),
        Quantization("fp4", "bitsandbytes", "4-bit float", at_load=True, four_bit=True),
        Quantization("int8-weight-only", "torchao", "int8 weights, activations unquantized", at_load=False),
    )
}
FOUR_BIT = tuple(q.name for q in QUANTIZATIONS.values() if q.four_bit)
QUANTIZATION_HELP = "; ".join(f"{q.name}: {q.summary} ({q.library})" for q in QUANTIZATIONS.values())


def validate_quantization(name: str | None) -> str | None:
    """None (no quantization) or one of `QUANTIZATIONS`; anything else is refused with the choices."""
    if name is None or name in ("", "none"):
        return None
    if name not in QUANTIZATIONS:
        raise unknown_name("quantization", name, QUANTIZATIONS)
    return name


def _version(package: str) -> str | None:
    if importlib.util.find_spec(package) is None:
        return None
    from importlib.metadata import version

    return version(package)


def bitsandbytes_version() -> str | None:
    return _version("bitsandbytes")


def torchao_version() -> str | None:
    return _version("torchao")


@functools.cache
def check_quantization(name: str, device: str = "cpu") -> str:
    """Raise `PromptlabError` unless ``name`` can run on ``device`` here; return its library's version."""
    name = validate_quantization(name)
    if QUANTIZATIONS[name].library == "torchao":
        return _check_torchao(name, device)
    found = bitsandbytes_version()
    if found is None:
        raise PromptlabError(
            f"--quantization {name} needs bitsandbytes, which is not installed; run `{INSTALL_HINT}`."
        )
    import torch

    try:
        import bitsandbytes as bnb

        with torch.inference_mode():
            if name == "int8":
                layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False, threshold=6.0)
            else:
                layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type=name, compute_dtype=torch.float32)
            layer = layer.to(device)  # quantizes the weight
            layer(torch.randn(2, 64, device=device))
    except Exception as err:  # bitsandbytes reports an unsupported platform in many ways
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PromptlabError(
            f"bitsandbytes {found} cannot run {name} on {device} here ({first}); use a CUDA GPU, upgrade "
            f"with `{INSTALL_HINT}` (bitsandbytes >= 0.45 runs 8/4-bit on CPU), or drop --quantization."
        ) from None
    if name == "int8":  # said once per matmul on CPU; the cast is how LLM.int8 runs there
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    return found


def _check_torchao(name: str, device: str) -> str:
    found = torchao_version()
    if found is None:
        raise PromptlabError(
            f"--quantization {name} needs torchao, which is not installed; run `{TORCHAO_HINT}`."
        )
    import torch

    try:
        with torch.inference_mode():
            layer = _quantize_int8_weights(torch.nn.Sequential(torch.nn.Linear(64, 64)).to(device))
            layer(torch.randn(2, 64, device=device))
    except Exception as err:  # a torchao built for another torch, a device it has no kernel for
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PromptlabError(
            f"torchao {found} cannot run {name} on {device} with torch {torch.__version__} ({first}); "
            f"install a torchao built for this torch (`{TORCHAO_HINT}`) or drop --quantization."
        ) from None
    return found


def _quantize_int8_weights(model):
    """``model`` with every ``nn.Linear`` weight in int8, one scale per output row (in place)."""
    import logging

    # torchao logs, at import, each CUDA kernel library it cannot load on this machine: not our users' concern.
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    quantize_(model, Int8WeightOnlyConfig())
    return model


def load_options(name: str, compute_dtype: Any, device: str) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for ``name`` (empty for a quantization applied after loading)."""
    if not QUANTIZATIONS[validate_quantization(name)].at_load:
        return {}
    # Quantized weights are placed while loading; `.to(device)` is refused on them afterwards.
    return {"quantization_config": bitsandbytes_config(name, compute_dtype), "device_map": {"": device}}


def finish_loading(model, name: str, device: str):
    """The loaded ``model``, quantized by ``name`` if that happens after loading, on ``device``."""
    if QUANTIZATIONS[validate_quantization(name)].at_load:
        return model  # bitsandbytes placed and quantized it while loading
    return _quantize_int8_weights(model.to(device))


def is_4bit_layer(module) -> bool:
    """Whether ``module`` is one of bitsandbytes' own 4-bit linear layers (not peft's LoRA wrapper around one,
    which shows the same weight)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__module__.startswith("bitsandbytes")
        and getattr(weight, "quant_state", None) is not None
    )


def linear_4bit_layers(model) -> list:
    """The bitsandbytes 4-bit linear layers of ``model``."""
    return [m for m in model.modules() if is_4bit_layer(m)]


def repacked_for_inference(layer) -> bool:
    """Whether bitsandbytes repacked this 4-bit layer's weight into its CPU inference layout (it does so on
    the first forward in eval mode without grad on a CPU with AVX512-BF16); that cannot be undone exactly."""
    return bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))


@contextmanager
def unpacked_4bit_layers(model):
    """Run no-grad forwards that leave ``model``'s 4-bit weights in their trainable layout: the 4-bit layers
    stay in train mode meanwhile (they have no dropout; the flag only gates bitsandbytes' repacking), so a
    probe of a freshly loaded model does not make it untrainable (`promptlab.finetune.lora`)."""
    layers = [(layer, layer.training) for layer in linear_4bit_layers(model)]
    for layer, _ in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer, was_training in layers:
            layer.training = was_training


def dequantize_4bit_layers(model) -> int:
    """Replace each bitsandbytes 4-bit linear layer of ``model`` by an ``nn.Linear`` holding its weight
    dequantized to the layer's compute dtype (in place); return how many were replaced.

    On a CPU without AVX512-BF16 a 4-bit layer computes exactly this (it dequantizes, then multiplies in
    its compute dtype), and a QLoRA adapter was trained through it everywhere. So a LoRA adapter merged into
    the dequantized weights gives the vectors of the adapter on its 4-bit base; peft's own merge into a 4-bit
    layer quantizes the sum again and moves them (cosine about 0.999). The price is memory: the weights of a
    float32 model instead of a quarter of a byte per parameter.
    """
    if any(repacked_for_inference(layer) for layer in linear_4bit_layers(model)):
        raise PromptlabError(
            "the 4-bit layers of this model were repacked by bitsandbytes for inference (it embedded before "
            "the adapter was merged), which cannot be undone exactly; merge the adapter into a freshly loaded "
            "model (pass --adapter and --merge-adapter when loading it)."
        )
    import torch

    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not is_4bit_layer(child):
                continue
            import bitsandbytes.functional as bnb_functional

            dtype = getattr(child, "compute_dtype", None) or child.weight.quant_state.dtype
            weight = bnb_functional.dequantize_4bit(child.weight.data, child.weight.quant_state).to(dtype)
            linear = torch.nn.Linear(
                weight.shape[1],
                weight.shape[0],
                bias=child.bias is not None,
                device=weight.device,
                dtype=dtype,
            )
            with torch.no_grad():
                linear.weight.copy_(weight)
                if child.bias is not None:
                    linear.bias.copy_(child.bias.to(dtype))
            linear.requires_grad_(False)
            setattr(parent, child_name, linear)
            replaced += 1
    return replaced


def bitsandbytes_config(name: str, compute_dtype: Any) -> Any:
    """The ``BitsAndBytesConfig`` for ``int8`` | ``nf4`` | ``fp4``; 4-bit computes in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    name = validate_quantization(name)
    if QUANTIZATIONS[name].library != "bitsandbytes":
        raise ValueError(f"{name} is not a bitsandbytes quantization")
    if name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=name, bnb_4bit_compute_dtype=compute_dtype
    )
