"""Demonstration search: score every candidate of a pool on STS-B dev, one JSONL row per candidate.

PromptEOL (Jiang et al., 2023) picks, per model, the single demonstration that scores best on STS-B dev.
`run_search` loads the model once, scores a no-demonstration baseline and then each candidate
(`Embedder(backend, template, demonstration=...)` on the shared backend), appending one fsynced row as
each finishes; rerunning the same search skips finished candidates. `promptlab.demonstrations.best_demonstration`
reads a results file back, for ``--demonstration best-of:RESULTS.jsonl``.

A `Screen` makes it a two-round search (successive halving, Jamieson & Talwalkar, 2016, in one step): every
candidate is first scored on a small seeded subset of STS-B dev, into its own file beside the output, and
only the best few are scored on the search's benchmark. The output then holds exactly the rows a full
search would write for those candidates, so ``best-of:`` reads it unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptlab.demonstrations import SEARCH_KIND, Demonstration, candidate_rows
from promptlab.errors import PromptlabError
from promptlab.experiments.results import ResultsFile
from promptlab.experiments.scoring import Benchmark
from promptlab.experiments.workers import Here, Workers, load_transformers

KIND = SEARCH_KIND
BASELINE = "none"


@dataclass(frozen=True)
class Screen:
    """The first round of a two-round search: every candidate on ``pairs`` STS-B dev pairs, the ``keep``
    best of them on to the search's own benchmark."""

    pairs: int
    keep: int

    @classmethod
    def parse(cls, text: str) -> Screen:
        """``PAIRS:KEEP``, e.g. ``50:16``."""
        pairs, _, keep = text.partition(":")
        try:
            screen = cls(int(pairs), int(keep))
        except ValueError:
            screen = None
        if screen is None or screen.pairs < 2 or screen.keep < 1:
            raise PromptlabError(
                f"--screen {text!r}: give PAIRS:KEEP, e.g. 50:16 (score every candidate on 50 STS-B dev pairs, "
                "then the 16 best on the search's pairs)."
            )
        return screen


