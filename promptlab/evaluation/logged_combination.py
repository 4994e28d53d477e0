"""Score a weighted combination of evaluated embedders from their task logs, without encoding again.

`promptlab.combination` reads several embedders as one vector whose cosine is the weighted mean of the
members' cosines (each member one unit vector, scaled by ``sqrt(weight / total weight)``). An evaluation
kept in a task log in parts (``promptlab eval --task-log FILE``, 256 pairs a part by default) holds every
STS pair's cosine, so the combination of embedders each read at one layer scores exactly from their logs:
each pair's combined cosine is ``sum(w_i * cos_i) / sum(w_i)``. Two finished evaluations then give every
weighting of the two at no model cost, and `choose_weights` picks the weights on a dev split's logs.

A member read at several layers (a mean of layer vectors) is not one logged evaluation and needs
``promptlab eval --embedder COMBINATION.toml``. Only STS tasks log per-pair values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptlab.errors import PromptlabError
from promptlab.evaluation.protocol import PartedTask, TaskResult
from promptlab.evaluation.results import EvalResult
from promptlab.evaluation.runner import TASK_LOG_KIND, Suite, suite_result, task_log_key
from promptlab.jsonl import read_rows


@dataclass(frozen=True)
class LoggedEvaluation:
    """One embedder's logged evaluation: the per-pair cosines of each task of a suite, part by part."""

    path: Path
    config: dict[str, Any]  # the embedder's settings, as the log's rows record them
    config_hash: str
    cosines: dict[str, dict[str, list[float]]]  # task name -> {part name: the part's cosines}

    def describe(self) -> dict[str, Any]:
        """What the record says of this member: its log and what computed it."""
        keys = (
            "model",
            "template",
            "layer_index",
            "dtype",
            "quantization",
            "demonstration",
            "adapter_sha256",
        )
        return {"log": str(self.path), "config_hash": self.config_hash} | {
            k: self.config[k] for k in keys if self.config.get(k) is not None
        }


