"""The transformers backend: the model's body (no LM head), all hidden states from one forward pass.

We call the base model (``AutoModel``), never the LM head with ``output_hidden_states=True``: projecting
onto a 49k–262k vocabulary costs far more than the embedding itself and its output is thrown away.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from promptlab.backends.base import BaseBackend, Capabilities, load_failed, model_info
from promptlab.backends.device import check_device
from promptlab.backends.quantization import QUANTIZATIONS
from promptlab.errors import PromptlabError
from promptlab.pooling import pool
from promptlab.prefix_cache import PrefixKVCache
from promptlab.tokenization import TokenBatch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise PromptlabError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}.") from None


def _position_offset(model) -> int:
    """Where the model's position ids start for the first real token.

    RoBERTa/MPNet-style absolute position embeddings reserve rows up to their ``padding_idx`` and number real
    tokens from ``padding_idx + 1``; other models count from 0. Passing 0-based ids to the former shifts every
    position by two and costs several STS points, so the offset is read from the embedding itself.
    """
    for name, module in model.named_modules():
        if (
            name.endswith("position_embeddings")
            and isinstance(module, torch.nn.Embedding)
            and module.padding_idx is not None
        ):
            return module.padding_idx + 1
    return 0


class TransformersBackend(BaseBackend):
    """Both contracts of `promptlab.backends.base`: inference (`Backend`) and training (`TrainableBackend`)."""

    name = "transformers"
    capabilities = Capabilities(
        layers="any",
        quantizations=tuple(QUANTIZATIONS),
        compile=True,
        gradients=True,
        adapters=True,
    )

    def __init__(self, model, tokenizer, *, info: dict[str, Any] | None = None):
        self._model = model.eval()
        self.tokenizer = tokenizer
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.num_layers = int(config.num_hidden_layers)
        self.hidden_size = int(config.hidden_size)
        # The model's own pooler (BERT/MPNet: dense + tanh over CLS) serves `cls_mlp` pooling.
        self.pooler = getattr(model, "pooler", None)
        params = inspect.signature(model.forward).parameters
        self.takes_position_ids = "position_ids" in params
        self.position_offset = _position_offset(model)
        # The longest prompt the model has positions for (RoBERTa-style models reserve the first rows).
        positions = getattr(config, "max_position_embeddings", None)
        self.max_positions = (
            positions - self.position_offset if isinstance(positions, int) and positions > 0 else None
        )
        self._takes_use_cache = "use_cache" in params
        self.info = dict(info or {})
        self.prefix_cache = PrefixKVCache()  # used when a batch declares a shared prefix
        self.compiled = False
        self._compiled_model = None  # torch.compile of self.model (rebuilt if self.model is replaced)
        self.use_fast_decoder = True  # LLaMA-style decoders: `promptlab.backends.fast_decoder`
        self._fast = None  # its FastDecoder, for self.model (rebuilt if self.model is replaced)

    @property
    def model(self):
        """The network (read-only here: an adapter is swapped in through `replace_model`)."""
        return self._model

    def replace_model(self, model, *, info: dict[str, Any] | None = None) -> None:
        """Embed with ``model`` from now on (this base with an adapter attached or merged); states computed
        with the old weights are forgotten, and ``info`` joins `describe`."""
        self._model = model.eval()
        self.clear_caches()
        self.info.update(info or {})

    def clear_caches(self) -> None:
        """Forget the prefix KV cache (states computed with the current weights, for a shared prefix)."""
        self.prefix_cache.clear()

    def warm_up(self) -> None:
        """Pay the one-off costs of a first forward (kernel set-up, the prefix cache's causality check) now,
        at load, so that the first `embed` call runs at the speed of the later ones."""
        self.prefix_cache.supported(self.model)

    @property
    def attends_both_ways(self) -> bool | None:
        """True for a model whose later tokens change earlier states (an encoder), False for a causal
        decoder (quantized ones included), None if unknown."""
        from promptlab.prefix_cache import attends_both_ways

        return attends_both_ways(self.model)

    def compile(self) -> None:
        """Run no-grad forwards through ``torch.compile`` (inductor; dynamic shapes, one graph).

        On CPU the eager bf16 forward of a small model is bound by element-wise ops (RMSNorm, rotary
        embeddings, SiLU), not by matmuls; inductor fuses them. It compiles the transformers forward (the
        fast decoder is not used under compile). Measured on SmolLM2-135M, bf16, 2 cores
        (`experiments/bench/`): 1.3x the fast decoder's eager rate, after a one-off cold compile of about 3
        minutes (inductor caches it on disk for later processes). bf16 vectors differ from eager ones by
        rounding (cosine >= 0.999); float32 ones by ~1e-6. Training (``grad=True``) keeps the eager model.
        """
        self.compiled = True
        self.prefix_cache.clear()

    @property
    def _inference_model(self):
        """What no-grad forwards call: the model, or its compiled form once `compile` was asked for."""
        if not self.compiled:
            return self.model
        if self._compiled_model is None or self._compiled_model._orig_mod is not self.model:
            # First use, or the model was replaced since (an adapter attached, merged).
            self._compiled_model = torch.compile(self.model, dynamic=True)
        return self._compiled_model

    @property
    def fast_decoder(self):
        """The lean inference forward for this model (`promptlab.backends.fast_decoder`), or None.

        None when turned off (``use_fast_decoder = False``), under ``compile`` (inductor fuses the plain
        forward itself), or for an architecture it does not cover (an adapter-wrapped model included).
        """
        if not self.use_fast_decoder or self.compiled:
            return None
        if self._fast is None or self._fast[0] is not self.model:
            from promptlab.backends.fast_decoder import FastDecoder

            self._fast = (self.model, FastDecoder.build(self.model))
        return self._fast[1]

    @classmethod
    def load(
        cls, model, *, dtype: str = "float32", device: str | None = None, quantization: str | None = None
    ) -> TransformersBackend:
        """Load a model spec (catalog name, local dir, .gguf, hub id) with its tokenizer.

        ``quantization``: one of `promptlab.backends.quantization.QUANTIZATIONS` (``int8`` | ``nf4`` | ``fp4``
        through bitsandbytes, ``int8-weight-only`` through torchao).
        """
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from promptlab.backends import quantization as quant

        # A per-tensor "Loading weights" bar would bury our own output; loads take seconds from the cache.
        hf_logging.disable_progress_bar()
        from promptlab.models import resolve_model

        resolved = resolve_model(model) if isinstance(model, str) else model
        device = check_device(device)
        quantization = quant.validate_quantization(quantization)
        extra: dict[str, Any] = {}
        if quantization:
            quant.check_quantization(quantization, device)
            extra = quant.load_options(quantization, torch_dtype(dtype), device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved.path, revision=resolved.revision)
            net = AutoModel.from_pretrained(
                resolved.path, revision=resolved.revision, dtype=torch_dtype(dtype), **extra
            )
        except OSError as err:
            raise load_failed(resolved, err) from None
        info = model_info(resolved, dtype=dtype, device=device, quantization=quantization)
        net = quant.finish_loading(net, quantization, device) if quantization else net.to(device)
        return cls(net, tokenizer, info=info)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward_hidden_states(
        self, batch: TokenBatch, *, grad: bool = False, upto: int | None = None
    ) -> Sequence[torch.Tensor]:
        """Hidden states (embedding output + one per block), each [B, L, H]; ``grad`` keeps autograd.

        ``upto``: the deepest layer the caller reads; the fast decoder stops there (others run them all).
        """
        # Training mode (dropout) keeps the model's own forward, whose dropout the fast one does not copy.
        fast = None if grad or self.model.training else self.fast_decoder
        if batch.prefix_length and not grad and self.prefix_cache.supported(self.model):
            return self.prefix_cache.forward_hidden_states(
                self._inference_model,
                batch,
                takes_position_ids=self.takes_position_ids,
                fast=fast,
                upto=upto,
            )
        device = self.device
        input_ids, attention_mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        position_ids = (batch.position_ids + self.position_offset).to(device)
        if fast is not None:
            with torch.inference_mode():
                states, _ = fast.forward(input_ids, position_ids, attention_mask, upto=upto)
            return states
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "output_hidden_states": True,
            "return_dict": True,
        }
        if self.takes_position_ids:
            kwargs["position_ids"] = position_ids
        if self._takes_use_cache:
            kwargs["use_cache"] = False
        model = self.model if grad else self._inference_model
        with torch.inference_mode(not grad):
            return model(**kwargs).hidden_states

    def pooled_with_grad(self, batch: TokenBatch, pooling: str, layer: int) -> torch.Tensor:
        """What `embed` returns at one layer [B, H], differentiable: fine-tuning trains this read-out."""
        return pool(pooling, self.forward_hidden_states(batch, grad=True)[layer], batch, self.pooler)

    def embed(self, batch: TokenBatch, pooling: str, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        hidden_states = self.forward_hidden_states(batch, upto=max(layers, default=None))
        with torch.inference_mode():
            return {layer: pool(pooling, hidden_states[layer], batch, self.pooler).cpu() for layer in layers}

    def describe(self) -> dict[str, Any]:
        import transformers

        config = self.model.config
        return {
            "backend": self.name,
            **self.info,
            "architecture": (getattr(config, "architectures", None) or [type(self.model).__name__])[0],
            "model_type": getattr(config, "model_type", None),
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            **({"compiled": True} if self.compiled else {}),
            **({"fast_decoder": True} if self.fast_decoder is not None else {}),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }
