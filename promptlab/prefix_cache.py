"""Prefix KV cache: run the tokens every prompt of a call shares once, and only the rest per batch.

A PromptEOL/PromptBERT prompt is ``head + sentence + tail``; with an in-context demonstration (Jiang et al.,
2023, "Scaling Sentence Embeddings with Large Language Models") the head is most of the prompt. In a causal
decoder the states of the head do not depend on what follows, so its keys/values are computed once and
reused for every batch (the same reuse as vLLM's automatic prefix caching, Kwon et al., 2023).

The shared head is found exactly, as the longest common prefix of the *token ids* of all prompts of a call
(`shared_prefix_length`): no assumption about where a tokenizer merges the template with the sentence.
Only the suffixes run per batch, right-padded, with position ids continuing after the prefix and an
attention mask covering prefix + suffix. The prefix's hidden states are stored too, so every layer (not
only the last) and every pooling (mean over all tokens included) sees the full prompt, in the batch's own
padding layout: vectors equal the uncached path's.

Encoders (bidirectional attention) keep the plain path: `PrefixKVCache.supported` checks, with a tiny
forward, that the model is causal and that its forward accepts ``past_key_values``.
"""

from __future__ import annotations

import inspect
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from promptlab.tokenization import TokenBatch


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token id sequences, leaving every sequence one own token.

    >>> shared_prefix_length([[5, 6, 7, 8], [5, 6, 9]])
    2
    >>> shared_prefix_length([[5, 6, 7], [5, 6, 7]])  # identical prompts: the last token still runs
    2
    """
    if not sequences:
        return 0
    first = sequences[0]
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return max(n, 0)


@dataclass
class _Prefix:
    """One computed prefix: keys/values [1, heads, P, head_dim] and all hidden states [1, P, H] per layer."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    hidden: tuple[torch.Tensor, ...]


class _JoinedStates(Sequence):
    """Hidden states of the full prompts, [B, L, H] per layer, built only for the layers a caller reads."""

    def __init__(self, prefix: tuple[torch.Tensor, ...], suffix: tuple[torch.Tensor, ...], index, real):
        self._prefix, self._suffix = prefix, suffix
        self._index, self._real = index, real  # [B, L] position in prefix+suffix; [B, L] bool (not padding)

    def __len__(self) -> int:
        return len(self._suffix)

    def __getitem__(self, layer):
        if isinstance(layer, slice):
            return tuple(self[i] for i in range(len(self))[layer])
        suffix = self._suffix[layer]  # [B, S, H]
        batch = suffix.shape[0]
        joined = torch.cat([self._prefix[layer].expand(batch, -1, -1), suffix], dim=1)  # [B, P+S, H]
        if self._index is None:  # right padding: the joined layout is the batch's own
            return joined
        out = joined.gather(1, self._index.unsqueeze(-1).expand(-1, -1, joined.shape[-1]))  # [B, L, H]
        return out.masked_fill(~self._real.unsqueeze(-1), 0.0)


_CHANGE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _probe_change(model), once
# A causal model's earlier states do not depend on later tokens: they agree up to rounding (1e-3 here, as
# bf16 rounds). Quantized kernels that pick another path for another length move them more, but a model
# that attends both ways moves them far more than `BIDIRECTIONAL_CHANGE`.
CAUSAL_CHANGE = 1e-3
# Same-length probe: causal models, quantized ones too, stay within 3e-6; encoders move 1.5e-3 (all-mpnet-base-v2,
# bf16) to 0.1 (all-MiniLM-L6-v2), a tiny random BERT 3e-3.
BIDIRECTIONAL_CHANGE = 1e-4


def is_causal(model) -> bool | None:
    """Whether ``model`` is a causal decoder to rounding (True: a prefix's states can be reused), probed on
    3 tokens once per model; None when the probe cannot run."""
    probe = _state_change(model)
    return None if probe is None else probe[0]


def attends_both_ways(model) -> bool | None:
    """Whether ``model`` lets later tokens change earlier states (an encoder), beyond what rounding or
    quantized kernels explain; None when the probe cannot run."""
    probe = _state_change(model)
    return None if probe is None else probe[1] > BIDIRECTIONAL_CHANGE


