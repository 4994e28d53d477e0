"""`Combination`: several embedders and layers as one vector, from Python, TOML and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluation import write_fake_senteval

from promptlab.cli import main
from promptlab.combination import Combination, Member
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError

SENTENCES = [
    "A man is playing a guitar.",
    "A woman slices an onion.",
    "The cat sleeps on the sofa.",
    "A man plays an instrument.",
]


def _cosines(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return v @ v.T


def _layer_mean(embedder: Embedder, layers: list[int]) -> np.ndarray:
    """A member's vectors computed apart: the mean of its unit-length vectors at each layer (float64)."""
    units = []
    for layer in layers:
        single = Embedder(embedder.backend, embedder.template, layer=layer)
        v = single.encode(SENTENCES).astype(np.float64)
        units.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return np.mean(units, axis=0)


def test_cosines_are_the_weighted_mean_of_the_members_cosines(tiny_llama_dir):
    first = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32", batch_tokens=None)
    second = Embedder(first.backend, "eol-topic", dtype="float32")
    combination = Combination([Member(first, (2, 3), weight=3), Member(second, (1,), weight=1)])
    vectors = combination.encode(SENTENCES)

    assert vectors.dtype == np.float32 and vectors.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    expected = 0.75 * _cosines(_layer_mean(first, [2, 3])) + 0.25 * _cosines(_layer_mean(second, [1]))
    np.testing.assert_allclose(_cosines(vectors), expected, atol=1e-5)
    # One sentence gives one row, the same as in a batch.
    np.testing.assert_allclose(combination.encode(SENTENCES[2]), vectors[2], atol=1e-6)
    assert combination.last_stats["sentences"] == 1


