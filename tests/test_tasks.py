"""Tasks beyond STS: metrics, the three task types, their data, `evaluate` over mixed tasks, the CLI.

Every expected number is computed here independently: sklearn's metrics, brute-force loops over
thresholds, hand-written rankings, or the BM25 formula written out.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, ndcg_score
from test_evaluation import bag_of_words, write_fake_senteval

from promptlab.errors import PromptlabError
from promptlab.evaluation import (
    CATALOG,
    EvalResult,
    PairClassificationScore,
    RerankingScore,
    RerankingTask,
    RetrievalScore,
    TaskScore,
    Vectors,
    evaluate,
    evaluate_layers,
    format_table,
    load_suite,
    metrics,
    resolve_task,
)

# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    labels = rng.random(40) < 0.3
    labels[0] = True
    scores = rng.integers(0, 6, 40).astype(float) if ties else rng.normal(size=40)
    assert metrics.average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores))


def test_average_precision_by_hand():
    # Ranked: + - + - : precision at the two hits 1/1 and 2/3.
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(metrics.average_precision([0.1, 0.2], [0, 0]))


@pytest.mark.parametrize("seed", range(5))
def test_ndcg_and_recall_match_independent_computations(seed):
    rng = np.random.default_rng(seed)
    scores, labels = rng.normal(size=30), rng.random(30) < 0.2
    labels[3] = True
    assert metrics.ndcg_at_k(scores, labels, 10) == pytest.approx(ndcg_score([labels], [scores], k=10))
    order = sorted(range(30), key=lambda i: -scores[i])
    for k in (1, 5, 10):
        assert metrics.recall_at_k(scores, labels, k) == pytest.approx(labels[order[:k]].sum() / labels.sum())
    first = next(r for r, i in enumerate(order, 1) if labels[i])
    expected = 1 / first if first <= 10 else 0.0
    assert metrics.reciprocal_rank(scores, labels, k=10) == pytest.approx(expected)


def test_rank_ties_keep_input_order():
    # Two candidates tie; the first listed ranks first, so the relevant second one is at rank 2.
    assert metrics.reciprocal_rank([0.5, 0.5, 0.1], [0, 1, 0]) == 0.5
    assert metrics.reciprocal_rank([0.9, 0.8, 0.7], [0, 0, 1], k=2) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_best_accuracy_and_f1_match_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(25) < 0.4
    labels[0] = True
    scores = np.round(rng.normal(size=25), 1)  # rounded: ties between scores
    best_acc, best_f1 = 0.0, 0.0
    for t in [*scores, np.inf]:
        pred = scores >= t
        tp, fp, fn = np.sum(pred & labels), np.sum(pred & ~labels), np.sum(~pred & labels)
        best_acc = max(best_acc, np.mean(pred == labels))
        best_f1 = max(best_f1, 2 * tp / (2 * tp + fp + fn))
    accuracy, threshold = metrics.best_accuracy(scores, labels)
    assert accuracy == pytest.approx(best_acc)
    assert np.mean((scores >= threshold) == labels) == pytest.approx(accuracy)
    f1, precision, recall, f1_threshold = metrics.best_f1(scores, labels)
    assert f1 == pytest.approx(best_f1)
    pred = scores >= f1_threshold
    assert precision == pytest.approx(np.sum(pred & labels) / np.sum(pred))
    assert recall == pytest.approx(np.sum(pred & labels) / np.sum(labels))


# --------------------------------------------------------------------------- fake data

# TREC QA: question -> [(candidate, label)], with a question that has no positive (skipped when scored).
QUESTIONS = {
    "who wrote hamlet ?": [
        ("shakespeare wrote hamlet .", 1),
        ("hamlet is a play .", 0),
        ("a dog barks .", 0),
    ],
    "where is paris ?": [("the sky is blue .", 0), ("paris is in france .", 1), ("france has paris .", 1)],
    "what is water ?": [("rain falls .", 0), ("nothing here .", 0)],
}
# SICK rows: (A, B, relatedness, entailment label)
SICK_ROWS = [
    ("a man plays a guitar", "a man is playing an instrument", 4.5, "ENTAILMENT"),
    ("a cat sleeps", "no cat is sleeping", 3.0, "CONTRADICTION"),
    ("a woman cuts onions", "a woman is cooking", 3.8, "NEUTRAL"),
    ("kids run outside", "children are running", 4.8, "ENTAILMENT"),
    ("a dog swims", "a bird flies", 1.2, "NEUTRAL"),
]


def write_trecqa(root: Path, split: str = "dev") -> Path:
    folder = root / "answer-selection/wang"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["qtext,label,atext"]
    for question, candidates in QUESTIONS.items():
        lines += [f'{question},{label},"{answer}"' for answer, label in candidates]
    (folder / f"{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / f"{split}.csv"


def write_sick_entailment(senteval: Path) -> None:
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"
    lines = [header] + [f"{i}\t{a}\t{b}\t{s}\t{e}" for i, (a, b, s, e) in enumerate(SICK_ROWS)]
    for name in ("SICK_trial.txt", "SICK_test_annotated.txt"):
        (senteval / "downstream/SICK" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data folder holding senteval/ (fake SentEval, SICK with entailment labels) and answer-selection/."""
    senteval = write_fake_senteval(tmp_path / "data/senteval")
    write_sick_entailment(senteval)
    write_trecqa(tmp_path / "data")
    return senteval


