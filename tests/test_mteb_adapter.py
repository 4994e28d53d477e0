"""The MTEB adapter, offline, on the mock tasks shipped in mteb's wheel; expected scores computed here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SENTEVAL as REAL
from conftest import backend_for
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, ndcg_score
from test_evaluation import bag_of_words, write_fake_senteval

from promptlab.cli import main
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError
from promptlab.evaluation import evaluate
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


# --------------------------------------------------------------------------- mteb's scorer on local STS-B


def local_stsb_task(data_dir: Path, split: str = "test"):
    """mteb's own STSBenchmark task, its data read here from SentEval's ``sts-<split>.csv`` (no hub):
    tab-separated, gold in field 4, the sentences in fields 5 and 6, whitespace runs collapsed."""
    from datasets import Dataset, DatasetDict
    from mteb.tasks.sts.eng.sts_benchmark_sts import STSBenchmarkSTS

    lines = (data_dir / "downstream/STS/STSBenchmark" / f"sts-{split}.csv").read_text(encoding="utf-8")
    rows = [line.strip().split("\t") for line in lines.splitlines() if line.strip()]
    columns = {
        "sentence1": [" ".join(r[5].split()) for r in rows],
        "sentence2": [" ".join(r[6].split()) for r in rows],
        "score": [float(r[4]) for r in rows],
    }

    class LocalSTSBenchmark(STSBenchmarkSTS):
        def load_data(self, num_proc=None, **kwargs) -> None:
            self.dataset = DatasetDict({"test": Dataset.from_dict(columns)})
            self.data_loaded = True

    return LocalSTSBenchmark(), columns


def mteb_main_score(mteb, model, task) -> float:
    """mteb's main score (x 100, as promptlab's tables show it) of ``model`` on one task object."""
    results = mteb.evaluate(model, [task], cache=None, show_progress_bar=False)
    (result,) = results.task_results
    return 100 * result.get_score()


def _separated(cosines: np.ndarray) -> None:
    """Spearman compares ranks: cosines closer than float32 rounding would let rounding decide them."""
    gaps = np.diff(np.sort(cosines))
    assert not np.any((gaps > 0) & (gaps < 1e-6)), f"near-tied cosines: {np.sort(cosines)}"


def test_mteb_scores_local_stsb_as_promptlab_does(tiny_llama, tmp_path):
    mteb = pytest.importorskip("mteb", minversion="2.0")
    data_dir = write_fake_senteval(tmp_path / "senteval")
    embedder = Embedder(backend_for(tiny_llama), "prompteol", layer=-1)
    task, columns = local_stsb_task(data_dir)
    a = embedder.encode(columns["sentence1"]).astype(np.float64)
    b = embedder.encode(columns["sentence2"]).astype(np.float64)
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    _separated(cosines)
    expected = 100 * spearmanr(cosines, columns["score"]).statistic
    assert len(cosines) == 5 and not np.isnan(expected)

    ours = evaluate(embedder.encode, ["STSBenchmark"], data_dir=data_dir)["STSBenchmark"]
    theirs = mteb_main_score(mteb, mteb_encoder(embedder), task)
    assert ours == pytest.approx(expected, abs=1e-6)
    assert theirs == pytest.approx(ours, abs=0.01)


@pytest.mark.skipif(not (REAL / "downstream/STS/STSBenchmark/sts-test.csv").is_file(), reason="no real data")
def test_real_mteb_scores_local_stsb_as_promptlab_does():
    # smollm2-135m takes ~9 minutes here on one CPU thread (both scorers encode): a hashed bag of words
    # stands in for it; ties in its cosines are exact (equal counts), ranked alike by both scorers.
    mteb = pytest.importorskip("mteb", minversion="2.0")
    task, columns = local_stsb_task(REAL)
    assert len(columns["score"]) == 1379
    ours = evaluate(bag_of_words, ["STSBenchmark"], data_dir=REAL)["STSBenchmark"]
    theirs = mteb_main_score(mteb, mteb_encoder(bag_of_words), task)
    assert 35 < ours < 60
    assert theirs == pytest.approx(ours, abs=0.01)


# --------------------------------------------------------------------------- promptlab mteb


def test_mteb_command_unknown_task_gets_suggestions(capsys):
    pytest.importorskip("mteb", minversion="2.0")
    assert main(["mteb", "--model", "no-such-model", "--tasks", "STSBenchmrk"]) == 2
    err = capsys.readouterr().err
    assert "unknown MTEB task" in err and "Did you mean: 'STSBenchmark'" in err
    assert len(err.strip().splitlines()) == 1


def test_mteb_command_offline_says_the_data_needs_the_hub(monkeypatch, tmp_path, capsys):
    pytest.importorskip("mteb", minversion="2.0")
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    # The model spec is never read: tasks and their data are checked first.
    assert main(["mteb", "--model", "no-such-model", "--tasks", "STSBenchmark"]) == 2
    err = capsys.readouterr().err
    assert "MTEB task STSBenchmark reads its data (mteb/stsbenchmark-sts) from the Hugging Face Hub" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_mteb_command_scores_and_writes_results(tiny_llama, tiny_llama_dir, tmp_path, monkeypatch, capsys):
    mteb = pytest.importorskip("mteb", minversion="2.0")
    data_dir = write_fake_senteval(tmp_path / "senteval")
    task, _ = local_stsb_task(data_dir)
    monkeypatch.setattr(mteb, "get_task", lambda name: task)  # the hub's STSBenchmark, read locally
    out = tmp_path / "mteb-results"
    argv = ["mteb", "--model", str(tiny_llama_dir), "--dtype", "float32", "--device", "cpu", "--no-cache"]
    assert main([*argv, "--tasks", "STSBenchmark", "--output-dir", str(out)]) == 0
    name, score, metric = capsys.readouterr().out.split()
    embedder = Embedder(backend_for(tiny_llama), "prompteol", layer=-1)
    expected = evaluate(embedder.encode, ["STSBenchmark"], data_dir=data_dir)["STSBenchmark"]
    assert (name, metric) == ("STSBenchmark", "cosine_spearman")
    assert float(score) == pytest.approx(expected, abs=0.01)
    (written,) = out.glob("results/*/*/STSBenchmark.json")
    assert json.loads(written.read_text())["scores"]["test"][0]["main_score"] == pytest.approx(
        expected / 100, abs=1e-4
    )
