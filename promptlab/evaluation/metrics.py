"""Ranking and classification metrics for the non-STS task types, in numpy.

Conventions follow MTEB (Muennighoff et al., 2023) and trec_eval, so numbers compare with theirs:
- `average_precision` groups tied scores into one threshold, as `sklearn.metrics.average_precision_score`
  does, so a ranking with ties gets the same AP whatever order the tied items came in.
- `rank` (for MRR@k, nDCG@k, recall@k) breaks ties by input order: the first item listed ranks first.
- `best_accuracy` and `best_f1` choose the threshold on cosine that maximises the metric on the data
  itself (MTEB's pair classification), so they are upper bounds, not held-out numbers.
Every metric is in [0, 1].
"""

from __future__ import annotations

import numpy as np


def _as_arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"need two 1-d arrays of the same length, got {scores.shape} and {labels.shape}")
    return scores, labels


def rank(scores) -> np.ndarray:
    """Indices of ``scores`` from the highest to the lowest; ties keep their input order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def _thresholds(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when everything scoring >= each distinct score (highest first) is positive."""
    order = rank(scores)
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last index of each tied group
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return tp, fp


def average_precision(scores, labels) -> float:
    """Area under the precision-recall curve as a step sum, sum_n (R_n - R_{n-1}) P_n; NaN without positives."""
    scores, labels = _as_arrays(scores, labels)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    tp, fp = _thresholds(scores, labels)
    precision = tp / (tp + fp)
    recall_gain = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(recall_gain * precision))


def reciprocal_rank(scores, labels, k: int | None = None) -> float:
    """1 / rank of the first relevant item (ties by input order); 0 if none is within the top ``k``."""
    scores, labels = _as_arrays(scores, labels)
    hits = np.flatnonzero(labels[rank(scores)])
    if len(hits) == 0 or (k is not None and hits[0] >= k):
        return 0.0
    return 1.0 / (hits[0] + 1)


def ndcg_at_k(scores, labels, k: int) -> float:
    """nDCG@k with binary relevance (gain 1, discount 1/log2(rank + 1)); NaN without relevant items."""
    scores, labels = _as_arrays(scores, labels)
    n_rel = int(labels.sum())
    if n_rel == 0:
        return float("nan")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    gains = labels[rank(scores)[:k]].astype(np.float64)
    return float(np.sum(gains * discounts[: len(gains)]) / np.sum(discounts[: min(k, n_rel)]))


def recall_at_k(scores, labels, k: int) -> float:
    """Share of the relevant items ranked within the top ``k``; NaN without relevant items."""
    scores, labels = _as_arrays(scores, labels)
    n_rel = int(labels.sum())
    if n_rel == 0:
        return float("nan")
    return float(labels[rank(scores)[:k]].sum() / n_rel)


def best_accuracy(scores, labels) -> tuple[float, float]:
    """(accuracy, threshold): the best accuracy of "positive when score >= threshold" over all thresholds.

    The threshold is one of the scores, or +inf (everything negative) when that is best.
    """
    scores, labels = _as_arrays(scores, labels)
    n, n_pos = len(scores), int(labels.sum())
    tp, fp = _thresholds(scores, labels)
    correct = np.r_[n - n_pos, tp + (n - n_pos - fp)]  # the first entry: nothing called positive
    cut = np.r_[np.inf, np.sort(np.unique(scores))[::-1]]
    best = int(np.argmax(correct))
    return float(correct[best] / n), float(cut[best])


def best_f1(scores, labels) -> tuple[float, float, float, float]:
    """(F1, precision, recall, threshold) at the threshold with the best F1 of "positive when score >= it"."""
    scores, labels = _as_arrays(scores, labels)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return 0.0, 0.0, 0.0, float("inf")
    tp, fp = _thresholds(scores, labels)
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    best = int(np.argmax(f1))
    cut = np.sort(np.unique(scores))[::-1]
    return float(f1[best]), float(tp[best] / (tp[best] + fp[best])), float(tp[best] / n_pos), float(cut[best])
