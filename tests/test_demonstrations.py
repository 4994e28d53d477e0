"""Demonstrations: the shipped data, the PromptEOL in-context format, vectors, and leakage into STS data."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import backend_for

from promptlab.demonstrations import (
    Demonstration,
    get_demonstration,
    list_demonstrations,
    load_demonstrations,
    load_pool,
    resolve_demonstration,
    with_demonstration,
)
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError
from promptlab.registry import get_template

SMOKING = Demonstration("smoking", "A man is smoking.", "Smoking")

# The best demonstration per OPT size, as the PromptEOL paper reports them.
PAPER = {
    "125m": ("A man is smoking.", "Smoking"),
    "350m": ("A man is playing on a guitar and singing.", "Music"),
    "1.3b": ("relating to switzerland or its people.", "Swiss"),
    "2.7b": ("A jockey riding a horse.", "Equestrian"),
    "6.7b": ("The man is riding a horse.", "Horseback-riding"),
    "13b": ("meat from a deer.", "Venison"),
    "30b": ("The man is riding a motorcycle down the road.", "Motorcycling"),
    "66b": ("of or relating to tutors or tutoring.", "Tutorial"),
}


def test_prompteol_demonstration_is_the_papers_exact_format():
    text = with_demonstration(get_template("prompteol"), SMOKING).text
    assert text == (
        'This sentence : "A man is smoking." means in one word:"Smoking". '
        'This sentence : "[X]" means in one word:"'
    )
    assert with_demonstration(get_template("prompteol"), get_demonstration("eol-opt-125m")).text == text


@pytest.mark.parametrize(
    ("template", "demo", "expected"),
    [
        (
            "prompteol-noquote",
            SMOKING,
            "This sentence : A man is smoking. means in one word: Smoking. "
            "This sentence : [X] means in one word:",
        ),
        (
            "promptbert",
            SMOKING,
            'This sentence : "A man is smoking." means Smoking . This sentence : "[X]" means [MASK] .',
        ),
        (
            "pcot",
            Demonstration("x", 'He said "no"', "Refusal"),  # the PromptEOL input rules apply to the example
            'After thinking step by step , this sentence : "He said \'no\'" means in one word:"Refusal". '
            'After thinking step by step , this sentence : "[X]" means in one word:"',
        ),
    ],
)
def test_demonstration_in_other_templates(template, demo, expected):
    assert with_demonstration(get_template(template), demo).text == expected


@pytest.mark.parametrize("template", ["echo", "metaeol", "none"])
def test_templates_without_a_one_word_answer_take_no_demonstration(template):
    with pytest.raises(PromptlabError, match="demonstrations are defined for one-word templates"):
        with_demonstration(get_template(template), SMOKING)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("prefix_cache", [True, False])
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_opt"])
def test_vectors_with_a_demonstration_equal_an_independent_forward(
    request, fixture, padding_side, prefix_cache
):
    model, tokenizer = request.getfixturevalue(fixture)
    sentences = ["A man is playing a guitar", "The cat sits.", 'He said "hello" to everyone in the room?']
    embedder = Embedder(
        backend_for((model, tokenizer)),
        "prompteol",
        demonstration="eol-opt-13b",
        padding_side=padding_side,
        prefix_cache=prefix_cache,
    )
    vectors = embedder.encode(sentences, batch_size=2)
    for sentence, vector in zip(sentences, vectors, strict=True):
        s = sentence if sentence[-1] in ".?!\"'" else sentence + "."
        text = (
            'This sentence : "meat from a deer." means in one word:"Venison". '
            f'This sentence : "{s.replace(chr(34), chr(39))}" means in one word:"'
        )
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            expected = model(**enc, output_hidden_states=True).hidden_states[-1][0, -1]
        torch.testing.assert_close(torch.from_numpy(vector), expected, atol=2e-5, rtol=1e-4)
    record = embedder.describe()
    assert record["demonstration"]["id"] == "eol-opt-13b" and record["demonstration"]["word"] == "Venison"


def test_the_papers_eight_demonstrations_are_shipped_exactly():
    for size, (sentence, word) in PAPER.items():
        demo = get_demonstration(f"eol-opt-{size}")
        assert (demo.sentence, demo.word) == (sentence, word) and "PromptEOL" in demo.source


def test_pool_is_large_enough_and_every_row_says_where_it_comes_from():
    pool, excluded = load_pool("all")
    assert len(pool) >= 108
    assert sum(d.id.startswith("stsb-train-") for d in pool) >= 100
    assert sum(d.id.startswith("def-") for d in pool) >= 30
    assert {d.id for d in excluded} <= {f"eol-opt-{size}" for size in PAPER}
    assert all(d.source for d in list_demonstrations())
    assert len({d.id for d in list_demonstrations()}) == len(list_demonstrations())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"id": "a", "sentence": "s."}', "line 2: missing word"),
        ('{"id": "a", "sentence": "s.", "word": "w", "colour": "red"}', "line 2: unknown key"),
        ('{"id": "a", "sentence": "s.", "word": "two words"}', "line 2: .*must be one word"),
        ('{"id": "a", "sentence": "s.", "word": "say\\"hi"}', "line 2: .*must be one word"),
        ('{"id": "a", "sentence": "[X] is here.", "word": "w"}', r"line 2: .*\[X\] cannot appear"),
        ('{"id": "a b", "sentence": "s.", "word": "w"}', "line 2: .*the id must be"),
        ('{"id": "a", "sentence": "  ", "word": "w"}', "line 2: .*one non-empty line"),
        ('["a", "s.", "w"]', "line 2: expected a JSON object"),
    ],
)
def test_malformed_pool_rows_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"id": "ok", "sentence": "Fine.", "word": "Fine"}\n' + line + "\n")
    with pytest.raises(PromptlabError, match=f"pool.jsonl {message}"):
        load_demonstrations(path)


def test_user_pool_file_and_unknown_names(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"id": "a", "sentence": "A dog runs.", "word": "Running"})
        + "\n"
        + json.dumps({"id": "b", "sentence": "A b.", "word": "B", "eval_overlap": "STS12 test"})
        + "\n"
    )
    pool, excluded = load_pool(str(path))
    assert [d.id for d in pool] == ["a"] and [d.id for d in excluded] == ["b"]
    with pytest.raises(PromptlabError, match="Did you mean: definitions"):
        load_pool("definitons")
    with pytest.raises(PromptlabError, match="Did you mean: eol-opt-125m"):
        resolve_demonstration("eol-opt-125")
    assert resolve_demonstration("none") is None and resolve_demonstration(SMOKING) is SMOKING


# --------------------------------------------------------------------------- leakage into STS data

REAL = Path(os.environ.get("PROMPTLAB_DATA") or Path(__file__).resolve().parents[2] / "shared/data/senteval")
needs_real = pytest.mark.skipif(
    not (REAL / "downstream").is_dir(),
    reason=f"no SentEval data at {REAL}: set PROMPTLAB_DATA to a SentEval data folder",
)


def _key(sentence: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", sentence.lower()).split())


def _dev_and_test_sentences() -> dict[str, str]:
    """Every sentence of STS-B dev/test, SICK trial/test and every STS12-16 input file, read here directly."""
    where: dict[str, str] = {}
    sts = REAL / "downstream" / "STS"
    files = [(sts / "STSBenchmark" / f"sts-{split}.csv", (5, 6)) for split in ("dev", "test")]
    files += [
        (REAL / "downstream/SICK" / name, (1, 2)) for name in ("SICK_trial.txt", "SICK_test_annotated.txt")
    ]
    files += [
        (path, (0, 1)) for year in range(12, 17) for path in (sts / f"STS{year}-en-test").glob("STS.input.*")
    ]
    for path, columns in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            for c in columns:
                if c < len(fields):
                    where.setdefault(_key(fields[c]), path.name)
    return where


@needs_real
def test_no_pool_sentence_occurs_in_sts_dev_or_test_data():
    where = _dev_and_test_sentences()
    assert len(where) > 20000
    pool, _ = load_pool("all")
    leaked = {d.id: where[_key(d.sentence)] for d in pool if _key(d.sentence) in where}
    assert not leaked, f"pool sentences found in STS dev/test data: {leaked}"
    # The flags are accurate: a shipped row is marked exactly when its sentence occurs there.
    flagged = {d.id for d in list_demonstrations() if d.eval_overlap}
    assert flagged == {d.id for d in list_demonstrations() if _key(d.sentence) in where}
    assert flagged == {"eol-opt-125m", "eol-opt-350m", "eol-opt-2.7b", "eol-opt-6.7b", "eol-opt-30b"}
