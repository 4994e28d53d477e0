"""The scaling study: a plan of cells (model x method), each made by promptlab commands, run resumably.

A plan is a TOML file (``experiments/scaling/plan.toml``)::

    results_dir = "experiments/scaling/results"   # one JSON record per cell: MODEL--METHOD.json
    work_dir = "experiments/scaling/work"         # the sweeps' and searches' JSONL files

    [models.smollm2-135m]       # a packaged model name (or a local model folder)
    dtype = "bfloat16"
    eval_hours = 0.17           # one 7-task test evaluation on the machine the study runs on
    train_hours = 0.6           # one CSE training run there
    drop = { demo = "why" }     # cells not run, and why

    [methods.dev-sweep]         # kind "dev": selection on STS-B dev, not a table column
    kind = "dev"
    output = "{work}/{model}--dev-sweep.jsonl"
    commands = ["promptlab sweep experiments/scaling/sweeps/{model}.toml --output {output}"]
    cost = 1.1                  # x the model's eval_hours (+ train_hours when train = true)

    [methods.sweep-best]
    needs = ["dev-sweep"]
    select.best = { from = "dev-sweep", where = { template = ["eol-topic", "prompteol"] } }
    commands = ["promptlab eval --model {model} --template {best.template} --layer {best.layer} ..."]

    [existing.smollm2-135m]     # cells already measured elsewhere: a record, or a row of a results JSONL
    prompteol-last = "experiments/baselines/smollm2-prompteol-bf16.json"
    metaeol = { path = "experiments/results/testsuite-smollm2.jsonl", template = "metaeol", layer = 28 }

Placeholders in commands: ``{model} {method} {dtype} {record} {output} {work} {args}`` (``args``: the
model's ``args.METHOD`` string), ``{NAME.FIELD}`` (a field of the key of the best-scoring row of the ``select.NAME``
cell's output that matches ``where``, e.g. the sweep's best template and layer) and ``{output.METHOD}``
(another cell's output file). ``best-of:{output}`` is the demonstration search's own mechanism.

`run_plan` runs the cells whose record is missing, in dependency order, ``jobs`` cells at a time (each
command a process of its own; a cell starts once the cells it needs are done). Every step is resumable by the
command's own means: ``eval`` reads vectors back from the embedding cache (and, given ``--task-log``, the
tasks and the parts of a task it finished in an earlier sitting) and refuses to overwrite a record (the runner skips an eval whose
``--output`` exists), ``sweep`` and ``search-demos`` skip the JSONL rows
already written, and ``finetune`` continues from its last checkpoint (the runner adds ``--resume`` when the
run folder holds one, and skips a run whose log has ended). A cell whose dependency is not done is refused
with one line; a finished record is never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptlab.config_types import read_toml
from promptlab.errors import PromptlabError, did_you_mean
from promptlab.jsonl import read_rows

TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness")
_PLAN_KEYS = {"name", "description", "results_dir", "work_dir", "models", "methods", "existing"}
_MODEL_KEYS = {"label", "dtype", "eval_hours", "train_hours", "params", "drop", "hold", "args", "costs"}
_METHOD_KEYS = {"label", "kind", "needs", "select", "output", "commands", "cost", "train", "note"}
_FIXED_PLACEHOLDERS = {"model", "method", "dtype", "record", "output", "work", "args"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.-]+)\}")


@dataclass(frozen=True)
class Method:
    name: str
    commands: tuple[str, ...]
    label: str = ""
    kind: str = "test"  # "test": a column of the table; "dev": selection only
    needs: tuple[str, ...] = ()
    select: dict[str, dict[str, Any]] = field(default_factory=dict)  # NAME -> {from, where}
    output: str = ""
    cost: float = 1.0  # x the model's eval_hours
    command_costs: tuple[float, ...] = ()  # the cost split over the commands, when the plan gives one
    train: bool = False  # + the model's train_hours
    note: str = ""


@dataclass(frozen=True)
class Model:
    name: str
    dtype: str = "float32"
    label: str = ""
    eval_hours: float | None = None
    train_hours: float | None = None
    params: float | None = None  # None: from the catalog
    drop: dict[str, str] = field(default_factory=dict)  # method -> why its cell is not run at all
    hold: dict[str, str] = field(default_factory=dict)  # method -> why the runner leaves it alone for now
    args: dict[str, str] = field(default_factory=dict)
    costs: dict[str, float] = field(
        default_factory=dict
    )  # method -> its cost for this model, if not the method's


@dataclass(frozen=True)
class Existing:
    """A cell measured before the plan: a JSON record, or one row of a results JSONL."""

    path: Path
    row: dict[str, Any] = field(default_factory=dict)  # key fields of the row (template, layer, ...)
    command: str = ""


@dataclass(frozen=True)
class Cell:
    model: Model
    method: Method
    record: Path  # the cell's record: done when it exists
    output: Path | None  # the JSONL its commands fill (dev cells, searches), if any
    existing: Existing | None = None
    dropped: str = ""  # why the cell is not run
    held: str = ""  # why the runner leaves it alone (made by hand, e.g. a run in progress)

    @property
    def name(self) -> str:
        return f"{self.model.name}/{self.method.name}"

    def done(self) -> bool:
        return self.record.exists()

    def hours(self) -> float | None:
        if self.existing is not None or self.model.eval_hours is None:
            return None
        hours = self.model.costs.get(self.method.name, self.method.cost) * self.model.eval_hours
        if self.method.train:
            if self.model.train_hours is None:
                return None
            hours += self.model.train_hours
        return hours


@dataclass(frozen=True)
class Plan:
    path: Path
    root: Path  # paths in the plan are relative to this folder (the repository root)
    models: tuple[Model, ...]
    methods: tuple[Method, ...]
    results_dir: Path
    work_dir: Path
    existing: dict[tuple[str, str], Existing]
    name: str = ""

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in self.methods]

    def method(self, name: str) -> Method:
        for m in self.methods:
            if m.name == name:
                return m
        raise PromptlabError(f"{self.path}: unknown method {name!r}.{did_you_mean(name, self.method_names)}")

    def cells(self, models=None, methods=None) -> list[Cell]:
        """Every cell (model x method), dependencies before the cells that need them."""
        chosen_models = [m for m in self.models if models is None or m.name in models]
        order = _topological(self.methods)
        out = []
        for model in chosen_models:
            for method in order:
                if methods is None or method.name in methods:
                    out.append(self.cell(model, method))
        return out

    def cell(self, model: Model, method: Method) -> Cell:
        existing = self.existing.get((model.name, method.name))
        work = self.work_dir
        fill = {"model": _slug(model.name), "work": str(work)}
        if existing is not None:
            if method.kind == "dev":
                record, output = existing.path, existing.path
            else:
                record, output = existing.path, None
        else:
            record = self.results_dir / f"{_slug(model.name)}--{method.name}.json"
            output = self.root / _fill(method.output, fill) if method.output else None
        return Cell(
            model,
            method,
            record,
            output,
            existing,
            model.drop.get(method.name, ""),
            model.hold.get(method.name, ""),
        )

    def find(self, model: Model, method_name: str) -> Cell:
        return self.cell(model, self.method(method_name))


# --------------------------------------------------------------------------- loading and validation


def load_plan(path: str | Path, *, root: str | Path | None = None, check_models: bool = True) -> Plan:
    """Read and check a plan; ``root`` (default: the current folder) anchors its relative paths."""
    path = Path(path)
    if not path.is_file():
        raise PromptlabError(f"plan {path} does not exist; pass a .toml file (see experiments/scaling/).")
    return plan_from_dict(
        read_toml(path), where=path, root=Path(root) if root else Path.cwd(), check_models=check_models
    )


def plan_from_dict(raw: dict, *, where: Path, root: Path, check_models: bool = True) -> Plan:
    _known(raw, _PLAN_KEYS, str(where))
    methods = []
    for name, m in (raw.get("methods") or {}).items():
        _known(m, _METHOD_KEYS, f"{where} [methods.{name}]")
        commands = m.get("commands")
        if not commands or not all(isinstance(c, str) and c.startswith("promptlab ") for c in commands):
            raise PromptlabError(
                f'{where} [methods.{name}]: commands must be a list of "promptlab ..." command lines.'
            )
        kind = m.get("kind", "test")
        if kind not in ("test", "dev"):
            raise PromptlabError(f'{where} [methods.{name}]: kind is "test" or "dev", not {kind!r}.')
        if kind == "dev" and not m.get("output"):
            raise PromptlabError(f'{where} [methods.{name}]: a dev method needs output = "...jsonl".')
        cost, command_costs = _method_cost(m.get("cost", 1.0), len(commands), f"{where} [methods.{name}]")
        methods.append(
            Method(
                name=name,
                commands=tuple(commands),
                label=m.get("label", name),
                kind=kind,
                needs=tuple(m.get("needs", ())),
                select=dict(m.get("select", {})),
                output=m.get("output", ""),
                cost=cost,
                command_costs=command_costs,
                train=bool(m.get("train", False)),
                note=m.get("note", ""),
            )
        )
    if not methods:
        raise PromptlabError(f"{where}: no [methods.NAME] tables; add at least one.")
    names = [m.name for m in methods]

    def check_method(name: str, context: str) -> None:
        if name not in names:
            raise PromptlabError(f"{where} {context}: unknown method {name!r}.{did_you_mean(name, names)}")

    models = []
    for name, m in (raw.get("models") or {}).items():
        _known(m, _MODEL_KEYS, f"{where} [models.{name}]")
        if check_models:
            _check_model(name, where, root)
        for dropped in m.get("drop", {}):
            check_method(dropped, f"[models.{name}] drop")
        for method in m.get("args", {}):
            check_method(method, f"[models.{name}] args")
        for method in m.get("hold", {}):
            check_method(method, f"[models.{name}] hold")
        for method in m.get("costs", {}):
            check_method(method, f"[models.{name}] costs")
        models.append(
            Model(
                name=name,
                dtype=m.get("dtype", "float32"),
                label=m.get("label", name),
                eval_hours=m.get("eval_hours"),
                train_hours=m.get("train_hours"),
                params=m.get("params"),
                drop=dict(m.get("drop", {})),
                hold=dict(m.get("hold", {})),
                costs={k: float(v) for k, v in m.get("costs", {}).items()},
                args=dict(m.get("args", {})),
            )
        )
    if not models:
        raise PromptlabError(f"{where}: no [models.NAME] tables; add at least one.")
    model_names = [m.name for m in models]
    for method in methods:
        here = f"[methods.{method.name}]"
        for need in method.needs:
            check_method(need, f"{here} needs")
        for sel_name, sel in method.select.items():
            _known(sel, {"from", "where"}, f"{where} {here} select.{sel_name}")
            check_method(sel.get("from", ""), f"{here} select.{sel_name}.from")
            if sel["from"] not in method.needs:
                raise PromptlabError(
                    f"{where} {here}: select.{sel_name} reads {sel['from']!r}; add it to needs."
                )
            for value in sel.get("where", {}).get("template", []):
                _check_template(value, f"{where} {here} select.{sel_name}.where")
        for command in method.commands:
            for token in _PLACEHOLDER.findall(command):
                head = token.split(".")[0]
                if token in _FIXED_PLACEHOLDERS or head in method.select:
                    continue
                if head == "output" and "." in token:
                    check_method(token.split(".", 1)[1], f"{here} {{{token}}}")
                    continue
                allowed = sorted(_FIXED_PLACEHOLDERS | {f"{s}.FIELD" for s in method.select})
                raise PromptlabError(
                    f"{where} {here}: unknown placeholder {{{token}}}.{did_you_mean(token, allowed)} "
                    f"Allowed: {', '.join(allowed)}, output.METHOD."
                )
            argv = shlex.split(command)
            for i, arg in enumerate(argv[:-1]):
                if arg == "--template" and "{" not in argv[i + 1]:
                    _check_template(argv[i + 1], f"{where} {here}")
    _topological(methods, where=where)
    existing = {}
    for model_name, cells in (raw.get("existing") or {}).items():
        if model_name not in model_names:
            raise PromptlabError(
                f"{where} [existing.{model_name}]: not a model of this plan.{did_you_mean(model_name, model_names)}"
            )
        for method_name, spec in cells.items():
            check_method(method_name, f"[existing.{model_name}]")
            if isinstance(spec, str):
                spec = {"path": spec}
            spec = dict(spec)
            entry = Existing(root / spec.pop("path"), command=spec.pop("command", ""), row=spec)
            existing[(model_name, method_name)] = entry
    return Plan(
        path=where,
        root=root,
        models=tuple(models),
        methods=tuple(methods),
        results_dir=root / raw.get("results_dir", "experiments/scaling/results"),
        work_dir=root / raw.get("work_dir", "experiments/scaling/work"),
        existing=existing,
        name=raw.get("name", ""),
    )


def _method_cost(raw: Any, n_commands: int, where: str) -> tuple[float, tuple[float, ...]]:
    """A method's ``cost``: a number, or one number per command (the dry-run then counts each command's
    progress apart, e.g. a demonstration search and the eval after it)."""

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0

    if number(raw):
        return float(raw), ()
    if isinstance(raw, list) and len(raw) == n_commands and all(number(c) for c in raw):
        return float(sum(raw)), tuple(float(c) for c in raw)
    raise PromptlabError(
        f"{where}: cost = {raw!r}: give a number of evals (e.g. cost = 1.2), or a list of {n_commands} such "
        f"numbers, one per command."
    )


def _check_model(name: str, where, root: Path) -> None:
    from promptlab.models.catalog import is_catalog_name, list_models

    if is_catalog_name(name) or (root / name).is_dir() or Path(name).is_dir():
        return
    choices = [m.name for m in list_models()]
    raise PromptlabError(
        f"{where} [models.{name}]: not a packaged model or a model folder.{did_you_mean(name, choices)}"
    )


def _check_template(name: str, where: str) -> None:
    from promptlab.registry import get_template

    try:
        get_template(name)
    except PromptlabError as err:
        raise PromptlabError(f"{where}: {err}") from None


def _known(table, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise PromptlabError(f"{where}: expected a table.")
    for key in table:
        if key not in allowed:
            raise PromptlabError(
                f"{where}: unknown key {key!r}.{did_you_mean(key, allowed)} Allowed: {', '.join(sorted(allowed))}."
            )


def _topological(methods, *, where=None) -> list[Method]:
    by_name = {m.name: m for m in methods}
    order, state = [], {}

    def visit(m: Method, chain: tuple[str, ...]) -> None:
        if state.get(m.name) == "done":
            return
        if state.get(m.name) == "visiting":
            raise PromptlabError(
                f"{where or 'plan'}: methods need each other in a cycle: {' -> '.join(chain)}."
            )
        state[m.name] = "visiting"
        for need in m.needs:
            visit(by_name[need], (*chain, need))
        state[m.name] = "done"
        order.append(m)

    for m in methods:
        visit(m, (m.name,))
    return order


# --------------------------------------------------------------------------- placeholders


def _slug(name: str) -> str:
    """A model name as part of a file name (a model folder's path loses its slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def _fill(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda mt: values.get(mt.group(1), mt.group(0)), text)


def best_row(path: Path, where: dict[str, list]) -> dict[str, Any]:
    """The best-scoring row of a sweep/search JSONL whose key matches ``where`` (field -> allowed values)."""
    if not path.exists():
        raise PromptlabError(f"{path} does not exist yet; run the cell that writes it first.")
    rows = [
        r
        for r in read_rows(path)
        if r.get("score") is not None
        and all(str(r.get("key", {}).get(k)) in {str(v) for v in vals} for k, vals in where.items())
    ]
    if not rows:
        raise PromptlabError(f"{path}: no scored row matches {where}; check the plan's select.where.")
    return max(rows, key=lambda r: r["score"])


def resolve(plan: Plan, cell: Cell, *, strict: bool = True) -> list[str]:
    """The cell's command lines with every placeholder filled; with ``strict=False`` a value that needs an
    unfinished dependency stays as ``<NAME.FIELD after METHOD>``."""
    values = {
        "model": cell.model.name,
        "method": cell.method.name,
        "dtype": cell.model.dtype,
        "record": _rel(cell.record, plan.root),
        "output": _rel(cell.output, plan.root) if cell.output else "",
        "work": _rel(plan.work_dir, plan.root),
        "args": cell.model.args.get(cell.method.name, ""),
    }
    for sel_name, sel in cell.method.select.items():
        source = plan.find(cell.model, sel["from"])
        try:
            row = best_row(source.output, {k: list(v) for k, v in sel.get("where", {}).items()})
            for key, value in row["key"].items():
                values[f"{sel_name}.{key}"] = str(value)
        except PromptlabError:
            if strict:
                raise
            for token in _PLACEHOLDER.findall(" ".join(cell.method.commands)):
                if token.startswith(f"{sel_name}."):
                    values[token] = f"<{token} after {sel['from']}>"
    for token in _PLACEHOLDER.findall(" ".join(cell.method.commands)):
        if token.startswith("output."):
            other = plan.find(cell.model, token.split(".", 1)[1])
            values[token] = _rel(other.output, plan.root) if other.output else ""
    commands = [_fill(c, values) for c in cell.method.commands]
    return [" ".join(c.split()) for c in commands]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- running


def default_execute(argv: list[str], threads: int) -> int:
    """Run one promptlab command in a fresh process (its memory is returned when it ends)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, "-m", "promptlab.cli", *argv[1:]], env=env).returncode


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value after ``flag`` in ``argv``; None when the flag is absent or has no value."""
    if flag not in argv[:-1]:
        return None
    return argv[argv.index(flag) + 1]


CHECKPOINT = (
    "checkpoint-last"  # promptlab.finetune.trainer.CHECKPOINT (not imported: that module loads torch)
)


def _finetune_dir(argv: list[str], root: Path) -> Path | None:
    """The run folder of a ``promptlab finetune CONFIG [--output-dir D]`` command."""
    output_dir = _flag_value(argv, "--output-dir")
    if output_dir is not None:
        return root / output_dir
    config = root / argv[2]
    if not config.is_file():
        return None
    raw = read_toml(config)
    return root / raw["output_dir"] if "output_dir" in raw else None


def _finished_training(folder: Path) -> bool:
    log = folder / "log.jsonl"
    return log.exists() and any(r.get("event") == "end" for r in read_rows(log))


def step_argv(argv: list[str], root: Path) -> list[str] | None:
    """``argv`` as the runner runs it now: None when the step is already done, ``--resume`` added to a
    fine-tuning run that stopped part-way, ``--overwrite`` to one that stopped before it saved anything."""
    verb = argv[1] if len(argv) > 1 else ""
    record = _flag_value(argv, "--output")
    if verb == "eval" and record is not None and (root / record).exists():
        return None  # a finished record is never overwritten
    if verb == "finetune":
        folder = _finetune_dir(argv, root)
        if folder is not None and _finished_training(folder):
            return None
        started = folder is not None and (folder / "finetune.json").exists()
        if started and not {"--resume", "--overwrite"} & set(argv):
            if (folder / CHECKPOINT).is_dir():
                return [*argv, "--resume"]
            if not (folder / "best").exists():  # no checkpoint and no adapter: nothing to keep
                return [*argv, "--overwrite"]
    return argv


def _checkpoint_step(argv: list[str], root: Path, subfolder: str = CHECKPOINT) -> int | None:
    """The step of the checkpoint a ``promptlab finetune`` command would resume from, if it has one (or of
    another adapter its run folder keeps: ``subfolder="best"``)."""
    from promptlab.adapters import ADAPTER_META

    if len(argv) < 3 or argv[1] != "finetune":
        return None
    folder = _finetune_dir(argv, root)
    meta = folder / subfolder / ADAPTER_META if folder is not None else None
    if meta is None or not meta.is_file():
        return None
    return json.loads(meta.read_text(encoding="utf-8")).get("step")


@dataclass
class RunReport:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # done before
    refused: list[str] = field(default_factory=list)  # a dependency is missing
    failed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)


