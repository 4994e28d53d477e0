"""Prompt sweeps: models x templates x layers x demonstrations x dtypes, scored on STS-B dev by default.

A sweep is a TOML file (see ``experiments/*.toml``)::

    name = "smollm2-135m: templates x layers"
    models = ["smollm2-135m"]
    dtypes = ["bfloat16"]     # or "auto": bfloat16 where the hardware computes in it, else float32
    cache = true              # optional: vectors go to the embedding cache as they are computed, so a
                              # forward pass cut short resumes there (true: promptlab's cache; or a folder)

    [data]                 # optional; default: all of STS-B dev
    tasks = ["STSBenchmark"]
    split = "dev"
    # dev_pairs = 250      # a seeded subset
    # seed = 0

    [[grid]]               # one or more grids, each a full product
    templates = ["prompteol", "pcot", "echo"]
    layers = "all"         # or a list such as [-1, 12]
    demonstrations = ["none", "eol-opt-13b"]

The whole config is checked before any model loads: unknown model, template or demonstration names (with
suggestions), layers outside the model's range (with its layer count), templates that take no
demonstration. One forward pass per (model, dtype, template, demonstration) serves all its layers
(`Embedder.encode_layers`). Each finished (model, template, layer, demonstration, dtype) is one JSONL row,
fsynced as it is written; rerunning skips finished rows (`promptlab.experiments.results`). The forward
passes run here or on Ray workers (``--ray``, `promptlab.distributed.sweep`); this process writes the rows.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptlab.backends import DTYPE_NAMES, resolve_dtype
from promptlab.config_types import as_toml, check_type, is_type, read_toml
from promptlab.errors import PromptlabError
from promptlab.experiments.results import ResultsFile
from promptlab.experiments.scoring import Benchmark
from promptlab.experiments.workers import Here, Workers, load_transformers

NO_DEMO = "none"
_TOP_KEYS = {
    "name", "description", "models", "dtypes", "batch_size", "batch_tokens", "max_length", "data", "grid",
    "cache",
}  # fmt: skip
_GRID_KEYS = {"templates", "layers", "demonstrations"}
_DATA_KEYS = {"tasks", "split", "dev_pairs", "seed"}


@dataclass(frozen=True)
class Grid:
    """One product of templates x layers x demonstrations; ``layers`` None means every layer."""

    templates: tuple[str, ...]
    layers: tuple[int, ...] | None
    demonstrations: tuple[str, ...] = (NO_DEMO,)


@dataclass(frozen=True)
class SweepConfig:
    models: tuple[str, ...]
    grids: tuple[Grid, ...]
    dtypes: tuple[str, ...] = ("bfloat16",)
    benchmark: Benchmark = field(default_factory=Benchmark)
    batch_size: int | None = None  # None: the Embedder's default (`promptlab.batching`)
    batch_tokens: int | str | None = "auto"  # "auto": the Embedder's default; None: no cap
    max_length: int | None = None
    cache_dir: str | None = None  # keep vectors in the embedding cache: a pass cut short resumes there
    name: str = ""
    path: str = ""

    @classmethod
    def from_toml(cls, path: str | Path, *, data_dir: str | None = None) -> SweepConfig:
        path = Path(path)
        if not path.is_file():
            raise PromptlabError(f"sweep config {path} does not exist; pass a .toml file (see experiments/).")
        return cls.from_dict(read_toml(path), where=str(path), data_dir=data_dir)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, where: str = "sweep config", data_dir: str | None = None):
        _no_unknown(raw, _TOP_KEYS | _GRID_KEYS, where)
        grids_raw = raw.get("grid", [])
        if not isinstance(grids_raw, list):
            raise PromptlabError(
                f"{where}: write each grid as a [[grid]] table, not grid = {as_toml(grids_raw)}."
            )
        grids_raw = list(grids_raw)
        if any(k in raw for k in _GRID_KEYS):  # a single grid written at the top level
            grids_raw.append({k: raw[k] for k in _GRID_KEYS if k in raw})
        if not grids_raw:
            raise PromptlabError(f"{where}: no [[grid]] with templates and layers; add one.")
        grids = []
        for i, g in enumerate(grids_raw, start=1):
            _no_unknown(g, _GRID_KEYS, f"{where} grid {i}")
            if "templates" not in g:
                raise PromptlabError(f"{where} grid {i}: missing templates = [...].")
            layers = g.get("layers", [-1])
            if layers == "all":
                layers = None
            elif not layers or not is_type(layers, "list[int]"):  # `true` is no layer, though bool is an int
                raise PromptlabError(
                    f'{where} grid {i}: layers must be "all" or a list of integers, not {as_toml(layers)}.'
                )
            grids.append(
                Grid(
                    _strings(g["templates"], f"{where} grid {i} templates"),
                    None if layers is None else tuple(layers),
                    _strings(g.get("demonstrations", [NO_DEMO]), f"{where} grid {i} demonstrations"),
                )
            )
        data = raw.get("data", {})
        _no_unknown(data, _DATA_KEYS, f"{where} [data]")
        tasks = data.get("tasks", ["STSBenchmark"])
        benchmark = Benchmark(
            tasks=("all",) if tasks == "all" else tuple(_strings(tasks, f"{where} [data] tasks")),
            split=check_type(data.get("split", "dev"), "str", f"{where} [data] split", example="dev"),
            dev_pairs=_positive(data.get("dev_pairs"), f"{where} [data] dev_pairs", 500),
            seed=check_type(data.get("seed", 0), "int", f"{where} [data] seed", example=0),
            data_dir=data_dir,
        )
        for key in ("name", "description"):
            check_type(raw.get(key, ""), "str", f"{where}: {key}")
        if "models" not in raw:
            raise PromptlabError(f'{where}: missing models = [...] (e.g. ["smollm2-135m"]).')
        return cls(
            models=_strings(raw["models"], f"{where} models"),
            grids=tuple(grids),
            dtypes=_strings(raw.get("dtypes", ["bfloat16"]), f"{where} dtypes"),
            benchmark=benchmark,
            batch_size=_positive(raw.get("batch_size"), f"{where}: batch_size", 64),
            batch_tokens=_batch_tokens(raw.get("batch_tokens", "auto"), where),
            max_length=_positive(raw.get("max_length"), f"{where}: max_length", 512),
            cache_dir=_cache_dir(raw.get("cache", False), where),
            name=raw.get("name", ""),
            path=where,
        )

    def fixed(self) -> dict[str, Any]:
        """Settings every row shares; a results file written under other ones is refused on resume."""
        return {**self.benchmark.fixed(), "max_length": self.max_length}


# --------------------------------------------------------------------------- validation and planning


@dataclass(frozen=True)
class Job:
    """One forward pass: a model, dtype, template and demonstration, scored at ``layers``."""

    model: str
    dtype: str
    template: Any  # the registry's Template
    demonstration: Any  # Demonstration | None
    layers: tuple[int, ...]  # hidden-state indices still to do

    @property
    def template_name(self) -> str:
        return self.template.name

    @property
    def demo_id(self) -> str:
        return self.demonstration.id if self.demonstration else NO_DEMO


def default_layer_count(model: str) -> int:
    """The model's transformer block count, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    from promptlab.models import resolve_model

    resolved = resolve_model(model)
    config = AutoConfig.from_pretrained(resolved.path, revision=resolved.revision)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.num_hidden_layers)


