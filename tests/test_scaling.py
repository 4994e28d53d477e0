"""The scaling study's plan, resumable runner and report, on a tiny random model and fake SentEval data."""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from pathlib import Path

import pytest
from test_evaluation import FAKE, write_fake_senteval

from promptlab.cli import main, make_parser
from promptlab.errors import PromptlabError
from promptlab.experiments.scaling import load_plan, plan_from_dict, resolve, run_plan
from promptlab.experiments.scaling_report import method_style, write_scaling_report
from promptlab.finetune.config import FinetuneConfig

REPO = Path(__file__).resolve().parent.parent


def test_the_shipped_plan_parses_and_names_every_cell():
    plan = load_plan(REPO / "experiments/scaling/plan.toml", root=REPO)
    assert [m.name for m in plan.models] == [
        "smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b",
    ]  # fmt: skip
    cells = {c.name: c for c in plan.cells()}
    assert len(cells) == 4 * len(plan.methods)
    names = list(cells)
    for cell in cells.values():  # dependencies come first
        for need in cell.method.needs:
            assert names.index(f"{cell.model.name}/{need}") < names.index(cell.name)
    assert cells["qwen2.5-coder-1.5b/metaeol"].dropped and not cells["qwen2.5-coder-1.5b/demo"].dropped
    assert cells["smollm2-135m/combined"].held
    assert cells["smollm2-135m/prompteol-last"].done()  # an existing record, not recomputed


def test_every_training_cell_reads_its_adapter_as_it_was_trained():
    """The eval after `promptlab finetune` must read the adapter on the base, template, layer, dtype,
    quantization and demonstration it was trained with, each flag given once (argparse keeps the last of a
    repeated flag, which hides a contradiction)."""
    plan = load_plan(REPO / "experiments/scaling/plan.toml", root=REPO)
    parser = make_parser()  # the real CLI's: an option the plan gives that `eval` lacks fails here
    checked = 0
    for cell in plan.cells():
        if cell.dropped or cell.existing or not cell.method.train:
            continue
        finetune, evaluate = resolve(plan, cell, strict=False)
        config = FinetuneConfig.from_toml(REPO / shlex.split(finetune)[2])
        argv = shlex.split(evaluate)[2:]
        flags = [a for a in argv if a.startswith("--")]
        assert len(flags) == len(set(flags)), f"{cell.name}: a flag given twice in {evaluate!r}"
        args = parser.parse_args(shlex.split(evaluate)[1:])
        assert args.adapter == str(Path(config.output_dir) / "best"), cell.name
        read = (
            args.model,
            args.template,
            args.layer,
            args.dtype,
            args.quantization or "none",
            args.demonstration,
        )
        trained = (
            config.model,
            config.template,
            config.layer,
            config.dtype,
            config.quantization,
            config.demonstration,
        )
        assert read == trained, cell.name
        checked += 1
    # three models' CSE, SmolLM2's combined-demo and Qwen-1.5B's combined (SmolLM2's cse and combined are
    # existing records, trained before the plan)
    assert checked == 5


def _plan(tmp_path: Path, model_dir, **changes) -> dict:
    """A two-model-free, tiny plan: a dev sweep, an eval that needs it, and an eval that needs nothing."""
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        f'models = ["{model_dir}"]\ndtypes = ["float32"]\n[[grid]]\ntemplates = ["prompteol", "eol-topic"]\n'
        'layers = "all"\n',
        encoding="utf-8",
    )
    raw = {
        "results_dir": "results",
        "work_dir": "work",
        "models": {str(model_dir): {"dtype": "float32", "eval_hours": 0.01, "params": "1M"}},
        "methods": {
            "dev-sweep": {
                "kind": "dev",
                "output": "{work}/sweep.jsonl",
                "commands": [f"promptlab sweep {sweep} --output {{output}}"],
            },
            "prompteol-last": {
                "label": "PromptEOL, last layer",
                "commands": [
                    "promptlab eval --model {model} --template prompteol --dtype {dtype} --output {record}"
                ],
            },
            "sweep-best": {
                "label": "best template + layer",
                "needs": ["dev-sweep"],
                "select": {"best": {"from": "dev-sweep", "where": {"template": ["prompteol", "eol-topic"]}}},
                "commands": [
                    "promptlab eval --model {model} --template {best.template} --layer {best.layer} "
                    "--dtype {dtype} --output {record}"
                ],
            },
        },
    }
    for key, value in changes.items():
        raw[key] = value
    return raw


@pytest.fixture
def env(tmp_path, monkeypatch):
    data = write_fake_senteval(tmp_path / "senteval")
    monkeypatch.setenv("PROMPTLAB_DATA", str(data))
    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


class Recorder:
    """Runs each command in this process (`promptlab.cli.main`), recording it; can stop on the n-th."""

    def __init__(self, interrupt_at: int | None = None):
        self.calls: list[list[str]] = []
        self.interrupt_at = interrupt_at

    def __call__(self, argv: list[str], threads: int) -> int:
        self.calls.append(argv)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        return main(argv[1:])

    def verbs(self) -> list[str]:
        return [a[1] for a in self.calls]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"models": {"smollm2-13m": {}}}, "Did you mean: smollm2-135m"),
        (
            {"methods": {"x": {"commands": ["promptlab eval --template prompteoll --output {record}"]}}},
            "prompteol",
        ),
        (
            {"methods": {"x": {"needs": ["dev-swep"], "commands": ["promptlab eval --output {record}"]}}},
            "dev-sweep",
        ),
        ({"methods": {"x": {"commands": ["promptlab eval --output {recrd}"]}}}, "record"),
        ({"methods": {"x": {"commands": ["python eval.py"]}}}, "promptlab ..."),
    ],
)
def test_bad_plans_are_refused_with_the_closest_name(tmp_path, tiny_llama_dir, change, message):
    raw = _plan(tmp_path, tiny_llama_dir)
    if "methods" in change:
        raw["methods"] = {**raw["methods"], **change["methods"]}
    else:
        raw.update(change)
    with pytest.raises(PromptlabError, match=message.replace(".", r"\.")):
        plan_from_dict(raw, where=Path("plan.toml"), root=tmp_path)


def test_a_selection_needs_its_source_and_cycles_are_refused(tmp_path, tiny_llama_dir):
    raw = _plan(tmp_path, tiny_llama_dir)
    raw["methods"]["sweep-best"]["needs"] = []
    with pytest.raises(PromptlabError, match="add it to needs"):
        plan_from_dict(raw, where=Path("plan.toml"), root=tmp_path)
    raw = _plan(tmp_path, tiny_llama_dir)
    raw["methods"]["dev-sweep"]["needs"] = ["sweep-best"]
    with pytest.raises(PromptlabError, match="cycle"):
        plan_from_dict(raw, where=Path("plan.toml"), root=tmp_path)


def test_the_runner_runs_in_dependency_order_skips_finished_cells_and_resumes(env, tiny_llama_dir):
    plan = plan_from_dict(_plan(env, tiny_llama_dir), where=Path("plan.toml"), root=env)
    messages = []
    # Interrupted at the third command (the eval that needs the sweep): the sweep and the first eval are done.
    first = Recorder(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, execute=first, log=messages.append)
    assert first.verbs() == ["sweep", "eval", "eval"]
    assert len(list((env / "results").glob("*.json"))) == 2  # the sweep's record and the first eval's
    sweep_rows = (env / "work" / "sweep.jsonl").read_text().splitlines()
    finished = {p: p.read_bytes() for p in (env / "results").glob("*.json")}

    second = Recorder()
    report = run_plan(plan, execute=second, log=messages.append)
    assert second.verbs() == ["eval"]  # only the interrupted cell, nothing done twice
    assert report.ran == [f"{tiny_llama_dir}/sweep-best"] and len(report.skipped) == 2
    assert (env / "work" / "sweep.jsonl").read_text().splitlines() == sweep_rows  # no duplicated row
    for path, data in finished.items():
        assert path.read_bytes() == data  # never overwritten
    best = max((json.loads(line) for line in sweep_rows), key=lambda r: r["score"] or -1e9)
    record = json.loads(next((env / "results").glob("*--sweep-best.json")).read_text())
    assert record["config"]["layer_index"] == best["key"]["layer"]
    assert record["config"]["template"] == best["key"]["template"]

    third = Recorder()
    assert run_plan(plan, execute=third, log=messages.append).ran == []
    assert third.calls == []