def run_plan(
    plan: Plan,
    *,
    models: list[str] | None = None,
    methods: list[str] | None = None,
    dry_run: bool = False,
    threads: int = 1,
    jobs: int = 1,
    execute: Callable[[list[str], int], int] | None = None,
    log: Callable[[str], None] | None = None,
) -> RunReport:
    """Run the cells whose record is missing, in dependency order, up to ``jobs`` cells at a time (see the
    module's docstring)."""
    from promptlab.experiments.results import lock_output

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    execute = execute or default_execute
    if jobs < 1:
        raise PromptlabError(f"--jobs {jobs}: give 1 or more (cells run at the same time).")
    for name in models or ():
        if name not in [m.name for m in plan.models]:
            raise PromptlabError(
                f"--models: {name!r} is not a model of {plan.path}.{did_you_mean(name, [m.name for m in plan.models])}"
            )
    for name in methods or ():
        plan.method(name)
    report = RunReport()
    lock = None
    if not dry_run:
        plan.results_dir.mkdir(parents=True, exist_ok=True)
        plan.work_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_output(plan.results_dir / "scaling-run")  # one runner per plan at a time
    try:
        to_run = _list_cells(plan, models, methods, report, dry_run, threads, log)
        if not dry_run:
            _schedule(plan, to_run, report, jobs, lambda c: _run_cell(plan, c, threads, execute, log), log)
    finally:
        if lock is not None:
            lock.close()
    return report