def random_table(sentences, dim: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: rng.normal(size=dim) for s in dict.fromkeys(sentences)}


def _cos(u, v) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


# --------------------------------------------------------------------------- the task types on fake data


def test_trecqa_reranking_map_and_mrr_by_hand(data):
    suite = load_suite(["TRECQA-rerank"], data_dir=data, split="dev")
    (task,) = suite.tasks
    assert task.queries == list(QUESTIONS) and task.n_items == 8
    table = random_table(task.sentences(), seed=3)
    result = evaluate(lambda s: np.stack([table[x] for x in s]), suite)
    detail = result.details["TRECQA-rerank"]
    assert isinstance(detail, RerankingScore)
    aps, rrs = [], []
    for question, candidates in list(QUESTIONS.items())[:2]:  # the third has no correct answer
        ranked = sorted(candidates, key=lambda c: -_cos(table[question], table[c[0]]))
        hits = [i for i, (_, label) in enumerate(ranked, 1) if label]
        aps.append(np.mean([(n + 1) / rank for n, rank in enumerate(hits)]))
        rrs.append(1 / hits[0])
    assert detail.map == pytest.approx(np.mean(aps)) and detail.mrr_at_10 == pytest.approx(np.mean(rrs))
    assert (detail.n_queries, detail.n_skipped, detail.n_candidates) == (2, 1, 6)
    assert result["trec-qa"] == pytest.approx(100 * np.mean(aps))


def test_sick_pair_classification(data):
    suite = load_suite(["SICK-pairclass"], data_dir=data, split="test")
    table = random_table(suite.sentences, seed=1)
    result = evaluate(lambda s: np.stack([table[x] for x in s]), suite)
    detail = result.details["SICK-pairclass"]
    assert isinstance(detail, PairClassificationScore)
    cos = [_cos(table[a], table[b]) for a, b, _, _ in SICK_ROWS]
    labels = [e == "ENTAILMENT" for *_, e in SICK_ROWS]
    assert detail.ap == pytest.approx(average_precision_score(labels, cos))
    assert (detail.n_pairs, detail.n_positive) == (5, 2)
    assert result.scores["SICK-pairclass"] == pytest.approx(100 * detail.ap)


def test_stsb_retrieval_is_exact_search(data):
    suite = load_suite(["STSB-retrieval"], data_dir=data, split="dev")
    (task,) = suite.tasks
    rows = [(a, b, g) for a, b, g in _stsb_dev_rows(data)]
    assert task.queries == list(dict.fromkeys(a for a, _, g in rows if g >= 4))
    assert task.corpus == list(dict.fromkeys(b for _, b, _ in rows))
    table = random_table(suite.sentences, seed=2)
    detail = evaluate(lambda s: np.stack([table[x] for x in s]), suite).details["STSB-retrieval"]
    assert isinstance(detail, RetrievalScore)
    ndcgs, r5 = [], []
    for query in task.queries:
        relevant = {b for a, b, g in rows if a == query and g >= 4}
        sims = [_cos(table[query], table[doc]) for doc in task.corpus]
        labels = [doc in relevant for doc in task.corpus]
        ndcgs.append(ndcg_score([labels], [sims], k=10))
        top5 = sorted(range(len(sims)), key=lambda i: -sims[i])[:5]
        r5.append(sum(labels[i] for i in top5) / len(relevant))
    assert detail.ndcg_at_10 == pytest.approx(np.mean(ndcgs)) and detail.recall_at_5 == pytest.approx(
        np.mean(r5)
    )
    assert detail.n_queries == len(task.queries) and detail.n_corpus == len(task.corpus)


