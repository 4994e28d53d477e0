"""Sweeps and demonstration searches on Ray workers (``--ray``): the rows equal those of one process, a
killed worker loses and duplicates no row, and an interrupted Ray sweep resumes with the missing rows only.

The reference is the same experiment run in one process (`run_sweep` / `run_search` without workers).
"""

from __future__ import annotations

import json

import pytest
from test_evaluation import write_fake_senteval

from promptlab.cli import main
from promptlab.demonstrations import Demonstration
from promptlab.experiments.results import read_rows
from promptlab.experiments.scoring import Benchmark
from promptlab.experiments.search import run_search
from promptlab.experiments.sweep import SweepConfig, run_sweep

ray = pytest.importorskip("ray")
from promptlab.distributed.sweep import RayWorkers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")  # layer 0: constant

TEMPLATES = ["prompteol", "pcot", "ke", "echo"]  # four forward passes of four layers each
POOL = [
    Demonstration("venison", "meat from a deer.", "Venison", source="test"),
    Demonstration("guitar", "A man plays a guitar.", "Music", source="test"),
    Demonstration("cat", "The cat sits on the mat.", "Cat", source="test"),
]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1 within 2 s"),
        (["--ray", "--ray-workers", "0"], "--ray-workers 0: give at least one worker."),
    ],
)
def test_ray_sweep_user_errors_are_one_line_before_any_work(
    tiny_llama_dir, tmp_path, monkeypatch, capsys, flags, message
):
    monkeypatch.setattr("promptlab.distributed.ray.CONNECT_TIMEOUT", 2.0)
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(f'models = ["{tiny_llama_dir}"]\n[[grid]]\ntemplates = ["prompteol"]\n')
    out = tmp_path / "sweep.jsonl"
    assert main(["sweep", str(cfg), "--output", str(out), *flags]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert message in line and not out.exists()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(write_fake_senteval(tmp_path_factory.mktemp("ray-sweep") / "senteval"))


def sweep_config(tiny_llama_dir, data_dir) -> SweepConfig:
    return SweepConfig.from_dict(
        {"models": [str(tiny_llama_dir)], "dtypes": ["float32"], "templates": TEMPLATES, "layers": "all"},
        where="ray.toml",
        data_dir=data_dir,
    )


@pytest.fixture(scope="module")
def one_process(tiny_llama_dir, data_dir, tmp_path_factory) -> dict[str, dict]:
    """The rows of the sweep run in this process, by key."""
    out = tmp_path_factory.mktemp("one-process") / "sweep.jsonl"
    run_sweep(sweep_config(tiny_llama_dir, data_dir), out, log=lambda m: None)
    return by_key(read_rows(out))


def by_key(rows) -> dict[str, dict]:
    keys = [json.dumps(r["key"], sort_keys=True) for r in rows]
    assert len(keys) == len(set(keys)), "a row was written twice"
    return dict(zip(keys, rows, strict=True))


def assert_same_rows(rows, expected: dict[str, dict]) -> None:
    got = by_key(rows)
    assert set(got) == set(expected)
    for key, row in got.items():
        want = expected[key]
        if want["score"] is None:  # layer 0 at the next-token position: no Spearman
            assert row["score"] is None
        else:
            assert row["score"] == pytest.approx(want["score"], abs=1e-4), key
        assert row["identity"] == want["identity"] and row["fixed"] == want["fixed"]
        assert row["config"]["model_file_sha256"] == want["config"]["model_file_sha256"]


def kill_workers() -> int:
    names = [n["name"] if isinstance(n, dict) else n for n in ray.util.list_named_actors()]
    names = [n for n in names if n.startswith("promptlab-worker-")]
    for name in names:
        ray.kill(ray.get_actor(name))
    return len(names)


@pytest.mark.slow  # a one-process sweep, then two Ray workers: about 45 s on two shared cores
def test_a_sweep_on_two_ray_workers_writes_the_rows_of_one_process(
    cluster, tiny_llama_dir, data_dir, one_process, tmp_path, capsys
):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        f'models = ["{tiny_llama_dir}"]\ndtypes = ["float32"]\n[[grid]]\n'
        f'templates = {json.dumps(TEMPLATES)}\nlayers = "all"\n'
    )
    out = tmp_path / "sweep.jsonl"
    argv = ["sweep", str(cfg), "--output", str(out), "--data-dir", data_dir, "--ray", "--ray-workers", "2"]
    assert main(argv) == 0
    assert "2 Ray worker(s) for 4 job(s)" in capsys.readouterr().err
    assert_same_rows(read_rows(out), one_process)
    assert main(argv) == 0  # all done: no worker starts
    err = capsys.readouterr().err
    assert "16 rows already done, 0 rows to do" in err and "Ray worker" not in err
    assert len(read_rows(out)) == 16