def _list_cells(
    plan: Plan,
    models: list[str] | None,
    methods: list[str] | None,
    report: RunReport,
    dry_run: bool,
    threads: int,
    log: Callable[[str], None],
) -> list[Cell]:
    """Log each cell's state; the cells to run (none on a dry run, which logs their commands instead)."""
    to_run: list[Cell] = []
    total = 0.0
    for cell in plan.cells(models, methods):
        if cell.done():
            report.skipped.append(cell.name)
            log(f"done     {cell.name}: {_rel(cell.record, plan.root)}")
        elif cell.dropped:
            report.dropped.append(cell.name)
            log(f"dropped  {cell.name}: {cell.dropped}")
        elif cell.held:
            report.held.append(cell.name)
            log(f"held     {cell.name}: {cell.held}")
        elif dry_run:
            hours = _hours_left(plan, cell)
            total += hours or 0.0
            missing = [n for n in cell.method.needs if not plan.find(cell.model, n).done()]
            after = f" after {', '.join(missing)}" if missing else ""
            log(f"to run   {cell.name}{_cost(hours)}{after}:")
            for command in resolve(plan, cell, strict=False):
                log(f"    {command}")
                for kept in _kept_from_earlier_sittings(command, plan.root):
                    log(f"      {kept}")
        else:
            to_run.append(cell)
    if dry_run:
        log(f"estimated: {total:.1f} h for the cells to run (one machine, {threads} thread(s) each)")
    return to_run


