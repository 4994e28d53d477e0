"""In-context demonstrations: a sentence and the one word that sums it up, prepended to a prompt.

PromptEOL (Jiang et al., 2023, "Scaling Sentence Embeddings with Large Language Models", Sec. 3.2) shows the
model one solved example before the sentence to embed:

    This sentence : "A man is smoking." means in one word:"Smoking". This sentence : "[X]" means in one word:"

A demonstration is data (``prompts/demonstrations/*.jsonl``, one JSON object a line: ``id``, ``sentence``,
``word``, ``source`` and, where the sentence also occurs in an STS dev/test set, ``eval_overlap``).
`with_demonstration` turns (template, demonstration) into an ordinary `Template` whose text starts with
the solved example, so rendering, tokenization and pooling are unchanged, and the text before the sentence
is the same for every sentence (a prefix cache can reuse it). Nothing here imports torch.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from promptlab.errors import PromptlabError, unknown_name
from promptlab.jsonl import read_rows
from promptlab.registry import prompts_dirs
from promptlab.templates import MASK, SLOT, Template

BEST_OF = "best-of:"
SEARCH_KIND = "demo-search"  # the ``kind`` of a demonstration search's rows (`promptlab search-demos`)
NONE = "none"
ALL_POOL = "all"
_KEYS = ("id", "sentence", "word", "source", "eval_overlap")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_QUOTES = "\"'"


@dataclass(frozen=True)
class Demonstration:
    """One solved example.

    Attributes:
        id: unique across the shipped files (``eol-opt-125m``, ``stsb-train-0007``, ``def-venison``).
        sentence: the example sentence, shown in the template's sentence slot.
        word: the one word that sums it up (no spaces or quotes).
        source: provenance: where the sentence comes from and who chose the word.
        eval_overlap: where the sentence also occurs in STS dev/test data (``""`` = nowhere); such
            demonstrations are kept for reproducing papers but never enter a search pool.
    """

    id: str
    sentence: str
    word: str
    source: str = ""
    eval_overlap: str = ""
    file: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        where = f"demonstration {self.id!r}" + (f" ({self.file})" if self.file else "")
        for name in _KEYS:
            if not isinstance(getattr(self, name), str):
                raise PromptlabError(f"{where}: {name} must be a string; fix the row.")
        if not _ID.match(self.id):
            raise PromptlabError(f"{where}: the id must be letters, digits, '_', '.' or '-'; rename it.")
        if not self.sentence.strip() or "\n" in self.sentence:
            raise PromptlabError(f"{where}: the sentence must be one non-empty line; fix the row.")
        if not self.word or any(c.isspace() or c in _QUOTES for c in self.word):
            raise PromptlabError(
                f"{where}: word {self.word!r} must be one word without spaces or quotes; fix the row."
            )
        for placeholder in (SLOT, MASK):
            if placeholder in self.sentence or placeholder in self.word:
                raise PromptlabError(f"{where}: {placeholder} cannot appear in a demonstration; fix the row.")

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if k != "file" and (v or k != "eval_overlap")}


# --------------------------------------------------------------------------- files


def load_demonstrations(path: str | Path) -> list[Demonstration]:
    """The demonstrations of one JSONL file; a malformed row raises an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise PromptlabError(
            f"demonstration file {path} does not exist; pass a .jsonl file or a shipped name."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PromptlabError(
            f"demonstration file {path} is not UTF-8 (byte {err.start}); save it as UTF-8."
        ) from None
    demos = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptlabError(
                f"{where}: not valid JSON ({err.msg}); write one JSON object per line."
            ) from None
        if not isinstance(row, dict):
            raise PromptlabError(f"{where}: expected a JSON object with id, sentence, word, source.")
        unknown = set(row) - set(_KEYS)
        missing = {"id", "sentence", "word"} - set(row)
        if unknown or missing:
            problem = f"unknown key(s) {', '.join(sorted(unknown))}" if unknown else ""
            problem += ("; " if unknown and missing else "") + (
                f"missing {', '.join(sorted(missing))}" if missing else ""
            )
            raise PromptlabError(f"{where}: {problem}; allowed keys: {', '.join(_KEYS)}.")
        try:
            demos.append(Demonstration(**row, file=path.name))
        except PromptlabError as err:
            raise PromptlabError(f"{where}: {err}") from None
    return demos


def shipped_files() -> dict[str, Path]:
    """Shipped demonstration files by stem (``prompteol-paper``, ``definitions``, ...)."""
    files: dict[str, Path] = {}
    for folder in prompts_dirs():
        for path in sorted((folder / "demonstrations").glob("*.jsonl")):
            files.setdefault(path.stem, path)
    return files


@functools.cache
def _shipped() -> dict[str, Demonstration]:
    by_id: dict[str, Demonstration] = {}
    for path in shipped_files().values():
        for demo in load_demonstrations(path):
            if demo.id in by_id:
                raise PromptlabError(
                    f"duplicate demonstration id {demo.id!r} in {demo.file} "
                    f"(already in {by_id[demo.id].file}); "
                    "rename one."
                )
            by_id[demo.id] = demo
    return by_id


def list_demonstrations() -> list[Demonstration]:
    return list(_shipped().values())


def get_demonstration(demo_id: str) -> Demonstration:
    try:
        return _shipped()[demo_id]
    except KeyError:
        raise unknown_name(
            "demonstration", demo_id, _shipped(), listed_by="promptlab demonstrations"
        ) from None


def load_pool(spec: str = ALL_POOL) -> tuple[list[Demonstration], list[Demonstration]]:
    """Search candidates: ``all`` (every shipped file), a shipped file's stem, or a .jsonl path.

    Returns (pool, excluded): demonstrations flagged with ``eval_overlap`` never enter a pool, so a search
    cannot pick a sentence the model is then tested on.
    """
    if spec == ALL_POOL:
        demos = list_demonstrations()
    elif spec in shipped_files():
        demos = load_demonstrations(shipped_files()[spec])
    elif spec.endswith(".jsonl") or "/" in spec:
        demos = load_demonstrations(spec)
        seen: dict[str, int] = {}
        for demo in demos:
            if demo.id in seen:
                raise PromptlabError(f"{spec}: demonstration id {demo.id!r} appears twice; rename one.")
            seen[demo.id] = 1
    else:
        raise unknown_name("demonstration pool", spec, [ALL_POOL, *shipped_files()])
    pool = [d for d in demos if not d.eval_overlap]
    excluded = [d for d in demos if d.eval_overlap]
    if not pool:
        raise PromptlabError(f"demonstration pool {spec!r} has no candidates; add rows without eval_overlap.")
    return pool, excluded


def resolve_demonstration(spec: Demonstration | str | None) -> Demonstration | None:
    """A `Demonstration`, a shipped id, ``best-of:RESULTS.jsonl`` (a search's best candidate), or none."""
    if spec is None or isinstance(spec, Demonstration):
        return spec
    if spec in ("", NONE):
        return None
    if spec.startswith(BEST_OF):
        return best_demonstration(spec[len(BEST_OF) :])
    return get_demonstration(spec)


def _score(value) -> float:
    return float("-inf") if value is None else float(value)


def candidate_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(candidate rows best first, the baseline row or None) of a demonstration search's rows."""
    rows = [r for r in rows if r.get("kind") == SEARCH_KIND]
    baseline = next((r for r in rows if r.get("baseline")), None)
    candidates = sorted((r for r in rows if not r.get("baseline")), key=lambda r: -_score(r.get("score")))
    return candidates, baseline


def best_demonstration(path: str | Path) -> Demonstration:
    """The best-scoring candidate of a search results file (``--demonstration best-of:PATH``)."""
    candidates, baseline = candidate_rows(read_rows(path))
    if not candidates:
        raise PromptlabError(
            f"{path} holds no scored demonstration candidates; run `promptlab search-demos` first."
        )
    best = candidates[0]
    if baseline is not None and _score(best.get("score")) < _score(baseline.get("score")):
        warnings.warn(
            f"the best demonstration in {path} ({best['demonstration']['id']}, {best['score']:.2f}) "
            "scores below "
            f"no demonstration ({baseline['score']:.2f}).",
            stacklevel=2,
        )
    return Demonstration(**best["demonstration"])


# --------------------------------------------------------------------------- templates


def with_demonstration(template: Template, demo: Demonstration | None) -> Template:
    """``template`` with ``demo`` solved in front of it, in PromptEOL's format.

    next_token: the template rendered with the demonstration's sentence, then the word, the closing quote
    and ". " (``...in one word:"Smoking". This sentence : "[X]"...``); a template that does not end in a
    quote gets a space before the word. mask: the template rendered with the word in place of [MASK].
    """
    if demo is None:
        return template
    if template.kind == "next_token":
        shown = template.render(demo.sentence).text
        quote = shown[-1] if shown[-1] in _QUOTES else ""
        gap = "" if quote or shown[-1].isspace() else " "
        block = f"{shown}{gap}{demo.word}{quote}. "
    elif template.kind == "mask":
        block = template.render(demo.sentence, mask_token=demo.word).text.rstrip() + " "
    else:
        raise PromptlabError(
            f"template {template.name!r} is a {template.kind!r} template; demonstrations are defined for "
            "one-word templates ('next_token' such as prompteol, or 'mask'): choose one of those, or drop it."
        )
    return Template(
        name=f"{template.name}+{demo.id}",
        kind=template.kind,
        text=block + template.text,
        paper=f"{template.paper}; demonstration {demo.id} ({demo.source})",
        pooling=template.pooling,
        normalize=template.normalize,
        source=template.source,
    )
