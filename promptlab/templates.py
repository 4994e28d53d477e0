"""Prompt templates: a sentence slot `[X]`, an optional `[MASK]`, and the rules that prepare the sentence.

A template is data (see `prompts/*.toml`); this module turns one into a frozen, validated object and
renders sentences into prompt text. It knows nothing of models or tokenizers: the `[MASK]` placeholder is
replaced by whatever mask token the caller's tokenizer uses.

Kinds, and where the embedding is read:
- ``mask`` (PromptBERT, Jiang et al. 2022): the hidden state at ``[MASK]``.
- ``next_token`` (PromptEOL, Jiang et al. 2023): the hidden state of the last prompt token, the position
  that predicts the next word.
- ``prefix``: an instruction prefix (E5, BGE, Instructor) or nothing, pooled over the tokens
  (cls | cls_mlp | mean | max | last).
- ``span`` (Echo embeddings, Springer et al. 2024): the sentence may appear more than once; the mean over
  the tokens of its *last* copy, which has read the whole sentence once already.
- ``ensemble`` (MetaEOL, Lei et al. 2024): no text of its own; the mean of its ``members``' vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from promptlab.config_types import as_toml, check_type
from promptlab.errors import PromptlabError

SLOT = "[X]"
MASK = "[MASK]"

KINDS = ("mask", "next_token", "prefix", "span", "ensemble")
PREFIX_POOLINGS = ("cls", "cls_mlp", "mean", "max", "last")
# The single-token kinds are read at one fixed position of the prompt; span/ensemble have one read-out too.
KIND_POOLING = {"mask": "mask", "next_token": "next_token", "span": "span", "ensemble": "members"}

_FIELD_TYPES = (
    ("name", "str"),
    ("kind", "str"),
    ("text", "str"),
    ("paper", "str"),
    ("pooling", "str | None"),
    ("normalize", "bool"),
    ("source", "str"),
)
_FINAL_PUNCTUATION = ".?!\"'"
_QUOTES = "\"'"


@dataclass(frozen=True)
class RenderedPrompt:
    """Prompt text with the character span the sentence occupies (used for slot-aware truncation)."""

    text: str
    slot_start: int
    slot_end: int
    sentence: str


@dataclass(frozen=True)
class Template:
    """A validated prompt template.

    Attributes:
        name: registry name (unique).
        kind: ``mask`` | ``next_token`` | ``prefix``.
        text: the prompt, with exactly one ``[X]`` and, for ``mask`` templates only, exactly one ``[MASK]``.
        paper: where the template comes from (shown by ``promptlab templates`` and stored in results).
        pooling: how vectors are read; fixed for ``mask``/``next_token``, a default for ``prefix``.
        normalize: apply the PromptEOL/PromptBERT input rules (final "." when the sentence has no final
            punctuation; ``"`` becomes ``'`` inside a ``"``-quoted slot). Off for plain prefixes.
    """

    name: str
    kind: str
    text: str
    paper: str = ""
    pooling: str | None = None
    normalize: bool = True
    source: str = field(default="", compare=False)
    members: tuple[str, ...] = ()  # ``ensemble`` only: the member templates' names

    def __post_init__(self) -> None:
        where = f"template {self.name!r}" + (f" ({self.source})" if self.source else "")
        for name, kind in _FIELD_TYPES:
            check_type(getattr(self, name), kind, f"{where}: {name}")
        if not isinstance(self.members, list | tuple):
            raise PromptlabError(
                f"{where}: members = {as_toml(self.members)} must be a list of template names."
            )
        if self.kind not in KINDS:
            raise PromptlabError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}.")
        object.__setattr__(self, "members", tuple(self.members))
        if self.kind == "ensemble" or self.members:
            self._check_ensemble(where)
            return
        n_slots = self.text.count(SLOT)
        if n_slots != 1 and not (self.kind == "span" and n_slots > 1):
            raise PromptlabError(
                f"{where}: the text needs exactly one sentence slot {SLOT}, found {n_slots}: {self.text!r}. "
                f"Write the text with {SLOT} where the sentence goes."
            )
        n_masks = self.text.count(MASK)
        if self.kind == "mask" and n_masks != 1:
            raise PromptlabError(
                f"{where}: a 'mask' template needs exactly one {MASK}, found {n_masks}: {self.text!r}. "
                f"Add {MASK} where the embedding is read, or use kind 'next_token'."
            )
        if self.kind != "mask" and n_masks:
            raise PromptlabError(
                f"{where}: {MASK} only belongs in a 'mask' template (this one is {self.kind!r}). "
                f"Set kind = 'mask' or remove {MASK}."
            )
        if self.kind in KIND_POOLING:
            fixed = KIND_POOLING[self.kind]
            if self.pooling not in (None, fixed):
                raise PromptlabError(
                    f"{where}: a {self.kind!r} template is read at one position ({fixed!r}); "
                    f"remove pooling = {self.pooling!r} or use kind 'prefix'."
                )
            object.__setattr__(self, "pooling", fixed)
        else:
            pooling = self.pooling or "mean"
            if pooling not in PREFIX_POOLINGS:
                raise PromptlabError(
                    f"{where}: pooling {pooling!r} is not one of {', '.join(PREFIX_POOLINGS)}."
                )
            object.__setattr__(self, "pooling", pooling)

    def _check_ensemble(self, where: str) -> None:
        if self.kind != "ensemble":
            raise PromptlabError(f"{where}: members only belong in an 'ensemble' template; remove members.")
        if len(self.members) < 2 or not all(isinstance(m, str) and m for m in self.members):
            raise PromptlabError(f"{where}: an ensemble needs members = [two or more template names].")
        if self.text:
            raise PromptlabError(f"{where}: an ensemble has no text of its own; remove text, list members.")
        if self.pooling not in (None, "members"):
            raise PromptlabError(f"{where}: an ensemble averages its members' vectors; remove pooling.")
        object.__setattr__(self, "pooling", "members")

    # -- structure -------------------------------------------------------------------------------------
    @property
    def head(self) -> str:
        """Text before the sentence slot (the same for every sentence: a prefix-cache candidate)."""
        return self.text.split(SLOT)[0]

    @property
    def tail(self) -> str:
        """Text after the (last) sentence slot."""
        return self.text.split(SLOT)[-1]

    @property
    def slot_quote(self) -> str | None:
        """The quote character around the slot (``"`` in ``"[X]"``, ``'`` in ``' [X] '``), or None."""
        before, after = self.head.rstrip(" "), self.tail.lstrip(" ")
        if before and after and before[-1] in _QUOTES and before[-1] == after[0]:
            return before[-1]
        return None

    def with_pooling(self, pooling: str | None) -> Template:
        """This template read out with another pooling (only prefix templates can change it)."""
        if pooling is None or pooling == self.pooling:
            return self
        if self.kind != "prefix":
            raise PromptlabError(
                f"template {self.name!r} is a {self.kind!r} template, read at its {self.pooling!r} position; "
                f"--pooling {pooling} needs a 'prefix' template (e.g. 'none' for the sentence alone)."
            )
        return Template(self.name, self.kind, self.text, self.paper, pooling, self.normalize, self.source)

    # -- rendering -------------------------------------------------------------------------------------
    def normalize_sentence(self, sentence: str) -> str:
        """Apply the template's input rules, as in the PromptEOL/PromptBERT evaluation code."""
        if not self.normalize:
            return sentence
        if sentence and sentence[-1] not in _FINAL_PUNCTUATION:
            sentence += "."
        if self.slot_quote == '"':
            sentence = sentence.replace('"', "'")
        return sentence

    def render(
        self, sentence: str, mask_token: str | None = None, *, normalized: bool = False
    ) -> RenderedPrompt:
        """The prompt text for one sentence; ``[MASK]`` becomes ``mask_token`` (required for mask kinds)."""
        if self.kind == "ensemble":
            raise PromptlabError(f"template {self.name!r} is an ensemble: render its members instead.")
        if not normalized:
            sentence = self.normalize_sentence(sentence)
        parts = self.text.split(SLOT)  # two parts, or more for a span template that repeats the sentence
        if MASK in self.text:
            if mask_token is None:
                raise PromptlabError(
                    f"template {self.name!r} has {MASK} but the model's tokenizer has no mask token; "
                    "use a masked LM (BERT, RoBERTa, MPNet) or a 'next_token' template such as 'prompteol'."
                )
            parts = [part.replace(MASK, mask_token) for part in parts]
        before_last = sentence.join(parts[:-1])  # the recorded slot is the sentence's last copy
        start = len(before_last)
        return RenderedPrompt(before_last + sentence + parts[-1], start, start + len(sentence), sentence)


def template_from_text(text: str, *, kind: str | None = None, pooling: str | None = None) -> Template:
    """An ad-hoc template from literal text (``--template 'Sentence: [X] in one word:'``).

    The kind is ``mask`` when the text has ``[MASK]``, else ``next_token`` unless ``pooling`` asks for a
    pooled read-out (then ``prefix``).
    """
    if kind is None:
        kind = "mask" if MASK in text else ("prefix" if pooling else "next_token")
    return Template(name="custom", kind=kind, text=text, paper="user-supplied", pooling=pooling)
