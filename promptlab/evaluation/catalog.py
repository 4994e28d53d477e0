"""Every named evaluation task, of every type, in one table: `CATALOG`, `resolve_task`, `load_tasks`.

The seven SentEval STS tasks keep their names (`promptlab.evaluation.tasks`); the tasks beyond STS are:

| name | type | data | main metric |
|---|---|---|---|
| TRECQA-rerank | reranking | TREC QA answer selection, ``answer-selection/wang`` (train, dev) | MAP |
| SICK-pairclass | pair-classification | SICK entailment vs the rest (train, dev = trial, test) | AP |
| STSB-retrieval | retrieval | STS-B: first sentences search the second ones, gold >= 4 relevant | nDCG@10 |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from promptlab.errors import PromptlabError, unknown_name
from promptlab.evaluation.data import SOURCES, load_with_digests
from promptlab.evaluation.protocol import TASK_TYPES, Task
from promptlab.evaluation.task_data import load_sick_entailment, load_stsb_retrieval, load_trecqa
from promptlab.evaluation.task_types import STSTask
from promptlab.evaluation.tasks import _ALIASES, SPECS, SPLITS, TASKS, _key


@dataclass(frozen=True)
class TaskEntry:
    """A named task: its type, table column, splits, and the function that loads one split."""

    name: str
    type: str  # a key of TASK_TYPES
    column: str  # table header, e.g. "TRECQA MAP"
    splits: tuple[str, ...]  # in the local data
    hub_splits: tuple[str, ...]  # with source="hub" (empty: local data only)
    load: Callable[..., Task]  # load(name, split, data_dir, source) -> Task
    aliases: tuple[str, ...] = ()
    description: str = ""

    def available_splits(self, source: str = "senteval") -> tuple[str, ...]:
        return self.splits if source == "senteval" else self.hub_splits


def _load_sts(name: str, split: str, data_dir, source: str) -> STSTask:
    loaded = load_with_digests(name, data_dir=data_dir, split=split, source=source)
    return STSTask(name, split, loaded.pairs, dict(loaded.digests))


def _sts_entry(name: str) -> TaskEntry:
    spec = SPECS[name]
    hub = tuple(s for s, _ in spec.hub_splits)
    return TaskEntry(name, "sts", spec.column, spec.splits, hub, _load_sts, description="STS (SentEval)")


_ENTRIES = (
    *(_sts_entry(name) for name in TASKS),
    TaskEntry(
        "TRECQA-rerank",
        "reranking",
        "TRECQA MAP",
        ("train", "dev"),
        (),
        lambda name, split, data_dir, source: load_trecqa(name, split, data_dir),
        aliases=("trec-qa", "trecqa-reranking", "answer-selection"),
        description="TREC QA answer selection: questions rank their candidate sentences",
    ),
    TaskEntry(
        "SICK-pairclass",
        "pair-classification",
        "SICK-E AP",
        ("train", "dev", "test"),
        (),
        lambda name, split, data_dir, source: load_sick_entailment(name, split, data_dir),
        aliases=("sick-e", "sick-entailment", "sick-pair-classification"),
        description="SICK entailment (ENTAILMENT vs NEUTRAL/CONTRADICTION) from cosine",
    ),
    TaskEntry(
        "STSB-retrieval",
        "retrieval",
        "STSB-ret nDCG@10",
        ("train", "dev", "test"),
        ("train", "dev", "test"),
        load_stsb_retrieval,
        aliases=("stsb-ret", "sts-b-retrieval"),
        description="STS-B first sentences search the second ones; pairs with gold >= 4 relevant",
    ),
)

CATALOG: dict[str, TaskEntry] = {}
for _entry in _ENTRIES:
    if _entry.name in CATALOG or _entry.type not in TASK_TYPES:
        raise ValueError(f"task {_entry.name!r}: duplicate name or unknown type {_entry.type!r}")
    CATALOG[_entry.name] = _entry

_LOOKUP = dict(_ALIASES)
for _entry in _ENTRIES[len(TASKS) :]:
    for _spelling in (_entry.name, *_entry.aliases):
        if _LOOKUP.get(_key(_spelling), _entry.name) != _entry.name:
            raise ValueError(f"task alias {_spelling!r} is taken")
        _LOOKUP[_key(_spelling)] = _entry.name


def resolve_task(name: str) -> TaskEntry:
    """A task by any spelling ("trecqa", "STS-B", "sick-e"...); an unknown name gets the closest ones."""
    if not isinstance(name, str):
        raise PromptlabError(f"a task name must be a string, got {name!r}; choose from {', '.join(CATALOG)}.")
    found = _LOOKUP.get(_key(name))
    if found is None:
        raise unknown_name("task", name, CATALOG)
    return CATALOG[found]


def load_task_split(name: str, *, split: str, data_dir=None, source: str = "senteval") -> Task:
    """One task of the catalog, loaded for ``split``, with every check that needs no model."""
    entry = resolve_task(name)
    if source not in SOURCES:
        raise PromptlabError(f"unknown data source {source!r}; choose 'senteval' (local copy) or 'hub'.")
    if split not in SPLITS:
        raise PromptlabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    if entry.type != "sts":  # STS tasks say it themselves, naming the tasks that have the split
        have = entry.available_splits(source)
        if not have:
            raise PromptlabError(
                f"{entry.name} has no copy on the hub; use the local data (source='senteval')."
            )
        if split not in have:
            raise PromptlabError(
                f"{entry.name} has no {split!r} split (it has: {', '.join(have)}); choose one of those."
            )
    return entry.load(entry.name, split, data_dir, source)


def load_tasks(names: Iterable[str], *, split: str, data_dir=None, source: str = "senteval") -> list[Task]:
    """Several tasks of the catalog, each loaded for ``split`` (names deduplicated, first spelling kept)."""
    canonical = dict.fromkeys(resolve_task(n).name for n in names)
    return [load_task_split(n, split=split, data_dir=data_dir, source=source) for n in canonical]
