"""`Combination`: one sentence vector from several embedders, each read at one or more layers.

A member is an `Embedder` (a model, template, demonstration, adapter...) and the layers it is read at. Its
part of the vector is the mean of its unit-length layer vectors, scaled to unit length and then by
``sqrt(weight / total weight)``; the parts are concatenated. The cosine of two combined vectors is then the
weighted mean of the members' cosines, so a member with weight 0.7 decides 70% of every similarity. Typical
uses: an untrained prompt beside the same prompt after CSE fine-tuning, or several top layers of one model.

A combination is written as TOML, one ``[[member]]`` table per member::

    [[member]]
    model = "smollm2-135m"          # or: embedder = "FOLDER" (a saved embedder or a fine-tuning adapter)
    template = "eol-topic"
    demonstration = "best-of:experiments/results/search-smollm2-eol-topic-l28.jsonl"
    dtype = "float32"
    layers = [26, 27, 28, 29]       # or: layer = 28
    weight = 0.7                    # default 1

Paths in it (folders, ``best-of:`` searches) are relative to the working directory, as on the command line.
``promptlab eval --embedder FILE.toml`` and ``promptlab embed --embedder FILE.toml`` embed with it.
Members load one after another and stay in memory together: each brings its own model.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptlab.embedder import Embedder, check_sentences, sentences_per_second
from promptlab.errors import PromptlabError

# The keys of an inline member: the `Embedder` arguments that change the vectors.
MEMBER_EMBEDDER_KEYS = (
    "model",
    "template",
    "dtype",
    "pooling",
    "demonstration",
    "adapter",
    "max_length",
    "backend",
    "quantization",
)
MEMBER_KEYS = (*MEMBER_EMBEDDER_KEYS, "embedder", "layer", "layers", "weight")


@dataclass
class Member:
    """One embedder of a combination, the layers it is read at and its weight."""

    embedder: Embedder
    layers: tuple[int, ...]
    weight: float = 1.0

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        check_layers_and_weight(self.layers, self.weight)
        for layer in self.layers:
            self.embedder.resolve_layer(layer)  # out of range: refused now, naming the model's layers


def check_layers_and_weight(layers: Sequence[Any], weight: Any) -> None:
    """Refuse a member's layers or weight that cannot be used (checked before its model loads)."""
    if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise PromptlabError(f"layers = {list(layers)}: give one or more layer numbers, e.g. [27, 28].")
    if len(set(layers)) != len(layers):
        raise PromptlabError(f"layers = {list(layers)} repeats a layer; list each layer once.")
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not weight > 0:
        raise PromptlabError(f"weight = {weight!r}: give a number above 0 (the default is 1).")


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64 (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class Combination:
    """Concatenated, weighted member vectors behind `Embedder`'s ``encode`` signature (see the module)."""

    def __init__(self, members: Sequence[Member], *, source: str | None = None):
        self.members = list(members)
        if len(self.members) < 2 and all(len(m.layers) < 2 for m in self.members):
            raise PromptlabError(
                "a combination needs two or more members, or one member read at two or more layers; "
                "for a single embedder at one layer use it directly (--model/--embedder FOLDER)."
            )
        self.source = source
        total = sum(m.weight for m in self.members)
        self.scales = [float(np.sqrt(m.weight / total)) for m in self.members]
        self.last_stats: dict[str, Any] = {}

    @classmethod
    def load(cls, path: str | Path, **options) -> Combination:
        """A combination from its TOML file; ``options`` are runtime options given to every member
        (``device``, ``batch_size``, ``batch_tokens``, ``cache_dir``...)."""
        path = Path(path)
        try:
            config = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PromptlabError(f"combination file {path} does not exist; check the path.") from None
        except tomllib.TOMLDecodeError as e:
            raise PromptlabError(f"{path} is not valid TOML ({e}); fix the file.") from None
        extra = sorted(set(config) - {"member"})
        tables = config.get("member")
        if extra or not isinstance(tables, list) or not tables:
            raise PromptlabError(
                f"{path}: a combination holds only [[member]] tables (one per embedder)"
                + (f"; remove {', '.join(extra)}" if extra else "; add at least one")
                + "."
            )
        return cls(
            [_member(table, f"{path}, member {i}", options) for i, table in enumerate(tables, 1)],
            source=str(path),
        )

    # -- encoding --------------------------------------------------------------------------------------
    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        normalize_embeddings: bool = False,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
    ) -> np.ndarray:
        """Embed sentences; returns float32 [N, sum of the members' widths] (or one row for a string).

        Rows have unit length already; ``normalize_embeddings`` is accepted for the common signature."""
        single = isinstance(sentences, str)
        sentences = check_sentences([sentences] if single else sentences)
        parts, stats = [], {"tokens": 0, "truncated": 0, "seconds": 0.0, "embedded": 0}
        for member, scale in zip(self.members, self.scales, strict=True):
            by_layer = member.embedder.encode_layers(
                sentences, member.layers, batch_size=batch_size, show_progress_bar=show_progress_bar
            )
            mean = np.mean([_unit(by_layer[layer]) for layer in member.layers], axis=0)
            parts.append(scale * _unit(mean))
            for key in stats:
                stats[key] += member.embedder.last_stats.get(key, 0)
        vectors = np.concatenate(parts, axis=1).astype(np.float32)
        unique = len(set(sentences))
        self.last_stats = {
            "sentences": len(sentences),
            "unique_sentences": unique,
            **stats,
            # A sentence is computed once per member: the work is counted in member-embeddings.
            "from_cache": unique * len(self.members) - stats["embedded"],
            "sentences_per_second": sentences_per_second(stats["embedded"], stats["seconds"]),
        }
        return vectors[0] if single else vectors

    # -- records ---------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The full configuration behind these vectors: every member's own record, layers and weight."""
        from promptlab.version import __version__

        members = [
            {**m.embedder.describe(), "layers": list(m.layers), "weight": m.weight} for m in self.members
        ]
        return {
            "kind": "combination",
            "model": " + ".join(str(m["model"]) for m in members),
            "dtype": " + ".join(sorted({str(m["dtype"]) for m in members})),
            "backend": " + ".join(sorted({str(m.get("backend", "transformers")) for m in members})),
            "combination": self.source,
            "members": members,
            "promptlab": __version__,
        }

    @property
    def label(self) -> str:
        """A one-line name for tables: each member's model, template, layers, dtype and weight."""
        parts = []
        for m in self.members:
            described = m.embedder.describe()
            parts.append(
                f"[{described['model']}, {described['template']}{', adapter' if described.get('adapter') else ''}, "
                f"layers {','.join(map(str, m.layers))}, {described['dtype']}, weight {m.weight:g}]"
            )
        return " + ".join(parts)

    @property
    def batch_size(self) -> list[int | None]:
        return [m.embedder.batch_size for m in self.members]

    @property
    def batch_tokens(self) -> list[int | None]:
        return [m.embedder.batch_tokens for m in self.members]

    def computes(self) -> dict[str, Any]:
        """What shapes these vectors, as `promptlab.cache.computes` gives it for each member."""
        return {
            "kind": "combination",
            "members": [
                {**m.embedder.computes(), "layers": list(m.layers), "weight": m.weight} for m in self.members
            ],
        }


