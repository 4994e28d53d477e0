"""`EvalResult`, the record of one evaluation, and `format_table` for terminals and markdown."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from promptlab.evaluation.catalog import CATALOG, resolve_task
from promptlab.evaluation.protocol import TaskResult, result_from_dict
from promptlab.evaluation.tasks import SPECS, TASKS


@dataclass(frozen=True)
class EvalResult:
    """Scores of one `evaluate` call and everything needed to say what data produced them."""

    details: dict[str, TaskResult]  # task name -> its typed result (TaskScore for STS), in evaluated order
    average: float  # mean of the tasks' main scores (x 100)
    partial: bool  # True unless exactly the seven STS tasks were scored (then not the papers' Avg.)
    split: str
    source: str  # "senteval" or "hub"
    data_dir: str | None  # the SentEval root used (None for the hub)
    data_fingerprint: str  # sha256 over every file (or hub dataset) read
    n_pairs: int
    n_sentences: int  # unique sentences encoded
    encode_seconds: float
    sentences_per_second: float

    @property
    def scores(self) -> dict[str, float]:
        """Task name -> reported score: the main metric x 100 (Spearman for STS, MAP for reranking...)."""
        return {name: t.score for name, t in self.details.items()}

    def __getitem__(self, task: str) -> float:
        return self.details[resolve_task(task).name].score

    @classmethod
    def from_dict(cls, record: dict) -> EvalResult:
        """Read `to_dict()` back (a JSON record), with typed task results."""
        nan = float("nan")
        return cls(
            details={name: result_from_dict(name, d) for name, d in record.get("details", {}).items()},
            average=nan if record.get("average") is None else record["average"],
            partial=record["partial"],
            split=record["split"],
            source=record["source"],
            data_dir=record.get("data_dir"),
            data_fingerprint=record["data_fingerprint"],
            n_pairs=record["n_pairs"],
            n_sentences=record["n_sentences"],
            encode_seconds=nan if record.get("encode_seconds") is None else record["encode_seconds"],
            sentences_per_second=nan
            if record.get("sentences_per_second") is None
            else record["sentences_per_second"],
        )

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN written as null)."""
        return _json_safe(
            {
                "scores": self.scores,
                "average": self.average,
                "partial": self.partial,
                "split": self.split,
                "source": self.source,
                "data_dir": self.data_dir,
                "data_fingerprint": self.data_fingerprint,
                "n_pairs": self.n_pairs,
                "n_sentences": self.n_sentences,
                "encode_seconds": self.encode_seconds,
                "sentences_per_second": self.sentences_per_second,
                "details": {name: t.to_dict() for name, t in self.details.items()},
            }
        )


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    return obj


def format_table(rows: Iterable[tuple] | Mapping[str, EvalResult | Mapping], *, label: str = "model") -> str:
    """A table with one row per result: STS12 ... STS16 STSB SICK-R, other tasks, Avg; scores to 2 decimals.

    The seven STS columns appear when any row has an STS score; every other task scored in some row gets a
    column named after it and its main metric ("TRECQA MAP"), x 100 like the STS Spearman.

    `rows` is a mapping label -> result, or `(label, result)` / `(label, result, extras)` tuples where
    `extras` maps extra column names to values (e.g. `{"sent/s": r.sentences_per_second}`). A result is an
    `EvalResult` or its `to_dict()` (as read back from a JSONL record). The output is aligned for a
    terminal and is a valid markdown table; a partial average (not exactly the seven STS tasks) is marked with `*`.
    """
    items = list(rows.items()) if isinstance(rows, Mapping) else list(rows)
    extra_cols: list[str] = []
    for item in items:
        extra_cols += [c for c in (item[2] if len(item) > 2 else {}) if c not in extra_cols]
    summaries = [_summary(item[1]) for item in items]
    scored = [t for scores, _, _ in summaries for t in scores]
    others = [t for t in dict.fromkeys(scored) if t not in SPECS]
    columns = [*(TASKS if any(t in SPECS for t in scored) or not others else ()), *others]
    header = [label, *(_column(t) for t in columns), "Avg", *extra_cols]
    body, any_partial = [], False
    for item, (scores, average, partial) in zip(items, summaries, strict=True):
        name = item[0]
        extras = item[2] if len(item) > 2 else {}
        any_partial |= partial and bool(scores)
        avg = _num(average) + ("*" if partial and scores else "")
        cells = [str(name).replace("|", "\\|"), *(_num(scores.get(t)) for t in columns), avg]
        body.append(cells + [_extra(extras.get(c)) for c in extra_cols])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # The label column is left-aligned, numbers right-aligned (matching the markdown rule below).
        numbers = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        padded = [cells[0].ljust(widths[0]), *numbers]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    out = [line(header), rule, *(line(r) for r in body)]
    if any_partial:
        out += ["", "\\* average over the tasks run, not the seven STS tasks."]
    return "\n".join(out)


def _column(task: str) -> str:
    if task in SPECS:
        return SPECS[task].column
    return CATALOG[task].column if task in CATALOG else task


def _summary(result: EvalResult | Mapping) -> tuple[dict[str, float], float | None, bool]:
    if isinstance(result, EvalResult):
        return result.scores, result.average, result.partial
    return dict(result.get("scores", {})), result.get("average"), bool(result.get("partial", False))


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}"


def _extra(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value).replace("|", "\\|")