def test_a_cell_whose_dependency_is_missing_is_refused_in_one_line(env, tiny_llama_dir):
    plan = plan_from_dict(_plan(env, tiny_llama_dir), where=Path("plan.toml"), root=env)
    messages, recorder = [], Recorder()
    report = run_plan(plan, methods=["sweep-best"], execute=recorder, log=messages.append)
    assert recorder.calls == [] and report.refused == [f"{tiny_llama_dir}/sweep-best"]
    refusal = [m for m in messages if m.startswith("refused")]
    assert len(refusal) == 1 and "needs dev-sweep" in refusal[0] and "\n" not in refusal[0]


class FakeCommands:
    """Stands in for the promptlab processes: writes what each command writes, records when it ran, fails
    the verbs it is told to. The first ``together`` commands return only once all of them have started."""

    def __init__(self, together: int = 1, fail: tuple[str, ...] = ()):
        self.barrier = threading.Barrier(together, timeout=20) if together > 1 else None
        self.together, self.fail = together, fail
        self.spans: dict[str, tuple[float, float]] = {}
        self.argvs: dict[str, list[str]] = {}
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, argv: list[str], threads: int) -> int:
        started = time.monotonic()
        output = Path(argv[argv.index("--output") + 1])
        with self.lock:
            self.calls += 1
            first = self.calls <= self.together
            self.argvs[output.name] = argv
        if first and self.barrier is not None:
            self.barrier.wait()  # BrokenBarrierError when the runner ran these one after another
        if argv[1] in self.fail:
            return 1
        output.parent.mkdir(parents=True, exist_ok=True)
        if argv[1] == "sweep":
            rows = [
                ({"template": "prompteol", "layer": 2}, 50.0),
                ({"template": "eol-topic", "layer": 3}, 60.0),
            ]
            output.write_text("".join(json.dumps({"key": k, "score": v}) + "\n" for k, v in rows))
        else:
            output.write_text(json.dumps({"kind": "eval", "average": 1.0}))
        self.spans[output.name] = (started, time.monotonic())
        return 0

    def span(self, suffix: str) -> tuple[float, float]:
        return next(v for k, v in self.spans.items() if k.endswith(suffix))


def test_jobs_run_independent_cells_together_and_a_cell_after_what_it_needs(env, tiny_llama_dir):
    plan = plan_from_dict(_plan(env, tiny_llama_dir), where=Path("plan.toml"), root=env)
    fake = FakeCommands(together=2)
    report = run_plan(plan, jobs=2, execute=fake, log=lambda message: None)
    # The sweep and the last-layer eval ran at the same time (the barrier), the eval that reads the sweep's
    # best row only after the sweep had ended, with that row's template and layer.
    assert sorted(report.ran) == sorted(
        f"{tiny_llama_dir}/{m}" for m in ("dev-sweep", "prompteol-last", "sweep-best")
    )
    assert fake.span("--sweep-best.json")[0] >= fake.span("sweep.jsonl")[1]
    best = next(a for k, a in fake.argvs.items() if k.endswith("--sweep-best.json"))
    assert best[best.index("--template") + 1] == "eol-topic" and best[best.index("--layer") + 1] == "3"


