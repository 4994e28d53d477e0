"""Sweeps, demonstration search, results files and reports, on tiny models and a fake SentEval folder.

Expected scores are recomputed here independently: an `Embedder` at one layer, numpy cosines and
scipy's Spearman over the fake STS-B dev pairs, never through the experiment code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import backend_for
from scipy.stats import spearmanr
from test_evaluation import FAKE, write_fake_senteval

from promptlab.cli import main
from promptlab.demonstrations import Demonstration, best_demonstration
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError
from promptlab.experiments.report import write_report
from promptlab.experiments.results import ResultsFile, read_rows
from promptlab.experiments.scoring import Benchmark
from promptlab.experiments.search import run_search
from promptlab.experiments.sweep import SweepConfig, plan, run_sweep

pytestmark = [
    # Layer 0 at the next-token position is the same token embedding for every sentence: constant cosines.
    pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning"),
    # A random tiny model's best demonstration may score below none; best-of warns about that.
    pytest.mark.filterwarnings("ignore:the best demonstration"),
]

POOL = [
    Demonstration("venison", "meat from a deer.", "Venison", source="test"),
    Demonstration("guitar", "A man plays a guitar.", "Music", source="test"),
    Demonstration("cat", "The cat sits on the mat.", "Cat", source="test"),
]


@pytest.fixture
def data_dir(tmp_path) -> str:
    return str(write_fake_senteval(tmp_path / "senteval"))


class Counting:
    """A tiny backend that counts prompt sets and forward passes; it can raise Ctrl-C at the n-th set.

    ``calls`` counts the distinct prompt heads (the token prefix every prompt of a call shares) it was asked
    to run: one per (template, demonstration), however many batches `promptlab.batching` cuts it into.
    ``forwards`` counts batches.
    """

    def __init__(self, model_and_tokenizer, interrupt_at: int | None = None):
        self.backend = backend_for(model_and_tokenizer)
        self.heads: set[tuple[int, ...]] = set()
        self.forwards = 0
        self.interrupt_at = interrupt_at
        embed = self.backend.embed

        def counted(batch, pooling, layers):
            self.forwards += 1
            head = tuple(batch.input_ids[0, : max(batch.prefix_length, 1)].tolist())
            if head not in self.heads:
                self.heads.add(head)
                if len(self.heads) == self.interrupt_at:
                    raise KeyboardInterrupt
            return embed(batch, pooling, layers)

        self.backend.embed = counted

    @property
    def calls(self) -> int:
        return len(self.heads)

    def load(self, model: str, dtype: str):
        return self.backend


def expected_score(model_and_tokenizer, template, layer, demonstration=None, pairs=None) -> float:
    pairs = pairs or FAKE["STSBenchmark"]["dev"]
    embedder = Embedder(backend_for(model_and_tokenizer), template, layer=layer, demonstration=demonstration)
    a = embedder.encode([p[0] for p in pairs])
    b = embedder.encode([p[1] for p in pairs])
    a, b = a.astype(np.float64), b.astype(np.float64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # Ranks are what Spearman compares: cosines closer than float32 rounding (~1e-7, and it differs between
    # CPUs) would let rounding decide the score. Exact ties (the same vectors) rank the same everywhere.
    gaps = np.diff(np.sort(cosine))
    assert not np.any((gaps > 0) & (gaps < 1e-6)), (
        f"near-tied cosines, the score is rounding: {np.sort(cosine)}"
    )
    return spearmanr(cosine, [p[2] for p in pairs])[0] * 100


def config(data_dir, grids, **extra) -> SweepConfig:
    return SweepConfig.from_dict(
        {"models": ["tiny"], "dtypes": ["float32"], "grid": grids, **extra},
        where="test.toml",
        data_dir=data_dir,
    )


# --------------------------------------------------------------------------- sweep


def test_sweep_scores_every_layer_from_one_forward_and_matches_independent_scores(
    tiny_llama, data_dir, tmp_path
):
    counting = Counting(tiny_llama)
    cfg = config(
        data_dir,
        [
            {"templates": ["prompteol", "pcot"], "layers": "all", "demonstrations": ["none", "eol-opt-13b"]},
            {"templates": ["echo", "metaeol"], "layers": [-1, 1]},
        ],
        batch_size=64,
    )
    out = tmp_path / "sweep.jsonl"
    rows = run_sweep(cfg, out, loader=counting.load, layer_count=lambda m: 3, log=lambda m: None)
    # prompteol/pcot x 2 demonstrations x 4 hidden states; echo and metaeol at layers 3 and 1.
    assert len(rows) == 2 * 2 * 4 + 2 * 2 == len(read_rows(out))
    # One prompt set per (template, demonstration) for all layers; the ensemble runs its 4 members once each.
    assert counting.calls == 4 + 1 + 4
    # ...and all layers come from the forwards one layer needs: a one-layer sweep makes as many.
    one_layer = Counting(tiny_llama)
    run_sweep(
        config(
            data_dir,
            [
                {
                    "templates": ["prompteol", "pcot"],
                    "layers": [1],
                    "demonstrations": ["none", "eol-opt-13b"],
                },
                {"templates": ["echo", "metaeol"], "layers": [1]},
            ],
            batch_size=64,
        ),
        tmp_path / "one-layer.jsonl",
        loader=one_layer.load,
        layer_count=lambda m: 3,
        log=lambda m: None,
    )
    assert counting.forwards == one_layer.forwards
    for row in rows:
        k = row["key"]
        demo = None if k["demonstration"] == "none" else k["demonstration"]
        expected = expected_score(tiny_llama, k["template"], k["layer"], demo)
        if np.isnan(
            expected
        ):  # layer 0 at the next-token position: the same '"' embedding for every sentence
            assert row["score"] is None and k["layer"] == 0
        else:
            assert row["score"] == pytest.approx(expected, abs=1e-3)
        assert row["config"]["template"] == k["template"] and row["config"]["layer"] == k["layer"]
        assert row["data"]["data_fingerprint"] == row["fixed"]["data_fingerprint"]
        assert row["fixed"]["split"] == "dev" and row["fixed"]["tasks"] == ["STSBenchmark"]
    demo_row = next(r for r in rows if r["key"]["demonstration"] == "eol-opt-13b")
    assert demo_row["config"]["demonstration"]["word"] == "Venison"
    assert demo_row["identity"]["template_text"].startswith('This sentence : "meat from a deer."')


def test_sweep_resume_skips_finished_rows_and_runs_only_new_ones(tiny_llama, data_dir, tmp_path):
    out = tmp_path / "sweep.jsonl"
    first = Counting(tiny_llama)
    run_sweep(
        config(data_dir, [{"templates": ["prompteol"], "layers": "all"}], batch_size=64),
        out,
        loader=first.load,
        layer_count=lambda m: 3,
        log=lambda m: None,
    )
    again = Counting(tiny_llama)
    bigger = config(data_dir, [{"templates": ["prompteol", "pcot"], "layers": "all"}], batch_size=64)
    rows = run_sweep(bigger, out, loader=again.load, layer_count=lambda m: 3, log=lambda m: None)
    assert again.calls == 1 and len(rows) == 8  # only pcot ran
    idle = Counting(tiny_llama)
    run_sweep(bigger, out, loader=idle.load, layer_count=lambda m: 3, log=lambda m: None)
    assert idle.calls == 0 and len(read_rows(out)) == 8


def test_ctrl_c_loses_no_finished_row_and_the_rerun_finishes(tiny_llama, data_dir, tmp_path):
    out = tmp_path / "sweep.jsonl"
    cfg = config(data_dir, [{"templates": ["prompteol", "pcot", "ke"], "layers": "all"}], batch_size=64)
    interrupted = Counting(tiny_llama, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, out, loader=interrupted.load, layer_count=lambda m: 3, log=lambda m: None)
    lines = out.read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line)["kind"] == "sweep" for line in lines)
    assert {json.loads(line)["key"]["template"] for line in lines} == {"prompteol", "pcot"}
    rerun = Counting(tiny_llama)
    rows = run_sweep(cfg, out, loader=rerun.load, layer_count=lambda m: 3, log=lambda m: None)
    assert rerun.calls == 1 and len(rows) == 12


def test_a_results_file_from_another_configuration_is_refused(tiny_llama, data_dir, tmp_path):
    out = tmp_path / "sweep.jsonl"
    grids = [{"templates": ["prompteol"], "layers": [-1]}]
    run_sweep(
        config(data_dir, grids),
        out,
        loader=Counting(tiny_llama).load,
        layer_count=lambda m: 3,
        log=lambda m: None,
    )
    subset = config(data_dir, grids, data={"dev_pairs": 10})
    with pytest.raises(PromptlabError, match="different configuration .*dev_pairs: None there, 10 now"):
        run_sweep(subset, out, loader=Counting(tiny_llama).load, layer_count=lambda m: 3, log=lambda m: None)


@pytest.mark.parametrize(
    ("grid", "extra", "message"),
    [
        (
            {"templates": ["prompteal"], "layers": [-1]},
            {},
            "grid 1 templates: unknown template 'prompteal'.*Did you mean: prompteol",
        ),
        (
            {"templates": ["prompteol"], "layers": [7]},
            {},
            "layer 7 is out of range for tiny: the model has 3 layers",
        ),
        ({"templates": ["prompteol"], "layers": [-5]}, {}, "the model has 3 layers"),
        ({"templates": ["prompteol"], "layers": "every"}, {}, 'layers must be "all" or a list'),
        ({"templates": ["echo"], "demonstrations": ["eol-opt-13b"]}, {}, "'span' template; demonstrations"),
        ({"templates": ["prompteol"], "demonstrations": ["eol-opt-13"]}, {}, "Did you mean: eol-opt-13b"),
        ({"templates": ["prompteol"], "layer": [1]}, {}, "unknown key.*layer.*Did you mean: layers"),
        ({"templates": ["prompteol"]}, {"dtypes": ["fp8"]}, "unknown dtype 'fp8'"),
        (
            {"templates": ["prompteol"]},
            {"batch_tokens": 0},
            "test.toml: batch_tokens 0: give a positive number of tokens",
        ),
        ({"templates": ["prompteol"]}, {"batch_tokens": "many"}, "batch_tokens 'many'"),
        (
            {"templates": ["prompteol"]},
            {"data": {"split": "dev", "dev_pairs": 5, "tasks": "all"}},
            "dev_pairs .* applies to STS-B dev only",
        ),
    ],
)
def test_bad_sweep_configs_are_refused_before_any_work(data_dir, grid, extra, message):
    with pytest.raises(PromptlabError, match=message):
        plan(config(data_dir, [grid], **extra), layer_count=lambda m: 3)


def test_sweep_batch_settings_reach_the_embedder(data_dir):
    assert config(data_dir, [{"templates": ["prompteol"]}], batch_tokens="none").batch_tokens is None
    assert config(data_dir, [{"templates": ["prompteol"]}], batch_tokens=512).batch_tokens == 512
    default = config(data_dir, [{"templates": ["prompteol"]}])
    assert default.batch_tokens == "auto" and default.batch_size is None


@pytest.mark.parametrize("flags, resolved", [(set(), "float32"), ({"amx_bf16"}, "bfloat16")])
def test_sweep_dtype_auto_runs_the_resolved_dtype_once(data_dir, monkeypatch, flags, resolved):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # auto reads the CPU's flags on a CPU
    monkeypatch.setattr("promptlab.backends.device._cpu_flags", lambda: flags)
    cfg = config(data_dir, [{"templates": ["prompteol"], "layers": [-1]}], dtypes=["auto", resolved])
    jobs = plan(cfg, layer_count=lambda m: 3)
    # "auto" and the dtype it resolves to are one forward pass, and rows name the dtype that ran.
    assert [job.dtype for job in jobs] == [resolved]


def test_unknown_model_in_a_sweep_suggests_close_names(data_dir):
    cfg = SweepConfig.from_dict(
        {"models": ["smollm"], "templates": ["prompteol"]}, where="x.toml", data_dir=data_dir
    )
    with pytest.raises(PromptlabError, match="x.toml models: .*Did you mean: smollm2-135m"):
        plan(cfg)


# --------------------------------------------------------------------------- results files


def test_results_file_appends_durably_and_handles_torn_and_bad_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    results = ResultsFile(path, "sweep", {"split": "dev"})
    results.append({"a": 1}, {"score": 1.0})
    with path.open("a") as f:
        f.write('{"kind": "sweep", "key": {"a": 2}, "sco')  # a hard kill in the middle of a write
    with pytest.warns(UserWarning, match="ignoring an incomplete last line"):
        assert [r["key"]["a"] for r in read_rows(path)] == [1]
    results.close()  # the run that wrote it ends (and unlocks the output)
    with pytest.warns(UserWarning, match="dropping an incomplete last line"):
        reopened = ResultsFile(path, "sweep", {"split": "dev"})
    assert reopened.done({"a": 1}) and not reopened.done({"a": 2})
    reopened.append({"a": 2}, {"score": 2.0})
    assert [r["key"]["a"] for r in read_rows(path)] == [1, 2]
    path.write_text('{"kind": "sweep"}\nnot json\n{"kind": "sweep"}\n')
    with pytest.raises(PromptlabError, match="r.jsonl:2: not a JSON row"):
        read_rows(path)
    with ResultsFile(tmp_path / "x.jsonl", "sweep", {}) as sweep:
        sweep.append({"a": 1}, {})
    with pytest.raises(PromptlabError, match="holds 'sweep' rows, not 'demo-search'"):
        ResultsFile(tmp_path / "x.jsonl", "demo-search", {})


# --------------------------------------------------------------------------- demonstration search


def test_search_scores_baseline_and_every_candidate_and_resumes(tiny_llama, data_dir, tmp_path):
    out = tmp_path / "search.jsonl"
    counting = Counting(tiny_llama)
    bench = Benchmark(data_dir=data_dir)
    rows = run_search(
        "tiny",
        POOL,
        out,
        dtype="float32",
        backend=counting.backend,
        benchmark=bench,
        batch_size=64,
        log=lambda m: None,
    )
    assert len(rows) == 4 and counting.calls == 4  # one forward each: baseline and 3 candidates
    scores = {r["key"]["demonstration"]: r["score"] for r in rows}
    assert scores["none"] == pytest.approx(expected_score(tiny_llama, "prompteol", -1), abs=1e-3)
    for demo in POOL:
        assert scores[demo.id] == pytest.approx(expected_score(tiny_llama, "prompteol", -1, demo), abs=1e-3)
    assert [r["score"] for r in rows] == sorted(scores.values(), reverse=True)
    best = max(POOL, key=lambda d: scores[d.id])
    assert best_demonstration(out) == best
    assert (
        Embedder(backend_for(tiny_llama), "prompteol", demonstration=f"best-of:{out}").demonstration == best
    )
    # Resume: one more candidate, only it runs.
    again = Counting(tiny_llama)
    extra = Demonstration("dog", "Two dogs run.", "Dogs", source="test")
    rows = run_search(
        "tiny",
        [*POOL, extra],
        out,
        dtype="float32",
        backend=again.backend,
        benchmark=bench,
        batch_size=64,
        log=lambda m: None,
    )
    assert again.calls == 1 and len(rows) == 5
    with pytest.raises(PromptlabError, match="template: 'prompteol' there, 'pcot' now"):
        run_search(
            "tiny",
            POOL,
            out,
            template="pcot",
            dtype="float32",
            backend=again.backend,
            benchmark=bench,
            log=lambda m: None,
        )
    changed = [Demonstration("cat", "The cat sits on the mat.", "Feline", source="test")]
    with pytest.raises(PromptlabError, match="candidate 'cat' was scored with another sentence or word"):
        run_search(
            "tiny", changed, out, dtype="float32", backend=again.backend, benchmark=bench, log=lambda m: None
        )
    # Every row is written, yet a backend given beside workers that load their own is still refused.
    from promptlab.experiments.workers import Here

    before = out.read_bytes()
    with pytest.raises(PromptlabError, match="not both"):
        run_search("tiny", POOL, out, dtype="float32", backend=again.backend, workers=Here(), benchmark=bench)
    assert out.read_bytes() == before


def test_search_dtype_auto_records_and_resumes_the_resolved_dtype(
    tiny_llama, tiny_llama_dir, data_dir, tmp_path, monkeypatch
):
    out, model = tmp_path / "search.jsonl", str(tiny_llama_dir)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # auto reads the CPU's flags on a CPU
    messages = []
    search = {"benchmark": Benchmark(data_dir=data_dir), "log": messages.append}
    run_search(model, POOL[:1], out, dtype="float32", **search)
    # No native bf16: auto is float32.
    monkeypatch.setattr("promptlab.backends.device._cpu_flags", lambda: set())
    rows = run_search(model, POOL[:1], out, dtype="auto", **search)
    assert "2 done, 0 to do" in messages[-1] and {r["fixed"]["dtype"] for r in rows} == {"float32"}
    # Now auto is bfloat16...
    monkeypatch.setattr("promptlab.backends.device._cpu_flags", lambda: {"amx_bf16"})
    with pytest.raises(PromptlabError, match="dtype: 'float32' there, 'bfloat16' now"):
        run_search(model, POOL[:1], out, dtype="auto", **search)
    # ...but a backend passed in ran in its own dtype, and that is what a row records.
    counting = Counting(tiny_llama)  # a float32 backend
    rows = run_search(model, POOL[:1], out, dtype="auto", backend=counting.backend, **search)
    assert counting.calls == 0 and {r["fixed"]["dtype"] for r in rows} == {"float32"}


def test_search_on_a_seeded_dev_subset(tiny_llama, data_dir, tmp_path):
    from promptlab.evaluation import sts_dev

    pairs = sts_dev(data_dir, n_pairs=10, seed=3)
    subset = list(zip(pairs.sentences1, pairs.sentences2, pairs.scores, strict=True))
    rows = run_search(
        "tiny",
        POOL[:1],
        tmp_path / "s.jsonl",
        dtype="float32",
        backend=backend_for(tiny_llama),
        benchmark=Benchmark(dev_pairs=10, seed=3, data_dir=data_dir),
        log=lambda m: None,
    )
    by_id = {r["key"]["demonstration"]: r for r in rows}
    assert by_id["venison"]["data"]["n_pairs"] == 10 and by_id["venison"]["fixed"]["seed"] == 3
    assert by_id["venison"]["score"] == pytest.approx(
        expected_score(tiny_llama, "prompteol", -1, POOL[0], pairs=subset), abs=1e-3
    )


def test_a_screened_search_keeps_the_screens_best_and_scores_them_as_a_full_search(
    tiny_llama, data_dir, tmp_path
):
    from promptlab.evaluation import sts_dev
    from promptlab.experiments.search import Screen, screen_path

    pairs = sts_dev(data_dir, n_pairs=8, seed=0)
    screen_pairs = list(zip(pairs.sentences1, pairs.sentences2, pairs.scores, strict=True))
    # Independent: each candidate's Spearman on the 8 screening pairs; the best goes on (pool order breaks ties).
    screen_scores = {d.id: expected_score(tiny_llama, "prompteol", -1, d, pairs=screen_pairs) for d in POOL}
    best = max(POOL, key=lambda d: (screen_scores[d.id], -POOL.index(d))).id
    out, counting = tmp_path / "search.jsonl", Counting(tiny_llama)
    search = dict(dtype="float32", benchmark=Benchmark(data_dir=data_dir), log=lambda m: None)
    rows = run_search("tiny", POOL, out, backend=counting.backend, screen=Screen(8, 1), **search)

    screened = {r["key"]["demonstration"]: r for r in read_rows(screen_path(out))}
    assert screen_path(out) == tmp_path / "search.screen.jsonl"
    assert set(screened) == {"none", *screen_scores} and screened["none"]["data"]["n_pairs"] == 8
    for demo_id, score in screen_scores.items():
        assert screened[demo_id]["score"] == pytest.approx(score, abs=1e-3)
    assert [r["key"]["demonstration"] for r in rows] and {r["key"]["demonstration"] for r in rows} == {
        "none",
        best,
    }
    full = run_search("tiny", POOL, tmp_path / "full.jsonl", backend=backend_for(tiny_llama), **search)
    full_by_id = {r["key"]["demonstration"]: r for r in full}
    for row in rows:  # the rows a full search writes for the same candidates
        assert row["score"] == pytest.approx(full_by_id[row["key"]["demonstration"]]["score"], abs=1e-6)
        assert row["fixed"] == full_by_id[row["key"]["demonstration"]]["fixed"]

    calls = len(counting.heads)
    said: list[str] = []
    again = run_search(
        "tiny", POOL, out, backend=counting.backend, screen=Screen(8, 1), **{**search, "log": said.append}
    )
    assert len(counting.heads) == calls and [r["key"] for r in again] == [r["key"] for r in rows]  # resumed
    assert f"the pick, {best}, ranked 1 of 3 in the screen" in said  # one kept: no hint to keep more
    # Two kept: the log gives the pick's screen rank, and a pick at the cut line asks for a larger KEEP.
    said.clear()
    two = run_search(
        "tiny",
        POOL,
        tmp_path / "two.jsonl",
        screen=Screen(8, 2),
        backend=backend_for(tiny_llama),
        **{**search, "log": said.append},
    )
    ranked = sorted(POOL, key=lambda d: (-screened[d.id]["score"], POOL.index(d)))
    pick = max(ranked[:2], key=lambda d: full_by_id[d.id]["score"])
    assert pick.id == next(r["key"]["demonstration"] for r in two if r["key"]["demonstration"] != "none")
    rank = 1 + ranked.index(pick)
    hint = " (the last kept: a larger KEEP may find a better one)" if rank == 2 else ""
    assert said[-1] == f"the pick, {pick.id}, ranked {rank} of 3 in the screen{hint}", said


def test_a_pick_at_the_screens_cut_line_asks_for_a_larger_keep():
    from promptlab.experiments.search import pick_in_screen

    ranked = [f"d{i}" for i in range(1, 144)]
    assert pick_in_screen("d16", ranked, 16) == (
        "the pick, d16, ranked 16 of 143 in the screen (the last kept: a larger KEEP may find a better one)"
    )
    assert pick_in_screen("d9", ranked, 16) == "the pick, d9, ranked 9 of 143 in the screen"
    assert pick_in_screen("d1", ranked, 1) == "the pick, d1, ranked 1 of 143 in the screen"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--screen", "50"], "--screen '50': give PAIRS:KEEP, e.g. 50:16"),
        (["--screen", "8:0"], "--screen '8:0': give PAIRS:KEEP"),
        (["--screen", "8:1", "--dev-pairs", "8"], "screens on as many pairs as the search scores on (8)"),
        (["--screen", "8:1", "--select-on", "SICK-R"], "drop --screen to select on SICKRelatedness (dev)"),
    ],
)
def test_search_demos_screen_refusals(tiny_llama_dir, data_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "search.jsonl"
    common = ["search-demos", "--model", str(tiny_llama_dir), "--dtype", "float32", "--data-dir", data_dir]
    assert main([*common, "--pool", "definitions", "--output", str(out), *argv]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err, err
    assert not out.exists()


# --------------------------------------------------------------------------- report and CLI


def test_report_writes_tables_and_readable_plots(tiny_llama, data_dir, tmp_path):
    sweep_out, search_out = tmp_path / "sweep.jsonl", tmp_path / "search.jsonl"
    run_sweep(
        config(data_dir, [{"templates": ["prompteol", "pcot", "echo"], "layers": "all"}]),
        sweep_out,
        loader=Counting(tiny_llama).load,
        layer_count=lambda m: 3,
        log=lambda m: None,
    )
    run_search(
        "tiny",
        POOL,
        search_out,
        dtype="float32",
        backend=backend_for(tiny_llama),
        benchmark=Benchmark(data_dir=data_dir),
        log=lambda m: None,
    )
    report = write_report([sweep_out, search_out], tmp_path / "report")
    text = report.read_text()
    assert "## Sweep: tiny (float32)" in text and "## Demonstration search: tiny (float32), prompteol" in text
    assert "| spread (best - worst) |" in text and "| no demonstration |" in text
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert len(pngs) == 3 and all(f"]({name})" in text for name in pngs)
    assert all((tmp_path / "report" / name).stat().st_size > 10_000 for name in pngs)


def test_cli_sweep_search_report_and_eval_with_best_of(tiny_llama, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_llama
    model_dir = tmp_path / "tiny-llama"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        f'models = ["{model_dir}"]\ndtypes = ["float32"]\n[[grid]]\ntemplates = ["prompteol"]\n'
        'layers = "all"\n'
    )
    assert main(["sweep", str(cfg), "--output", str(tmp_path / "sweep.jsonl"), "--data-dir", data_dir]) == 0
    assert len(read_rows(tmp_path / "sweep.jsonl")) == 4
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(d.to_dict()) + "\n" for d in POOL))
    search = tmp_path / "search.jsonl"
    args = [
        "search-demos",
        "--model",
        str(model_dir),
        "--pool",
        str(pool),
        "--dtype",
        "float32",
        "--top",
        "2",
        "--output",
        str(search),
        "--data-dir",
        data_dir,
        "--batch-tokens",
        "48",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert {r["config"]["batch_tokens"] for r in read_rows(search)} == {48}
    assert (
        "| 1 |" in printed
        and "| 2 |" in printed
        and "| 3 |" not in printed
        and "(no demonstration)" in printed
    )
    assert (
        main(["report", str(tmp_path / "sweep.jsonl"), str(search), "--output-dir", str(tmp_path / "r")]) == 0
    )
    assert (tmp_path / "r" / "report.md").is_file()
    best = best_demonstration(search).id
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--demonstration",
                f"best-of:{search}",
                "--tasks",
                "STSBenchmark",
                "--split",
                "dev",
                "--data-dir",
                data_dir,
            ]
        )
        == 0
    )
    assert f"prompteol+{best}" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # refused by argparse, before the finished rows are touched
        main([*args[:-1], "0"])
    assert "give a positive number of tokens" in capsys.readouterr().err
    assert {r["config"]["batch_tokens"] for r in read_rows(search)} == {48}
    cfg.write_text(f'models = ["{model_dir}"]\n[[grid]]\ntemplates = ["prompteol"]\nlayers = [40]\n')
    assert main(["sweep", str(cfg), "--output", str(tmp_path / "bad.jsonl"), "--data-dir", data_dir]) == 2
    assert "layer 40 is out of range" in capsys.readouterr().err and not (tmp_path / "bad.jsonl").exists()


# --------------------------------------------------------------------------- one run per output


def test_a_second_holder_of_an_output_is_refused_until_the_first_closes(tmp_path):
    out = tmp_path / "sweep.jsonl"
    first = ResultsFile(out, "sweep", {"seed": 0})
    with pytest.raises(PromptlabError, match=r"sweep.jsonl is being written by another run \(pid \d+ on "):
        ResultsFile(out, "sweep", {"seed": 0})
    first.append({"layer": 1}, {"score": 1.0})
    first.close()
    with ResultsFile(out, "sweep", {"seed": 0}) as second:  # free again
        assert second.done({"layer": 1})["score"] == 1.0
    # A refused resume (other settings) releases the lock it took.
    with pytest.raises(PromptlabError, match="different configuration"):
        ResultsFile(out, "sweep", {"seed": 1})
    ResultsFile(out, "sweep", {"seed": 0}).close()


def test_two_processes_sweeping_into_one_output_do_the_work_once(
    tiny_llama, tiny_llama_dir, data_dir, tmp_path, capsys
):
    import subprocess
    import sys

    out = tmp_path / "sweep.jsonl"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from promptlab.experiments.results import ResultsFile; "
            f"r = ResultsFile({str(out)!r}, 'sweep', {{}}); print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = tmp_path / "sweep.toml"
        cfg.write_text(
            f'models = ["{tiny_llama_dir}"]\ndtypes = ["float32"]\n[[grid]]\ntemplates = ["prompteol"]\n'
        )
        argv = ["sweep", str(cfg), "--output", str(out), "--data-dir", data_dir]
        assert main(argv) == 2  # refused before any model loads or any row is scored
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(
            f"promptlab: error: {out} is being written by another run (pid {holder.pid} on "
        )
        assert line.endswith("wait for it to finish, or write to another output.")
        counting = Counting(tiny_llama)
        with pytest.raises(PromptlabError, match=rf"being written by another run \(pid {holder.pid} on .*-c"):
            run_sweep(
                config(data_dir, [{"templates": ["prompteol"]}]),
                out,
                loader=counting.load,
                layer_count=lambda m: 3,
                log=print,
            )
        assert counting.forwards == 0 and not out.exists()
    finally:
        holder.communicate("")  # the holder exits, and its lock goes with it
    assert holder.returncode == 0
    counting = Counting(tiny_llama)
    cfg_ = config(data_dir, [{"templates": ["prompteol"], "layers": [1, -1]}])
    run_sweep(cfg_, out, loader=counting.load, layer_count=lambda m: 3, log=lambda m: None)
    run_sweep(cfg_, out, loader=counting.load, layer_count=lambda m: 3, log=lambda m: None)  # all done
    keys = [json.dumps(r["key"], sort_keys=True) for r in read_rows(out)]
    assert len(keys) == 2 == len(set(keys)) and counting.calls == 1


def test_a_search_into_an_output_in_use_is_refused_before_any_work(tiny_llama, data_dir, tmp_path):
    out = tmp_path / "search.jsonl"
    counting = Counting(tiny_llama)
    search = dict(dtype="float32", backend=counting.backend, benchmark=Benchmark(data_dir=data_dir))
    with ResultsFile(out, "demo-search", {}):  # another run holds the output
        with pytest.raises(PromptlabError, match="search.jsonl is being written by another run"):
            run_search("tiny", POOL, out, **search, log=lambda m: None)
    assert counting.forwards == 0
    rows = run_search("tiny", POOL, out, **search, log=lambda m: None)
    assert len(rows) == 4 == len(read_rows(out))


def test_search_demos_on_a_saved_embedder_and_an_adapter_folder(
    tiny_llama, tiny_llama_dir, adapter_dir, data_dir, tmp_path, monkeypatch
):
    """--embedder searches with the folder's model, adapter, template and layer; rows record the adapter."""
    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path / "cache"))
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(d.to_dict()) + "\n" for d in POOL[:1]))
    common = ["search-demos", "--pool", str(pool), "--data-dir", data_dir]
    saved = tmp_path / "saved"
    Embedder(str(tiny_llama_dir), "prompteol", layer=2, dtype="float32").save(saved)
    plain = tmp_path / "plain.jsonl"
    assert main([*common, "--embedder", str(saved), "--output", str(plain)]) == 0
    rows = {r["key"]["demonstration"]: r for r in read_rows(plain)}
    assert rows["none"]["score"] == pytest.approx(expected_score(tiny_llama, "prompteol", 2), abs=1e-3)
    assert rows[POOL[0].id]["score"] == pytest.approx(
        expected_score(tiny_llama, "prompteol", 2, POOL[0]), abs=1e-3
    )
    assert "adapter_sha256" not in rows["none"]["fixed"]
    # An adapter folder: its trained template and layer (2), the adapted weights scored.
    adapted = tmp_path / "adapted.jsonl"
    assert main([*common, "--embedder", str(adapter_dir), "--output", str(adapted)]) == 0
    rows = {r["key"]["demonstration"]: r for r in read_rows(adapted)}
    with_adapter = Embedder(
        str(tiny_llama_dir), "prompteol", layer=2, dtype="float32", adapter=str(adapter_dir)
    )
    pairs = FAKE["STSBenchmark"]["dev"]
    a = with_adapter.encode([p[0] for p in pairs]).astype(np.float64)
    b = with_adapter.encode([p[1] for p in pairs]).astype(np.float64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    expected = spearmanr(cosine, [p[2] for p in pairs])[0] * 100
    assert rows["none"]["score"] == pytest.approx(expected, abs=1e-3)
    assert rows["none"]["fixed"]["layer"] == 2 and rows["none"]["fixed"]["adapter_sha256"]
    # Resuming the adapter's output with the plain embedder is refused: other fixed settings.
    assert main([*common, "--embedder", str(saved), "--output", str(adapted)]) == 2
    # A saved demonstration, --model or --ray beside --embedder: one line each, before any search.
    Embedder(str(tiny_llama_dir), "prompteol", layer=2, dtype="float32", demonstration=POOL[0]).save(
        tmp_path / "with-demo"
    )
    out = ["--output", str(tmp_path / "x.jsonl")]
    assert main([*common, "--embedder", str(tmp_path / "with-demo"), *out]) == 2
    assert main([*common, "--embedder", str(saved), "--model", str(tiny_llama_dir), *out]) == 2
    assert main([*common, "--embedder", str(saved), "--ray", *out]) == 2