def test_one_member_at_several_layers_is_the_mean_of_its_unit_layer_vectors(tiny_llama_dir):
    embedder = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32")
    vectors = Combination([Member(embedder, (1, 2, 3))]).encode(SENTENCES)
    mean = _layer_mean(embedder, [1, 2, 3])
    np.testing.assert_allclose(vectors, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_a_toml_combination_with_a_finetuned_adapter_member(tiny_llama_dir, adapter_dir, tmp_path):
    config = _write(
        tmp_path / "combo.toml",
        f"""
[[member]]
model = "{tiny_llama_dir}"
template = "prompteol"
dtype = "float32"
layers = [2, 3]
weight = 0.7

[[member]]
embedder = "{adapter_dir}"
layer = 2
weight = 0.3
""",
    )
    combination = Combination.load(config)
    untrained = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32")
    trained = Embedder.load(str(adapter_dir))
    expected = 0.7 * _cosines(_layer_mean(untrained, [2, 3])) + 0.3 * _cosines(trained.encode(SENTENCES))
    np.testing.assert_allclose(_cosines(combination.encode(SENTENCES)), expected, atol=1e-5)
    # The adapter changes the vectors: the trained member is not the untrained one read again.
    assert not np.allclose(trained.encode(SENTENCES), untrained.encode(SENTENCES), atol=1e-3)
    described = combination.describe()
    assert described["kind"] == "combination" and [m["weight"] for m in described["members"]] == [0.7, 0.3]
    assert described["members"][1]["adapter"] and described["members"][0]["layers"] == [2, 3]


@pytest.mark.parametrize(
    "member, message",
    [
        ('model = "M"\nlayers = [2, 2]', "repeats a layer"),
        ('model = "M"\nlayer = 2\nweight = 0', "weight = 0: give a number above 0"),
        ('model = "M"\nlayer = 2\nlayers = [2]', "either layer = N or layers = [N, ...]"),
        ('model = "M"\nlayer = 2\nlayre = 3', "unknown key(s) layre"),
        ("layer = 2", 'name the member\'s model = "..." or a saved embedder = "FOLDER"'),
        ('model = "M"\nlayers = "2"', "write a list"),
    ],
)
def test_a_bad_member_is_refused_in_one_line_before_any_model_loads(tmp_path, member, message):
    # "M" is no model at all: a member refused for its layers or weight never gets to loading it.
    text = f'[[member]]\n{member}\n\n[[member]]\nmodel = "M"\nlayer = 1\n'
    with pytest.raises(PromptlabError) as error:
        Combination.load(_write(tmp_path / "bad.toml", text))
    assert message in str(error.value) and "member 1" in str(error.value) and "\n" not in str(error.value)


def test_a_layer_outside_the_model_and_a_lone_single_layer_member_are_refused(tiny_llama_dir, tmp_path):
    embedder = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32")
    with pytest.raises(PromptlabError, match="layer 9 is out of range: the model has 3 layers"):
        Member(embedder, (2, 9))
    with pytest.raises(PromptlabError, match="two or more members, or one member read at two or more"):
        Combination([Member(embedder, (2,))])
    with pytest.raises(PromptlabError, match="does not exist; check the path"):
        Combination.load(tmp_path / "missing.toml")
    with pytest.raises(PromptlabError, match="only \\[\\[member\\]\\] tables.*remove name"):
        Combination.load(_write(tmp_path / "extra.toml", 'name = "x"\n[[member]]\nmodel = "M"\nlayer = 1\n'))


@pytest.fixture
def combo_toml(tiny_llama_dir, tmp_path):
    return _write(
        tmp_path / "combo.toml",
        f"""
[[member]]
model = "{tiny_llama_dir}"
template = "prompteol"
dtype = "float32"
layers = [2, 3]

[[member]]
model = "{tiny_llama_dir}"
template = "eol-topic"
dtype = "float32"
layer = 3
weight = 2
""",
    )


def test_eval_and_embed_take_a_combination_and_resume_from_its_task_log(combo_toml, tmp_path, capsys):
    fake = str(write_fake_senteval(tmp_path / "senteval"))
    log, output = tmp_path / "tasks.jsonl", tmp_path / "run.json"
    base = ["eval", "--embedder", str(combo_toml), "--data-dir", fake, "--no-cache", "--task-log", str(log)]
    assert main([*base, "--tasks", "STS12,STS13"]) == 0
    capsys.readouterr()
    assert main([*base, "--output", str(output)]) == 0
    err = capsys.readouterr().err
    assert err.count("kept from the task log") == 2
    record = json.loads(output.read_text())
    assert record["config"]["kind"] == "combination" and len(record["config"]["members"]) == 2
    assert len(record["scores"]) == 7 and record["config"]["combination"] == str(combo_toml)

    # Scores agree with an STS evaluation of the same vectors computed through the Python API.
    from promptlab.evaluation import evaluate, load_suite

    combination = Combination.load(combo_toml)
    direct = evaluate(combination.encode, load_suite(["STSBenchmark"], data_dir=fake))
    assert direct.scores["STSBenchmark"] == pytest.approx(record["scores"]["STSBenchmark"], abs=1e-6)

    # A log of this combination refuses another one (here: another weight), naming what differs.
    _write(combo_toml, combo_toml.read_text().replace("weight = 2", "weight = 3"))
    assert main(base) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("promptlab: error:")]
    assert len(error) == 1 and "different configuration" in error[0] and "weight" in error[0]

    vectors_file = tmp_path / "vectors.npy"
    sentences = _write(tmp_path / "sentences.txt", "\n".join(SENTENCES) + "\n")
    args = ["embed", "--embedder", str(combo_toml), "--input", str(sentences), "--output", str(vectors_file)]
    assert main([*args, "--no-cache"]) == 0
    np.testing.assert_allclose(
        np.load(vectors_file), Combination.load(combo_toml).encode(SENTENCES), atol=1e-6
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["embed", "--input", "IN", "--output", "OUT", "--layer", "2"],
            "--layer cannot apply to a combination",
        ),
        (
            ["embed", "--input", "IN", "--output", "OUT", "--no-normalize-input"],
            "--no-normalize-input cannot apply",
        ),
        (["export", "--output", "OUT"], "which export does not take"),
        (["embed", "--input", "IN", "--output", "shards/", "--shard-size", "2"], "sharded or Ray embedding"),
    ],
)
def test_commands_that_cannot_use_a_combination_say_so_in_one_line(
    combo_toml, tmp_path, capsys, extra, message
):
    sentences = _write(tmp_path / "in.txt", "\n".join(SENTENCES) + "\n")
    args = [a.replace("OUT", str(tmp_path / "saved")).replace("IN", str(sentences)) for a in extra]
    assert main([args[0], "--embedder", str(combo_toml), *args[1:]]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("promptlab: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "saved").exists()


# -- combine-logs: a combination scored from its members' task logs --------------------------------------

MEMBER_ARGS = {  # two embedders of the tiny model, each read at one layer
    "a": ["--template", "prompteol", "--layer", "3"],
    "b": ["--template", "eol-topic", "--layer", "2"],
}


@pytest.fixture
def member_logs(tiny_llama_dir, tmp_path):
    """Each member's test and STS-B dev evaluation, logged 4 pairs a part: {(member, split): log path}."""
    fake = str(write_fake_senteval(tmp_path / "senteval"))
    logs = {}
    for name, args in MEMBER_ARGS.items():
        for split, tasks in (("test", []), ("dev", ["--tasks", "STSBenchmark"])):
            log = tmp_path / f"{name}.{split}.tasks.jsonl"
            argv = ["eval", "--model", str(tiny_llama_dir), *args, "--dtype", "float32", "--no-cache"]
            argv += [
                "--data-dir",
                fake,
                "--split",
                split,
                *tasks,
                "--task-log",
                str(log),
                "--part-items",
                "4",
            ]
            assert main(argv) == 0
            logs[name, split] = log
    return fake, logs


def _encoded_combination(tiny_llama_dir, weights, suite):
    """`suite` scored on the combined vectors, encoded through `Combination` (a member at weight 0 left out)."""
    from promptlab.evaluation import evaluate

    embedders = {
        "a": (Embedder(str(tiny_llama_dir), "prompteol", dtype="float32"), 3),
        "b": (Embedder(str(tiny_llama_dir), "eol-topic", dtype="float32"), 2),
    }
    kept = [(e, layer, w) for (e, layer), w in zip(embedders.values(), weights, strict=True) if w > 0]
    if len(kept) == 1:  # a member alone: that embedder read at its layer
        embedder, layer, _ = kept[0]
        return evaluate(Embedder(embedder.backend, embedder.template, layer=layer).encode, suite)
    return evaluate(Combination([Member(e, (layer,), w) for e, layer, w in kept]).encode, suite)


def test_combine_logs_scores_what_the_combined_vectors_score_and_chooses_its_weights_on_dev(
    tiny_llama_dir, member_logs, tmp_path, capsys
):
    from promptlab.evaluation import load_suite

    fake, logs = member_logs
    output = tmp_path / "combined.json"
    argv = ["combine-logs", str(logs["a", "test"]), str(logs["b", "test"]), "--data-dir", fake]
    argv += ["--dev-log", str(logs["a", "dev"]), "--dev-log", str(logs["b", "dev"]), "--step", "0.25"]
    assert main([*argv, "--output", str(output)]) == 0
    record = json.loads(output.read_text())

    dev = load_suite(["STSBenchmark"], data_dir=fake, split="dev")
    grid = record["config"]["chosen_on"]["grid"]
    assert [g["weights"] for g in grid] == [[1, 0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0, 1]]
    encoded = [_encoded_combination(tiny_llama_dir, g["weights"], dev).average for g in grid]
    assert [g["average"] for g in grid] == pytest.approx(encoded, abs=1e-6)
    chosen = [m["weight"] for m in record["config"]["members"]]
    assert chosen in [g["weights"] for g in grid]
    assert max(g["average"] for g in grid if g["weights"] == chosen) == pytest.approx(max(encoded), abs=1e-6)

    test = _encoded_combination(tiny_llama_dir, chosen, load_suite(None, data_dir=fake))
    assert record["scores"] == pytest.approx(test.scores, abs=1e-6) and len(record["scores"]) == 7
    assert record["average"] == pytest.approx(test.average, abs=1e-6)
    assert [m["log"] for m in record["config"]["members"]] == [str(logs["a", "test"]), str(logs["b", "test"])]
    assert record["config"]["members"][0]["template"] == "prompteol"

    # Fixed weights (scaled to sum to 1) score the same as the vectors of that combination.
    capsys.readouterr()
    fixed = ["combine-logs", str(logs["a", "test"]), str(logs["b", "test"]), "--data-dir", fake]
    assert main([*fixed, "--weights", "3,1", "--tasks", "STS13,SICKRelatedness"]) == 0
    expected = _encoded_combination(
        tiny_llama_dir, [0.75, 0.25], load_suite(["STS13", "SICKRelatedness"], data_dir=fake)
    )
    assert f"{expected.scores['STS13']:.2f}" in capsys.readouterr().out
    # An existing record is not overwritten.
    assert main([*argv, "--output", str(output)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_combine_logs_refuses_what_it_cannot_combine_in_one_line(
    tiny_llama_dir, member_logs, tmp_path, capsys
):
    fake, logs = member_logs
    a, b = str(logs["a", "test"]), str(logs["b", "test"])
    unfinished = tmp_path / "unfinished.tasks.jsonl"
    unfinished.write_text("".join(a_line for a_line in logs["a", "test"].read_text().splitlines(True)[:3]))
    other_data = tmp_path / "other-data.tasks.jsonl"
    rows = [json.loads(line) for line in logs["a", "test"].read_text().splitlines()]
    other_data.write_text(
        "".join(json.dumps(r | {"key": r["key"] | {"data": "0" * 64}}) + "\n" for r in rows)
    )
    whole = tmp_path / "whole.tasks.jsonl"
    assert (
        main(
            ["eval", "--model", str(tiny_llama_dir), *MEMBER_ARGS["a"], "--dtype", "float32", "--no-cache"]
            + ["--data-dir", fake, "--tasks", "STS13", "--task-log", str(whole), "--part-items", "0"]
        )
        == 0
    )
    capsys.readouterr()
    cases = [
        ([a, b, "--weights", "1"], "1 weights for 2 task logs"),
        ([a, b, "--weights", "1,x"], "give numbers separated by commas"),
        ([a, b, "--weights", "0,0"], "at least one above 0"),
        ([a, b, "--dev-log", str(logs["a", "dev"])], "1 dev logs for 2 task logs"),
        (
            [a, b, "--dev-log", str(logs["b", "dev"]), "--dev-log", str(logs["a", "dev"])],
            "another configuration",
        ),
        (
            [a, b, "--dev-log", str(logs["a", "dev"]), "--dev-log", str(logs["b", "dev"]), "--step", "0.3"],
            "divides 1",
        ),
        ([a, str(unfinished), "--weights", "1,1"], "is not finished"),
        ([a, str(unfinished), "--weights", "1,1", "--tasks", "STS13"], "run that eval on it first"),
        ([a, str(whole), "--weights", "1,1", "--tasks", "STS13"], "logged whole"),
        ([a, str(other_data), "--weights", "1,1"], "other data files"),
        ([a, str(tmp_path / "missing.jsonl"), "--weights", "1,1"], "no task log at"),
    ]
    for extra, message in cases:
        assert main(["combine-logs", *extra, "--data-dir", fake]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("promptlab: error:") and message in err[0], (extra, err)