def _kept_from_earlier_sittings(command: str, root: Path) -> list[str]:
    """What a command will not redo, in words: an eval's task log, a finetune checkpoint, a sweep's or a
    search's rows."""
    argv = shlex.split(command)
    kept = []
    task_log = _kept_in_task_log(argv, root)
    if task_log:
        kept.append(f"kept in its task log: {task_log}")
    step = _checkpoint_step(argv, root)
    if _finished_finetune(argv, root):
        kept.append("kept in its run folder: the finished training and its adapter; only the eval is left")
    elif step is not None:
        kept.append(f"kept in its run folder: a checkpoint at step {step}, where it resumes")
    elif (best := _checkpoint_step(argv, root, subfolder="best")) is not None:
        # Checkpoints are local: a run folder from another machine keeps its adapter and nothing to resume.
        kept.append(
            f"kept in its run folder: the step-{best} adapter (best/) of a stopped training, but no checkpoint "
            "to resume: add --overwrite to train again, or run the eval command by hand to keep that adapter"
        )
    rows = _kept_rows(argv, root)
    if rows:
        kept.append(f"kept in its output: {rows}")
    return kept


def _kept_rows(argv: list[str], root: Path) -> str | None:
    """Rows a sweep's or a search's JSONL output, and a screened search's first round, already hold."""
    from promptlab.experiments.search import screen_path

    output = _flag_value(argv, "--output")
    if len(argv) < 2 or argv[1] not in ("sweep", "search-demos") or output is None:
        return None
    files = {root / output: None}
    if argv[1] == "search-demos":
        first, second = _search_rows_in_all(argv, root)
        files = {screen_path(root / output): first, root / output: second}
    words = []
    for path, in_all in files.items():
        if path.is_file():
            n = _row_count(path)
            of = "" if in_all is None else f" of {in_all}"
            words.append(f"{n}{of} row{'s' * ((in_all or n) != 1)} in {path.name}")
    return ", ".join(words) or None