def plan(config: SweepConfig, *, layer_count: Callable[[str], int] = default_layer_count) -> list[Job]:
    """Check the whole config and expand it into forward passes (every layer, before resume)."""
    from promptlab.demonstrations import resolve_demonstration, with_demonstration
    from promptlab.registry import get_template

    for dtype in config.dtypes:
        if dtype not in DTYPE_NAMES:
            raise PromptlabError(
                f"{config.path}: unknown dtype {dtype!r}; choose from {', '.join(DTYPE_NAMES)}."
            )
    # Rows record the dtype that ran, so "auto" resumes rows of its resolved dtype (and merges with it).
    dtypes = list(dict.fromkeys(resolve_dtype(dtype) for dtype in config.dtypes))
    counts = {}
    for model in config.models:
        try:
            counts[model] = layer_count(model)
        except PromptlabError as err:
            raise PromptlabError(f"{config.path} models: {err}") from None
    jobs: dict[tuple, Job] = {}
    for i, grid in enumerate(config.grids, start=1):
        where = f"{config.path} grid {i}"
        templates = {}
        for name in grid.templates:
            try:
                templates[name] = get_template(name)
            except PromptlabError as err:
                raise PromptlabError(f"{where} templates: {err}") from None
        demos = {}
        for spec in grid.demonstrations:
            try:
                demos[spec] = resolve_demonstration(spec)
            except PromptlabError as err:
                raise PromptlabError(f"{where} demonstrations: {err}") from None
        for model in config.models:
            n = counts[model]
            layers = range(n + 1) if grid.layers is None else grid.layers
            for layer in layers:
                if not -(n + 1) <= layer <= n:
                    raise PromptlabError(
                        f"{where}: layer {layer} is out of range for {model}: the model has {n} layers "
                        f'(use -{n + 1}..{n}, or "all"; 0 is the embedding output).'
                    )
            indices = sorted({layer % (n + 1) for layer in layers})
            for dtype in dtypes:
                for name, template in templates.items():
                    for demo in demos.values():
                        try:
                            with_demonstration(template, demo)  # refuses kinds that take no demonstration
                        except PromptlabError as err:
                            raise PromptlabError(f"{where}: {err}") from None
                        key = (model, dtype, name, demo.id if demo else NO_DEMO)
                        old = jobs.get(key)
                        merged = tuple(sorted(set(indices) | set(old.layers if old else ())))
                        jobs[key] = Job(model, dtype, template, demo, merged)
    return list(jobs.values())