def _stsb_dev_rows(data: Path):
    for line in (data / "downstream/STS/STSBenchmark/sts-dev.csv").read_text(encoding="utf-8").splitlines():
        fields = line.strip().split("\t")
        yield " ".join(fields[5].split()), " ".join(fields[6].split()), float(fields[4])


def test_mixed_tasks_encode_once_and_sts_scores_are_unchanged(data):
    names = ["STSBenchmark", "SICK-R", "TRECQA-rerank", "SICK-pairclass", "STSB-retrieval"]
    suite = load_suite(names, data_dir=data, split="dev")
    table = random_table(suite.sentences, seed=7)
    calls = []

    def encode(sentences):
        calls.append(list(sentences))
        return np.stack([table[s] for s in sentences])

    result = evaluate(encode, suite)
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0])) == result.n_sentences
    assert set(calls[0]) == {s for t in suite.tasks for s in t.sentences()}
    sts_only = evaluate(encode, ["STSBenchmark", "SICK-R"], data_dir=data, split="dev")
    (stsb,) = suite.tasks[0].pairs
    cos = [_cos(table[a], table[b]) for a, b in zip(stsb.sentences1, stsb.sentences2, strict=True)]
    assert result["STSBenchmark"] == pytest.approx(spearmanr(cos, stsb.scores).statistic * 100)
    for name in ("STSBenchmark", "SICKRelatedness"):
        assert result.scores[name] == sts_only.scores[name]
    assert list(result.scores) == [
        "STSBenchmark",
        "SICKRelatedness",
        "TRECQA-rerank",
        "SICK-pairclass",
        "STSB-retrieval",
    ]
    assert result.partial and result.average == pytest.approx(np.mean(list(result.scores.values())))


def test_evaluate_layers_encodes_once_for_every_layer(data):
    names = ["STSBenchmark", "TRECQA-rerank", "SICK-pairclass"]
    suite = load_suite(names, data_dir=data, split="dev")
    tables = {layer: random_table(suite.sentences, seed=10 + layer) for layer in (0, 2, -1)}
    calls = []

    def encode_layers(sentences, layers):
        calls.append((list(sentences), list(layers)))
        return {layer: np.stack([tables[layer][s] for s in sentences]) for layer in layers}

    results = evaluate_layers(encode_layers, [0, 2, -1], suite)
    assert len(calls) == 1 and calls[0][1] == [0, 2, -1]
    for layer, result in results.items():
        alone = evaluate(lambda s, layer=layer: np.stack([tables[layer][x] for x in s]), suite)
        assert result.scores == alone.scores
    assert results[0].scores != results[2].scores


def test_typed_records_round_trip(data):
    suite = load_suite(
        ["STSBenchmark", "TRECQA-rerank", "SICK-pairclass", "STSB-retrieval"], data_dir=data, split="dev"
    )
    table = random_table(suite.sentences, seed=4)
    result = evaluate(lambda s: np.stack([table[x] for x in s]), suite)
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert record["details"]["TRECQA-rerank"]["type"] == "reranking"
    assert record["details"]["STSB-retrieval"]["main_metric"] == "ndcg_at_10"
    back = EvalResult.from_dict(record)
    assert isinstance(back.details["STSBenchmark"], TaskScore)
    assert back.details == result.details and back.scores == result.scores


