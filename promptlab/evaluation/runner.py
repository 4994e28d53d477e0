"""`evaluate`: encode every distinct sentence of the requested tasks once, then score each task."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from promptlab.errors import PromptlabError
from promptlab.evaluation.catalog import CATALOG, load_tasks
from promptlab.evaluation.data import ENV_VAR, fingerprint, resolve_data_dir
from promptlab.evaluation.protocol import PartedTask, Task, TaskResult, Vectors, result_from_dict
from promptlab.evaluation.results import EvalResult
from promptlab.evaluation.tasks import SPECS, TASKS

TASK_LOG_KIND = "eval-task"  # the `kind` of a task log's rows (`promptlab.experiments.results.open_task_log`)

DEFAULT_PART_ITEMS = 256  # STS pairs per logged part of a task-logged evaluation (`evaluate(part_items=...)`)

Encode = Callable[[list[str]], np.ndarray]
EncodeLayers = Callable[[list[str], list[int]], dict[int, np.ndarray]]


class TaskLog(Protocol):
    """Where `evaluate` keeps each finished task, to skip it on a rerun: rows looked up and appended by key.

    `promptlab.experiments.results.ResultsFile` is one (durable, locked, refusing another configuration's
    file); the log must belong to one embedder configuration, which `evaluate` cannot see.
    """

    def done(self, key: dict[str, Any]) -> dict[str, Any] | None: ...

    def append(self, key: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Suite:
    """Loaded, checked data for an evaluation: the tasks (any types) and every distinct sentence."""

    names: list[str]
    tasks: list[Task]  # one per name, loaded for `split`
    sentences: dict[str, int]  # sentence -> row in the encoder's output (first-seen order)
    split: str
    source: str
    data_dir: str | None

    @property
    def n_pairs(self) -> int:
        """Scored units over all tasks (see `Task.n_items`): sentence pairs for STS."""
        return sum(t.n_items for t in self.tasks)

    def describe(self) -> str:
        """One line for progress output: split, tasks, sizes."""
        return (
            f"{self.split}: {', '.join(self.names)}: {self.n_pairs} scored items, "
            f"{len(self.sentences)} unique sentences"
        )


def load_suite(
    tasks: Iterable[str] | str | None = None,
    *,
    data_dir=None,
    split: str = "test",
    source: str = "senteval",
) -> Suite:
    """Resolve task names and load their data, with every check that needs no model (names, files, rows).

    Callers that load a model run this first, so a wrong task name or data folder fails in a second, not
    after the model has loaded. `tasks=None` means every STS task that has `split`: all seven for "test",
    STS-B and SICK-R for "dev" (model selection) and "train". Other task types are asked for by name
    (`promptlab.evaluation.catalog`: TRECQA-rerank, SICK-pairclass, STSB-retrieval).
    """
    if tasks is None:
        tasks = [t for t in TASKS if split in SPECS[t].available_splits(source)]
    requested = [tasks] if isinstance(tasks, str) else list(tasks)
    if not requested:
        raise PromptlabError(f"no tasks given; choose from {', '.join(CATALOG)}.")
    loaded = load_tasks(requested, split=split, data_dir=data_dir, source=source)
    sentences: dict[str, int] = {}
    for task in loaded:
        for s in task.sentences():
            sentences.setdefault(s, len(sentences))
    return Suite([t.name for t in loaded], loaded, sentences, split, source, _where(loaded, data_dir, source))


def _where(tasks: list[Task], data_dir, source: str) -> str | None:
    """The data folder to record: the SentEval root when a task read it, else the folder given."""
    if source != "senteval":
        return None
    if any(label.startswith("downstream/") for t in tasks for label in t.digests):
        return str(resolve_data_dir(data_dir))
    given = data_dir if data_dir not in (None, "") else os.environ.get(ENV_VAR) or None
    return None if given is None else str(given)


def _suite(tasks, data_dir, split, source) -> Suite:
    if isinstance(tasks, Suite):
        return tasks
    return load_suite(tasks, data_dir=data_dir, split=split, source=source)


def evaluate(
    encode: Encode,
    tasks: Iterable[str] | str | Suite | None = None,
    *,
    data_dir=None,
    split: str = "test",
    source: str = "senteval",
    progress: bool = False,
    task_log: TaskLog | None = None,
    part_items: int | None = None,
) -> EvalResult:
    """Score `encode` on tasks of any type: STS with SentEval's conventions, and those of the catalog.

    `encode(sentences)` must return one vector per sentence, in order, as an (n, d) array. It is called
    exactly once, with the unique sentences of all tasks (first-seen order), so the encoder can sort,
    batch and report one throughput figure. `progress` prints the encoding time, or each task's score as
    it finishes, to stderr (the encoder draws its own progress bar; describing the suite is the caller's,
    which can do it before the model loads).

    `tasks` is a list of names (None: every STS task that has `split`, see `load_suite`) or a `Suite` that
    `load_suite` already loaded (then `data_dir`, `split` and `source` come from it).

    With a `task_log`, `encode` is called once per task instead, and each finished task's result is
    appended to the log at once; tasks the log already holds (same name, same data) are read back, not
    encoded. An evaluation longer than one sitting of the machine then resumes task by task even where the
    embedding cache did not survive. The scores are those of the one-call evaluation (each task's vectors
    are the same; only the batches they were computed in differ). With `part_items` too, a task that can be
    scored in parts (a `PartedTask`: STS) is encoded `part_items` items at a time, and each finished part's
    values (STS: the pairs' cosines) go to the log as well, so even one task longer than a sitting resumes
    from its last finished part.
    """
    suite = _suite(tasks, data_dir, split, source)
    if part_items is not None and part_items < 1:
        raise PromptlabError(f"part_items must be at least 1, got {part_items}; or None for whole tasks.")
    if task_log is not None:
        return _evaluate_task_by_task(encode, suite, task_log, progress, part_items)
    start = time.perf_counter()
    vecs = _check_vectors(encode(list(suite.sentences)), len(suite.sentences))
    seconds = time.perf_counter() - start
    if progress:
        rate = len(suite.sentences) / max(seconds, 1e-9)
        print(f"encoded in {seconds:.1f} s ({rate:.1f} sentences/s)", file=sys.stderr)
    return score_suite(suite, vecs, seconds)


def _evaluate_task_by_task(
    encode: Encode, suite: Suite, task_log: TaskLog, progress: bool, part_items: int | None
) -> EvalResult:
    details: dict[str, TaskResult] = {}
    seconds, encoded = 0.0, 0
    for task in suite.tasks:
        key = task_log_key(task, suite.split)
        row = task_log.done(key)
        if row is not None:
            details[task.name] = result_from_dict(task.name, row["result"])
            if progress:
                print(f"{task.name}: {details[task.name].score:.2f}, kept from the task log", file=sys.stderr)
            continue
        if part_items is not None and isinstance(task, PartedTask):
            details[task.name], n, took = _score_in_parts(encode, task, key, task_log, part_items, progress)
        else:
            sentences = list(dict.fromkeys(task.sentences()))
            start = time.perf_counter()
            vecs = _check_vectors(encode(sentences), len(sentences))
            n, took = len(sentences), time.perf_counter() - start
            details[task.name] = task.score(Vectors({s: i for i, s in enumerate(sentences)}, vecs))
        task_log.append(
            key, {"result": details[task.name].to_dict(), "n_sentences": n, "encode_seconds": took}
        )
        seconds, encoded = seconds + took, encoded + n
        if progress:
            print(
                f"{task.name}: {details[task.name].score:.2f} ({n} sentences in {took:.1f} s)",
                file=sys.stderr,
            )
    # Throughput of what this call encoded; a run that only read the log reports none.
    return suite_result(suite, details, seconds if encoded else float("nan"), encoded)


def task_log_key(task: Task, split: str) -> dict[str, Any]:
    """The key of `task`'s row in a task log; a finished part's row adds ``"part"``. The data's fingerprint is
    in it, so rows of another version of the data are never read back as this one's."""
    return {"task": task.name, "split": split, "data": fingerprint(task.digests)}


def logged_progress(suite: Suite, rows: Iterable[dict[str, Any]], part_items: int | None) -> tuple[int, int]:
    """(sentences kept, sentences in all) of a task-logged evaluation of `suite` whose log holds `rows`.

    Counted as `evaluate(..., task_log=..., part_items=...)` encodes: each task's distinct sentences, those
    of a finished task or of its finished parts kept. Rows of other data (another split or data version)
    keep nothing, as they would not be read back.
    """
    finished, parts_done = set(), set()
    for row in rows:
        key = row.get("key", {})
        if key.get("split") != suite.split:
            continue
        if "part" in key:
            parts_done.add((key.get("task"), key.get("data"), key["part"]))
        else:
            finished.add((key.get("task"), key.get("data")))
    kept = total = 0
    for task in suite.tasks:
        key = task_log_key(task, suite.split)
        sentences = dict.fromkeys(task.sentences())
        total += len(sentences)
        if (key["task"], key["data"]) in finished:
            kept += len(sentences)
        elif part_items and isinstance(task, PartedTask):
            done: set[str] = set()
            for part in task.parts(part_items):
                if (key["task"], key["data"], part) in parts_done:
                    done.update(task.part_sentences(part))
            kept += len(done)
    return kept, total


def _score_in_parts(
    encode: Encode, task: PartedTask, key: dict[str, Any], task_log: TaskLog, part_items: int, progress: bool
) -> tuple[TaskResult, int, float]:
    """Score `task` part by part, logging each part's values; returns (result, sentences encoded, seconds)."""
    parts = task.parts(part_items)
    values: dict[str, list[float]] = {}
    # Vectors encoded by this call: a sentence in several parts is encoded once.
    known: dict[str, np.ndarray] = {}
    seconds, logged = 0.0, 0
    for number, part in enumerate(parts, 1):
        part_key = {**key, "part": part}
        row = task_log.done(part_key)
        if row is not None:
            values[part] = row["values"]
            continue
        sentences = list(dict.fromkeys(task.part_sentences(part)))
        new = [s for s in sentences if s not in known]
        start = time.perf_counter()
        if new:
            known.update(zip(new, _check_vectors(encode(new), len(new)), strict=True))
        took = time.perf_counter() - start
        seconds += took
        values[part] = task.score_part(
            part, Vectors({s: i for i, s in enumerate(sentences)}, np.stack([known[s] for s in sentences]))
        )
        task_log.append(part_key, {"values": values[part], "n_sentences": len(new), "encode_seconds": took})
        logged += 1
        if progress:
            print(
                f"{task.name} part {number}/{len(parts)} {part}: {len(new)} sentences in {took:.1f} s",
                file=sys.stderr,
            )
    if progress and logged < len(parts):
        print(
            f"{task.name}: {len(parts) - logged} of {len(parts)} parts kept from the task log",
            file=sys.stderr,
        )
    return task.score_parts(values), len(known), seconds


def evaluate_layers(
    encode_layers: EncodeLayers,
    layers: Sequence[int],
    tasks: Iterable[str] | str | Suite | None = None,
    *,
    data_dir=None,
    split: str = "test",
    source: str = "senteval",
) -> dict[int, EvalResult]:
    """`evaluate` at several layers from one encoding: {layer: result}.

    `encode_layers(sentences, layers)` returns {layer: (n, d) array} for the unique sentences of all tasks,
    as `Embedder.encode_layers` does: one forward pass serves every layer and every task.
    """
    suite = _suite(tasks, data_dir, split, source)
    layers = list(layers)
    start = time.perf_counter()
    vectors = encode_layers(list(suite.sentences), layers)
    seconds = time.perf_counter() - start
    n = len(suite.sentences)
    return {layer: score_suite(suite, _check_vectors(vectors[layer], n), seconds) for layer in layers}


def score_suite(suite: Suite, vecs: np.ndarray, seconds: float = float("nan")) -> EvalResult:
    """Score every task of `suite` on `vecs` (row i = the vector of the i-th sentence of `suite.sentences`)."""
    vectors = Vectors(suite.sentences, vecs)
    details = {task.name: task.score(vectors) for task in suite.tasks}
    return suite_result(suite, details, seconds, len(suite.sentences))


def suite_result(suite: Suite, details: dict[str, TaskResult], seconds: float, encoded: int) -> EvalResult:
    """The `EvalResult` of `suite` from its tasks' results, `encoded` sentences having taken `seconds`."""
    digests = {k: v for task in suite.tasks for k, v in task.digests.items()}
    return EvalResult(
        details=details,
        average=float(np.mean([t.score for t in details.values()])),
        partial=set(suite.names) != set(TASKS),
        split=suite.split,
        source=suite.source,
        data_dir=suite.data_dir,
        data_fingerprint=fingerprint(digests),
        n_pairs=suite.n_pairs,
        n_sentences=len(suite.sentences),
        encode_seconds=seconds,
        sentences_per_second=_rate(encoded, seconds),
    )


def _rate(sentences: int, seconds: float) -> float:
    if math.isnan(seconds):  # nothing was encoded (every task read back from a task log)
        return float("nan")
    return sentences / seconds if seconds > 0 else float("inf")


def _check_vectors(vecs, n: int) -> np.ndarray:
    """The encoder's output as an (n, d) float array, or a PromptlabError saying what is wrong."""
    try:
        arr = np.asarray(vecs)
    except (TypeError, ValueError, RuntimeError) as err:
        raise PromptlabError(
            f"encode returned {type(vecs).__name__}, which is not convertible to a numpy array ({err}); "
            "return an (n_sentences, dim) float32 numpy array."
        ) from None
    if arr.ndim != 2 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.floating):
        raise PromptlabError(
            f"encode returned an array of shape {arr.shape} and dtype {arr.dtype} for {n} sentences; "
            "it must return one float vector per input sentence, in input order: shape (n_sentences, dim)."
        )
    return arr
