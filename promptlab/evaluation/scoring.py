"""Scoring: Spearman correlation (x100) between cosine similarity and gold, aggregated as SentEval does.

SentEval scores a pair with `nan_to_num(cosine(nan_to_num(u), nan_to_num(v)))`, so a zero or broken vector
scores 0 instead of poisoning the correlation; we do the same, in float64. STS12-16 are reported as
SimCSE's SentEval fork reports them (Gao et al., 2021, and the PromptBERT/PromptEOL scripts after it):
one Spearman over all subsets' pairs concatenated ("all"); the per-subset mean and the size-weighted mean
of the original SentEval are kept for reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

_CHUNK = 2048  # pairs per float64 block: bounds memory for 4096-dim vectors


def cosine_pairs(vecs1: np.ndarray, vecs2: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays, float64; a zero or non-finite row gives 0."""
    vecs1, vecs2 = np.asarray(vecs1), np.asarray(vecs2)
    if vecs1.shape != vecs2.shape or vecs1.ndim != 2:
        raise ValueError(f"need two (n, d) arrays of the same shape, got {vecs1.shape} and {vecs2.shape}")
    out = np.empty(len(vecs1), dtype=np.float64)
    for start in range(0, len(vecs1), _CHUNK):
        a = np.nan_to_num(np.asarray(vecs1[start : start + _CHUNK], dtype=np.float64))  # (c, d)
        b = np.nan_to_num(np.asarray(vecs2[start : start + _CHUNK], dtype=np.float64))  # (c, d)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            cos = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out[start : start + _CHUNK] = np.nan_to_num(cos)
    return out


def spearman100(predicted: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho x 100 (scipy.stats.spearmanr, ties ranked by average); NaN if a side is constant."""
    from scipy.stats import spearmanr  # imported here: scipy.stats takes ~0.5 s to import

    return float(spearmanr(predicted, gold)[0]) * 100.0


def score_pairs(vecs1: np.ndarray, vecs2: np.ndarray, gold: Sequence[float] | np.ndarray) -> float:
    """Spearman x 100 of the cosine similarity of `vecs1[i]`, `vecs2[i]` against `gold[i]`."""
    cos = cosine_pairs(vecs1, vecs2)
    if len(cos) != len(gold):
        raise ValueError(f"{len(cos)} vector pairs but {len(gold)} gold scores")
    return spearman100(cos, gold)


def score_encoder(encode, pairs) -> float:
    """Spearman x 100 of ``encode``'s vectors on ``pairs`` (an `STSPairs`): both sides encoded in one call,
    so an encoder that deduplicates and batches by length (`Embedder.encode`) sees every sentence once."""
    n = len(pairs.sentences1)
    vectors = encode(list(pairs.sentences1) + list(pairs.sentences2))
    return score_pairs(vectors[:n], vectors[n:], pairs.scores)


@dataclass(frozen=True)
class TaskScore:
    """One STS task's score and how it was made up."""

    type: ClassVar[str] = "sts"
    main_metric: ClassVar[str] = "spearman"

    task: str
    score: float  # the reported number: pooled "all" Spearman (STS12-16) or the split's Spearman
    n_pairs: int
    subsets: dict[str, float] = field(default_factory=dict)  # subset -> Spearman x 100
    subset_sizes: dict[str, int] = field(default_factory=dict)
    mean: float = float("nan")  # SentEval's plain mean over subsets
    wmean: float = float("nan")  # SentEval's mean weighted by subset size

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "n_pairs": self.n_pairs,
            "subsets": {k: {"spearman": v, "n_pairs": self.subset_sizes[k]} for k, v in self.subsets.items()},
            "mean": self.mean,
            "wmean": self.wmean,
        }

    @classmethod
    def from_dict(cls, task: str, record: dict) -> TaskScore:
        subsets = record.get("subsets", {})
        return cls(
            task=task,
            score=_float(record["score"]),
            n_pairs=record["n_pairs"],
            subsets={k: _float(v["spearman"]) for k, v in subsets.items()},
            subset_sizes={k: v["n_pairs"] for k, v in subsets.items()},
            mean=_float(record.get("mean")),
            wmean=_float(record.get("wmean")),
        )


def _float(value) -> float:
    """A JSON number back as a float; null (how NaN is written) as NaN."""
    return float("nan") if value is None else float(value)


def aggregate(task: str, predicted: dict[str, np.ndarray], gold: dict[str, np.ndarray]) -> TaskScore:
    """Combine per-subset predictions into a TaskScore: per-subset Spearman, mean, wmean and pooled "all"."""
    subsets = {name: spearman100(predicted[name], gold[name]) for name in predicted}
    sizes = {name: len(gold[name]) for name in predicted}
    values = np.array(list(subsets.values()))
    pooled = spearman100(np.concatenate(list(predicted.values())), np.concatenate(list(gold.values())))
    return TaskScore(
        task=task,
        score=pooled,
        n_pairs=sum(sizes.values()),
        subsets=subsets,
        subset_sizes=sizes,
        mean=float(np.mean(values)),
        wmean=float(np.average(values, weights=list(sizes.values()))),
    )
