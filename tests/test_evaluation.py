"""promptlab.evaluation: SentEval-layout loading, scoring and aggregation.

Fast exact checks run on a tiny fake SentEval folder built in tmp_path; each expected number is computed
here independently (numpy cosines, scipy.stats.spearmanr). A second group checks the real SentEval copy
(PROMPTLAB_DATA, else ../shared/data/senteval) against SentEval's known pair counts.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from promptlab.errors import PromptlabError
from promptlab.evaluation import (
    TASKS,
    EvalResult,
    STSPairs,
    STSTask,
    Suite,
    Vectors,
    canonical_task,
    evaluate,
    format_table,
    load_task,
    resolve_data_dir,
    score_encoder,
    score_pairs,
    sts_dev,
    subset_pairs,
)
from promptlab.evaluation.data import _parse

# --------------------------------------------------------------------------- a fake SentEval folder

STS_SUBSETS = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
GOLDS = (0.0, 1.2, None, 2.5, 4.0, 5.0)  # None: a blank gold line, the pair is not scored
SHARED = "A man is playing a guitar ."  # appears in STS12 and in STS-B test: encoded once


def _rows(task: str, part: str) -> list[tuple[str, str, float | None]]:
    rows = [(f"{task} {part} {i} first .", f"{task} {part} {i} second .", g) for i, g in enumerate(GOLDS)]
    if part in ("MSRpar", "test"):  # STS12 and STS-B/SICK-R tests share one sentence
        rows[0] = (SHARED, rows[0][1], rows[0][2])
    if task in ("STSBenchmark", "SICKRelatedness"):  # these files have no unscored pairs
        rows = [r for r in rows if r[2] is not None]
    return rows


def _messy(sentence: str) -> str:
    """The sentence as it may sit in a file: runs of spaces, leading/trailing blanks."""
    return "  " + sentence.replace(" ", "   ") + " "


# task -> subset (or split) -> rows of (clean sentence1, clean sentence2, gold or None)
FAKE = {task: {s: _rows(task, s) for s in subsets} for task, subsets in STS_SUBSETS.items()}
FAKE["STSBenchmark"] = {split: _rows("STSBenchmark", split) for split in ("train", "dev", "test")}
FAKE["STSBenchmark"]["dev"] += [(f"dev extra {i} a", f"dev extra {i} b", i / 4) for i in range(14)]
FAKE["SICKRelatedness"] = {split: _rows("SICKRelatedness", split) for split in ("train", "dev", "test")}


def write_fake_senteval(root: Path) -> Path:
    sts = root / "downstream" / "STS"
    for task, subsets in STS_SUBSETS.items():
        folder = sts / f"{task}-en-test"
        folder.mkdir(parents=True)
        for subset in subsets:
            rows = FAKE[task][subset]
            (folder / f"STS.input.{subset}.txt").write_text(
                "".join(f"{_messy(a)}\t{_messy(b)}\n" for a, b, _ in rows), encoding="utf-8"
            )
            (folder / f"STS.gs.{subset}.txt").write_text(
                "".join("\n" if g is None else f"{g}\n" for _, _, g in rows), encoding="utf-8"
            )
        # Files SentEval ignores: a pooled gold file and a subset it does not evaluate.
        (folder / "STS.gs.ALL.txt").write_text("1\n2\n", encoding="utf-8")
        (folder / "STS.input.SMT.txt").write_text("not\tevaluated\n", encoding="utf-8")
        (folder / "STS.gs.SMT.txt").write_text("3\n", encoding="utf-8")
    stsb = sts / "STSBenchmark"
    stsb.mkdir()
    for split, rows in FAKE["STSBenchmark"].items():
        lines = []
        for i, (a, b, g) in enumerate(rows):
            extra = "\tsource-a\tsource-b" if i % 2 else ""  # some real lines carry two more fields
            lines.append(
                f"main-captions\tMSRvid\t2012test\t{i:04d}\t{g:.3f}\t{_messy(a)}\t{_messy(b)}{extra}\n"
            )
        (stsb / f"sts-{split}.csv").write_text("".join(lines), encoding="utf-8")
    sick = root / "downstream" / "SICK"
    sick.mkdir()
    names = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
    for split, rows in FAKE["SICKRelatedness"].items():
        lines = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
        lines += [f"{i}\t{_messy(a)}\t{_messy(b)}\t{g}\tNEUTRAL" for i, (a, b, g) in enumerate(rows)]
        # The real SICK test file has CRLF line endings.
        newline = "\r\n" if split == "test" else "\n"
        (sick / names[split]).write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return root


@pytest.fixture
def fake_dir(tmp_path: Path) -> Path:
    return write_fake_senteval(tmp_path / "senteval")


def scored(task: str, part: str) -> list[tuple[str, str, float]]:
    return [r for r in FAKE[task][part] if r[2] is not None]


def angle_encoder(offset: dict[str, float] | None = None):
    """Encode sentence1 as [1, 0] and sentence2 at an angle falling with gold, so cosine rises with gold.

    `offset[part]` shifts the cosines of one subset: still perfect within it, not when subsets are pooled.
    Returns (encode, calls, expected cosine per (task, part)).
    """
    offset = offset or {}
    table, expected, calls = {}, {}, []
    for task, parts in FAKE.items():
        for part in parts:
            cosines = []
            for a, b, g in scored(task, part):
                theta = (5.0 - g) / 5.0 * (math.pi / 2) * 0.5 + offset.get(part, 0.0)
                table[a], table[b] = (1.0, 0.0), (math.cos(theta), math.sin(theta))
                cosines.append(math.cos(theta))
            expected[task, part] = np.array(cosines)

    def encode(sentences: list[str]) -> np.ndarray:
        calls.append(list(sentences))
        return np.array([table[s] for s in sentences], dtype=np.float32)

    return encode, calls, expected


# --------------------------------------------------------------------------- loading


def test_sts_blank_gold_skipped_and_whitespace_normalised(fake_dir):
    subsets = load_task("STS12", data_dir=fake_dir)
    assert [p.subset for p in subsets] == list(STS_SUBSETS["STS12"])  # ALL and SMT files ignored
    for pairs in subsets:
        rows = scored("STS12", pairs.subset)
        assert len(pairs) == len(GOLDS) - 1
        assert pairs.sentences1 == [a for a, _, _ in rows]
        assert pairs.sentences2 == [b for _, b, _ in rows]
        np.testing.assert_array_equal(pairs.scores, [g for _, _, g in rows])
        assert (pairs.task, pairs.split) == ("STS12", "test")


def test_stsbenchmark_columns(fake_dir):
    (pairs,) = load_task("STSBenchmark", data_dir=fake_dir)
    rows = FAKE["STSBenchmark"]["test"]
    assert (pairs.subset, pairs.split) == ("test", "test")
    assert pairs.sentences1 == [a for a, _, _ in rows]
    assert pairs.sentences2 == [b for _, b, _ in rows]
    np.testing.assert_allclose(pairs.scores, [g for _, _, g in rows], atol=5e-4)


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_sick_header_skipped(fake_dir, split):
    (pairs,) = load_task("SICKRelatedness", data_dir=fake_dir, split=split)
    rows = FAKE["SICKRelatedness"][split]
    assert "sentence_A" not in pairs.sentences1
    assert pairs.sentences1 == [a for a, _, _ in rows]
    assert pairs.sentences2 == [b for _, b, _ in rows]
    np.testing.assert_array_equal(pairs.scores, [g for _, _, g in rows])


def test_missing_file_names_the_path(fake_dir):
    missing = fake_dir / "downstream/STS/STS14-en-test/STS.gs.images.txt"
    missing.unlink()
    with pytest.raises(PromptlabError, match="--data-dir") as err:
        load_task("STS14", data_dir=fake_dir)
    assert str(missing) in str(err.value)


def test_mismatched_input_and_gold_is_an_error(fake_dir):
    gold = fake_dir / "downstream/STS/STS13-en-test/STS.gs.FNWN.txt"
    gold.write_text("1.0\n", encoding="utf-8")
    with pytest.raises(PromptlabError, match="STS.gs.FNWN.txt has 1"):
        load_task("STS13", data_dir=fake_dir)


@pytest.mark.parametrize(
    "name",
    [
        "STS/STSBenchmark/sts-test.csv",
        "STS/STS15-en-test/STS.input.belief.txt",
        "SICK/SICK_test_annotated.txt",
    ],
)
def test_file_cut_mid_line_is_an_error(fake_dir, name):
    path = fake_dir / "downstream" / name
    path.write_bytes(path.read_bytes()[:-9])  # a download cut inside its last line
    task = {"STS": "STSBenchmark", "SICK": "SICKRelatedness"}[name.split("/")[0]]
    task = "STS15" if "STS15" in name else task
    with pytest.raises(PromptlabError, match="ends in the middle of a line") as err:
        load_task(task, data_dir=fake_dir)
    assert str(path) in str(err.value) and "SentEval download" in str(err.value)


@pytest.mark.parametrize(
    ("task", "name", "content", "message"),
    [
        ("STSBenchmark", "STS/STSBenchmark/sts-test.csv", "", "is empty"),
        ("STSBenchmark", "STS/STSBenchmark/sts-test.csv", "\n\n", "is empty"),
        ("SICKRelatedness", "SICK/SICK_test_annotated.txt", "pair_ID\tsentence_A\n", "no sentence pairs"),
        ("STS13", "STS/STS13-en-test/STS.input.FNWN.txt", "", "is empty"),
        ("STS13", "STS/STS13-en-test/STS.gs.FNWN.txt", "\n" * 6, "is empty"),  # no pair scored
    ],
)
def test_empty_file_is_an_error(fake_dir, task, name, content, message):
    path = fake_dir / "downstream" / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptlabError, match=message) as err:
        evaluate(angle_encoder()[0], [task], data_dir=fake_dir)
    assert str(path) in str(err.value)


def test_cache_follows_file_changes(fake_dir):
    load_task("STS13", data_dir=fake_dir)
    hits = _parse.cache_info().hits
    load_task("STS13", data_dir=fake_dir)
    assert _parse.cache_info().hits == hits + 2 * len(STS_SUBSETS["STS13"])
    gold = fake_dir / "downstream/STS/STS13-en-test/STS.gs.FNWN.txt"
    gold.write_text("".join(f"{g}\n" if g is not None else "\n" for g in (5, 4, None, 3, 2, 1)), "utf-8")
    (fnwn, *_) = load_task("STS13", data_dir=fake_dir)
    np.testing.assert_array_equal(fnwn.scores, [5, 4, 3, 2, 1])


def test_data_dir_resolution(fake_dir, monkeypatch):
    monkeypatch.delenv("PROMPTLAB_DATA", raising=False)
    with pytest.raises(PromptlabError) as err:
        resolve_data_dir(None)
    # Python callers are told the arguments; the CLI prints the same fix in flags.
    assert all(word in str(err.value) for word in ("data_dir=", "PROMPTLAB_DATA", "source='hub'"))
    assert all(word in err.value.cli for word in ("--data-dir", "PROMPTLAB_DATA", "--source hub"))
    with pytest.raises(PromptlabError, match="does not exist"):
        resolve_data_dir(fake_dir / "nowhere")
    with pytest.raises(PromptlabError, match="no downstream/"):
        resolve_data_dir(fake_dir / "downstream" / "STS")
    assert resolve_data_dir(fake_dir) == fake_dir.resolve()
    assert resolve_data_dir(fake_dir / "downstream") == fake_dir.resolve()
    monkeypatch.setenv("PROMPTLAB_DATA", str(fake_dir))
    assert resolve_data_dir(None) == fake_dir.resolve()
    assert len(load_task("sts16")) == len(STS_SUBSETS["STS16"])


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("sts12", "STS12"),
        ("STS-16", "STS16"),
        ("stsb", "STSBenchmark"),
        ("STS-B", "STSBenchmark"),
        ("stsbenchmark", "STSBenchmark"),
        ("SICK-R", "SICKRelatedness"),
        ("sickrelatedness", "SICKRelatedness"),
    ],
)
def test_task_names_and_aliases(name, canonical):
    assert canonical_task(name) == canonical


@pytest.mark.parametrize(
    ("name", "suggested"),
    [("stsbench", "STSBenchmark"), ("STS17", "STS16"), ("sick-rel", "SICKRelatedness")],
)
def test_unknown_task_suggests(name, suggested):
    with pytest.raises(PromptlabError, match="Did you mean") as err:
        canonical_task(name)
    assert suggested in str(err.value).split("Known")[0]


def test_split_checks(fake_dir):
    with pytest.raises(PromptlabError, match="STS12 has no 'dev' split"):
        load_task("STS12", data_dir=fake_dir, split="dev")
    with pytest.raises(PromptlabError, match="unknown split"):
        load_task("STSBenchmark", data_dir=fake_dir, split="validation")
    with pytest.raises(PromptlabError, match="unknown data source"):
        load_task("STSBenchmark", data_dir=fake_dir, source="web")


def test_sts_dev_subset_is_seeded(fake_dir):
    full = sts_dev(fake_dir)
    assert len(full) == len(FAKE["STSBenchmark"]["dev"]) == 19
    part = sts_dev(fake_dir, n_pairs=8, seed=1)
    assert len(part) == 8 and part.split == "dev"
    again = sts_dev(fake_dir, n_pairs=8, seed=1)
    assert part.sentences1 == again.sentences1
    assert sts_dev(fake_dir, n_pairs=8, seed=2).sentences1 != part.sentences1
    index = {a: i for i, a in enumerate(full.sentences1)}
    positions = [index[a] for a in part.sentences1]
    assert positions == sorted(positions)  # kept in file order
    np.testing.assert_array_equal(part.scores, full.scores[positions])
    assert part.sentences2 == [full.sentences2[i] for i in positions]
    assert len(sts_dev(fake_dir, n_pairs=1000)) == 19
    # The same subset of any split: STS-B test here.
    (test,) = load_task("STSBenchmark", data_dir=fake_dir, split="test")
    part = subset_pairs(test, 5, seed=1)
    assert len(part) == 5 and part.split == "test" and set(part.sentences1) <= set(test.sentences1)
    assert subset_pairs(test, None) is test
    with pytest.raises(PromptlabError, match="too few for a Spearman"):
        subset_pairs(test, 1)


# --------------------------------------------------------------------------- scoring


def test_score_pairs_matches_independent_computation():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    gold = rng.uniform(0, 5, size=50)
    cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    assert score_pairs(u, v, gold) == pytest.approx(spearmanr(cos, gold).statistic * 100)
    assert score_pairs(u, u, gold) != score_pairs(u, v, gold)


def test_score_encoder_encodes_both_sides_in_one_call(fake_dir):
    pairs = sts_dev(fake_dir)
    rng = np.random.default_rng(0)
    table = {s: rng.normal(size=8) for s in pairs.sentences1 + pairs.sentences2}
    calls = []

    def encode(sentences):
        calls.append(list(sentences))
        return np.stack([table[s] for s in sentences])

    expected = score_pairs(
        np.stack([table[s] for s in pairs.sentences1]),
        np.stack([table[s] for s in pairs.sentences2]),
        pairs.scores,
    )
    assert score_encoder(encode, pairs) == pytest.approx(expected)
    assert calls == [pairs.sentences1 + pairs.sentences2]


def test_zero_vector_scores_cosine_zero():
    # SentEval: nan_to_num(cosine(...)) -> a zero vector has cosine 0, ranked with the other pairs.
    u = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    v = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])  # cosines 1, 0, -1
    assert score_pairs(u, v, [3.0, 2.0, 1.0]) == pytest.approx(100.0)


def test_evaluate_encodes_unique_sentences_once(fake_dir):
    encode, calls, _ = angle_encoder()
    result = evaluate(encode, data_dir=fake_dir)
    assert len(calls) == 1
    (sentences,) = calls
    assert len(sentences) == len(set(sentences)) == result.n_sentences
    test_parts = [(t, p) for t in STS_SUBSETS for p in STS_SUBSETS[t]]
    test_parts += [("STSBenchmark", "test"), ("SICKRelatedness", "test")]
    rows = [r for t, p in test_parts for r in FAKE[t][p]]
    assert set(sentences) == {s for r in rows if r[2] is not None for s in r[:2]}
    assert sentences.count(SHARED) == 1
    assert not {s for r in rows if r[2] is None for s in r[:2]} & set(sentences)  # unscored pairs
    assert result.n_pairs == sum(r[2] is not None for r in rows) == 24 * 5 + 2 * 5


def seeded_vectors(sentences: list[str]) -> np.ndarray:
    """A fixed random vector per sentence (seeded by its crc32): the same whatever the batch."""
    return np.stack([np.random.default_rng(zlib.crc32(s.encode())).standard_normal(16) for s in sentences])


def test_a_task_log_resumes_task_by_task_with_the_scores_of_one_call(fake_dir, tmp_path):
    from promptlab.experiments.results import ResultsFile

    whole = evaluate(seeded_vectors, data_dir=fake_dir)
    assert all(math.isfinite(score) for score in whole.scores.values())
    log_path = tmp_path / "tasks.jsonl"
    calls: list[list[str]] = []

    def dies_on_the_third_task(sentences):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the machine goes away in the middle of a task
        calls.append(sentences)
        return seeded_vectors(sentences)

    with pytest.raises(KeyboardInterrupt), ResultsFile(log_path, "eval-task", {"encoder": "seeded"}) as log:
        evaluate(dies_on_the_third_task, data_dir=fake_dir, task_log=log)
    assert [json.loads(line)["key"]["task"] for line in log_path.read_text().splitlines()] == list(TASKS[:2])

    def counted(sentences):
        calls.append(sentences)
        return seeded_vectors(sentences)

    calls.clear()
    with ResultsFile(log_path, "eval-task", {"encoder": "seeded"}) as log:
        resumed = evaluate(counted, data_dir=fake_dir, task_log=log)
    assert len(calls) == len(TASKS) - 2  # the two logged tasks are read back, not encoded
    assert list(resumed.scores) == list(whole.scores) == list(TASKS)
    assert resumed.scores == pytest.approx(whole.scores, abs=1e-9)
    assert resumed.average == pytest.approx(whole.average, abs=1e-9)
    assert (resumed.data_fingerprint, resumed.n_pairs, resumed.n_sentences, resumed.partial) == (
        whole.data_fingerprint,
        whole.n_pairs,
        whole.n_sentences,
        False,
    )
    # Every task logged: nothing to encode, and the same record again.
    calls.clear()
    with ResultsFile(log_path, "eval-task", {"encoder": "seeded"}) as log:
        again = evaluate(counted, data_dir=fake_dir, task_log=log)
    assert calls == [] and again.to_dict()["details"] == resumed.to_dict()["details"]
    assert math.isnan(again.sentences_per_second)
    # A log kept for another configuration is refused, naming what differs.
    with pytest.raises(PromptlabError, match="encoder: 'seeded' there, 'other' now"):
        ResultsFile(log_path, "eval-task", {"encoder": "other"})


def test_a_task_log_with_parts_resumes_inside_a_task_with_the_scores_of_one_call(fake_dir, tmp_path):
    from promptlab.experiments.results import ResultsFile

    whole = evaluate(seeded_vectors, data_dir=fake_dir)
    log_path = tmp_path / "tasks.jsonl"
    second_subset = STS_SUBSETS["STS13"][1]
    encoded: list[str] = []

    def dies_in_sts13(sentences):
        if any(s.startswith(f"STS13 {second_subset} ") for s in sentences):
            raise KeyboardInterrupt  # the machine goes away inside STS13, at its second subset
        encoded.extend(sentences)
        return seeded_vectors(sentences)

    with pytest.raises(KeyboardInterrupt), ResultsFile(log_path, "eval-task", {"encoder": "seeded"}) as log:
        evaluate(dies_in_sts13, data_dir=fake_dir, task_log=log, part_items=2)
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["key"]["task"] for r in rows if "part" not in r["key"]] == ["STS12"]  # the one finished task
    first = STS_SUBSETS["STS12"][0]
    assert [r["key"]["part"] for r in rows if r["key"]["task"] == "STS12" and "part" in r["key"]][:3] == [
        f"{first}[0:2]",
        f"{first}[2:4]",
        f"{first}[4:5]",
    ]  # 5 scored pairs, 2 at a time
    logged = [r["key"]["part"] for r in rows if r["key"]["task"] == "STS13"]
    assert logged == [f"{STS_SUBSETS['STS13'][0]}[{a}:{b}]" for a, b in ((0, 2), (2, 4), (4, 5))]

    encoded.clear()

    def counted(sentences):
        encoded.extend(sentences)
        return seeded_vectors(sentences)

    with ResultsFile(log_path, "eval-task", {"encoder": "seeded"}) as log:
        resumed = evaluate(counted, data_dir=fake_dir, task_log=log, part_items=2)
    # Neither the finished task nor STS13's logged parts are encoded again.
    assert not [s for s in encoded if s.startswith(("STS12 ", f"STS13 {STS_SUBSETS['STS13'][0]} "))]
    assert any(s.startswith(f"STS13 {second_subset} ") for s in encoded)
    assert resumed.scores == pytest.approx(whole.scores, abs=1e-9)
    assert resumed.average == pytest.approx(whole.average, abs=1e-9)
    assert resumed.details["STS13"].subsets == pytest.approx(whole.details["STS13"].subsets, abs=1e-9)


def test_sts_parts_cover_every_pair_once_and_score_as_the_whole_task(tmp_path):
    gold = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    repeated = "The same sentence in two parts ."
    subset_a = STSPairs(
        "X", "a", "test", [repeated, "a1", "a2", "a3", repeated], ["b0", "b1", "b2", "b3", "b4"], gold
    )
    subset_b = STSPairs("X", "b", "test", ["c0", "c1", "c2"], ["d0", repeated, "d2"], gold[:3])
    task = STSTask("X", "test", [subset_a, subset_b])
    parts = task.parts(2)
    assert parts == ["a[0:2]", "a[2:4]", "a[4:5]", "b[0:2]", "b[2:3]"]
    assert task.part_sentences("a[4:5]") == [repeated, "b4"]
    sentences = list(dict.fromkeys(task.sentences()))
    vectors = Vectors({s: i for i, s in enumerate(sentences)}, seeded_vectors(sentences))
    values = {part: task.score_part(part, vectors) for part in reversed(parts)}  # any order
    assert task.score_parts(values).to_dict() == task.score(vectors).to_dict()
    with pytest.raises(ValueError, match="missing"):
        task.score_parts({part: v for part, v in values.items() if part != "a[2:4]"})
    with pytest.raises(ValueError, match="no part 'a\\[4:9\\]'"):
        task.part_sentences("a[4:9]")

    # Through the runner: each distinct sentence of the task is encoded once, though parts share one.
    from promptlab.experiments.results import ResultsFile

    encoded: list[str] = []

    def counted(batch):
        encoded.extend(batch)
        return seeded_vectors(batch)

    suite = Suite(["X"], [task], {s: i for i, s in enumerate(sentences)}, "test", "senteval", None)
    with ResultsFile(tmp_path / "log.jsonl", "eval-task", {}) as log:
        result = evaluate(counted, suite, task_log=log, part_items=2)
    assert sorted(encoded) == sorted(sentences)
    assert result.details["X"].to_dict() == task.score(vectors).to_dict()


def test_perfect_encoder_scores_100(fake_dir):
    encode, _, _ = angle_encoder()
    result = evaluate(encode, data_dir=fake_dir)
    assert list(result.scores) == list(TASKS)
    for task in TASKS:
        assert result[task] == pytest.approx(100.0)
    assert result.average == pytest.approx(100.0) and not result.partial


def test_pooled_all_differs_from_subset_mean(fake_dir):
    # Each subset ranked perfectly, but subsets shifted against each other: the pooled Spearman drops.
    offsets = {s: 0.3 * i for i, s in enumerate(STS_SUBSETS["STS12"])}
    encode, _, expected = angle_encoder(offsets)
    result = evaluate(encode, ["STS12"], data_dir=fake_dir)
    detail = result.details["STS12"]
    parts = STS_SUBSETS["STS12"]
    cos = np.concatenate([expected["STS12", p] for p in parts])
    gold = np.concatenate([[g for _, _, g in scored("STS12", p)] for p in parts])
    assert detail.score == pytest.approx(spearmanr(cos, gold).statistic * 100, abs=1e-6)
    assert all(v == pytest.approx(100.0) for v in detail.subsets.values())
    assert detail.mean == pytest.approx(100.0) and detail.wmean == pytest.approx(100.0)
    assert detail.score < 90
    assert result.partial and result.average == pytest.approx(detail.score)


def test_dev_split_and_partial_average(fake_dir):
    encode, _, _ = angle_encoder()
    result = evaluate(encode, ["STS-B", "sick-r"], data_dir=fake_dir, split="dev")
    assert list(result.scores) == ["STSBenchmark", "SICKRelatedness"]
    assert result.partial and result.split == "dev"
    assert result.n_pairs == len(FAKE["STSBenchmark"]["dev"]) + len(FAKE["SICKRelatedness"]["dev"])
    with pytest.raises(PromptlabError, match="STS12 has no 'dev' split.*STSBenchmark, SICKRelatedness only"):
        evaluate(encode, TASKS, data_dir=fake_dir, split="dev")
    unset = evaluate(encode, data_dir=fake_dir, split="dev")  # tasks unset: those that have the split
    assert unset.scores == result.scores and unset.partial


def test_encoder_output_is_checked(fake_dir):
    with pytest.raises(PromptlabError, match="one float vector per input sentence"):
        evaluate(lambda s: np.zeros((len(s) - 1, 4)), ["STS13"], data_dir=fake_dir)


def test_result_record_and_fingerprint(fake_dir):
    encode, _, _ = angle_encoder()
    result = evaluate(encode, data_dir=fake_dir)
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert record["scores"]["STS12"] == pytest.approx(100.0)
    assert record["data_dir"] == str(fake_dir.resolve()) and record["source"] == "senteval"
    assert set(record["details"]["STS15"]["subsets"]) == set(STS_SUBSETS["STS15"])
    assert record["sentences_per_second"] > 0 and record["encode_seconds"] >= 0
    assert evaluate(encode, data_dir=fake_dir).data_fingerprint == result.data_fingerprint
    # A different file read -> a different fingerprint.
    gold = fake_dir / "downstream/STS/STS16-en-test/STS.gs.headlines.txt"
    gold.write_text(gold.read_text(encoding="utf-8").replace("5.0", "4.9"), encoding="utf-8")
    assert evaluate(encode, data_dir=fake_dir).data_fingerprint != result.data_fingerprint


def test_format_table(fake_dir):
    encode, _, _ = angle_encoder()
    full = evaluate(encode, data_dir=fake_dir)
    part = evaluate(encode, ["stsb"], data_dir=fake_dir)
    table = format_table([("model|a", full, {"sent/s": 1234.5}), ("b", part.to_dict())], label="model")
    lines = table.splitlines()
    print("\n" + table)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["model", "STS12", "STS13", "STS14", "STS15", "STS16", "STSB", "SICK-R", "Avg", "sent/s"]
    assert set(lines[1]) <= set("|-:")
    table_rows = lines[:4]
    assert len({line.count("|") - line.count("\\|") for line in table_rows}) == 1  # valid markdown
    assert len({len(line) for line in table_rows}) == 1  # aligned for a terminal
    assert "100.00" in lines[2] and "1234.5" in lines[2] and "model\\|a" in lines[2]
    assert "100.00*" in lines[3] and " - " in lines[3]  # partial average, missing tasks
    assert isinstance(full, EvalResult)


# --------------------------------------------------------------------------- the hub (offline only)


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'mteb/sts12-sts' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(PromptlabError, match="hub is unreachable.*--data-dir"):
        load_task("STS12", source="hub")


@pytest.mark.skipif(
    os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "")).upper() not in {"1", "TRUE"},
    reason="needs HF_DATASETS_OFFLINE=1 (without it, datasets waits ~23 s for the network)",
)
def test_hub_offline_fails_fast():
    with pytest.raises(PromptlabError, match="hub is unreachable.*PROMPTLAB_DATA"):
        load_task("STSBenchmark", split="dev", source="hub")


# --------------------------------------------------------------------------- the real SentEval data

REAL = Path(os.environ.get("PROMPTLAB_DATA") or Path(__file__).resolve().parents[2] / "shared/data/senteval")
needs_real = pytest.mark.skipif(
    not (REAL / "downstream").is_dir(),
    reason=f"no SentEval data at {REAL}: set PROMPTLAB_DATA to a SentEval data folder",
)


@needs_real
@pytest.mark.parametrize(
    ("task", "split", "n_pairs"),
    [
        ("STS12", "test", 3108),
        ("STS13", "test", 1500),
        ("STS14", "test", 3750),
        ("STS15", "test", 3000),
        ("STS16", "test", 1186),
        ("STSBenchmark", "test", 1379),
        ("STSBenchmark", "dev", 1500),
        ("SICKRelatedness", "test", 4927),
    ],
)
def test_real_pair_counts(task, split, n_pairs):
    assert sum(len(p) for p in load_task(task, data_dir=REAL, split=split)) == n_pairs


@needs_real
@pytest.mark.parametrize("cut", ["lines", "mid-line"])
def test_real_release_file_cut_short_is_refused_by_the_cli(tiny_llama_dir, tmp_path, capsys, cut):
    # A copy of the real STS-B folder whose test file lost its last 100 lines (whole lines, so only the
    # known pair count of the release can tell), or was cut inside a line.
    import shutil

    from promptlab.cli import main

    folder = tmp_path / "data/downstream/STS/STSBenchmark"
    shutil.copytree(REAL / "downstream/STS/STSBenchmark", folder)
    test = folder / "sts-test.csv"
    raw = test.read_bytes()
    test.write_bytes(b"".join(raw.splitlines(keepends=True)[:-100]) if cut == "lines" else raw[:-20])
    argv = ["eval", "--model", str(tiny_llama_dir), "--tasks", "STSBenchmark"]
    assert main([*argv, "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    expected = "has 1,279 sentence pairs but SentEval's release of this file has 1,379"
    assert (expected if cut == "lines" else "ends in the middle of a line") in err
    assert str(test) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def bag_of_words(sentences: list[str], dim: int = 4096) -> np.ndarray:
    """Lower-cased word counts hashed into `dim` buckets (crc32: stable across runs)."""
    counts = np.zeros((len(sentences), dim), dtype=np.float32)
    for row, sentence in enumerate(sentences):
        for word in sentence.lower().split():
            counts[row, zlib.crc32(word.encode()) % dim] += 1.0
    return counts


@needs_real
def test_real_bag_of_words_stsb():
    result = evaluate(bag_of_words, ["STSBenchmark"], data_dir=REAL)
    print(f"\nbag-of-words STS-B test Spearman: {result['STSBenchmark']:.2f}")
    assert 35 < result["STSBenchmark"] < 60


@needs_real
@pytest.mark.parametrize("task", ["STS12", "STS16"])
def test_real_pooled_score_matches_senteval_reading(task):
    # SentEval's reader, written out here: splitlines, drop blank gold lines, str.split() tokens.
    folder = REAL / f"downstream/STS/{task}-en-test"
    sys_scores, gold_scores = [], []
    for subset in STS_SUBSETS[task]:
        inputs = (folder / f"STS.input.{subset}.txt").read_text(encoding="utf-8").splitlines()
        golds = (folder / f"STS.gs.{subset}.txt").read_text(encoding="utf-8").splitlines()
        for line, gold in zip(inputs, golds, strict=True):
            if gold != "":
                a, b = (" ".join(s.split()) for s in line.split("\t")[:2])
                u, v = bag_of_words([a, b]).astype(np.float64)
                sys_scores.append(np.nan_to_num(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))))
                gold_scores.append(float(gold))
    expected = spearmanr(sys_scores, gold_scores).statistic * 100
    assert evaluate(bag_of_words, [task], data_dir=REAL)[task] == pytest.approx(expected, abs=1e-9)
