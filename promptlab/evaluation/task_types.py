"""The four task types: STS, reranking, retrieval and pair classification, each with its typed result.

Every similarity is the cosine of two vectors, with SentEval's guard: a zero or non-finite vector has
cosine 0 with everything. Metrics and their tie conventions are in `promptlab.evaluation.metrics`; the
types and main metrics follow MTEB (Muennighoff et al., 2023):

| type | items | main metric (x 100 in tables) | also |
|---|---|---|---|
| sts | scored sentence pairs | Spearman of cosine vs gold | per-subset Spearman |
| reranking | queries, each with its own labelled candidates | MAP | MRR@10 |
| retrieval | queries searched exactly over one shared corpus | nDCG@10 | recall@1/5/10, MRR@10 |
| pair-classification | sentence pairs labelled 0/1 | AP of cosine | best-threshold accuracy, F1 |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import numpy as np

from promptlab.evaluation import metrics
from promptlab.evaluation.data import STSPairs
from promptlab.evaluation.protocol import TaskType, Vectors, register_task_type
from promptlab.evaluation.scoring import TaskScore, aggregate, cosine_pairs

_CHUNK = 1024  # query rows per block of the retrieval similarity matrix


def _json(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


@dataclass(frozen=True)
class _Result:
    """Shared by the typed results: ``score`` (main metric x 100) and a JSON round trip."""

    type: ClassVar[str]
    main_metric: ClassVar[str]
    task: str

    @property
    def score(self) -> float:
        return 100.0 * getattr(self, self.main_metric)

    def to_dict(self) -> dict:
        fields = {k: _json(v) for k, v in asdict(self).items() if k != "task"}
        return {"type": self.type, "score": _json(self.score), "main_metric": self.main_metric, **fields}

    @classmethod
    def from_dict(cls, task: str, record: dict):
        names = {f.name for f in fields(cls)} - {"task"}
        values = {k: (float("nan") if record.get(k) is None else record[k]) for k in names if k in record}
        return cls(task=task, **values)


# --------------------------------------------------------------------------- STS


@dataclass(frozen=True, eq=False)
class STSTask:
    """SentEval STS: one `STSPairs` per subset (STS12-16) or split (STS-B, SICK-R), see `evaluation.data`."""

    name: str
    split: str
    pairs: list[STSPairs]
    digests: dict[str, str] = field(default_factory=dict)
    type: ClassVar[str] = "sts"

    @property
    def n_items(self) -> int:
        return sum(len(p) for p in self.pairs)

    def sentences(self) -> list[str]:
        return [s for p in self.pairs for s in (*p.sentences1, *p.sentences2)]

    def score(self, vectors: Vectors) -> TaskScore:
        predicted = {
            p.subset: cosine_pairs(vectors.rows(p.sentences1), vectors.rows(p.sentences2)) for p in self.pairs
        }
        return aggregate(self.name, predicted, {p.subset: p.scores for p in self.pairs})

    # A `PartedTask`: a part is a range of one subset's pairs, named "subset[start:stop]"; its values are
    # the pairs' cosines, and `score_parts` joins them in order and aggregates as `score` does.

    def parts(self, max_items: int) -> list[str]:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        return [
            f"{p.subset}[{start}:{min(start + max_items, len(p))}]"
            for p in self.pairs
            for start in range(0, len(p), max_items)
        ]

    def part_sentences(self, part: str) -> list[str]:
        pairs, start, stop = self._part(part)
        return [*pairs.sentences1[start:stop], *pairs.sentences2[start:stop]]

    def score_part(self, part: str, vectors: Vectors) -> list[float]:
        pairs, start, stop = self._part(part)
        cosines = cosine_pairs(
            vectors.rows(pairs.sentences1[start:stop]), vectors.rows(pairs.sentences2[start:stop])
        )
        return cosines.tolist()

    def score_parts(self, values: dict[str, list[float]]) -> TaskScore:
        predicted: dict[str, list[float]] = {p.subset: [] for p in self.pairs}
        spans = sorted(((*self._part(part), part) for part in values), key=lambda s: (s[0].subset, s[1]))
        for pairs, start, stop, part in spans:
            if len(values[part]) != stop - start or len(predicted[pairs.subset]) != start:
                raise ValueError(
                    f"{self.name}: part {part} holds {len(values[part])} values, or a part before it is missing"
                )
            predicted[pairs.subset].extend(values[part])
        for p in self.pairs:
            if len(predicted[p.subset]) != len(p):
                raise ValueError(
                    f"{self.name}/{p.subset}: {len(predicted[p.subset])} of {len(p)} pairs have values"
                )
        return aggregate(
            self.name,
            {subset: np.asarray(v, dtype=np.float64) for subset, v in predicted.items()},
            {p.subset: p.scores for p in self.pairs},
        )

    def _part(self, part: str) -> tuple[STSPairs, int, int]:
        subset, _, bounds = part.rpartition("[")
        pairs = next((p for p in self.pairs if p.subset == subset), None)
        try:
            start, stop = (int(b) for b in bounds.removesuffix("]").split(":"))
        except ValueError:
            pairs = None
        if pairs is None or not 0 <= start < stop <= len(pairs):
            raise ValueError(f"{self.name}: no part {part!r}; parts are named 'subset[start:stop]'")
        return pairs, start, stop


# --------------------------------------------------------------------------- reranking


@dataclass(frozen=True)
class RerankingScore(_Result):
    """MAP and MRR@10 over the queries that have at least one relevant and one irrelevant candidate."""

    type: ClassVar[str] = "reranking"
    main_metric: ClassVar[str] = "map"
    map: float = float("nan")
    mrr_at_10: float = float("nan")
    n_queries: int = 0  # scored
    n_skipped: int = 0  # all candidates relevant, or none: no ranking to judge
    n_candidates: int = 0  # over the scored queries


@dataclass(frozen=True, eq=False)
class RerankingTask:
    """Each query ranks its own candidates (answer selection: a question and its candidate sentences)."""

    name: str
    split: str
    queries: list[str]
    candidates: list[list[str]]  # per query
    labels: list[np.ndarray]  # per query: bool, one per candidate
    digests: dict[str, str] = field(default_factory=dict)
    type: ClassVar[str] = "reranking"

    @property
    def n_items(self) -> int:
        return sum(len(c) for c in self.candidates)

    def sentences(self) -> list[str]:
        return [*self.queries, *(s for cands in self.candidates for s in cands)]

    def judged(self) -> list[int]:
        """Indices of the queries that are scored: at least one relevant and one irrelevant candidate."""
        return [i for i, y in enumerate(self.labels) if 0 < int(y.sum()) < len(y)]

    def score(self, vectors: Vectors) -> RerankingScore:
        def by_cosine(query: str, candidates: Sequence[str]) -> np.ndarray:
            cands = vectors.rows(candidates)  # (c, d)
            return cosine_pairs(np.broadcast_to(vectors.rows([query]), cands.shape), cands)

        return self.score_ranker(by_cosine)

    def score_ranker(self, ranker: Callable[[str, Sequence[str]], np.ndarray]) -> RerankingScore:
        """Score any ranker ``ranker(query, candidates) -> one score per candidate`` (a BM25 baseline)."""
        kept = self.judged()
        aps, rrs = [], []
        for i in kept:
            scores = np.asarray(ranker(self.queries[i], self.candidates[i]), dtype=np.float64)
            aps.append(metrics.average_precision(scores, self.labels[i]))
            rrs.append(metrics.reciprocal_rank(scores, self.labels[i], k=10))
        return RerankingScore(
            task=self.name,
            map=_mean(aps),
            mrr_at_10=_mean(rrs),
            n_queries=len(kept),
            n_skipped=len(self.queries) - len(kept),
            n_candidates=sum(len(self.candidates[i]) for i in kept),
        )


# --------------------------------------------------------------------------- retrieval


@dataclass(frozen=True)
class RetrievalScore(_Result):
    """Exact cosine search of each query over the whole corpus; queries without a relevant document skipped."""

    type: ClassVar[str] = "retrieval"
    main_metric: ClassVar[str] = "ndcg_at_10"
    ndcg_at_10: float = float("nan")
    recall_at_1: float = float("nan")
    recall_at_5: float = float("nan")
    recall_at_10: float = float("nan")
    mrr_at_10: float = float("nan")
    n_queries: int = 0
    n_corpus: int = 0


@dataclass(frozen=True, eq=False)
class RetrievalTask:
    """Queries searched over one corpus; ``relevant[i]`` holds the corpus indices relevant to query i."""

    name: str
    split: str
    queries: list[str]
    corpus: list[str]
    relevant: list[frozenset[int]]
    digests: dict[str, str] = field(default_factory=dict)
    type: ClassVar[str] = "retrieval"

    @property
    def n_items(self) -> int:
        return sum(len(r) for r in self.relevant)

    def sentences(self) -> list[str]:
        return [*self.queries, *self.corpus]

    def score(self, vectors: Vectors) -> RetrievalScore:
        kept = [i for i, rel in enumerate(self.relevant) if rel]
        corpus = _unit(vectors.rows(self.corpus))  # (n_corpus, d)
        labels = np.zeros(len(self.corpus), dtype=bool)
        out: dict[str, list[float]] = {k: [] for k in ("ndcg", "r1", "r5", "r10", "rr")}
        for start in range(0, len(kept), _CHUNK):
            block = kept[start : start + _CHUNK]
            sims = _unit(vectors.rows(self.queries[i] for i in block)) @ corpus.T  # (b, n_corpus)
            for row, i in enumerate(block):
                labels[:] = False
                labels[list(self.relevant[i])] = True
                out["ndcg"].append(metrics.ndcg_at_k(sims[row], labels, 10))
                out["r1"].append(metrics.recall_at_k(sims[row], labels, 1))
                out["r5"].append(metrics.recall_at_k(sims[row], labels, 5))
                out["r10"].append(metrics.recall_at_k(sims[row], labels, 10))
                out["rr"].append(metrics.reciprocal_rank(sims[row], labels, k=10))
        return RetrievalScore(
            task=self.name,
            ndcg_at_10=_mean(out["ndcg"]),
            recall_at_1=_mean(out["r1"]),
            recall_at_5=_mean(out["r5"]),
            recall_at_10=_mean(out["r10"]),
            mrr_at_10=_mean(out["rr"]),
            n_queries=len(kept),
            n_corpus=len(self.corpus),
        )


def _unit(vecs: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64; a zero or non-finite row becomes zeros (cosine 0)."""
    vecs = np.nan_to_num(np.asarray(vecs, dtype=np.float64))
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(np.where(norms > 0, vecs / norms, 0.0))