def _identity(template, demonstration) -> dict[str, Any]:
    """What a row's key names, spelled out: resuming refuses rows whose names now mean other text."""
    from promptlab.demonstrations import with_demonstration
    from promptlab.registry import get_template

    return {
        "template_text": with_demonstration(template, demonstration).text,
        "template_members": {m: get_template(m).text for m in template.members},
        "demonstration": demonstration.to_dict() if demonstration else None,
    }


def _batch_tokens(value, where: str):
    """``batch_tokens`` of a sweep config: a positive integer, "auto" or "none"."""
    from promptlab.batching import parse_batch_tokens

    try:
        return parse_batch_tokens(value)
    except ValueError as err:
        raise PromptlabError(f"{where}: {err}") from None


def row_key(model: str, dtype: str, template: str, demo_id: str, layer: int) -> dict[str, Any]:
    return {"model": model, "dtype": dtype, "template": template, "demonstration": demo_id, "layer": layer}


# --------------------------------------------------------------------------- running


def run_sweep(
    config: SweepConfig,
    output: str | Path,
    *,
    loader: Callable[[str, str], Any] | None = None,
    layer_count: Callable[[str], int] = default_layer_count,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    workers: Workers | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) a sweep into ``output``; returns every row of the file, old and new.

    ``workers`` runs the forward passes elsewhere (`promptlab.distributed.sweep.RayWorkers`); this process
    still plans, skips finished rows and writes every row. Default: one after another, here.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    jobs = plan(config, layer_count=layer_count)
    results = ResultsFile(output, "sweep", config.fixed())
    with results:  # the output stays locked against other runs until the sweep ends
        pending = []
        for job in jobs:
            identity = _identity(job.template, job.demonstration)
            todo = []
            for layer in job.layers:
                row = results.done(row_key(job.model, job.dtype, job.template_name, job.demo_id, layer))
                if row is None:
                    todo.append(layer)
                elif row.get("identity") != identity:
                    raise PromptlabError(
                        f"{output}: the finished row for {job.template_name} / {job.demo_id} was made with "
                        "another "
                        "template or demonstration text than the registry holds now; write to another output."
                    )
            if todo:
                pending.append((job, tuple(todo), identity))
        n_rows = sum(len(t) for _, t, _ in pending)
        log(
            f"sweep {config.name or config.path}: {len(jobs)} forward pass(es) planned, {len(results.rows)} rows "
            f"already done, {n_rows} rows to do, on {config.benchmark.label()}"
        )
        if not pending:
            return list(results)
        loader = loader or load_transformers
        load = loader
        if workers is None:
            workers = Here()

            def load(model: str, dtype: str):  # refuses other weights before their first forward
                backend = loader(model, dtype)
                _check_same_weights(results, model, backend.describe().get("model_file_sha256"), output)
                return backend

        work = functools.partial(score_job, config, progress)
        grouped = [((todo[0].model, todo[0].dtype), todo) for todo in pending]
        with closing(workers.run(grouped, work, load, log)) as done:
            for index, rows in done:
                job, layers, _ = pending[index]
                _check_same_weights(results, job.model, rows[0][1]["config"].get("model_file_sha256"), output)
                for key, payload in rows:
                    results.append(key, payload)
                scores = {key["layer"]: payload["score"] for key, payload in rows}
                best = max(layers, key=lambda layer: _num(scores[layer]))
                log(
                    f"  {job.model} {job.dtype} {job.template_name} demo={job.demo_id}: {len(layers)} layer(s) in "
                    f"{rows[0][1]['forward_seconds']:.1f} s; best layer {best}: {_num(scores[best]):.2f}"
                )
        return list(results)