def _state_change(model) -> tuple[bool, float] | None:
    if model not in _CHANGE:
        _CHANGE[model] = _probe_change(model)
    return _CHANGE[model]


def _probe_change(model) -> tuple[bool, float] | None:
    """(the first two tokens' states agree with and without a third, to rounding; how much the third
    changes them, relative to their size)."""
    from promptlab.backends.quantization import unpacked_4bit_layers

    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2, 3]], device=device)
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    # The probe runs before any embedding, on a model that may be trained next (QLoRA): it must not repack
    # its 4-bit weights for inference.
    try:
        with torch.inference_mode(), unpacked_4bit_layers(model):
            full = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)
            head = model(input_ids=ids[:, :2], attention_mask=torch.ones_like(ids[:, :2]), **extra)
            # Two sequences of one length that differ only in their last token run the same kernels, so
            # quantized ones too give a causal model's first two tokens the same states.
            pair = torch.tensor([[1, 2, 3], [1, 2, 4]], device=device)
            other = model(
                input_ids=pair, attention_mask=torch.ones_like(pair), **extra
            ).last_hidden_state.float()
    except Exception:  # a model that cannot run this probe: unknown
        return None
    a, b = full.last_hidden_state[0, :2].float(), head.last_hidden_state[0].float()
    tolerance = CAUSAL_CHANGE * (1 + float(b.abs().max()))
    same = bool(torch.allclose(a, b, atol=tolerance, rtol=CAUSAL_CHANGE))
    x, y = other[0, :2], other[1, :2]
    return same, float((x - y).abs().max() / (1 + y.abs().max()))


