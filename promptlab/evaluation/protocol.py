"""What every evaluation task offers, whatever its type: the `Task` protocol and the task-type registry.

A task is loaded for one split. It names the sentences it needs (`sentences()`), and scores their vectors
(`score(vectors)`) into a typed result whose `score` is the task's main metric x 100, the number tables
show. `evaluate` gathers the sentences of every task, encodes each distinct one once, and hands each task
the same `Vectors`. The types (STS, reranking, retrieval, pair classification) follow MTEB's
(Muennighoff et al., 2023); each registers itself with `register_task_type`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from promptlab.errors import PromptlabError, unknown_name


class Vectors:
    """Encoded sentences, looked up by text: ``vectors.rows(sentences)`` -> an (n, d) array."""

    def __init__(self, index: Mapping[str, int], array: np.ndarray):
        self.index = index  # sentence -> row of `array`
        self.array = array  # (n_sentences, d)

    def rows(self, sentences: Iterable[str]) -> np.ndarray:
        idx = np.fromiter((self.index[s] for s in sentences), dtype=np.int64)
        return self.array[idx]


@runtime_checkable
class TaskResult(Protocol):
    """One task's scores: ``score`` is the main metric x 100 (Spearman for STS, MAP for reranking...)."""

    task: str

    @property
    def score(self) -> float: ...

    def to_dict(self) -> dict: ...


@runtime_checkable
class Task(Protocol):
    """One task loaded for one split: its sentences, the files read, and how it scores vectors."""

    name: str  # catalog name, e.g. "STSBenchmark", "TRECQA-rerank"
    type: str  # a key of TASK_TYPES
    split: str
    digests: dict[str, str]  # label of each input read -> sha256 of its content

    @property
    def n_items(self) -> int:
        """The scored units: pairs (STS, pair classification), question-candidate pairs (reranking),
        relevant query-document pairs (retrieval)."""
        ...

    def sentences(self) -> list[str]:
        """Every sentence whose vector `score` will look up (repeats allowed)."""
        ...

    def score(self, vectors: Vectors) -> TaskResult: ...


@runtime_checkable
class PartedTask(Task, Protocol):
    """A task whose score is built from per-item values that parts of it compute on their own.

    STS is one: a pair's cosine needs only its two vectors, and Spearman is taken once all are in. An
    evaluation with a task log (`evaluate(..., task_log=..., part_items=n)`) then keeps each finished part's
    values, so a task longer than one sitting of the machine resumes part by part. Parts are named by what
    they hold (subset and item range), so a part is found again only where the data and part size agree.
    """

    def parts(self, max_items: int) -> list[str]:
        """Names of consecutive item ranges of at most `max_items` each, covering every item once, in order."""
        ...

    def part_sentences(self, part: str) -> list[str]:
        """The sentences whose vectors `score_part(part, ...)` looks up."""
        ...

    def score_part(self, part: str, vectors: Vectors) -> list[float]:
        """One finite float per item of `part` (JSON keeps them exactly)."""
        ...

    def score_parts(self, values: dict[str, list[float]]) -> TaskResult:
        """The task's result from every part's values ({part name: values}), as `score` computes it."""
        ...


@dataclass(frozen=True)
class TaskType:
    """A registered task type: what its results are called and how to read them back from JSON."""

    name: str  # "sts", "reranking", "retrieval", "pair-classification"
    main_metric: str  # the field behind `score`, e.g. "map"
    metric_label: str  # the short column suffix in tables, e.g. "MAP"
    result: type  # the result dataclass; `result.from_dict(d)` reads `to_dict()` back
    description: str = ""


TASK_TYPES: dict[str, TaskType] = {}


def register_task_type(task_type: TaskType) -> TaskType:
    """Add a task type to `TASK_TYPES`; a name already taken is refused."""
    if task_type.name in TASK_TYPES:
        raise ValueError(f"task type {task_type.name!r} is already registered")
    TASK_TYPES[task_type.name] = task_type
    return task_type


def get_task_type(name: str) -> TaskType:
    if name not in TASK_TYPES:
        raise unknown_name("task type", name, TASK_TYPES)
    return TASK_TYPES[name]


def result_from_dict(task: str, record: Mapping) -> TaskResult:
    """A typed result from its ``to_dict()``; a record without "type" is an STS score (older records)."""
    kind = record.get("type", "sts")
    if kind not in TASK_TYPES:
        raise PromptlabError(
            f"{task}: unknown result type {kind!r} in the record; was it written by a newer promptlab?"
        )
    return TASK_TYPES[kind].result.from_dict(task, record)
