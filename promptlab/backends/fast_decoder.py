"""A lean inference forward for LLaMA-style decoders (LLaMA, SmolLM, Qwen2, Mistral without a window).

Why: on CPU the eager transformers forward of a small decoder spends about half its time outside the
matmuls, in element-wise ops (measured on SmolLM2-135M, bf16, 2 cores: `experiments/bench/`). Three of them
cost most and have cheaper exact equivalents:

- RMSNorm casts the whole activation to float32 and back (four passes over it). Here only the per-row scale is
  computed in float32 (`torch.linalg.vector_norm` accumulates in float32), and the activation is scaled in
  its own dtype. Identical in float32; in bf16 the scale is rounded once more (≤ 2^-9, the same for a whole
  row).
- Rotary embeddings run ``q*cos + rotate_half(q)*sin`` (slice, negate, concatenate, two products, a sum) for
  queries and keys apart. Here the sign of ``rotate_half`` is folded into ``sin`` once per forward, and
  ``roll`` + ``addcmul`` do the rest: two ops per tensor instead of six.
- The attention mask: right-padded batches (promptlab's default) need no mask tensor at all, since causal
  attention never lets a real token see the padding after it; SDPA then runs its unmasked causal kernel.

The model's own modules still do everything else (projections, so LoRA and bitsandbytes layers work
unchanged; the embedding; the rotary frequencies, so every RoPE scaling variant is the model's). The
forward can also stop at the deepest layer a caller reads, and run only a suffix against the keys/values of
a stored prefix (`promptlab.prefix_cache`), without the cache object and mask that transformers builds for
every call.

`FastDecoder.build` returns None (the plain transformers forward is used) for anything outside the
architectures checked here; `tests/test_fast_decoder.py` compares both forwards layer by layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Base-model classes whose decoder layer is LLaMA's (pre-norm, RMSNorm, RoPE, GQA attention, SwiGLU MLP).
_MODELS = {"LlamaModel", "MistralModel", "Qwen2Model"}
# RMSNorm classes with LLaMA's formula: weight * (x.float() * rsqrt(mean(x^2) + eps)).to(dtype).
_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"}


def unsupported_reason(model) -> str | None:
    """Why ``model`` cannot take the fast forward (None: it can)."""
    name = type(model).__name__
    if name not in _MODELS:
        return f"{name} is not one of {sorted(_MODELS)}"
    config = model.config
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(config, 'hidden_act', None)!r} (expected silu)"
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return "sliding-window layers"
    if name == "MistralModel" and getattr(config, "sliding_window", None) is not None:
        return "sliding-window attention"
    if not hasattr(model, "rotary_emb") or not hasattr(model, "embed_tokens"):
        return "no rotary_emb/embed_tokens"
    if type(model.norm).__name__ not in _NORMS:
        return f"norm {type(model.norm).__name__}"
    for layer in model.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if type(norm).__name__ not in _NORMS:
                return f"norm {type(norm).__name__}"
        attention, mlp = layer.self_attn, layer.mlp
        if not all(hasattr(attention, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
            return "attention without q/k/v/o projections"
        if not all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
            return "MLP without gate/up/down projections"
    return None


@dataclass
class PrefixKV:
    """Keys (after RoPE) and values of a shared prefix, [1, kv_heads, P, head_dim] per layer."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[2] if self.kv else 0


