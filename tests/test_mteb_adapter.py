"""The MTEB adapter, offline, on the mock tasks shipped in mteb's wheel; expected scores computed here."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, ndcg_score
from test_evaluation import bag_of_words

from promptlab.errors import PromptlabError
from promptlab.evaluation.mteb_adapter import mteb_encoder


def test_missing_mteb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)  # import mteb now raises ImportError
    with pytest.raises(PromptlabError, match=r"pip install 'promptlab\[mteb\]'"):
        mteb_encoder(lambda texts: bag_of_words(texts, 64))


def _cos(u, v) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_mock_tasks_score_as_computed_here():
    mteb = pytest.importorskip("mteb", minversion="2.0")
    from mteb.mocks import mock_tasks
    from mteb.models.models_protocols import EncoderProtocol

    seen: dict[str, np.ndarray] = {}

    def encode(texts):
        vectors = bag_of_words(texts, 64)
        seen.update(zip(texts, vectors, strict=True))
        return vectors

    model = mteb_encoder(encode, name="promptlab/bag-of-words")
    assert isinstance(model, EncoderProtocol)
    tasks = [
        mock_tasks.MockSTSTask(),
        mock_tasks.MockPairClassificationTask(),
        mock_tasks.MockRetrievalTask(),
    ]
    results = mteb.evaluate(model, tasks, cache=None, show_progress_bar=False)
    scores = {r.task_name: r.scores["test"][0] for r in results.task_results}
    tasks = [type(task)() for task in tasks]  # mteb unloads a task's data after scoring it: reload
    for task in tasks:
        task.load_data()

    sts = tasks[0].dataset["test"]
    cos = [_cos(seen[a], seen[b]) for a, b in zip(sts["sentence1"], sts["sentence2"], strict=True)]
    assert scores["MockSTSTask"]["cosine_spearman"] == pytest.approx(spearmanr(cos, sts["score"]).statistic)

    pairs = tasks[1].dataset["test"]
    cos = [_cos(seen[a], seen[b]) for a, b in zip(pairs["sentence1"], pairs["sentence2"], strict=True)]
    assert scores["MockPairClassificationTask"]["cosine_ap"] == pytest.approx(
        average_precision_score(pairs["labels"], cos)
    )

    split = tasks[2].dataset["default"]["test"]
    docs = [(d["id"], next(v for t, v in seen.items() if t.endswith(d["text"]))) for d in split["corpus"]]
    ndcgs = []
    for query in split["queries"]:
        relevant = split["relevant_docs"][query["id"]]
        sims = [_cos(seen[query["text"]], v) for _, v in docs]
        ndcgs.append(ndcg_score([[relevant.get(i, 0) for i, _ in docs]], [sims], k=10))
    assert scores["MockRetrievalTask"]["ndcg_at_10"] == pytest.approx(np.mean(ndcgs), abs=1e-5)