def _row_count(path: Path) -> int:
    """Rows a JSONL output holds; 0 before it exists."""
    return sum(1 for _ in read_rows(path)) if path.is_file() else 0


def _search_rows_in_all(argv: list[str], root: Path) -> tuple[int | None, int | None]:
    """How many rows a finished ``search-demos`` writes to its first round and to its output: a row per
    candidate and one for the prompt without a demonstration; None where the pool cannot be read here."""
    from promptlab.demonstrations import ALL_POOL, load_pool
    from promptlab.experiments.search import Screen

    spec = _flag_value(argv, "--pool") or ALL_POOL
    if spec.endswith(".jsonl") or "/" in spec:
        spec = str(root / spec)
    screen_flag = _flag_value(argv, "--screen")
    try:
        candidates = len(load_pool(spec)[0])
        screen = Screen.parse(screen_flag) if screen_flag else None
    except (PromptlabError, OSError, ValueError):
        return None, None
    if screen is None or screen.keep >= candidates:  # one round, into the output
        return None, candidates + 1
    return candidates + 1, screen.keep + 1


def _kept_in_task_log(argv: list[str], root: Path) -> str | None:
    """What an eval command's ``--task-log`` already holds from earlier sittings, in words; None if nothing."""
    log = _flag_value(argv, "--task-log")
    if log is None or not (root / log).is_file():
        return None
    finished: list[str] = []
    parts: dict[str, int] = {}
    for row in read_rows(root / log):
        key = row.get("key", {})
        if "part" in key:
            parts[key["task"]] = parts.get(key["task"], 0) + 1
        else:
            finished.append(key["task"])
    words = [f"{', '.join(finished)} finished"] if finished else []
    words += [f"{n} part{'s' * (n > 1)} of {task}" for task, n in parts.items() if task not in finished]
    progress = _eval_progress(argv, root)
    if words and progress is not None:
        kept, total = progress
        words.append(f"in all {kept:,} of its {total:,} sentences ({100 * kept / max(total, 1):.0f} %)")
    return "; ".join(words) or None


