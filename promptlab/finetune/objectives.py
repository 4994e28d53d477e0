"""Contrastive objectives over prompt embeddings (InfoNCE with in-batch negatives).

The vector trained is the one the extractor reads: `encode_with_grad` goes through the `Embedder`'s own
`PromptTokenizer`, `pad_batch`, layer and pooling, and only swaps inference mode for autograd, so an adapter
is evaluated (and used) through the same `Embedder` it was trained with.

- supervised (SimCSE, Gao et al., 2021; PromptEOL-CSE, Jiang et al., 2023): anchor vs its positive, with
  every other positive and every hard negative in the batch as negatives;
- dropout (unsupervised SimCSE): the same prompt twice, two dropout masks as the two views;
- two_template (PromptBERT, Jiang et al., 2022): one sentence under two templates as the two views, with
  optional *template denoising*: the template's own read-out state, computed with the sentence's tokens
  removed but every template token kept at the position it has with the sentence, is subtracted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from promptlab.errors import PromptlabError
from promptlab.tokenization import EncodedPrompt, TokenBatch, pad_batch

if TYPE_CHECKING:
    from promptlab.backends.base import TrainableBackend


# -- the read-out, with gradients ------------------------------------------------------------------------
def template_only_batch(
    prompts: Sequence[EncodedPrompt], *, pad_id: int, padding_side: str = "right"
) -> TokenBatch:
    """The prompts with their sentence tokens removed, the template tokens keeping their original positions.

    Each row's position ids skip the slot (``0..s-1, e..n-1`` for a slot ``[s, e)``), so the template-only
    state is what the template contributes *at the place it sits* with this sentence (PromptBERT's bias).
    """
    stripped, positions = [], []
    for p in prompts:
        start, end = p.slot
        if start <= p.target < end:
            raise PromptlabError(
                "template denoising reads the template's own state, but this template's read-out position is "
                "inside the sentence slot; use a mask or next-token template with text after [X]."
            )
        keep = [i for i in range(len(p.ids)) if not start <= i < end]
        stripped.append(
            EncodedPrompt(ids=[p.ids[i] for i in keep], target=keep.index(p.target), slot=(start, start))
        )
        positions.append(keep)
    batch = pad_batch(stripped, pad_id=pad_id, padding_side=padding_side)
    length = batch.input_ids.shape[1]
    for row, keep in enumerate(positions):
        shift = length - len(keep) if padding_side == "left" else 0
        batch.position_ids[row, shift : shift + len(keep)] = torch.tensor(keep)
    return batch


def encode_with_grad(embedder, sentences: Sequence[str], *, denoise: bool = False) -> torch.Tensor:
    """Float32 [N, H] vectors exactly as ``embedder.encode`` computes them, but differentiable."""
    prompts = [embedder.prompts.encode(s) for s in sentences]
    backend: TrainableBackend = embedder.backend
    pooling, layer = embedder.template.pooling, embedder.layer_index
    batch = pad_batch(prompts, pad_id=embedder.pad_id, padding_side=embedder.padding_side)
    vectors = backend.pooled_with_grad(batch, pooling, layer)
    if denoise:
        if embedder.template.kind not in ("mask", "next_token"):
            raise PromptlabError(
                f"template denoising needs a mask or next-token template; {embedder.template.name!r} is "
                f"a {embedder.template.kind!r} template pooled over its tokens."
            )
        if not backend.takes_position_ids:
            raise PromptlabError(
                "template denoising keeps the template tokens at their positions, but this model's forward "
                "takes no position_ids; train without denoise."
            )
        bias = template_only_batch(prompts, pad_id=embedder.pad_id, padding_side=embedder.padding_side)
        vectors = vectors - backend.pooled_with_grad(bias, pooling, layer)
    return vectors


# -- the loss --------------------------------------------------------------------------------------------
def info_nce(
    anchors: torch.Tensor, candidates: torch.Tensor, temperature: float, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE: row i of ``anchors`` [B, H] should pick column i of ``candidates`` [C >= B, H] by cosine / T.

    ``exclude`` [B, C] (bool) masks candidates that are not true negatives (the same text as the anchor or
    its positive, another positive of the same anchor); the target column is never masked.
    """
    logits = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T / temperature  # [B, C]
    if exclude is not None:  # built on the CPU from the batch's texts
        logits = logits.masked_fill(exclude.to(logits.device), float("-inf"))
    return F.cross_entropy(logits, torch.arange(anchors.shape[0], device=logits.device))


def false_negatives(
    anchors: Sequence[str], positives: Sequence[str], candidates: Sequence[str]
) -> torch.Tensor:
    """[B, C] bool: candidate j is not a negative for anchor i (it is i's anchor/positive text, or the
    positive of another row with the same anchor). The diagonal (the target) stays False."""
    n = len(anchors)
    out = torch.zeros(n, len(candidates), dtype=torch.bool)
    for i in range(n):
        for j, text in enumerate(candidates):
            if j == i:
                continue
            same_anchor = j < n and anchors[j] == anchors[i]
            out[i, j] = text in (anchors[i], positives[i]) or same_anchor
    return out


@dataclass
class Objective:
    """Computes the loss of one batch of `Example`s; views are `Embedder`s sharing one backend."""

    name: str
    view: object  # Embedder
    temperature: float
    view2: object | None = None  # Embedder with the second template (two_template)
    denoise: bool = False
    parallel: object | None = None  # a `promptlab.distributed.ddp.DataParallel` under torchrun

    def _vectors(self, view, groups) -> list[torch.Tensor]:
        """Vectors of each group of texts, from one forward; ``groups`` is [(texts, owning rank of each)].
        Data-parallel, each rank embeds its own rows and gathers the others' (`DataParallel.encode`)."""
        if self.parallel is not None:
            return self.parallel.encode(view, groups, denoise=self.denoise)
        # One forward for all groups (padding changes nothing: exact masking).
        vectors = encode_with_grad(view, [t for texts, _ in groups for t in texts], denoise=self.denoise)
        return list(torch.split(vectors, [len(texts) for texts, _ in groups]))

    def loss(self, examples) -> torch.Tensor:
        anchors = [e.anchor for e in examples]
        owners = self.parallel.owners(len(examples)) if self.parallel is not None else [0] * len(examples)
        if self.name == "supervised":
            positives = [e.positive for e in examples]
            negatives = [e.negative for e in examples if e.negative is not None]
            negative_owners = [o for e, o in zip(examples, owners, strict=True) if e.negative is not None]
            first, second, third = self._vectors(
                self.view, [(anchors, owners), (positives, owners), (negatives, negative_owners)]
            )
            exclude = false_negatives(anchors, positives, positives + negatives)
            return info_nce(first, torch.cat([second, third]), self.temperature, exclude)
        if self.name == "dropout":
            first, second = self._vectors(self.view, [(anchors, owners), (anchors, owners)])
        elif self.name == "two_template":
            (first,) = self._vectors(self.view, [(anchors, owners)])
            (second,) = self._vectors(self.view2, [(anchors, owners)])
        else:
            raise PromptlabError(f"unknown objective {self.name!r}.")
        return info_nce(first, second, self.temperature, false_negatives(anchors, anchors, anchors))
