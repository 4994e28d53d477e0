"""Quantized loading through bitsandbytes: 8-bit (LLM.int8, Dettmers et al., 2022) and 4-bit nf4/fp4
(QLoRA, Dettmers et al., 2023), behind the same `Embedder` and CLI as full-precision models.

`bitsandbytes_config` builds the ``BitsAndBytesConfig`` handed to ``from_pretrained``;
`check_quantization` is a cached availability check (as in peft's ``is_bnb_available``) that runs one tiny
quantized layer on the target device, so a missing package or a platform bitsandbytes cannot serve fails
at load time with a message that says what to install, instead of deep inside a forward pass.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from typing import Any

from promptlab.errors import PromptlabError, unknown_name

QUANTIZATIONS = ("int8", "nf4", "fp4")
INSTALL_HINT = "pip install 'promptlab[quant]'"


def validate_quantization(name: str | None) -> str | None:
    """None (no quantization) or one of `QUANTIZATIONS`; anything else is refused with the choices."""
    if name is None or name in ("", "none"):
        return None
    if name not in QUANTIZATIONS:
        raise unknown_name("quantization", name, QUANTIZATIONS)
    return name


def bitsandbytes_version() -> str | None:
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    from importlib.metadata import version

    return version("bitsandbytes")


@functools.cache
def check_quantization(name: str, device: str = "cpu") -> str:
    """Raise `PromptlabError` unless bitsandbytes can run ``name`` on ``device``; return its version."""
    name = validate_quantization(name)
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


def bitsandbytes_config(name: str, compute_dtype: Any) -> Any:
    """The ``BitsAndBytesConfig`` for ``int8`` | ``nf4`` | ``fp4``; 4-bit computes in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    name = validate_quantization(name)
    if name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=name, bnb_4bit_compute_dtype=compute_dtype
    )