def _eval_progress(argv: list[str], root: Path) -> tuple[int, int] | None:
    """(sentences kept, sentences in all) of an eval command with a ``--task-log``; None when it has no log
    yet or its data cannot be read here (then the whole cell's estimate stands)."""
    from promptlab.evaluation.runner import DEFAULT_PART_ITEMS, load_suite, logged_progress

    log = _flag_value(argv, "--task-log")
    if len(argv) < 2 or argv[1] != "eval" or log is None or not (root / log).is_file():
        return None
    tasks = _flag_value(argv, "--tasks")
    data_dir = _flag_value(argv, "--data-dir")
    part_items = _flag_value(argv, "--part-items")
    try:
        suite = load_suite(
            [t.strip() for t in tasks.split(",")] if tasks else None,
            data_dir=None if data_dir is None else root / data_dir,
            split=_flag_value(argv, "--split") or "test",
            source=_flag_value(argv, "--source") or "senteval",
        )
        parts = DEFAULT_PART_ITEMS if part_items is None else int(part_items)
    except (PromptlabError, OSError, ValueError):
        return None
    return logged_progress(suite, read_rows(root / log), parts or None)


def _finished_finetune(argv: list[str], root: Path) -> bool:
    """Whether ``argv`` is a ``promptlab finetune`` command whose run folder holds a finished training."""
    if len(argv) < 3 or argv[1] != "finetune":
        return False
    folder = _finetune_dir(argv, root)
    return folder is not None and _finished_training(folder)