def screen_path(output: str | Path) -> Path:
    """Where a search's screening round writes: ``search.jsonl`` -> ``search.screen.jsonl`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.screen{output.suffix or '.jsonl'}")


def run_search(
    model: str,
    pool: list[Demonstration],
    output: str | Path,
    *,
    template: str = "prompteol",
    layer: int = -1,
    dtype: str = "auto",
    benchmark: Benchmark | None = None,
    batch_size: int | None = None,
    batch_tokens: int | str | None = "auto",
    max_length: int | None = None,
    backend: Any = None,
    pool_name: str = "",
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    workers: Workers | None = None,
    adapter: str | None = None,
    screen: Screen | None = None,
) -> list[dict[str, Any]]:
    """Score ``pool`` (and no demonstration) into ``output``; returns every candidate row, best first.

    ``screen`` first scores the whole pool on a smaller STS-B dev subset (into `screen_path` of
    ``output``, resumable the same way) and searches only its ``keep`` best.

    ``adapter`` (the SHA-256 of the LoRA weights ``backend`` carries) is recorded with the fixed settings,
    so rows of the adapted and the plain model never mix in one output.

    ``workers`` scores the candidates elsewhere (`promptlab.distributed.sweep.RayWorkers`, each worker
    loading the model once); this process still skips finished candidates and writes every row.
    """
    from promptlab.backends import resolve_dtype
    from promptlab.demonstrations import with_demonstration
    from promptlab.registry import get_template

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    benchmark = benchmark or Benchmark()
    # Rows record the dtype that ran, so "auto" resumes the rows of what it resolves to: a given backend's
    # own dtype, else what loading would pick on this machine.
    given = backend.describe().get("dtype") if backend is not None and dtype == "auto" else None
    dtype = given or resolve_dtype(dtype)
    base = get_template(template)
    with_demonstration(base, pool[0])  # refuses, before any work, a template kind that takes none
    if len({d.id for d in pool}) != len(pool):
        raise PromptlabError("the pool lists a demonstration id twice; make ids unique.")
    if backend is not None and workers is not None:
        raise PromptlabError("pass a loaded backend or workers that load the model, not both.")

    def search_round(
        pool: list[Demonstration], output: str | Path, benchmark: Benchmark
    ) -> list[dict[str, Any]]:
        """Score ``pool`` and the baseline on ``benchmark`` into ``output``, skipping the rows it holds."""
        fixed = {
            **benchmark.fixed(),
            "model": model,
            "dtype": dtype,
            "template": base.name,
            "template_text": base.text,
            "layer": layer,
            "max_length": max_length,
            **({"adapter_sha256": adapter} if adapter else {}),
        }
        results = ResultsFile(output, KIND, fixed)
        with results:  # the output stays locked against other runs until the search ends
            for demo in pool:
                row = results.done({"demonstration": demo.id})
                if row is not None and row.get("demonstration") != demo.to_dict():
                    raise PromptlabError(
                        f"{output}: candidate {demo.id!r} was scored with another sentence or word than the pool "
                        "has now; write to another output."
                    )
            todo = [None, *pool]
            todo = [d for d in todo if results.done({"demonstration": d.id if d else BASELINE}) is None]
            log(
                f"demonstration search: {len(pool)} candidates{f' from {pool_name}' if pool_name else ''} + "
                f"baseline; {len(pool) + 1 - len(todo)} done, {len(todo)} to do; {benchmark.label()};"
                f" {base.name}, layer {layer}"
            )
            if todo:
                candidate = Candidate(base, layer, benchmark, batch_size, batch_tokens, max_length, progress)
                _score_into(results, todo, model, dtype, backend, workers, log, candidate)
            rows = [r for r in results if r["key"]["demonstration"] in {BASELINE, *(d.id for d in pool)}]
            return sorted(rows, key=lambda r: -_num(r.get("score")))

    if screen is None:
        return search_round(pool, output, benchmark)
    first = _screen_benchmark(benchmark, screen)
    if screen.keep >= len(pool):  # nothing to screen out
        return search_round(pool, output, benchmark)
    path = screen_path(output)
    ranked = _ranked(pool, search_round(pool, path, first))
    kept = {d.id for d in ranked[: screen.keep]}
    log(
        f"screened {len(pool)} candidates on {screen.pairs} STS-B dev pairs ({path}); the {len(kept)} best go on"
    )
    rows = search_round([d for d in pool if d.id in kept], output, benchmark)
    candidates, _ = candidate_rows(rows)
    if candidates:
        log(pick_in_screen(candidates[0]["key"]["demonstration"], [d.id for d in ranked], screen.keep))
    return rows


def pick_in_screen(pick: str, ranked: list[str], keep: int) -> str:
    """Where the search's pick ranked in the screen (``ranked``: candidate ids, best first)."""
    rank = 1 + ranked.index(pick)
    # A pick at the cut line says candidates just below it may be as good: the screen's pairs are few.
    last = " (the last kept: a larger KEEP may find a better one)" if rank == keep > 1 else ""
    return f"the pick, {pick}, ranked {rank} of {len(ranked)} in the screen{last}"


def _score_into(
    results: ResultsFile, todo, model, dtype, backend, workers, log, candidate: Candidate
) -> None:
    """Score each of ``todo`` (None: the baseline) and append its row to ``results`` as it finishes."""
    stored = {r.get("config", {}).get("model_file_sha256") for r in results} - {None}

    def check(digest: str | None) -> None:
        if digest and stored and stored != {digest}:
            raise PromptlabError(
                f"{results.path}: rows were computed from other weights of {model}; use another output."
            )

    load = load_transformers
    if workers is None:
        workers = Here()

        def load(model: str, dtype: str):  # refuses other weights before the first candidate
            loaded = backend if backend is not None else load_transformers(model, dtype)
            check(loaded.describe().get("model_file_sha256"))
            return loaded

    jobs = [((model, dtype), demo) for demo in todo]
    with closing(workers.run(jobs, candidate.score, load, log)) as done:
        for number, (index, (key, payload)) in enumerate(done, start=1):
            check(payload["config"].get("model_file_sha256"))
            results.append(key, payload)
            demo = todo[index]
            name = demo.id if demo else "(no demonstration)"
            score, seconds = payload["score"], payload["seconds"]
            log(
                f"  [{number}/{len(todo)}] {name}: {score if score is None else f'{score:.2f}'} ({seconds:.1f} s)"
            )


