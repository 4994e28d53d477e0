"""The CLI, driven through `promptlab.cli.main` as a user would: outputs, records, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SENTEVAL
from test_evaluation import write_fake_senteval

from promptlab.backends import resolve_dtype
from promptlab.cache import PROBE_SENTENCE
from promptlab.cli import main
from promptlab.embedder import Embedder
from promptlab.evaluation import TASKS

needs_senteval = pytest.mark.skipif(not SENTEVAL.is_dir(), reason=f"SentEval data not at {SENTEVAL}")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path / "cache"))


def test_templates_lists_the_registry(capsys):
    assert main(["templates"]) == 0
    out = capsys.readouterr().out
    assert 'This sentence : "[X]" means in one word:"' in out and "promptbert-view2" in out


def test_embed_writes_vectors_in_input_order(tiny_llama_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("A man is playing a guitar.\nThe cat sits.\nA man is playing a guitar.\n")
    output = tmp_path / "vecs.npy"
    assert (
        main(["embed", "--model", str(tiny_llama_dir), "--input", str(source), "--output", str(output)]) == 0
    )
    vectors = np.load(output)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert "2 unique" in capsys.readouterr().err


def test_embed_reads_jsonl_and_stdin(tiny_llama_dir, tmp_path, monkeypatch):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "The cat sits."}\n{"text": "A dog runs."}\n')
    out1, out2 = tmp_path / "a.npy", tmp_path / "b.npy"
    assert main(["embed", "--model", str(tiny_llama_dir), "--input", str(jsonl), "--output", str(out1)]) == 0
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("The cat sits.\nA dog runs.\n"))
    assert main(["embed", "--model", str(tiny_llama_dir), "--input", "-", "--output", str(out2)]) == 0
    np.testing.assert_array_equal(np.load(out1), np.load(out2))


@needs_senteval
def test_eval_prints_the_table_and_writes_a_full_record(tiny_llama_dir, tmp_path, capsys):
    output = tmp_path / "run.json"
    argv = [
        "eval",
        "--model",
        str(tiny_llama_dir),
        "--template",
        "prompteol",
        "--layer",
        "-2",
        "--tasks",
        "STSBenchmark",
        "--data-dir",
        str(SENTEVAL),
        "--output",
        str(output),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "STSB" in table and "sent/s" in table
    record = json.loads(output.read_text())
    config = record["config"]
    assert config["template_text"] == 'This sentence : "[X]" means in one word:"'
    assert config["layer"] == -2 and config["model_source"] == "local"
    assert config["dtype"] == resolve_dtype("auto", "cpu")  # the dtype used, never "auto"
    assert len(config["model_file_sha256"]) == 64 and config["promptlab"]
    assert record["data_fingerprint"] and record["throughput"]["unique_sentences"] == 2551
    assert -100 <= record["scores"]["STSBenchmark"] <= 100
    # An existing result is never overwritten by accident.
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def _error_of(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("promptlab: error:"), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_bad_input_gives_one_line_errors(tiny_llama_dir, tiny_bert_dir, tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("fine\n   \nmore\n")
    out = str(tmp_path / "v.npy")
    embed = ["embed", "--model", str(tiny_llama_dir), "--output", out]
    assert "line 2 is empty" in _error_of([*embed, "--input", str(blank)], capsys)
    ok = tmp_path / "ok.txt"
    ok.write_text("The cat sits.\n")
    assert "no sentence slot" in _error_of(
        [*embed, "--input", str(ok), "--template", "means in one word:"], capsys
    )
    assert "no mask token" in _error_of([*embed, "--input", str(ok), "--template", "promptbert"], capsys)
    assert "Did you mean: prompteol" in _error_of(
        [*embed, "--input", str(ok), "--template", "promteol"], capsys
    )
    assert "Did you mean: smollm2-135m" in _error_of(
        ["embed", "--model", "smollm", "--input", str(ok), "--output", out], capsys
    )
    assert "the model has 3 layers" in _error_of([*embed, "--input", str(ok), "--layer", "7"], capsys)
    # The same mask template is fine on a masked LM.
    bert = ["embed", "--model", str(tiny_bert_dir), "--input", str(ok), "--output", out, "--overwrite"]
    assert main([*bert, "--template", "promptbert"]) == 0


def test_missing_data_file_is_named(tiny_llama_dir, tmp_path, capsys):
    (tmp_path / "data/downstream/STS/STSBenchmark").mkdir(parents=True)
    message = _error_of(
        [
            "eval",
            "--model",
            str(tiny_llama_dir),
            "--tasks",
            "STSBenchmark",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capsys,
    )
    assert "sts-test.csv" in message


def test_corrupt_packaged_gguf_is_refused(tmp_path, monkeypatch, capsys):
    """A packaged artifact whose SHA-256 differs from the catalog is refused with the fix."""
    from promptlab.models import verify_sha256

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(Exception, match="(?i)sha-?256"):
        verify_sha256(fake, "0" * 64)


def test_batch_flags_change_batching_not_vectors(tiny_llama_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("".join(f"Sentence {i} is {'very ' * (i % 5)}short.\n" for i in range(12)))
    outputs = []
    for flags in ([], ["--batch-size", "2", "--batch-tokens", "40"], ["--batch-tokens", "none"]):
        output = tmp_path / f"v{len(outputs)}.npy"
        argv = ["embed", "--model", str(tiny_llama_dir), "--input", str(source), "--output", str(output)]
        assert main([*argv, "--dtype", "float32", *flags]) == 0
        outputs.append(np.load(output))
    for other in outputs[1:]:
        np.testing.assert_allclose(outputs[0], other, atol=2e-5, rtol=1e-4)
    with pytest.raises(SystemExit):
        main(["embed", "--model", str(tiny_llama_dir), "--input", str(source), "--batch-tokens", "0"])
    assert "give a positive number of tokens" in capsys.readouterr().err


# --------------------------------------------------------------------------- what a new user meets


def _subcommands(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subcommands(sub))


def test_every_command_explains_itself_and_every_option_has_help():
    from promptlab.cli import make_parser

    commands = dict(_subcommands(make_parser()))
    assert {"eval", "embed", "demonstrations", "models", "models pull", "sweep", "search-demos"} <= set(
        commands
    )
    for name, parser in commands.items():
        assert parser.description, f"`promptlab {name} --help` has no description"
        if " " not in name:  # top-level commands show examples to copy
            assert parser.epilog and "promptlab " in parser.epilog, f"`promptlab {name}` has no examples"
        for action in parser._actions:
            if action.option_strings or action.dest not in ("help", "verb", "command"):
                assert action.help, f"`promptlab {name}`: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("argv", [[], ["models"]])
def test_a_command_without_its_verb_lists_the_commands(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "commands:" in out and ("eval" in out if not argv else "pull" in out and "verify" in out)


def test_demonstrations_are_listed_and_an_unknown_one_is_a_short_line(tiny_llama_dir, tmp_path, capsys):
    assert main(["demonstrations", "--search", "venison"]) == 0
    out = capsys.readouterr().out
    assert "eol-opt-13b" in out and "meat from a deer." in out
    source = tmp_path / "in.txt"
    source.write_text("The cat sits.\n")
    argv = [
        "embed",
        "--model",
        str(tiny_llama_dir),
        "--input",
        str(source),
        "--output",
        str(tmp_path / "v.npy"),
    ]
    message = _error_of([*argv, "--demonstration", "eol-opt-12b"], capsys)
    assert "Did you mean: eol-opt-13b" in message and "`promptlab demonstrations` lists them" in message
    assert len(message) < 300


def test_eval_checks_tasks_and_data_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """A model that cannot load: any error about it would mean the model was reached before the checks."""
    unloadable = str(tmp_path / "no-such-model")
    fake = str(write_fake_senteval(tmp_path / "senteval"))
    assert "unknown task 'STS99'. Did you mean: STS1" in _error_of(
        ["eval", "--model", unloadable, "--tasks", "STS99", "--data-dir", fake], capsys
    )
    assert "does not exist" in _error_of(
        ["eval", "--model", unloadable, "--data-dir", str(tmp_path / "x")], capsys
    )
    monkeypatch.delenv("PROMPTLAB_DATA", raising=False)
    message = _error_of(["eval", "--model", unloadable], capsys)
    # On the command line the fix is spelled as flags, not as Python arguments.
    assert "--data-dir DIR" in message and "--source hub" in message
    assert "data_dir=" not in message and "source=" not in message


def test_eval_reports_cached_sentences_apart_from_the_rate(tiny_llama_dir, tmp_path, capsys):
    fake = str(write_fake_senteval(tmp_path / "senteval"))
    argv = ["eval", "--model", str(tiny_llama_dir), "--tasks", "STSBenchmark", "--data-dir", fake]
    argv += ["--dtype", "float32"]  # auto is bfloat16 on a GPU or an AMX CPU
    assert main(argv) == 0
    first = capsys.readouterr()
    assert "ready (float32, transformers) in" in first.err and "embedded" in first.err
    assert "read from the embedding cache" not in first.err
    assert main(argv) == 0  # every vector is in the cache now
    second = capsys.readouterr()
    assert "cached" in second.out and "read from the embedding cache" in second.err
    assert "embedded" not in second.err


def _checkout_commit() -> str | None:
    """The commit of the checkout the tests run from, "+changes" when promptlab/ differs from it."""
    import subprocess
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "promptlab"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True)
    if head.returncode != 0:
        return None  # not a git checkout
    diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], cwd=package)
    return head.stdout.strip() + ("" if diff.returncode == 0 else "+changes")


def test_eval_with_a_task_log_resumes_where_an_earlier_run_stopped(tiny_llama_dir, tmp_path, capsys):
    fake = str(write_fake_senteval(tmp_path / "senteval"))
    log = tmp_path / "tasks.jsonl"
    base = ["eval", "--model", str(tiny_llama_dir), "--data-dir", fake, "--no-cache", "--task-log", str(log)]
    assert main([*base, "--tasks", "STS12,STS13"]) == 0  # an earlier sitting finished two tasks
    capsys.readouterr()
    output = tmp_path / "run.json"
    assert main([*base, "--output", str(output)]) == 0
    err = capsys.readouterr().err
    assert err.count("kept from the task log") == 2 and "STS12" in err.split("kept from the task log")[0]
    assert err.count("scored items") == 1  # the suite is described once, before the model loads
    lines = log.read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    rows = [r for r in logged if "part" not in r["key"]]
    parts = [r for r in logged if "part" in r["key"]]
    # STS tasks are encoded 256 pairs at a time (the default --part-items); each part's cosines are logged.
    assert {p["key"]["task"] for p in parts} == set(TASKS) and all(len(p["values"]) <= 256 for p in parts)
    record = json.loads(output.read_text())
    assert [r["key"]["task"] for r in rows] == list(record["scores"]) and len(rows) == 7
    assert record["scores"] == {r["key"]["task"]: r["result"]["score"] for r in rows}
    assert record["throughput"]["embedded"] == sum(r["n_sentences"] for r in rows[2:])
    assert record["commit"] == _checkout_commit()
    # The log belongs to one configuration: another layer is refused (once the model has said what it
    # computes) in one line that names the difference, and the log is left as it was.
    assert main([*base, "--layer", "1"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("promptlab: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "different configuration" in errors[0] and "layer: -1 there, 1 now" in errors[0]
    assert log.read_text().splitlines() == lines


def test_an_ensemble_eval_keeps_a_task_log_and_resumes_with_the_scores_of_one_run(tiny_llama_dir, tmp_path):
    """MetaEOL's prompts are its members': the log is keyed on each member's prompt, and a resumed eval
    computes what one uninterrupted run does (compared pair by pair: a tiny random model's Spearman turns on
    near-ties that batching moves by rounding), and scores it from what its log holds."""
    fake = str(write_fake_senteval(tmp_path / "senteval"))
    log, whole_log = tmp_path / "tasks.jsonl", tmp_path / "whole.tasks.jsonl"
    base = ["eval", "--model", str(tiny_llama_dir), "--template", "metaeol", "--data-dir", fake, "--no-cache"]
    base += ["--dtype", "float32"]
    assert main([*base, "--task-log", str(whole_log), "--output", str(tmp_path / "whole.json")]) == 0
    assert main([*base, "--task-log", str(log), "--tasks", "STS12,STS13"]) == 0  # an earlier sitting
    assert main([*base, "--task-log", str(log), "--output", str(tmp_path / "resumed.json")]) == 0

    def logged(path):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        cosines = {json.dumps(r["key"], sort_keys=True): r["values"] for r in rows if "part" in r["key"]}
        return cosines, {r["key"]["task"]: r["result"]["score"] for r in rows if "part" not in r["key"]}

    (whole_cosines, _), (cosines, task_scores) = logged(whole_log), logged(log)
    assert cosines.keys() == whole_cosines.keys()
    for key, values in cosines.items():
        np.testing.assert_allclose(values, whole_cosines[key], atol=1e-5, err_msg=key)
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["scores"] == task_scores and len(task_scores) == 7
    embedder = Embedder(str(tiny_llama_dir), "metaeol", dtype="float32")
    probes = json.loads(log.read_text().splitlines()[0])["fixed"]["probe_prompt_ids"]
    assert probes == [list(m.prompts.encode(PROBE_SENTENCE).ids) for m in embedder.members]
    assert len(probes) == 4 and len({tuple(p) for p in probes}) == 4


def test_output_that_cannot_be_written_is_refused_before_any_work(tiny_llama_dir, tmp_path, capsys):
    import os
    import subprocess

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits; an immutable folder stops root too
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported on this file system (root ignores permission bits)")
    else:
        locked.chmod(0o555)
    try:
        source = tmp_path / "in.txt"
        source.write_text("The cat sits.\n")
        unloadable = str(tmp_path / "no-such-model")  # the check comes first: the model is never reached
        for argv in (
            ["embed", "--model", unloadable, "--input", str(source), "--output", str(locked / "v.npy")],
            ["eval", "--model", unloadable, "--output", str(locked / "run.json")],
        ):
            assert "cannot write in" in _error_of(argv, capsys)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        else:
            locked.chmod(0o755)


def test_a_next_token_template_on_an_encoder_is_warned_about(tiny_bert, tiny_llama):
    import warnings

    from conftest import backend_for

    from promptlab.embedder import Embedder

    with pytest.warns(UserWarning, match="attends both ways"):
        Embedder(backend_for(tiny_bert), "prompteol")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Embedder(backend_for(tiny_llama), "prompteol")
        Embedder(backend_for(tiny_bert), "promptbert")