def test_with_jobs_a_failed_dependency_refuses_its_cells_and_the_rest_still_run(env, tiny_llama_dir):
    plan = plan_from_dict(_plan(env, tiny_llama_dir), where=Path("plan.toml"), root=env)
    messages: list[str] = []
    report = run_plan(plan, jobs=2, execute=FakeCommands(fail=("sweep",)), log=messages.append)
    assert report.failed == [f"{tiny_llama_dir}/dev-sweep"]
    assert report.refused == [f"{tiny_llama_dir}/sweep-best"]
    assert report.ran == [f"{tiny_llama_dir}/prompteol-last"]
    assert any(m.startswith("refused") and "needs dev-sweep" in m for m in messages)
    with pytest.raises(PromptlabError, match="--jobs 0"):
        run_plan(plan, jobs=0, execute=FakeCommands(), log=messages.append)


def test_dry_run_prints_commands_and_costs_and_runs_nothing(env, tiny_llama_dir):
    plan = plan_from_dict(_plan(env, tiny_llama_dir), where=Path("plan.toml"), root=env)
    messages, recorder = [], Recorder()
    run_plan(plan, dry_run=True, execute=recorder, log=messages.append)
    assert recorder.calls == [] and not (env / "results").exists()
    text = "\n".join(messages)
    assert "<best.template after dev-sweep>" in text and "promptlab sweep" in text and "estimated:" in text
    assert "kept in its task log" not in text


def test_dry_run_says_what_an_eval_has_kept_in_its_task_log_and_counts_only_the_rest(env, tiny_llama_dir):
    raw = _plan(env, tiny_llama_dir)
    raw["models"][str(tiny_llama_dir)]["eval_hours"] = 1.0
    raw["methods"]["prompteol-last"]["commands"] = [
        "promptlab eval --model {model} --template prompteol --dtype {dtype} --part-items 2 "
        "--task-log {work}/last.tasks.jsonl --output {record}"
    ]
    plan = plan_from_dict(raw, where=Path("plan.toml"), root=env)
    cell = f"{tiny_llama_dir}/prompteol-last"
    (env / "work").mkdir()
    run_plan(plan, methods=["prompteol-last"], execute=Recorder(), log=lambda _: None)
    # As if the sitting had ended after STS12 and the first part of STS13: the record is not written yet.
    log = env / "work/last.tasks.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    keys = [json.loads(line)["key"] for line in lines]
    first_sts13 = next(i for i, k in enumerate(keys) if k["task"] == "STS13")
    log.write_text("".join(lines[: first_sts13 + 1]), encoding="utf-8")
    next(c for c in plan.cells() if c.name == cell).record.unlink()

    def distinct(rows) -> set[str]:  # a task's scored sentences, from the fake files' own rows
        return {s for a, b, gold in rows if gold is not None for s in (a, b)}

    per_task = {
        task: distinct(row for rows in (FAKE[task].values() if task.startswith("STS1") else [FAKE[task]["test"]])
                       for row in rows)
        for task in FAKE
    }  # fmt: skip
    subset, start, stop = re.fullmatch(r"(.+)\[(\d+):(\d+)\]", keys[first_sts13]["part"]).groups()
    scored = [r for r in FAKE["STS13"][subset] if r[2] is not None]
    kept = len(per_task["STS12"]) + len(distinct(scored[int(start) : int(stop)]))
    total = sum(len(s) for s in per_task.values())

    messages: list[str] = []
    run_plan(plan, methods=["prompteol-last"], dry_run=True, execute=Recorder(), log=messages.append)
    assert (
        f"      kept in its task log: STS12 finished; 1 part of STS13; in all {kept} of its {total} sentences "
        f"({100 * kept / total:.0f} %)" in messages
    )
    assert f"to run   {cell} (~{1.0 * (total - kept) / total:.1f} h):" in messages


def test_the_eval_command_and_the_dry_run_share_the_default_part_size():
    from promptlab.evaluation.runner import DEFAULT_PART_ITEMS

    assert make_parser().parse_args(["eval"]).part_items == DEFAULT_PART_ITEMS