def _screen_benchmark(benchmark: Benchmark, screen: Screen) -> Benchmark:
    """The first round's benchmark: ``screen.pairs`` pairs of STS-B dev, drawn with the search's seed."""
    if benchmark.tasks != ("STSBenchmark",) or benchmark.split != "dev":
        raise PromptlabError(
            "--screen scores a first round on STS-B dev pairs; drop --screen to select on "
            f"{', '.join(benchmark.tasks)} ({benchmark.split})."
        )
    if benchmark.dev_pairs is not None and screen.pairs >= benchmark.dev_pairs:
        raise PromptlabError(
            f"--screen {screen.pairs}:{screen.keep} screens on as many pairs as the search scores on "
            f"({benchmark.dev_pairs}); give fewer screening pairs, or drop --screen."
        )
    return Benchmark(
        dev_pairs=screen.pairs, seed=benchmark.seed, data_dir=benchmark.data_dir, source=benchmark.source
    )


def _ranked(pool: list[Demonstration], rows: list[dict[str, Any]]) -> list[Demonstration]:
    """``pool`` ordered by the candidates' scores in ``rows``, best first."""
    score = {r["key"]["demonstration"]: _num(r.get("score")) for r in rows}
    # Ties (Spearman on few pairs has few values) go to the pool's order, not to the order rows finished in.
    return sorted(pool, key=lambda d: -score[d.id])


@dataclass(frozen=True)
class Candidate:
    """How a search scores one candidate; `score` runs wherever the candidate runs (here or a worker)."""

    template: Any  # the registry's Template
    layer: int
    benchmark: Benchmark
    batch_size: int | None
    batch_tokens: int | str | None
    max_length: int | None
    progress: bool | None

    def score(self, backend, demo: Demonstration | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The row ``(key, payload)`` of ``demo`` (None: the no-demonstration baseline)."""
        from promptlab.embedder import Embedder

        embedder = Embedder(
            backend,
            self.template,
            layer=self.layer,
            batch_size=self.batch_size,
            batch_tokens=self.batch_tokens,
            max_length=self.max_length,
            demonstration=demo,
        )
        index = embedder.layer_index
        records, seconds = self.benchmark.score_layers(embedder, [index], progress=self.progress)
        record = records[index]
        return {"demonstration": demo.id if demo else BASELINE}, {
            "demonstration": demo.to_dict() if demo else None,
            "baseline": demo is None,
            "score": record["average"],
            "scores": record["scores"],
            "config": {
                **embedder.describe(),
                "batch_size": embedder.batch_size,
                "batch_tokens": embedder.batch_tokens,
            },
            "data": {k: v for k, v in record.items() if k not in ("scores", "details")},
            "seconds": seconds,
        }


def _num(value) -> float:
    return float("-inf") if value is None else float(value)


def format_top(rows: list[dict[str, Any]], k: int = 10) -> str:
    """The top ``k`` candidates and the baseline as an aligned (markdown) table."""
    candidates, baseline = candidate_rows(rows)
    base = _num(baseline["score"]) if baseline else None
    fixed = next((r.get("fixed", {}) for r in [*candidates, baseline] if r), {})
    tasks, split = fixed.get("tasks"), fixed.get("split", "dev")
    scored_on = "STS-B dev" if tasks in (None, ["STSBenchmark"]) else f"{', '.join(tasks)} {split}"
    lines = [f"| rank | {scored_on} | vs none | id | word | sentence |", "|---:|---:|---:|---|---|---|"]
    for rank, row in enumerate(candidates[:k], start=1):
        d = row["demonstration"]
        delta = "" if base is None else f"{_num(row['score']) - base:+.2f}"
        sentence = d["sentence"] if len(d["sentence"]) <= 60 else d["sentence"][:57] + "..."
        lines.append(
            f"| {rank} | {_num(row['score']):.2f} | {delta} | {d['id']} | {d['word']} | {sentence} |"
        )
    if baseline:
        lines.append(f"| - | {base:.2f} | | (no demonstration) | | |")
    return "\n".join(lines)
