"""LoRA (Hu et al., 2021) and QLoRA (Dettmers et al., 2023) on a backend's model, through peft.

Target modules are found from the model itself, not from a table of model families: the ``nn.Linear``
layers inside its stack of transformer blocks (the ``nn.ModuleList`` with one entry per layer). A 4-bit
bitsandbytes layer is an ``nn.Linear`` too, so QLoRA finds the same targets.

LoRA is injected *in place*: the backend keeps its model object, which now carries the adapter, so the
`Embedder` built on that backend embeds with the adapter (dev scores during training use it directly).

The adapter folder (peft's files + ``promptlab_adapter.json``) and attaching one at inference are
`promptlab.adapters`; this module writes the folders.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from promptlab.adapters import ADAPTER_META, require
from promptlab.backends.quantization import linear_4bit_layers, repacked_for_inference, unpacked_4bit_layers
from promptlab.errors import PromptlabError

if TYPE_CHECKING:
    from promptlab.backends.base import TrainableBackend


# -- target modules --------------------------------------------------------------------------------------
def block_stack(model: nn.Module, num_layers: int) -> str | None:
    """The dotted name of the ``nn.ModuleList`` holding the transformer blocks (one per layer), if any."""
    best, best_count = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            count = sum(isinstance(m, nn.Linear) for m in module.modules())
            if count > best_count:
                best, best_count = name, count
    return best


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def block_linear_suffixes(model: nn.Module, num_layers: int) -> tuple[str | None, list[str]]:
    """(stack name, the Linear layers of one block relative to it: ``self_attn.q_proj``, ``mlp.up_proj``…)."""
    stack = block_stack(model, num_layers)
    if stack is None:
        return None, linear_names(model)
    pattern = re.compile(rf"^{re.escape(stack)}\.\d+\.(.+)$" if stack else r"^\d+\.(.+)$")
    suffixes = {m.group(1) for name in linear_names(model) if (m := pattern.match(name))}
    return stack, sorted(suffixes)


def resolve_targets(
    model: nn.Module, num_layers: int, requested: list[str] | None, blocks: range | None = None
) -> str | list[str]:
    """peft ``target_modules``: a regex over the chosen Linear layers of the chosen blocks.

    ``requested``: module-name suffixes (``q_proj``, ``self_attn.v_proj``); None takes every Linear of a
    block. ``blocks``: block indices to adapt (None: all). Each requested name must match something.
    """
    stack, suffixes = block_linear_suffixes(model, num_layers)
    if not suffixes:
        raise PromptlabError("found no nn.Linear layers in this model to put LoRA on; set target_modules.")
    chosen = suffixes
    if requested is not None:
        chosen = []
        for target in requested:
            hits = [s for s in suffixes if s == target or s.endswith("." + target)]
            if not hits:
                raise PromptlabError(
                    f"LoRA target module {target!r} matches no nn.Linear layer of this model; "
                    f"its {'block ' if stack is not None else ''}layers are: {', '.join(suffixes)} "
                    "(give names or suffixes of these)."
                )
            chosen += [h for h in hits if h not in chosen]
    if stack is None:  # no block stack recognised: the Linear layers by full name
        return sorted(chosen)
    indices = blocks if blocks is not None else range(num_layers)
    prefix = rf"{re.escape(stack)}\." if stack else ""
    layers = "|".join(str(i) for i in indices)
    return rf"^{prefix}(?:{layers})\.(?:{'|'.join(re.escape(s) for s in sorted(chosen))})$"


def blocks_below(read_layer: int, num_layers: int, count: int | None) -> range:
    """The ``count`` blocks just below hidden-state index ``read_layer`` (blocks above it change nothing)."""
    top = read_layer % (num_layers + 1)
    if top == 0:
        raise PromptlabError(
            "layer 0 is the embedding output: no block feeds it, so LoRA has nothing to train."
        )
    return range(max(0, top - (count or top)), top)


# -- 4-bit weights and training -----------------------------------------------------------------------------
# bitsandbytes (0.4x-0.50) repacks a 4-bit weight, on its first forward in eval mode without grad on a CPU with
# AVX512-BF16, into a layout for its inference kernel (gemv_4bit), and keeps it so. That kernel has no
# autograd: a training step through a repacked layer silently drops the gradient that flows through the
# frozen base to the LoRA layers below. So training keeps 4-bit layers out of that layout: dev scores run
# with them in train mode (they have no dropout; the flag only gates the repacking), and a model whose
# layers were already repacked (it embedded before training) is refused when LoRA is added.
def refuse_repacked_4bit(model: nn.Module) -> None:
    """Refuse to train on 4-bit layers bitsandbytes already repacked for inference (see above).

    bitsandbytes' own unpacking is lossy (block scales kept in bf16) and, measured with 0.50.2, wrong by
    about 20 % on layers with more inputs than outputs (down projections), so it is not an option.
    """
    packed = [layer for layer in linear_4bit_layers(model) if repacked_for_inference(layer)]
    if packed:
        raise PromptlabError(
            f"{len(packed)} 4-bit layers of this model were repacked by bitsandbytes for inference (the model "
            "embedded before training), which leaves them without gradients and cannot be undone exactly; "
            "train on a freshly loaded model (do not embed with it first)."
        )


@contextmanager
def scoring_mode(model: nn.Module):
    """Eval mode for a dev score during training, with 4-bit layers kept trainable (see above)."""
    was_training = model.training
    model.eval()
    try:
        with unpacked_4bit_layers(model):
            yield
    finally:
        model.train(was_training)


# -- activation memory ---------------------------------------------------------------------------------------
def recompute_activations(model: nn.Module) -> None:
    """Gradient checkpointing on every block: the forward keeps each block's input only, the backward reruns
    the trained blocks (their dropout masks replayed from the saved RNG state), so the gradients are unchanged.

    Non-reentrant checkpointing (torch's recommended kind) needs no gradient on the input embeddings, so the
    hook transformers adds for the reentrant kind is removed: the frozen blocks below the adapter then record
    no graph, and are neither kept nor rerun (the backward still stops at the lowest trained block).
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise PromptlabError(
            f"{type(model).__name__} does not support gradient checkpointing; set gradient_checkpointing = "
            "false (and a smaller batch_size or lora_layers if memory runs short)."
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.disable_input_require_grads()


# -- LoRA / QLoRA ----------------------------------------------------------------------------------------
def add_lora(
    backend: TrainableBackend,
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: list[str] | None,
    quantized: bool,
    blocks: range | None = None,
):
    """Inject a trainable LoRA adapter into ``backend.model`` (in place); return the `PeftModel`."""
    peft = require("peft", "train")
    model = backend.model
    if quantized:
        refuse_repacked_4bit(model)
        # QLoRA: norms/embeddings to fp32, input grads on; the 4-bit weights stay frozen.
        peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = resolve_targets(model, backend.num_layers, target_modules, blocks)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    peft_model = peft.get_peft_model(model, config)
    if peft_model.base_model.model is not model:  # pragma: no cover - peft changed how it wraps
        raise RuntimeError(
            "peft did not inject LoRA in place; promptlab needs the backend's model object kept"
        )
    backend.clear_caches()  # states computed before the adapter was injected
    return peft_model


def adapter_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors (detached copies), by parameter name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# -- saving --------------------------------------------------------------------------------------------------
def save_adapter(peft_model, folder: Path, metadata: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(folder))
    (folder / ADAPTER_META).write_text(json.dumps(metadata, indent=2, default=str) + "\n", encoding="utf-8")