def read_logged_evaluation(path: str | Path, suite: Suite) -> LoggedEvaluation:
    """The cosines a task log holds for every STS task of `suite`, checked complete and of the same data.

    Refused in one line: a missing file, rows that are not a task log's, rows of several configurations, a
    task logged whole (its score only, no cosines) or not finished, or a task of another type than STS.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptlabError(
            f"no task log at {path}; give the --task-log FILE of a finished `promptlab eval`."
        )
    rows = list(read_rows(path))
    hashes = {row.get("config_hash") for row in rows}
    if any(row.get("kind") != TASK_LOG_KIND for row in rows) or not rows:
        raise PromptlabError(
            f"{path} is not a task log of `promptlab eval --task-log` (no {TASK_LOG_KIND} rows)."
        )
    if len(hashes) != 1:
        raise PromptlabError(f"{path} holds rows of {len(hashes)} configurations; give the log of one eval.")
    cosines: dict[str, dict[str, list[float]]] = {}
    for task in suite.tasks:
        if task.type != "sts" or not isinstance(task, PartedTask):
            raise PromptlabError(
                f"{task.name} is a {task.type} task; only STS tasks log per-pair cosines to combine."
            )
        want = task_log_key(task, suite.split)
        parts: dict[str, list[float]] = {}
        logged_whole = other_data = False
        for row in rows:
            key = row["key"]
            if key.get("task") != want["task"] or key.get("split") != want["split"]:
                continue
            if key.get("data") != want["data"]:
                other_data = True
            elif "part" in key:
                parts[key["part"]] = row["values"]
            else:
                logged_whole = True
        if not parts:
            if logged_whole:
                fix = "it was logged whole (--part-items 0); rerun that eval with a new --task-log and the default --part-items."
            elif other_data:
                fix = (
                    "its rows are of other data files than these; point --data-dir at the data it was run on."
                )
            else:
                fix = "run that eval on it first (the same `promptlab eval` command with this --task-log)."
            raise PromptlabError(f"{path} holds no per-pair cosines of {task.name} ({suite.split}): {fix}")
        _check_covers(path, task, parts)
        cosines[task.name] = parts
    return LoggedEvaluation(path, dict(rows[0].get("fixed", {})), next(iter(hashes)), cosines)


def _check_covers(path: Path, task: PartedTask, parts: dict[str, list[float]]) -> None:
    """Refuse a task whose logged parts do not yet cover every pair (an eval still under way)."""
    try:
        task.score_parts(parts)
    except ValueError as err:
        raise PromptlabError(
            f"{path}: {task.name} is not finished ({err}); rerun its `promptlab eval` command to complete it."
        ) from None


def score_combination(
    members: Sequence[LoggedEvaluation], weights: Sequence[float], suite: Suite
) -> EvalResult:
    """`suite` scored on the weighted combination of `members`: each pair's cosine is the weighted mean of
    theirs, as `promptlab.combination` computes it from the vectors. A weight may be 0 (that member
    left out), not below; at least one must be above 0."""
    weights = [float(w) for w in weights]
    if len(weights) != len(members):
        raise PromptlabError(f"{len(weights)} weights for {len(members)} task logs; give one weight per log.")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise PromptlabError(f"weights {weights}: give numbers >= 0, at least one above 0.")
    total = sum(weights)
    details: dict[str, TaskResult] = {}
    for task in suite.tasks:
        names = [set(m.cosines[task.name]) for m in members]
        if any(n != names[0] for n in names[1:]):
            raise PromptlabError(
                f"{task.name}: the task logs split it into different parts ({members[0].path}, ...); "
                "evaluate every member with the same --part-items."
            )
        combined = {
            part: (
                sum(
                    w * np.asarray(m.cosines[task.name][part], dtype=np.float64)
                    for m, w in zip(members, weights, strict=True)
                )
                / total
            ).tolist()
            for part in names[0]
        }
        details[task.name] = task.score_parts(combined)
    return suite_result(suite, details, float("nan"), 0)


def weight_grid(n_members: int, step: float) -> list[tuple[float, ...]]:
    """Every weighting of `n_members` in multiples of `step` that sums to 1, a member alone included."""
    if not 0 < step <= 1 or abs(round(1 / step) - 1 / step) > 1e-9:
        raise PromptlabError(f"step {step}: give a step that divides 1, such as 0.1 or 0.05.")
    units = round(1 / step)

    def split(n: int, left: int) -> list[tuple[int, ...]]:
        if n == 1:
            return [(left,)]
        return [(k, *rest) for k in range(left, -1, -1) for rest in split(n - 1, left - k)]

    return [tuple(round(k / units, 10) for k in combo) for combo in split(n_members, units)]


def choose_weights(
    members: Sequence[LoggedEvaluation],
    suite: Suite,
    step: float = 0.1,
    *,
    for_members: Sequence[LoggedEvaluation] | None = None,
) -> tuple[tuple[float, ...], list[tuple[tuple[float, ...], EvalResult]]]:
    """The weights whose combination scores best on `suite` (a dev split), and every weighting's result.

    The grid is `weight_grid(len(members), step)`; of equal averages the first in that order wins (the
    first member's weight highest). `for_members`, the logs the weights are for (the test split's), must
    come from the same embedders as `members`, in the same order.
    """
    if for_members is not None:
        if len(for_members) != len(members):
            raise PromptlabError(
                f"{len(members)} dev logs for {len(for_members)} task logs; give one per member (--dev-log), in the same order."
            )
        for test, dev in zip(for_members, members, strict=True):
            if test.config_hash != dev.config_hash:
                raise PromptlabError(
                    f"{dev.path} was written by another configuration than {test.path}; give each member's "
                    "dev log in the order of its test log."
                )
    scored = [(w, score_combination(members, w, suite)) for w in weight_grid(len(members), step)]
    best = max(scored, key=lambda item: item[1].average)  # max keeps the first of equals
    return best[0], scored
