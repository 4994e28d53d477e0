"""What an experiment scores on, and scoring many layers from one forward pass.

A `Benchmark` is either tasks of a split (STS, or any type of `promptlab.evaluation.catalog`), scored by
`promptlab.evaluation.evaluate_layers` (the one evaluation path), or a seeded subset of STS-B dev
(`promptlab.evaluation.sts_dev`), which `evaluate` cannot express, scored with the same cosine/Spearman
functions. Either way every layer's record has the shape of
`EvalResult.to_dict()` (scores, average, split, data_fingerprint, n_pairs...).
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from promptlab.errors import PromptlabError


@dataclass(frozen=True)
class Benchmark:
    """Tasks of one split (default: STS-B dev, the papers' selection split), or an STS-B dev subset.

    Attributes:
        tasks: task names of any type (``STSBenchmark``, ``SICK-R``, ``TRECQA-rerank``...), or
            ``("all",)``: every STS task of the split. A row's score is the mean of their main scores.
        split: ``dev`` (selection) or ``test`` (report once, at the end).
        dev_pairs: score on a seeded random subset of this many STS-B dev pairs (cheaper searches).
        seed: the subset's seed.
        data_dir: SentEval folder (default: $PROMPTLAB_DATA).
    """

    tasks: tuple[str, ...] = ("STSBenchmark",)
    split: str = "dev"
    dev_pairs: int | None = None
    seed: int = 0
    data_dir: str | None = None
    source: str = "senteval"

    def __post_init__(self) -> None:
        from promptlab.evaluation import TASKS, resolve_task
        from promptlab.evaluation.tasks import SPECS

        tasks = tuple(self.tasks)
        if tasks in (("all",), ()):
            tasks = tuple(t for t in TASKS if self.split in SPECS[t].available_splits(self.source))
        object.__setattr__(self, "tasks", tuple(dict.fromkeys(resolve_task(t).name for t in tasks)))
        if self.dev_pairs is not None:
            if self.tasks != ("STSBenchmark",) or self.split != "dev":
                raise PromptlabError(
                    "dev_pairs (a seeded subset) applies to STS-B dev only; set tasks = ['STSBenchmark'] and "
                    "split = 'dev', or remove dev_pairs."
                )
            if self.dev_pairs < 2:
                raise PromptlabError(f"dev_pairs={self.dev_pairs} is too few for a Spearman correlation.")

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over every file read (and the subset, if any): a row's data identity."""
        from promptlab.evaluation import load_suite
        from promptlab.evaluation.data import fingerprint

        suite = load_suite(self.tasks, data_dir=self.data_dir, split=self.split, source=self.source)
        digests = {k: v for task in suite.tasks for k, v in task.digests.items()}
        if self.dev_pairs is not None:
            digests["subset"] = f"n_pairs={self.dev_pairs},seed={self.seed}"
        return fingerprint(digests)

    def fixed(self) -> dict[str, Any]:
        """The settings every row scored on this benchmark shares (hashed into results files)."""
        return {
            "tasks": list(self.tasks),
            "split": self.split,
            "dev_pairs": self.dev_pairs,
            "seed": self.seed if self.dev_pairs is not None else None,
            "source": self.source,
            "data_fingerprint": self.fingerprint,
        }

    def label(self) -> str:
        if self.dev_pairs is not None:
            return f"STS-B dev, seeded subset of {self.dev_pairs} pairs (seed {self.seed})"
        return f"{', '.join(self.tasks)} ({self.split})"

    # -- scoring ---------------------------------------------------------------------------------------
    def score_layers(self, embedder, layers: list[int], *, progress: bool | None = None):
        """Score ``embedder`` at every layer from one `encode_layers` call: ({layer: record}, seconds)."""
        if not layers:
            return {}, 0.0
        start = time.perf_counter()
        with warnings.catch_warnings():
            # A layer whose vectors are the same for every sentence (layer 0 at the next-token position)
            # has no Spearman; its score is recorded as None, and reports show it blank.
            warnings.filterwarnings("ignore", message="An input array is constant")
            if self.dev_pairs is not None:
                records = self._score_subset(embedder, layers, progress)
            else:
                records = self._score_tasks(embedder, layers, progress)
        return records, time.perf_counter() - start

    def _score_tasks(self, embedder, layers, progress):
        from promptlab.evaluation import evaluate_layers

        def encode_layers(sentences, wanted):
            return embedder.encode_layers(sentences, wanted, show_progress_bar=progress)

        results = evaluate_layers(
            encode_layers, layers, self.tasks, data_dir=self.data_dir, split=self.split, source=self.source
        )
        return {layer: result.to_dict() for layer, result in results.items()}

    def _score_subset(self, embedder, layers, progress):
        from promptlab.evaluation import score_pairs, sts_dev

        pairs = sts_dev(self.data_dir, n_pairs=self.dev_pairs, seed=self.seed, source=self.source)
        unique = list(dict.fromkeys([*pairs.sentences1, *pairs.sentences2]))
        row = {s: i for i, s in enumerate(unique)}
        first = np.array([row[s] for s in pairs.sentences1])
        second = np.array([row[s] for s in pairs.sentences2])
        start = time.perf_counter()
        vectors = embedder.encode_layers(unique, layers, show_progress_bar=progress)
        seconds = time.perf_counter() - start
        records = {}
        for layer in layers:
            score = score_pairs(vectors[layer][first], vectors[layer][second], pairs.scores)
            records[layer] = {
                "scores": {"STSBenchmark": _finite(score)},
                "average": _finite(score),
                "partial": True,
                "split": "dev",
                "source": self.source,
                "data_fingerprint": self.fingerprint,
                "subset": {"n_pairs": self.dev_pairs, "seed": self.seed},
                "n_pairs": len(pairs),
                "n_sentences": len(unique),
                "encode_seconds": seconds,
            }
        return records


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