def test_dry_run_says_where_a_fine_tuning_run_resumes(env, tiny_llama_dir):
    raw = _plan(env, tiny_llama_dir)
    (env / "cse.toml").write_text(f'model = "{tiny_llama_dir}"\noutput_dir = "runs/cse"\n', encoding="utf-8")
    raw["methods"]["cse"] = {
        "train": True,
        "commands": [
            "promptlab finetune cse.toml",
            "promptlab eval --model {model} --adapter runs/cse/best --dtype {dtype} --output {record}",
        ],
    }
    raw["models"][str(tiny_llama_dir)].update(eval_hours=1.0, train_hours=0.5)
    plan = plan_from_dict(raw, where=Path("plan.toml"), root=env)
    cell = f"{tiny_llama_dir}/cse"
    messages: list[str] = []
    run_plan(plan, methods=["cse"], dry_run=True, execute=Recorder(), log=messages.append)
    assert not any("kept in its run folder" in m for m in messages)
    # A stopped run's adapter without its checkpoint (checkpoints stay local): named, with both ways on.
    best = env / "runs/cse/best"
    best.mkdir(parents=True)
    (best / "promptlab_adapter.json").write_text(json.dumps({"step": 8, "dev_spearman": 70.0}))
    messages.clear()
    run_plan(plan, methods=["cse"], dry_run=True, execute=Recorder(), log=messages.append)
    assert (
        "      kept in its run folder: the step-8 adapter (best/) of a stopped training, but no checkpoint to "
        "resume: add --overwrite to train again, or run the eval command by hand to keep that adapter"
        in messages
    )
    checkpoint = env / "runs/cse/checkpoint-last"
    checkpoint.mkdir(parents=True)
    (checkpoint / "promptlab_adapter.json").write_text(json.dumps({"step": 12, "dev_spearman": None}))
    messages.clear()
    run_plan(plan, methods=["cse"], dry_run=True, execute=Recorder(), log=messages.append)
    assert "      kept in its run folder: a checkpoint at step 12, where it resumes" in messages
    assert f"to run   {cell} (~1.5 h):" in messages  # training (0.5 h) and eval (1 x 1.0 h) still to run
    # The training finished (its checkpoint kept or not): only the eval is left, and counted.
    (env / "runs/cse/log.jsonl").write_text(json.dumps({"event": "end", "stopped": "completed"}) + "\n")
    messages.clear()
    run_plan(plan, methods=["cse"], dry_run=True, execute=Recorder(), log=messages.append)
    assert (
        "      kept in its run folder: the finished training and its adapter; only the eval is left"
        in messages
    )
    assert f"to run   {cell} (~1.0 h):" in messages and not any("checkpoint at step" in m for m in messages)


def test_dry_run_says_what_a_sweep_and_a_search_have_kept(env, tiny_llama_dir):
    raw = _plan(env, tiny_llama_dir)
    raw["methods"]["demo"] = {
        "needs": ["dev-sweep"],
        "commands": [
            "promptlab search-demos --model {model} --pool pool.jsonl --screen 2:1 --output {work}/search.jsonl",
            "promptlab eval --model {model} --demonstration best-of:{work}/search.jsonl --output {record}",
        ],
    }
    plan = plan_from_dict(raw, where=Path("plan.toml"), root=env)
    (env / "work").mkdir()
    row = json.dumps({"kind": "sweep", "key": {"template": "prompteol", "layer": 1}, "score": 50.0})
    (env / "work/sweep.jsonl").write_text(row + "\n" + row.replace('"layer": 1', '"layer": 2') + "\n")
    (env / "work/search.screen.jsonl").write_text(row + "\n")
    # Three candidates, one left out for its STS test sentence: each round has a row per candidate and one
    # for the prompt without a demonstration, and the screen keeps one candidate for the second round.
    demos = [{"id": f"d{i}", "sentence": f"sentence {i}.", "word": f"Word{i}"} for i in range(3)]
    demos[2]["eval_overlap"] = "STS12 test"
    (env / "pool.jsonl").write_text("".join(json.dumps(d) + "\n" for d in demos), encoding="utf-8")
    messages: list[str] = []
    run_plan(plan, methods=["dev-sweep", "demo"], dry_run=True, execute=Recorder(), log=messages.append)
    assert "      kept in its output: 2 rows in sweep.jsonl" in messages
    assert "      kept in its output: 1 of 3 rows in search.screen.jsonl" in messages
    (env / "work/search.jsonl").write_text(row + "\n")
    messages.clear()
    run_plan(plan, methods=["demo"], dry_run=True, execute=Recorder(), log=messages.append)
    assert (
        "      kept in its output: 1 of 3 rows in search.screen.jsonl, 1 of 2 rows in search.jsonl"
        in messages
    )