def score_job(config: SweepConfig, progress: bool | None, backend, todo) -> list[tuple[dict, dict]]:
    """The rows ``(key, payload)`` of one forward pass: ``todo`` is (job, layers, identity), every layer
    scored from one `encode_layers` call. Runs wherever the job runs; the driver writes the rows."""
    from promptlab.embedder import Embedder

    job, layers, identity = todo
    embedder = Embedder(
        backend,
        job.template,
        layer=layers[0],
        batch_size=config.batch_size,
        batch_tokens=config.batch_tokens,
        max_length=config.max_length,
        demonstration=job.demonstration,
        cache_dir=config.cache_dir,
    )
    records, seconds = config.benchmark.score_layers(embedder, list(layers), progress=progress)
    described = embedder.describe()
    rows = []
    for layer in layers:
        record = records[layer]
        rows.append(
            (
                row_key(job.model, job.dtype, job.template_name, job.demo_id, layer),
                {
                    "score": record["average"],
                    "scores": record["scores"],
                    "identity": identity,
                    "config": {
                        **described,
                        "template": job.template_name,
                        "layer": layer,
                        "layer_index": layer,
                        "batch_size": embedder.batch_size,
                        "batch_tokens": embedder.batch_tokens,
                    },
                    "data": {k: v for k, v in record.items() if k not in ("scores", "details")},
                    "details": record.get("details"),
                    "forward_seconds": seconds,
                    "layers_in_forward": len(layers),
                },
            )
        )
    return rows


def _num(value) -> float:
    return float("-inf") if value is None else float(value)


def _check_same_weights(results: ResultsFile, model: str, digest: str | None, output) -> None:
    for row in results:
        theirs = row.get("config", {}).get("model_file_sha256")
        if row["key"].get("model") == model and theirs and digest and theirs != digest:
            raise PromptlabError(
                f"{output}: rows for {model} were computed from other weights (sha256 {theirs[:12]}…, now "
                f"{digest[:12]}…); write to another output."
            )


def _cache_dir(value, where: str) -> str | None:
    """``cache`` of a sweep config: true (promptlab's embedding cache), a folder, or false (default)."""
    if value is True:
        from promptlab.cache import default_cache_dir

        return str(default_cache_dir())
    if value is False:
        return None
    if isinstance(value, str) and value:
        return value
    raise PromptlabError(f'{where}: cache = {as_toml(value)}; write true, false or a folder ("cache/").')


def _positive(value, where: str, example: int) -> int | None:
    """An optional positive whole number of a sweep config (``true`` and ``2.5`` are refused)."""
    if check_type(value, "int | None", where, example=example) is not None and value < 1:
        raise PromptlabError(f"{where} = {value} must be positive (e.g. {example}), or left out.")
    return value


def _strings(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise PromptlabError(f"{where}: expected a non-empty list of names, not {value!r}.")
    return tuple(value)


def _no_unknown(table: dict, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise PromptlabError(f"{where}: expected a table.")
    unknown = set(table) - allowed
    if unknown:
        from promptlab.errors import did_you_mean

        hints = "".join(did_you_mean(k, allowed) for k in sorted(unknown))
        raise PromptlabError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}.{hints} "
            f"Allowed: {', '.join(sorted(allowed))}."
        )