@pytest.mark.slow  # four workers start (two replace the killed ones): about 45 s
def test_killed_ray_workers_lose_and_duplicate_no_row(
    cluster, tiny_llama_dir, data_dir, one_process, tmp_path
):
    out = tmp_path / "sweep.jsonl"
    messages, killed = [], []

    def log(message: str) -> None:
        messages.append(message)
        if "layer(s) in" in message and not killed:  # the first job's rows are written: kill both workers
            killed.append(kill_workers())

    rows = run_sweep(sweep_config(tiny_llama_dir, data_dir), out, log=log, workers=RayWorkers(workers=2))
    assert killed == [2]
    assert any("a Ray worker died running a job of" in m for m in messages)
    assert_same_rows(rows, one_process)
    assert_same_rows(read_rows(out), one_process)  # every row exactly once in the file
    assert kill_workers() == 0  # the run ended its workers


@pytest.mark.slow  # two Ray runs of two workers: about 45 s
def test_an_interrupted_ray_sweep_resumes_with_the_missing_rows_only(
    cluster, tiny_llama_dir, data_dir, one_process, tmp_path
):
    out = tmp_path / "sweep.jsonl"
    cfg = sweep_config(tiny_llama_dir, data_dir)

    def interrupt(message: str) -> None:
        if "layer(s) in" in message:  # Ctrl-C once the first job's rows are written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, out, log=interrupt, workers=RayWorkers(workers=2))
    assert kill_workers() == 0  # the interrupted run ended its workers
    before = out.read_bytes()
    assert len(read_rows(out)) == 4
    messages = []
    rows = run_sweep(cfg, out, log=messages.append, workers=RayWorkers(workers=2))
    assert "4 rows already done, 12 rows to do" in messages[0]
    assert "2 Ray worker(s) for 3 job(s)" in messages[1]
    assert out.read_bytes().startswith(before)  # finished rows are kept as they were
    assert_same_rows(rows, one_process)
    assert_same_rows(read_rows(out), one_process)


@pytest.mark.slow  # one process, then two Ray workers: about 25 s plus Ray's start
def test_a_search_on_ray_workers_scores_like_one_process(cluster, tiny_llama_dir, data_dir, tmp_path, capsys):
    bench = Benchmark(data_dir=data_dir)
    here = run_search(
        str(tiny_llama_dir),
        POOL,
        tmp_path / "here.jsonl",
        dtype="float32",
        benchmark=bench,
        log=lambda m: None,
    )
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(d.to_dict()) + "\n" for d in POOL))
    out = tmp_path / "search.jsonl"
    argv = ["search-demos", "--model", str(tiny_llama_dir), "--pool", str(pool), "--dtype", "float32"]
    argv += ["--output", str(out), "--data-dir", data_dir, "--ray", "--ray-workers", "2"]
    assert main(argv) == 0
    assert "2 Ray worker(s) for 4 job(s)" in capsys.readouterr().err
    got = by_key(read_rows(out))
    assert set(got) == set(by_key(here))
    for row in here:
        key = json.dumps(row["key"], sort_keys=True)
        assert got[key]["score"] == pytest.approx(row["score"], abs=1e-4)
        assert got[key]["demonstration"] == row["demonstration"]


def test_a_screened_search_on_ray_workers_writes_the_rows_of_one_process(
    cluster, tiny_llama_dir, data_dir, tmp_path, capsys
):
    from promptlab.experiments.search import Screen, screen_path

    here = tmp_path / "here.jsonl"
    bench = Benchmark(data_dir=data_dir)
    run_search(
        str(tiny_llama_dir), POOL, here, dtype="float32", benchmark=bench, log=lambda m: None, screen=Screen(8, 2)
    )  # fmt: skip
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(d.to_dict()) + "\n" for d in POOL))
    out = tmp_path / "search.jsonl"
    argv = ["search-demos", "--model", str(tiny_llama_dir), "--pool", str(pool), "--dtype", "float32"]
    argv += ["--output", str(out), "--data-dir", data_dir, "--screen", "8:2", "--ray", "--ray-workers", "2"]
    assert main(argv) == 0
    assert "the 2 best go on" in capsys.readouterr().err
    for mine, reference in [(out, here), (screen_path(out), screen_path(here))]:
        got, expected = by_key(read_rows(mine)), by_key(read_rows(reference))
        assert set(got) == set(expected)
        for key, row in expected.items():
            assert got[key]["score"] == pytest.approx(row["score"], abs=1e-4)
    assert len(by_key(read_rows(out))) == 3  # the baseline and the 2 kept


def test_a_user_error_inside_a_ray_worker_is_one_line(cluster, tiny_llama_dir, data_dir, tmp_path, capsys):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        f'models = ["{tiny_llama_dir}"]\ndtypes = ["float32"]\nmax_length = 5\n[[grid]]\ntemplates = ["prompteol"]\n'
    )
    out = tmp_path / "sweep.jsonl"
    argv = ["sweep", str(cfg), "--output", str(out), "--data-dir", data_dir, "--ray", "--ray-workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # raised in the worker, printed by the driver without a traceback
    assert line.startswith("promptlab: error: template 'prompteol' alone is longer than max_length=5 tokens")
    assert "Traceback" not in err
    assert not out.exists() or read_rows(out) == []
    assert kill_workers() == 0