def _member(table: Any, where: str, options: dict[str, Any]) -> Member:
    if not isinstance(table, dict):
        raise PromptlabError(f"{where}: write each member as a [[member]] table.")
    unknown = sorted(set(table) - set(MEMBER_KEYS))
    if unknown:
        raise PromptlabError(f"{where}: unknown key(s) {', '.join(unknown)}; use {', '.join(MEMBER_KEYS)}.")
    if ("layer" in table) == ("layers" in table):
        raise PromptlabError(
            f"{where}: give either layer = N or layers = [N, ...], not both and not neither."
        )
    layers = table["layers"] if "layers" in table else [table["layer"]]
    if not isinstance(layers, list):
        raise PromptlabError(f"{where}: layers = {layers!r}: write a list, e.g. layers = [27, 28].")
    try:
        check_layers_and_weight(layers, table.get("weight", 1.0))
    except PromptlabError as e:
        raise PromptlabError(f"{where}: {e}") from None
    inline = {k: table[k] for k in MEMBER_EMBEDDER_KEYS if k in table}
    if "embedder" in table:
        if "model" in inline:
            raise PromptlabError(f"{where}: a saved embedder brings its own model; drop model (or embedder).")
        embedder = Embedder.load(table["embedder"], **options, **inline)
    elif "model" in inline:
        embedder = Embedder(**inline, **options)
    else:
        raise PromptlabError(f'{where}: name the member\'s model = "..." or a saved embedder = "FOLDER".')
    try:
        return Member(embedder, tuple(layers), table.get("weight", 1.0))
    except PromptlabError as e:
        raise PromptlabError(f"{where}: {e}") from None