def test_dry_run_counts_a_search_s_kept_rows_when_the_plan_splits_the_cost(env, tiny_llama_dir):
    """A cost per command: the search's share less the pairs its kept rows scored, the eval's in full."""
    raw = _plan(env, tiny_llama_dir)
    raw["models"][str(tiny_llama_dir)]["eval_hours"] = 100.0  # hours to 0.1 tell one pair from another
    search = (
        "promptlab search-demos --model {model} --pool pool.jsonl --screen 2:1 --output {work}/search.jsonl"
    )
    raw["methods"]["demo"] = {
        "commands": [search, "promptlab eval --model {model} --output {record}"],
        "cost": [2.0, 1.0],
    }
    plan = plan_from_dict(raw, where=Path("plan.toml"), root=env)
    assert plan.method("demo").cost == 3.0
    (env / "work").mkdir()
    demos = [{"id": f"d{i}", "sentence": f"sentence {i}.", "word": f"Word{i}"} for i in range(2)]
    (env / "pool.jsonl").write_text("".join(json.dumps(d) + "\n" for d in demos), encoding="utf-8")
    row = json.dumps({"kind": "search", "key": {"demonstration": "d0"}, "score": 50.0}) + "\n"
    # Without --dev-pairs the second round scores all of STS-B dev: count its pairs from the fake file's rows.
    dev = len(FAKE["STSBenchmark"]["dev"])
    total = 3 * 2 + 2 * dev  # first round: 3 rows (2 candidates, no demonstration) on 2 pairs; then 2 rows
    cell = f"{tiny_llama_dir}/demo"

    def hours() -> str:
        messages: list[str] = []
        run_plan(plan, methods=["demo"], dry_run=True, execute=Recorder(), log=messages.append)
        return next(m for m in messages if m.startswith(f"to run   {cell}"))

    assert hours() == f"to run   {cell} (~300.0 h):"
    (env / "work/search.screen.jsonl").write_text(row * 3)  # the first round is done
    assert hours() == f"to run   {cell} (~{200.0 * (total - 6) / total + 100.0:.1f} h):"
    (env / "work/search.jsonl").write_text(row * 2)  # and the second: only the eval is left
    assert hours() == f"to run   {cell} (~100.0 h):"
    # One round (no --screen): each of its 3 rows is a third of the search.
    raw["methods"]["demo"]["commands"][0] = search.replace(" --screen 2:1", "")
    plan = plan_from_dict(raw, where=Path("plan.toml"), root=env)
    (env / "work/search.jsonl").write_text(row)
    assert hours() == f"to run   {cell} (~{200.0 * 2 / 3 + 100.0:.1f} h):"


@pytest.mark.parametrize("cost", [[1.0], [1.0, -1.0], "2", [1.0, "x"]])
def test_a_cost_is_a_number_or_one_per_command(tmp_path, tiny_llama_dir, cost):
    raw = _plan(tmp_path, tiny_llama_dir)
    raw["methods"]["sweep-best"]["commands"] *= 2
    raw["methods"]["sweep-best"]["cost"] = cost
    with pytest.raises(PromptlabError, match="a list of 2 such numbers, one per command"):
        plan_from_dict(raw, where=Path("plan.toml"), root=tmp_path)