def test_format_table_has_a_column_per_task_main_metric(data):
    suite = load_suite(["TRECQA-rerank", "SICK-pairclass", "STSB-retrieval"], data_dir=data, split="dev")
    table = random_table(suite.sentences, seed=5)
    result = evaluate(lambda s: np.stack([table[x] for x in s]), suite)
    lines = format_table({"m": result, "again": result.to_dict()}).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["model", "TRECQA MAP", "SICK-E AP", "STSB-ret nDCG@10", "Avg"]
    assert f"{result['TRECQA-rerank']:.2f}" in lines[2] and lines[2].split("|")[2:] == lines[3].split("|")[2:]
    assert len({len(line) for line in lines[:4]}) == 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("name", "suggested"), [("trecqa-rernk", "TRECQA-rerank"), ("sick-pairclas", "SICK-pairclass")]
)
def test_unknown_task_names_the_nearest(name, suggested):
    with pytest.raises(PromptlabError, match=f"Did you mean: {suggested}"):
        resolve_task(name)
    assert resolve_task("trec-qa").name == "TRECQA-rerank" and resolve_task("sts-b").name == "STSBenchmark"


def test_missing_task_file_names_file_and_places(tmp_path):
    senteval = write_fake_senteval(tmp_path / "data/senteval")
    with pytest.raises(PromptlabError) as err:
        load_suite(["TRECQA-rerank"], data_dir=senteval, split="dev")
    message = str(err.value)
    assert "answer-selection/wang/dev.csv" in message
    assert (
        str(senteval / "answer-selection/wang") in message
        and str(tmp_path / "data/answer-selection/wang") in message
    )
    with pytest.raises(PromptlabError, match="TRECQA-rerank has no 'test' split .it has: train, dev"):
        load_suite(["TRECQA-rerank"], data_dir=senteval, split="test")
    with pytest.raises(PromptlabError, match="no copy on the hub"):
        load_suite(["SICK-pairclass"], split="dev", source="hub")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("who ?,2,an answer", ":3: label '2' is not 0 or 1"),
        ("who ?,1", ":3: 2 fields, expected 3"),
        ('"",1,an answer', ":3: empty question"),
    ],
)
def test_malformed_trecqa_row_names_file_and_line(data, line, message):
    path = data.parent / "answer-selection/wang/dev.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n", encoding="utf-8")
    with pytest.raises(PromptlabError, match=message) as err:
        load_suite(["TRECQA-rerank"], data_dir=data, split="dev")
    assert str(path) in str(err.value)


def test_malformed_trecqa_header_and_sick_label(data):
    path = data.parent / "answer-selection/wang/dev.csv"
    path.write_text("question,label,answer\nq,1,a\n", encoding="utf-8")
    with pytest.raises(PromptlabError, match="dev.csv:1: the header .* qtext,label,atext"):
        load_suite(["TRECQA-rerank"], data_dir=data, split="dev")
    sick = data / "downstream/SICK/SICK_trial.txt"
    sick.write_text(sick.read_text(encoding="utf-8").replace("NEUTRAL", "MAYBE", 1), encoding="utf-8")
    with pytest.raises(PromptlabError, match=r"SICK_trial.txt:4: entailment label 'MAYBE'"):
        load_suite(["SICK-pairclass"], data_dir=data, split="dev")


# --------------------------------------------------------------------------- BM25


def test_bm25_ranker_matches_the_formula(data):
    from promptlab.evaluation.bm25 import bm25_ranker, evaluate_bm25, tokenize

    (task,) = load_suite(["TRECQA-rerank"], data_dir=data, split="dev").tasks
    docs = [tokenize(d) for d in dict.fromkeys(s for c in task.candidates for s in c)]
    avgdl, n = np.mean([len(d) for d in docs]), len(docs)

    def by_hand(query: str, doc: str) -> float:
        words, total = tokenize(doc), 0.0
        for term in tokenize(query):
            df = sum(term in d for d in docs)
            if df == 0:
                continue
            idf = math.log((n - df + 0.5) / (df + 0.5))
            assert idf > 0  # the fake collection has no term in more than half of the documents
            tf = words.count(term)
            total += idf * tf * 2.5 / (tf + 1.5 * (1 - 0.75 + 0.75 * len(words) / avgdl))
        return total

    ranker = bm25_ranker(task)
    for query, candidates in zip(task.queries, task.candidates, strict=True):
        np.testing.assert_allclose(ranker(query, candidates), [by_hand(query, c) for c in candidates])
    result = evaluate_bm25(["TRECQA-rerank"], data_dir=data, split="dev")
    expected = task.score_ranker(lambda q, c: np.array([by_hand(q, x) for x in c]))
    assert result.details["TRECQA-rerank"] == expected
    with pytest.raises(PromptlabError, match="reranking tasks only"):
        evaluate_bm25(["SICK-pairclass"], data_dir=data, split="dev")