class PrefixKVCache:
    """A few computed prefixes (least recently used dropped first) for the model it is called with.

    Stored prefixes are dropped when the model changes: another model object, added or removed parameters
    (an adapter), or weights updated in place (an optimizer step or a merge bumps tensor version counters).
    Callers that change weights may also call `clear`.
    """

    def __init__(self, *, capacity: int = 8):
        self.capacity = capacity
        self._store: OrderedDict[tuple[int, ...], _Prefix] = OrderedDict()
        self._weights: tuple[int, int, int] | None = None
        self._supported: tuple[int, bool] | None = None  # (id(model), causal decoder?)
        self.hits = 0
        self.misses = 0

    # -- which models ----------------------------------------------------------------------------------
    def supported(self, model) -> bool:
        """True for causal decoders whose forward takes ``past_key_values`` (checked once, on 3 tokens)."""
        if self._supported is None or self._supported[0] != id(model):
            self._supported = (id(model), self._check_causal(model))
        return self._supported[1]

    @staticmethod
    def _check_causal(model) -> bool:
        params = inspect.signature(model.forward).parameters
        return "past_key_values" in params and bool(is_causal(model))

    def clear(self) -> None:
        self._store.clear()
        self._weights = None

    def _check_weights(self, model) -> None:
        params = list(model.parameters())
        weights = (id(model), len(params), sum(p._version for p in params))
        if weights != self._weights:
            self.clear()
            self._weights = weights

    # -- forward ---------------------------------------------------------------------------------------
    def _prefix(self, model, ids: torch.Tensor, takes_position_ids: bool, fast=None) -> _Prefix:
        self._check_weights(model)
        key = (fast is not None, *ids.tolist())
        found = self._store.get(key)
        if found is not None:
            self._store.move_to_end(key)
            self.hits += 1
            return found
        self.misses += 1
        ids = ids.unsqueeze(0)  # [1, P]
        if fast is not None:
            states, kv = fast.forward(ids, torch.arange(ids.shape[1], device=ids.device)[None], keep_kv=True)
            return self._keep(key, _Prefix(kv=kv.kv, hidden=tuple(states)))
        extra = (
            {"position_ids": torch.arange(ids.shape[1], device=ids.device)[None]}
            if takes_position_ids
            else {}
        )
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            use_cache=True,
            output_hidden_states=True,
            return_dict=True,
            **extra,
        )
        cache = out.past_key_values
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return self._keep(key, _Prefix(kv=kv, hidden=tuple(out.hidden_states)))

    def _keep(self, key, prefix: _Prefix) -> _Prefix:
        self._store[key] = prefix
        while len(self._store) > self.capacity:
            self._store.popitem(last=False)
        return prefix

    def forward_hidden_states(
        self, model, batch: TokenBatch, *, takes_position_ids: bool, fast=None, upto: int | None = None
    ) -> Sequence[torch.Tensor]:
        """All hidden states [B, L, H] of ``batch`` (either padding side), reusing its shared prefix.

        ``fast``: a `promptlab.backends.fast_decoder.FastDecoder` of ``model`` to run instead of its forward
        (then ``upto`` may stop it at the deepest layer the caller reads).
        """
        device = next(model.parameters()).device
        prefix_len = batch.prefix_length
        mask = batch.attention_mask.to(device).bool()  # [B, L]
        input_ids = batch.input_ids.to(device)
        n, length = input_ids.shape
        lengths = mask.sum(1)  # [B]
        start = mask.long().argmax(1)  # [B] first real token (0 with right padding)
        if not 0 < prefix_len < int(lengths.min()):
            raise ValueError(f"prefix_length {prefix_len} must leave every row at least one token")

        # Real tokens, packed to the left: compact[b, k] is row b's k-th real token.
        k = torch.arange(length, device=device)[None]  # [1, L]
        source = (start[:, None] + k).clamp(max=length - 1)  # [B, L]
        compact_ids = input_ids.gather(1, source)
        compact_pos = batch.position_ids.to(device).gather(1, source)
        prefix_ids = compact_ids[0, :prefix_len]
        if not bool((compact_ids[:, :prefix_len] == prefix_ids).all()):
            raise ValueError("the rows of the batch do not share their first prefix_length tokens")

        suffix_len = int(lengths.max()) - prefix_len
        suffix_ids = compact_ids[:, prefix_len : prefix_len + suffix_len]  # [B, S]
        suffix_mask = (k[:, :suffix_len] < (lengths - prefix_len)[:, None]).long()  # [B, S], right padding
        suffix_pos = compact_pos[:, prefix_len : prefix_len + suffix_len]
        suffix_pos = torch.where(suffix_mask.bool(), suffix_pos, prefix_len + k[:, :suffix_len])

        with torch.inference_mode():
            prefix = self._prefix(model, prefix_ids, takes_position_ids, fast)
        if fast is not None:
            from promptlab.backends.fast_decoder import PrefixKV

            with torch.inference_mode():
                states, _ = fast.forward(
                    suffix_ids, suffix_pos, suffix_mask, prefix=PrefixKV(prefix.kv), upto=upto
                )
            suffix_states = tuple(states)
        else:
            suffix_states = self._suffix_forward(
                model, prefix, suffix_ids, suffix_pos if takes_position_ids else None, suffix_mask
            )
        if bool((start == 0).all()) and length == prefix_len + suffix_len:
            return _JoinedStates(prefix.hidden, suffix_states, None, None)
        # Left padding (or any other layout): put each real token back where the batch has it.
        index = (k - start[:, None]).clamp(0, prefix_len + suffix_len - 1)  # [B, L]
        return _JoinedStates(prefix.hidden, suffix_states, index, mask)

    @staticmethod
    def _suffix_forward(model, prefix: _Prefix, suffix_ids, suffix_pos, suffix_mask):
        """The model's own forward over the suffixes, with the prefix as a (batch-expanded) KV cache.

        ``suffix_pos``: position ids, or None for a model whose forward takes none.
        """
        kwargs: dict[str, Any] = {} if suffix_pos is None else {"position_ids": suffix_pos}
        from transformers import DynamicCache

        n, prefix_len, device = suffix_ids.shape[0], prefix.hidden[0].shape[1], suffix_ids.device
        with torch.inference_mode():
            past = DynamicCache(
                ddp_cache_data=[
                    (key.expand(n, -1, -1, -1), value.expand(n, -1, -1, -1)) for key, value in prefix.kv
                ],
                config=model.config,
            )
            full_mask = torch.cat(
                [torch.ones(n, prefix_len, dtype=torch.long, device=device), suffix_mask], 1
            )
            out = model(
                input_ids=suffix_ids,
                attention_mask=full_mask,  # [B, P+S]
                past_key_values=past,
                use_cache=True,
                output_hidden_states=True,
                return_dict=True,
                **kwargs,
            )
        return tuple(out.hidden_states)