def test_the_cli_dry_run_of_the_shipped_plan(capsys, tmp_path):
    # The shipped plan under an empty root: every cell still to run, whatever the study has done so far.
    (tmp_path / "experiments/scaling").mkdir(parents=True)
    plan = tmp_path / "experiments/scaling/plan.toml"
    plan.write_bytes((REPO / "experiments/scaling/plan.toml").read_bytes())
    code = main(
        ["scaling", "run", str(plan), "--root", str(tmp_path), "--dry-run",
         "--models", "gemma3-270m", "--methods", "mean,cse"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert (
        code == 0
        and re.search(r"to run   gemma3-270m/mean \(~\d+\.\d h\)", err)
        and "promptlab finetune" in err
    )
    assert main(["scaling", "run", str(REPO / "experiments/scaling/plan.toml"), "--methods", "means"]) == 2
    assert "Did you mean: mean" in capsys.readouterr().err


def test_the_report_marks_cells_not_run_and_draws_the_plot(env, tiny_llama_dir):
    pytest.importorskip("matplotlib")
    raw = _plan(env, tiny_llama_dir)
    raw["models"]["other-model"] = {"params": "2M"}
    (env / "other-model").mkdir()
    record = {
        "kind": "eval",
        "created": "2026-12-03T10:00:00+0000",
        "command": ["cli.py", "eval", "--template", "prompteol", "--output", str(env / "results/x y.json")],
        "scores": {
            t: 50.0 + i
            for i, t in enumerate(
                ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"]
            )
        },
        "average": 53.0,
    }
    (env / "results").mkdir()
    (env / "results" / "other-model--prompteol-last.json").write_text(json.dumps(record))
    raw["existing"] = {
        "other-model": {"sweep-best": {"path": "rows.jsonl", "template": "eol-topic", "layer": 3}}
    }
    row = {
        "kind": "sweep",
        "key": {"template": "eol-topic", "layer": 3},
        "score": 61.0,
        "scores": {"STS12": 61.0},
    }
    (env / "rows.jsonl").write_text(json.dumps(row) + "\n")
    plan = plan_from_dict(raw, where=Path("plan.toml"), root=env)
    report = write_scaling_report(plan, env / "report")
    text = report.read_text()
    assert (env / "report" / "scaling.png").stat().st_size > 10_000
    assert "53.00" in text and "61.00" in text
    assert (
        "`promptlab eval --template prompteol --output 'results/x y.json'`" in text
    )  # runnable from the root
    assert text.count("_not run yet_") >= 2  # the tiny model's two cells; nothing invented
    assert "arXiv 2307.16645" in text and "67.46" in text
    assert "Only 1 model(s) measured" in text or "one model measured" in text


def test_every_method_of_a_plan_gets_its_own_look_in_the_plot():
    # The shipped plan has more methods than matplotlib's ten default colours.
    plan = load_plan(REPO / "experiments/scaling/plan.toml", root=REPO)
    assert len(plan.methods) > 10
    looks = [method_style(k) for k in range(40)]
    assert len(set(looks)) == 40
    assert looks[0] == ("#1f77b4", "o", "-")  # the first ten keep the familiar solid lines with dots
    assert looks[10][0] == looks[0][0] and looks[10][1:] != looks[0][1:]


def test_steps_resume_by_their_own_means_and_never_overwrite(tmp_path):
    from promptlab.experiments.scaling import CHECKPOINT, step_argv
    from promptlab.finetune.trainer import CHECKPOINT as TRAINER_CHECKPOINT

    assert CHECKPOINT == TRAINER_CHECKPOINT  # the runner looks where the trainer saves

    config = tmp_path / "cse.toml"
    config.write_text('model = "m"\noutput_dir = "runs/cse"\n', encoding="utf-8")
    finetune = ["promptlab", "finetune", str(config)]
    assert step_argv(finetune, tmp_path) == finetune  # a fresh run
    run = tmp_path / "runs" / "cse"
    run.mkdir(parents=True)
    (run / "finetune.json").write_text("{}")
    (run / "log.jsonl").write_text('{"event": "start"}\n{"event": "step", "step": 1}\n')
    # Stopped before its first checkpoint, with no adapter kept: nothing to lose, so it starts afresh.
    assert step_argv(finetune, tmp_path) == [*finetune, "--overwrite"]
    (run / "best").mkdir()  # an adapter but no checkpoint: left to `finetune`, which names both choices
    assert step_argv(finetune, tmp_path) == finetune
    (run / "checkpoint-last").mkdir()
    assert step_argv(finetune, tmp_path) == [*finetune, "--resume"]  # stopped part-way: continue it
    with (run / "log.jsonl").open("a") as log:
        log.write('{"event": "end", "stopped": "completed"}\n')
    assert step_argv(finetune, tmp_path) is None  # finished: not trained again
    evaluate = ["promptlab", "eval", "--output", "r.json"]
    assert step_argv(evaluate, tmp_path) == evaluate
    (tmp_path / "r.json").write_text("{}")
    assert step_argv(evaluate, tmp_path) is None  # a finished record is never overwritten


def test_a_sweep_with_the_cache_on_stores_vectors_and_gives_the_same_rows(tmp_path, tiny_llama_dir):
    from promptlab.experiments.sweep import SweepConfig, run_sweep

    data = write_fake_senteval(tmp_path / "senteval")
    raw = {
        "models": [str(tiny_llama_dir)],
        "dtypes": ["float32"],
        "templates": ["prompteol"],
        "layers": [-1, 1],
    }
    plain = SweepConfig.from_dict(raw, data_dir=str(data))
    cached = SweepConfig.from_dict({**raw, "cache": str(tmp_path / "cache")}, data_dir=str(data))
    assert plain.cache_dir is None and cached.cache_dir == str(tmp_path / "cache")
    rows = run_sweep(plain, tmp_path / "plain.jsonl", log=lambda m: None)
    first = run_sweep(cached, tmp_path / "cached.jsonl", log=lambda m: None)
    assert any((tmp_path / "cache").rglob("*"))  # vectors went to the cache
    again = run_sweep(cached, tmp_path / "again.jsonl", log=lambda m: None)  # read back from it
    scores = [{r["key"]["layer"]: r["score"] for r in rs} for rs in (rows, first, again)]
    assert scores[0] == pytest.approx(scores[1]) and scores[1] == pytest.approx(scores[2])
    with pytest.raises(PromptlabError, match="cache = 3"):
        SweepConfig.from_dict({**raw, "cache": 3})


def test_every_command_of_the_shipped_plan_parses_with_the_real_cli():
    plan = load_plan(REPO / "experiments/scaling/plan.toml", root=REPO)
    parser = make_parser()
    verbs = set()
    for cell in plan.cells():
        if cell.dropped or cell.existing:
            continue
        for command in resolve(plan, cell, strict=False):
            argv = shlex.split(command)
            assert argv[0] == "promptlab", command
            parser.parse_args(argv[1:])  # an unknown option or a missing argument exits here
            verbs.add(argv[1])
    assert {"eval", "finetune", "search-demos", "combine-logs"} <= verbs
    # The demonstration prompt + CSE cell reads the test side from the demo and cse cells' own task logs.
    demo_cse = resolve(plan, next(c for c in plan.cells() if c.name == "qwen2.5-coder-1.5b/demo-cse"))
    logs = {m: f"experiments/scaling/work/qwen2.5-coder-1.5b--{m}.tasks.jsonl" for m in ("demo", "cse")}
    for method in ("demo", "cse"):
        own = resolve(plan, next(c for c in plan.cells() if c.name == f"qwen2.5-coder-1.5b/{method}"))
        assert f"--task-log {logs[method]}" in own[-1] and logs[method] in demo_cse[-1]
