"""From sentences to token ids: render through the template, tokenize, truncate inside the slot, pad.

Two rules from the issue tracker's bug history of prompt-embedding code:
- never truncate the template: a sentence too long for the model is shortened *inside* its slot, so the
  template's tail (and its ``[MASK]`` or next-token position) always survives;
- never assume a padding side: the read-out position of every row is recorded before padding and moved
  with it, and position ids are computed from the attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from promptlab.errors import PromptlabError
from promptlab.templates import SLOT, Template


@dataclass(frozen=True)
class EncodedPrompt:
    """One tokenized prompt. Indices are into ``ids`` (unpadded)."""

    ids: list[int]
    target: int  # the read-out token: [MASK] for mask templates, the last prompt token for next_token
    slot: tuple[int, int]  # token range [start, end) covering the sentence
    truncated: bool = False


@dataclass
class TokenBatch:
    """A padded batch. Shapes: input_ids/attention_mask/position_ids [B, L]; targets [B]; slots [B, 2]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    slots: torch.Tensor
    prefix_length: int = 0  # leading real tokens every row shares (a backend may reuse their keys/values)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


# transformers gives a tokenizer without a length limit a huge `model_max_length` (1e30): not a limit.
_NO_LIMIT = 10**8


def check_max_length(max_length) -> None:
    """Refuse a token budget that is not a positive whole number (0 or -1 never mean "no limit")."""
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
    ):
        raise PromptlabError(
            f"max_length={max_length!r}: give a positive number of tokens (--max-length N), or leave it "
            "unset to use the model's own limit."
        )


class PromptTokenizer:
    """Tokenizes a template's prompts for one tokenizer (a transformers *fast* tokenizer).

    The token budget per prompt is the smallest of ``max_length``, the tokenizer's ``model_max_length`` and
    ``model_positions`` (the positions the model has, e.g. ``max_position_embeddings``), so a tokenizer
    that declares no limit still never sends a model more tokens than it has positions. None when none of
    the three is known.
    """

    def __init__(
        self,
        tokenizer,
        template: Template,
        *,
        max_length: int | None = None,
        model_positions: int | None = None,
    ):
        check_max_length(max_length)
        if not getattr(tokenizer, "is_fast", False):
            raise PromptlabError(
                "promptlab needs a fast (Rust) tokenizer to locate the sentence slot; "
                "install `tokenizers` or convert the model's tokenizer with AutoTokenizer(..., use_fast=True)."
            )
        self.tokenizer = tokenizer
        # We tokenize over-long prompts on purpose (to cut them inside the slot): silence that warning.
        getattr(tokenizer, "deprecation_warnings", {})[
            "sequence-length-is-longer-than-the-specified-maximum"
        ] = True
        self.template = template
        self.mask_token = tokenizer.mask_token if template.kind == "mask" else None
        if template.kind == "mask" and self.mask_token is None:
            raise PromptlabError(
                f"template {template.name!r} reads the [MASK] position, but this model's tokenizer has no mask "
                "token; use a masked LM (BERT, RoBERTa, MPNet) or a next-token template such as 'prompteol'."
            )
        limits = [max_length, getattr(tokenizer, "model_max_length", None), model_positions]
        limits = [n for n in limits if isinstance(n, int) and 0 < n < _NO_LIMIT]
        self.max_length: int | None = min(limits) if limits else None

    def _tokenize(self, text: str):
        return self.tokenizer(
            text,
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
        )

    def encode(self, sentence: str) -> EncodedPrompt:
        rendered = self.template.render(sentence, self.mask_token)
        enc = self._tokenize(rendered.text)
        truncated = False
        for _ in range(8):
            if self.max_length is None:
                break
            overflow = len(enc["input_ids"]) - self.max_length
            if overflow <= 0:
                break
            rendered = self._shorten(rendered, overflow)
            enc = self._tokenize(rendered.text)
            truncated = True
        else:
            raise PromptlabError(
                f"could not fit a sentence into max_length={self.max_length} tokens with template "
                f"{self.template.name!r}; raise --max-length or shorten the template."
            )
        return self._locate(enc, rendered, truncated)

    def _shorten(self, rendered, overflow: int):
        """Cut the sentence (inside the slot) by at least ``overflow`` tokens, at a token boundary."""
        sentence = rendered.sentence
        offsets = self.tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        copies = self.template.text.count(SLOT)  # a span template (Echo) may show the sentence twice
        # One spare token: re-tokenizing at the cut can merge differently.
        keep = len(offsets) - -(-overflow // copies) - 1
        if keep <= 0:
            raise PromptlabError(
                f"template {self.template.name!r} alone is longer than max_length={self.max_length} tokens; "
                "raise --max-length or use a shorter template."
            )
        cut = sentence[: offsets[keep][0]].rstrip()
        return self.template.render(self.template.normalize_sentence(cut), self.mask_token, normalized=True)

    def _locate(self, enc, rendered, truncated: bool) -> EncodedPrompt:
        ids, offsets, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
        slot_tokens = [
            i
            for i, (start, end) in enumerate(offsets)
            if not special[i] and end > rendered.slot_start and start < rendered.slot_end
        ]
        slot = (slot_tokens[0], slot_tokens[-1] + 1) if slot_tokens else (0, 0)
        if self.template.kind == "mask":
            mask_id = self.tokenizer.mask_token_id
            # The template's own [MASK] lies outside the slot; a literal mask token in the sentence does not count.
            candidates = [i for i, t in enumerate(ids) if t == mask_id and not slot[0] <= i < slot[1]]
            if len(candidates) != 1:
                raise PromptlabError(
                    f"template {self.template.name!r} produced {len(candidates)} mask tokens outside the sentence; "
                    "keep exactly one [MASK] in the template."
                )
            target = candidates[0]
        else:
            # The last token the template wrote (not an appended EOS/SEP): the next-token position.
            non_special = [i for i in range(len(ids)) if not special[i]]
            target = non_special[-1] if non_special else len(ids) - 1
        return EncodedPrompt(ids=list(ids), target=target, slot=slot, truncated=truncated)


def pad_batch(prompts: list[EncodedPrompt], *, pad_id: int, padding_side: str = "right") -> TokenBatch:
    """Pad prompts to one length; positions are shifted with the padding, never assumed at ``[:, -1]``."""
    if padding_side not in ("left", "right"):
        raise PromptlabError(f"padding_side must be 'left' or 'right', not {padding_side!r}.")
    length = max(len(p.ids) for p in prompts)
    n = len(prompts)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    targets = torch.empty(n, dtype=torch.long)
    slots = torch.empty((n, 2), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        shift = length - len(prompt.ids) if padding_side == "left" else 0
        input_ids[row, shift : shift + len(prompt.ids)] = torch.tensor(prompt.ids)
        attention_mask[row, shift : shift + len(prompt.ids)] = 1
        targets[row] = prompt.target + shift
        slots[row] = torch.tensor(prompt.slot) + shift
    # Positions count real tokens only, so a left-padded row sees the same positions as an unpadded one.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return TokenBatch(input_ids, attention_mask, position_ids, targets, slots)