# --------------------------------------------------------------------------- pair classification


@dataclass(frozen=True)
class PairClassificationScore(_Result):
    """AP of cosine for the positive label, and accuracy/F1 at their best thresholds on these pairs."""

    type: ClassVar[str] = "pair-classification"
    main_metric: ClassVar[str] = "ap"
    ap: float = float("nan")
    accuracy: float = float("nan")
    accuracy_threshold: float = float("nan")
    f1: float = float("nan")
    precision: float = float("nan")
    recall: float = float("nan")
    f1_threshold: float = float("nan")
    n_pairs: int = 0
    n_positive: int = 0


@dataclass(frozen=True, eq=False)
class PairClassificationTask:
    """Sentence pairs with a 0/1 label (e.g. SICK: entailment vs the rest)."""

    name: str
    split: str
    sentences1: list[str]
    sentences2: list[str]
    labels: np.ndarray  # bool, one per pair
    digests: dict[str, str] = field(default_factory=dict)
    type: ClassVar[str] = "pair-classification"

    @property
    def n_items(self) -> int:
        return len(self.labels)

    def sentences(self) -> list[str]:
        return [*self.sentences1, *self.sentences2]

    def score(self, vectors: Vectors) -> PairClassificationScore:
        cos = cosine_pairs(vectors.rows(self.sentences1), vectors.rows(self.sentences2))
        accuracy, acc_threshold = metrics.best_accuracy(cos, self.labels)
        f1, precision, recall, f1_threshold = metrics.best_f1(cos, self.labels)
        return PairClassificationScore(
            task=self.name,
            ap=metrics.average_precision(cos, self.labels),
            accuracy=accuracy,
            accuracy_threshold=acc_threshold,
            f1=f1,
            precision=precision,
            recall=recall,
            f1_threshold=f1_threshold,
            n_pairs=len(self.labels),
            n_positive=int(np.sum(self.labels)),
        )


for _type in (
    TaskType("sts", "spearman", "Spearman", TaskScore, "Spearman x 100 of cosine against gold similarity"),
    TaskType("reranking", "map", "MAP", RerankingScore, "each query ranks its own candidates"),
    TaskType("retrieval", "ndcg_at_10", "nDCG@10", RetrievalScore, "exact search over a shared corpus"),
    TaskType("pair-classification", "ap", "AP", PairClassificationScore, "0/1 labelled pairs, AP of cosine"),
):
    register_task_type(_type)
