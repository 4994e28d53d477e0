"""Model selection on one task's dev split: which task picks the best checkpoint, and its score.

SimCSE and PromptBERT select on STS-B dev; any task of the catalog with a dev split can do it instead
(SICK-R, TREC QA reranking, SICK entailment, STS-B retrieval), through the same `Task` protocol that
`evaluate` uses, so a dev score during training equals `evaluate(..., [task], split="dev")`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from promptlab.errors import PromptlabError
from promptlab.evaluation.catalog import CATALOG, load_task_split, resolve_task
from promptlab.evaluation.data import subset_pairs
from promptlab.evaluation.protocol import Task, Vectors
from promptlab.evaluation.task_types import STSTask


def selection_tasks() -> list[str]:
    """The catalog's tasks that have a local dev split: the choices for selecting on."""
    return [name for name, entry in CATALOG.items() if "dev" in entry.splits]


def check_selection_task(name: str) -> str:
    """The catalog name of ``name`` (any spelling), refused unless it has a dev split; needs no data."""
    entry = resolve_task(name)
    if "dev" not in entry.splits:
        raise PromptlabError(
            f"{entry.name} has no dev split to select on; choose one of {', '.join(selection_tasks())}."
        )
    return entry.name


def load_selection_task(name: str, data_dir=None, *, n_pairs: int | None = None, seed: int = 0) -> Task:
    """``name``'s dev split. For an STS task, ``n_pairs`` keeps a seeded subset of each part's pairs
    (`subset_pairs`: cheaper scores during training); other types are scored on the whole split."""
    task = load_task_split(check_selection_task(name), split="dev", data_dir=data_dir)
    if isinstance(task, STSTask) and n_pairs is not None:
        parts = [subset_pairs(p, n_pairs, seed=seed) for p in task.pairs]
        task = STSTask(task.name, task.split, parts, dict(task.digests))
    return task


def score_task(task: Task, encode: Callable[[list[str]], np.ndarray]) -> float:
    """``task``'s main score (x 100) from one ``encode`` call over its distinct sentences."""
    index: dict[str, int] = {}
    for sentence in task.sentences():
        index.setdefault(sentence, len(index))
    return float(task.score(Vectors(index, np.asarray(encode(list(index))))).score)