# --------------------------------------------------------------------------- the CLI


def test_cli_eval_new_tasks_prints_main_metrics_and_records_typed_results(
    tiny_llama_dir, data, tmp_path, capsys, monkeypatch
):
    from promptlab.cli import main

    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "run.json"
    argv = [
        "eval",
        "--model",
        str(tiny_llama_dir),
        "--data-dir",
        str(data),
        "--split",
        "dev",
        "--output",
        str(output),
    ]
    assert main([*argv, "--tasks", "TRECQA-rerank,SICK-pairclass,STSB-retrieval"]) == 0
    out = capsys.readouterr().out
    assert "TRECQA MAP" in out and "SICK-E AP" in out and "STSB-ret nDCG@10" in out
    record = json.loads(output.read_text())
    assert record["config"]["tasks"] == ["TRECQA-rerank", "SICK-pairclass", "STSB-retrieval"]
    assert {d["type"] for d in record["details"].values()} == {
        "reranking",
        "pair-classification",
        "retrieval",
    }
    assert record["scores"]["TRECQA-rerank"] == pytest.approx(100 * record["details"]["TRECQA-rerank"]["map"])
    assert main([*argv, "--overwrite", "--tasks", "trecqa-rernk"]) == 2
    assert "Did you mean: TRECQA-rerank" in capsys.readouterr().err


# --------------------------------------------------------------------------- the real data

DATA = Path(os.environ.get("PROMPTLAB_DATA") or Path(__file__).resolve().parents[2] / "shared/data/senteval")
needs_real = pytest.mark.skipif(
    not (DATA.parent / "answer-selection/wang/dev.csv").is_file() or not (DATA / "downstream").is_dir(),
    reason=f"no SentEval data at {DATA} or no answer-selection/ beside it",
)


@needs_real
def test_real_task_sizes():
    suite = load_suite(["TRECQA-rerank", "SICK-pairclass", "STSB-retrieval"], data_dir=DATA, split="dev")
    trecqa, sick, retrieval = suite.tasks
    assert isinstance(trecqa, RerankingTask) and len(trecqa.queries) == 81 and trecqa.n_items == 1148
    assert len(trecqa.judged()) == 65  # questions with a correct and a wrong candidate
    assert sick.n_items == 500 and int(sick.labels.sum()) == 144
    assert len(retrieval.corpus) == 1467 and len(retrieval.queries) == 262
    assert set(CATALOG) >= {"TRECQA-rerank", "SICK-pairclass", "STSB-retrieval"}


@needs_real
def test_real_bm25_and_bag_of_words_on_trecqa_dev():
    from promptlab.evaluation.bm25 import evaluate_bm25

    bm25 = evaluate_bm25(data_dir=DATA, split="dev").details["TRECQA-rerank"]
    words = evaluate(bag_of_words, ["TRECQA-rerank"], data_dir=DATA, split="dev").details["TRECQA-rerank"]
    print(f"\nTREC QA dev MAP: BM25 {bm25.map:.4f}, bag of words {words.map:.4f}")
    assert 0.6 < bm25.map < 0.8 and 0.5 < words.map < bm25.map