def _hours_left(plan: Plan, cell: Cell) -> float | None:
    """The cell's estimated hours, less what earlier sittings kept: its training once that finished, and the
    share of each command's work its files already hold (an eval's task log, a demonstration search's rows).

    A method with one cost per command weighs each command's progress by its own cost; with one cost for
    all, progress counts only when a single command is left (e.g. a CSE cell's eval after its training)."""
    hours = cell.hours()
    if hours is None:
        return None
    commands = [shlex.split(c) for c in resolve(plan, cell, strict=False)]
    trained = [_finished_finetune(argv, plan.root) for argv in commands]
    train = (cell.model.train_hours or 0.0) if cell.method.train else 0.0
    if any(trained):
        hours -= train
        train = 0.0
    weights = list(cell.method.command_costs)
    if not weights and trained.count(False) == 1:
        weights = [0.0 if done else 1.0 for done in trained]
    if not sum(weights):
        return hours
    left = sum(
        weight * (0.0 if done else _share_left(argv, plan.root))
        for weight, argv, done in zip(weights, commands, trained, strict=True)
    )
    return train + (hours - train) * left / sum(weights)


def _share_left(argv: list[str], root: Path) -> float:
    """The share of a command's work still to do: 1 unless its files say how much is kept."""
    progress = _eval_progress(argv, root) or _search_progress(argv, root)
    if progress is None or not progress[1]:
        return 1.0
    return 1.0 - min(progress[0], progress[1]) / progress[1]


def _search_progress(argv: list[str], root: Path) -> tuple[int, int] | None:
    """(pairs scored, pairs in all) of a ``search-demos`` command, from the rows its rounds keep: a row scores
    its round's pairs (a screen's first round, then ``--dev-pairs``), so this is the share of its sentences."""
    from promptlab.evaluation import load_task
    from promptlab.experiments.search import Screen, screen_path

    output = _flag_value(argv, "--output")
    if len(argv) < 2 or argv[1] != "search-demos" or output is None:
        return None
    first_all, second_all = _search_rows_in_all(argv, root)
    if second_all is None:
        return None
    pairs, screen_pairs = 1, 0  # one round: every row scores the same pairs
    try:
        if first_all:  # two rounds: a first-round row scores the screen's pairs, a second-round row more
            screen_pairs = Screen.parse(_flag_value(argv, "--screen")).pairs
            dev_pairs, data_dir = _flag_value(argv, "--dev-pairs"), _flag_value(argv, "--data-dir")
            if dev_pairs:
                pairs = int(dev_pairs)
            else:  # the search scores the whole of STS-B dev
                dev = load_task("STSBenchmark", split="dev", data_dir=data_dir and str(root / data_dir))
                pairs = sum(len(part.sentences1) for part in dev)
    except (PromptlabError, OSError, ValueError):
        return None

    done = min(_row_count(screen_path(root / output)), first_all or 0) * screen_pairs
    done += min(_row_count(root / output), second_all) * pairs
    return done, (first_all or 0) * screen_pairs + second_all * pairs


def _cost(hours: float | None) -> str:
    return "" if hours is None else f" (~{hours:.1f} h)"