class FastDecoder:
    """The inference forward described in the module docstring, over the modules of one model."""

    def __init__(self, model):
        self.model = model
        config = model.config
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        attention = model.layers[0].self_attn
        self.head_dim = int(getattr(attention, "head_dim", None) or config.hidden_size // self.num_heads)
        self.half = self.head_dim // 2  # RoPE rotates the two halves of each head

    @classmethod
    def build(cls, model) -> FastDecoder | None:
        return None if unsupported_reason(model) else cls(model)

    @staticmethod
    def rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
        """LLaMA's RMSNorm with only the [.., 1] scale in float32 (see the module docstring)."""
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        scale = torch.rsqrt(rms.square_().div_(x.shape[-1]).add_(norm.variance_epsilon))
        out = x * scale.to(x.dtype)
        if norm.weight.dtype != out.dtype:  # QLoRA keeps norms in fp32: promote as transformers does
            return norm.weight * out
        return out.mul_(norm.weight)

    def _rope(self, hidden: torch.Tensor, position_ids: torch.Tensor):
        """cos and sign-folded sin, [B, 1, L, head_dim]: ``x*cos + roll(x, half)*sin`` is RoPE."""
        cos, sin = self.model.rotary_emb(hidden, position_ids)  # [B, L, D], the model's own frequencies
        half = self.half
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        return cos[:, None], sin[:, None]

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        prefix: PrefixKV | None = None,
        upto: int | None = None,
        keep_kv: bool = False,
    ) -> tuple[list[torch.Tensor], PrefixKV | None]:
        """Hidden states [embeddings, layer 1, ..., layer ``upto``], each [B, L, H], and (``keep_kv``) the K/V.

        ``attention_mask`` [B, L] (1 = real token) may be None or all-right-padded; any other layout (left
        padding) is masked explicitly. With ``prefix``, ``input_ids`` continue a prefix every row shares:
        each token attends to all of the prefix and, causally, to its own row.
        """
        model = self.model
        batch, length = input_ids.shape
        heads, kv_heads, head_dim, half = self.num_heads, self.num_kv_heads, self.head_dim, self.half
        num_layers = len(model.layers)
        upto = num_layers if upto is None else upto
        hidden = model.embed_tokens(input_ids)
        cos, sin = self._rope(hidden, position_ids)
        mask = self._mask(attention_mask, length, prefix.length if prefix else 0, hidden.device)
        states = [hidden]
        kept = []
        for index, layer in enumerate(model.layers[:upto]):
            attention = layer.self_attn
            x = self.rms_norm(layer.input_layernorm, hidden)
            q = attention.q_proj(x).view(batch, length, heads, head_dim).transpose(1, 2)
            k = attention.k_proj(x).view(batch, length, kv_heads, head_dim).transpose(1, 2)
            v = attention.v_proj(x).view(batch, length, kv_heads, head_dim).transpose(1, 2)
            q = torch.addcmul(q * cos, q.roll(half, -1), sin)
            k = torch.addcmul(k * cos, k.roll(half, -1), sin)
            if keep_kv:
                kept.append((k, v))
            if prefix is not None:
                pk, pv = prefix.kv[index]
                k = torch.cat([pk.expand(batch, -1, -1, -1), k], dim=2)
                v = torch.cat([pv.expand(batch, -1, -1, -1), v], dim=2)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=attention.scaling,
                enable_gqa=heads != kv_heads,
            )  # fmt: skip
            hidden = hidden + attention.o_proj(out.transpose(1, 2).reshape(batch, length, heads * head_dim))
            mlp = layer.mlp
            x = self.rms_norm(layer.post_attention_layernorm, hidden)
            hidden = hidden + mlp.down_proj(F.silu(mlp.gate_proj(x)).mul_(mlp.up_proj(x)))
            states.append(hidden)
        if upto == num_layers:  # transformers reports the last layer after the final norm
            states[-1] = self.rms_norm(model.norm, hidden)
        return states, (PrefixKV(kept) if keep_kv else None)

    @staticmethod
    def _mask(attention_mask, length: int, prefix_length: int, device) -> torch.Tensor | None:
        """None (causal kernel) when it suffices, else a boolean [B or 1, 1, L, P + L] mask.

        Padding queries attend at least to themselves, so no row is fully masked (no NaN in any output).
        """
        # Right padding: every row is ones then zeros, so the mask never increases along a row.
        right_padded = attention_mask is None or bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
        if right_padded and prefix_length == 0:
            return None
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        if not right_padded:
            own = torch.eye(length, dtype=torch.bool, device=device)
            causal = ((causal & attention_mask.bool()[:, None, :]) | own)[:, None]  # [B, 1, L, L]
        else:
            causal = causal[None, None]  # [1, 1, L, L]
        if prefix_length:
            seen = torch.ones(*causal.shape[:-1], prefix_length, dtype=torch.bool, device=device)
            causal = torch.cat([seen, causal], dim=-1)
        return causal
