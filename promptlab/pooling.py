"""Pooling: from hidden states [B, L, H] to one vector per row [B, H].

Small named strategies (as in sentence-transformers' ``Pooling``); every one finds its positions from the
attention mask or the recorded targets, so left and right padding give the same vectors.

- ``mask``/``next_token``: the recorded read-out position (PromptBERT's [MASK], PromptEOL's last prompt token)
- ``cls``: the first real token; ``cls_mlp``: the model's own pooler (dense + tanh) on it
- ``mean``/``max``: over the real tokens; ``last``: the last real token
- ``span``: the mean over the recorded slot tokens (Echo embeddings: the sentence's last copy)
"""

from __future__ import annotations

import torch

from promptlab.errors import PromptlabError
from promptlab.tokenization import TokenBatch

POOLINGS = ("mask", "next_token", "cls", "cls_mlp", "mean", "max", "last", "span")


def _gather(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)]


def first_real(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask.argmax(dim=-1)  # argmax returns the first maximal index


def last_real(attention_mask: torch.Tensor) -> torch.Tensor:
    length = attention_mask.shape[-1]
    return length - 1 - attention_mask.flip(-1).argmax(dim=-1)


def pool(name: str, hidden: torch.Tensor, batch: TokenBatch, pooler=None) -> torch.Tensor:
    """Pool ``hidden`` [B, L, H] into [B, H] (float32)."""
    mask = batch.attention_mask.to(hidden.device)
    if name in ("mask", "next_token"):
        out = _gather(hidden, batch.targets)
    elif name == "cls":
        out = _gather(hidden, first_real(mask))
    elif name == "cls_mlp":
        if pooler is None:
            raise PromptlabError(
                "pooling 'cls_mlp' uses the model's own pooler (dense + tanh over CLS), and this model has none; "
                "use --pooling cls or mean."
            )
        out = pooler(_gather(hidden, first_real(mask)).unsqueeze(1))
    elif name == "last":
        out = _gather(hidden, last_real(mask))
    elif name == "mean":
        weights = mask.unsqueeze(-1).to(torch.float32)
        out = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
    elif name == "span":
        positions = torch.arange(hidden.shape[1], device=hidden.device)  # [L]
        slots = batch.slots.to(hidden.device)  # [B, 2], already moved with the padding
        inside = (positions >= slots[:, :1]) & (positions < slots[:, 1:])  # [B, L]
        weights = inside.unsqueeze(-1).float()  # [B, L, 1]
        out = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
    elif name == "max":
        out = hidden.float().masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(1)
    else:
        raise PromptlabError(f"unknown pooling {name!r}; choose one of {', '.join(POOLINGS)}.")
    return out.float()