def _schedule(
    plan: Plan,
    cells: list[Cell],
    report: RunReport,
    jobs: int,
    run_cell: Callable[[Cell], bool],
    log: Callable[[str], None],
) -> None:
    """Start each cell, in plan order, once its dependencies are done and fewer than ``jobs`` cells run; a
    cell whose dependency is neither done nor still to come in this run is refused."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pending = list(cells)
    running: dict[Any, Cell] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            coming = {c.name for c in pending} | {c.name for c in running.values()}
            for cell in list(pending):
                if len(running) >= jobs:
                    break
                needed = [plan.find(cell.model, n) for n in cell.method.needs]
                missing = [d for d in needed if not d.done()]
                if any(d.name in coming for d in missing):
                    continue  # its dependency runs first, in this run
                pending.remove(cell)
                if missing:
                    report.refused.append(cell.name)
                    names = [d.method.name for d in missing]
                    log(
                        f"refused  {cell.name}: needs {', '.join(names)} for {cell.model.name}, not done; "
                        f"run --models {cell.model.name} --methods {','.join(names)} first."
                    )
                    continue
                log(f"running  {cell.name}{_cost(_hours_left(plan, cell))}")
                running[pool.submit(run_cell, cell)] = cell
            if not running:
                continue  # only refusals were left to find
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                (report.ran if future.result() else report.failed).append(cell.name)


def _run_cell(
    plan: Plan, cell: Cell, threads: int, execute: Callable[[list[str], int], int], log: Callable[[str], None]
) -> bool:
    """Run one cell's commands (each resuming by its own means); True when its record was written."""
    started = time.time()
    for command in resolve(plan, cell):
        argv = step_argv(shlex.split(command), plan.root)
        if argv is None:
            log(f"    (done) {command}")
            continue
        log(f"    {shlex.join(argv)}")
        code = execute(argv, threads)
        if code != 0:
            log(f"failed   {cell.name}: exit {code} from {argv[0]} {argv[1]}; rerun to resume it.")
            return False
    if cell.method.kind == "dev" and not cell.record.exists():
        _write_dev_record(plan, cell, resolve(plan, cell), time.time() - started, threads)
    if not cell.record.exists():
        log(f"failed   {cell.name}: its commands ended without writing {_rel(cell.record, plan.root)}.")
        return False
    log(f"finished {cell.name} in {(time.time() - started) / 3600:.2f} h: {_rel(cell.record, plan.root)}")
    return True


def _write_dev_record(plan: Plan, cell: Cell, commands: list[str], seconds: float, threads: int) -> None:
    from promptlab.version import __version__

    rows = list(read_rows(cell.output)) if cell.output and cell.output.exists() else []
    scored = [r for r in rows if r.get("score") is not None]
    best = max(scored, key=lambda r: r["score"]) if scored else None
    record = {
        "kind": "scaling-dev",
        "cell": cell.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "promptlab": __version__,
        "commands": commands,
        "output": _rel(cell.output, plan.root) if cell.output else None,
        "rows": len(rows),
        "best": {"key": best["key"], "score": best["score"]} if best else None,
        "seconds": seconds,
        "threads": threads,
    }
    tmp = cell.record.with_name(f".{cell.record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, cell.record)


# --------------------------------------------------------------------------- reading cells back


def _under_root(arg: str, root: Path) -> str:
    """``arg`` with the paths under ``root`` made relative to it: a recorded command as the repository names
    its files (run from the root), not as the machine that ran it did."""
    for prefix in {f"{Path(root).absolute()}{os.sep}", f"{Path(root).resolve()}{os.sep}"}:
        arg = arg.replace(prefix, "")
    return arg


def read_cell(plan: Plan, cell: Cell) -> dict[str, Any] | None:
    """A finished test cell as ``{scores, average, created, command, source}``; None when not run yet."""
    if not cell.record.exists():
        return None
    source = _rel(cell.record, plan.root)
    if cell.existing is not None and cell.existing.row:
        want = cell.existing.row
        for row in read_rows(cell.record):
            key = row.get("key", {})
            if all(str(key.get(k)) == str(v) for k, v in want.items()):
                return {
                    "scores": row["scores"],
                    "average": row["score"],
                    "created": row.get("created", ""),
                    "command": cell.existing.command,
                    "commit": row.get("commit") or row.get("config", {}).get("commit"),
                    "source": f"{source} ({', '.join(f'{k}={v}' for k, v in want.items())})",
                }
        raise PromptlabError(f"{source}: no row with {want}; fix [existing] in {plan.path}.")
    record = json.loads(cell.record.read_text(encoding="utf-8"))
    command = record.get("command") or []
    if isinstance(command, list):
        command = (
            shlex.join(["promptlab", *(_under_root(a, plan.root) for a in command[1:])]) if command else ""
        )
    return {
        "scores": record.get("scores", {}),
        "average": record.get("average"),
        "created": record.get("created", ""),
        "command": cell.existing.command if cell.existing and cell.existing.command else command,
        "commit": record.get("commit") or record.get("config", {}).get("commit"),
        "source": source,
    }