def test_vectors_lookup():
    vectors = Vectors({"a": 1, "b": 0}, np.array([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_array_equal(vectors.rows(["a", "b", "a"]), [[0.0, 2.0], [1.0, 0.0], [0.0, 2.0]])


# --------------------------------------------------------------------------- selecting on any task


def _map_by_hand(embedder) -> float:
    """MAP of the embedder's cosines over the fake TREC QA questions that have a correct and a wrong answer."""
    aps = []
    for question, candidates in QUESTIONS.items():
        labels = [label for _, label in candidates]
        if 0 < sum(labels) < len(labels):
            q, *c = embedder.encode([question, *(a for a, _ in candidates)]).astype(np.float64)
            aps.append(average_precision_score(labels, [_cos(q, x) for x in c]))
    return float(np.mean(aps))


def test_search_and_sweep_select_on_any_task(tiny_llama, data, tmp_path, monkeypatch):
    from conftest import backend_for

    from promptlab.cli import main
    from promptlab.demonstrations import Demonstration
    from promptlab.embedder import Embedder
    from promptlab.experiments.results import read_rows
    from promptlab.experiments.scoring import Benchmark

    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_llama
    model_dir = tmp_path / "tiny-llama"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    demo = Demonstration("guitar", "A man plays a guitar.", "Music", source="test")
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps(demo.to_dict()) + "\n")
    search = tmp_path / "search.jsonl"
    argv = ["search-demos", "--model", str(model_dir), "--pool", str(pool), "--dtype", "float32"]
    argv += ["--output", str(search), "--data-dir", str(data), "--select-on", "trec-qa"]
    assert main(argv) == 0
    rows = {r["key"]["demonstration"]: r for r in read_rows(search)}
    backend = backend_for(tiny_llama)
    for demo_id, demonstration in (("none", None), ("guitar", demo)):
        row = rows[demo_id]
        assert list(row["scores"]) == ["TRECQA-rerank"] and row["fixed"]["tasks"] == ["TRECQA-rerank"]
        expected = _map_by_hand(Embedder(backend, "prompteol", demonstration=demonstration))
        assert row["score"] == pytest.approx(100 * expected, abs=1e-3)
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(f'models = ["{model_dir}"]\ndtypes = ["float32"]\n[[grid]]\ntemplates = ["prompteol"]\n')
    sweep = tmp_path / "sweep.jsonl"
    assert (
        main(["sweep", str(cfg), "--output", str(sweep), "--data-dir", str(data), "--select-on", "SICK-e"])
        == 0
    )
    (row,) = read_rows(sweep)
    assert list(row["scores"]) == ["SICK-pairclass"] and row["data"]["split"] == "dev"
    assert row["details"]["SICK-pairclass"]["type"] == "pair-classification"
    with pytest.raises(PromptlabError, match="dev_pairs .a seeded subset. applies to STS-B dev only"):
        Benchmark(tasks=("TRECQA-rerank",), dev_pairs=5, data_dir=str(data))
    # The printed table names the task it selected on.
    from promptlab.experiments.search import format_top

    assert format_top(list(rows.values())).splitlines()[0].startswith("| rank | TRECQA-rerank dev |")


# --------------------------------------------------------------------------- the contamination set


def test_contamination_set_holds_every_scored_eval_sentence_with_where_it_occurs(tmp_path):
    from test_evaluation import FAKE, SHARED

    from promptlab.evaluation.contamination import eval_items, letters_and_digits
    from promptlab.experiments.pool import eval_sentences
    from promptlab.finetune.data import eval_items as finetune_items

    senteval = write_fake_senteval(tmp_path / "senteval")
    parts = [(t, p) for t in FAKE for p in FAKE[t] if t.startswith("STS1")]
    parts += [(t, s) for t in ("STSBenchmark", "SICKRelatedness") for s in ("dev", "test")]
    rows = [(a, b) for t, p in parts for a, b, g in FAKE[t][p] if g is not None]
    items = eval_items(senteval)
    assert set(items.sentences) == {" ".join(s.split()).lower() for r in rows for s in r}
    assert items.pairs == {frozenset(" ".join(s.split()).lower() for s in r) for r in rows}
    assert items.where(SHARED.upper()) == "SICKRelatedness test; STS12 test (MSRpar); STSBenchmark test"
    assert items.where("never evaluated") == "" and items.has_pair(*rows[0][::-1])
    train_only = FAKE["STSBenchmark"]["train"][1][0]
    assert train_only not in {s for r in rows for s in r} and items.where(train_only) == ""
    # The pool builder and fine-tuning read this same set, under their own keys.
    loose = eval_sentences(senteval)
    assert set(loose) == {letters_and_digits(s) for r in rows for s in r}
    assert loose[letters_and_digits(SHARED)] == items.where(SHARED)
    assert finetune_items(senteval).sentences == items.sentences
