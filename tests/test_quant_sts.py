"""`benchmarks/quant_sts.py` end to end on a tiny model: rows in child processes, ratios to the reference,
the matmul-peak fraction, and a saved record's table re-rendered unchanged."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SENTEVAL
from scipy.stats import spearmanr

from promptlab.embedder import Embedder

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "quant_sts.py"
pytestmark = pytest.mark.skipif(not SENTEVAL.is_dir(), reason=f"no SentEval data at {SENTEVAL}")


def test_quant_sts_rows_ratios_and_render(tiny_llama_dir, tmp_path):
    out = tmp_path / "q.json"
    argv = [
        sys.executable,
        str(BENCH),
        "--model",
        str(tiny_llama_dir),
        "--pairs",
        "6",
        "--tasks",
        "STS12,SICKRelatedness",
    ]
    argv += [
        "--configs",
        "fp32,default",
        "--peak-seconds",
        "0.05",
        "--bootstrap",
        "20",
        "--data-dir",
        str(SENTEVAL),
    ]
    subprocess.run([*argv, "--output", str(out)], check=True, capture_output=True, timeout=600)
    record = json.loads(out.read_text())
    fp32, default = record["results"]["fp32"], record["results"]["default"]
    assert record["reference"] == "fp32" and fp32["speed_ratio"] == 1.0 and fp32["rss_ratio"] == 1.0
    speed = default["sentences_per_second"] / fp32["sentences_per_second"]
    assert default["speed_ratio"] == pytest.approx(speed) and len(default["delta_average_ci95"]) == 2
    # The default computes in float32, or in bfloat16 on a CPU with bf16 matmuls.
    assert default["cosine_to_reference"]["min"] > (0.9999 if default["dtype"] == "float32" else 0.95)
    # The peak fraction: 2 x non-embedding parameters x tokens / seconds / the measured float32 peak.
    model = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32")
    params = sum(p.numel() for n, p in model.backend.model.named_parameters() if "embed_tokens" not in n)
    rate = 2 * params * fp32["tokens"] / fp32["seconds"]
    assert fp32["fraction_of_matmul_peak"] == pytest.approx(rate / record["matmul_peak_flops"]["float32"])
    # The float32 scores, recomputed independently: Spearman of the cosines of the same sampled pairs.
    sys.path.insert(0, str(BENCH.parent))
    from quant_sts import load_pairs

    for task, (first, second, gold) in load_pairs(str(SENTEVAL), 6, 0, ("STS12", "SICKRelatedness")).items():
        a, b = model.encode(first), model.encode(second)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert fp32["scores"][task] == pytest.approx(100 * spearmanr(cos, gold).statistic, abs=1e-6)
    table = out.with_suffix(".md").read_text()
    assert f"| default | {default['dtype']} |" in table and "(1.00×)" in table
    subprocess.run([sys.executable, str(BENCH), "--render", str(out)], check=True, capture_output=True)
    assert out.with_suffix(".md").read_text() == table


def test_quant_sts_rerun_keeps_finished_rows(tiny_llama_dir, tmp_path):
    """A run started again with more rows keeps the finished ones (their measurements unchanged) and adds the
    rest; a run of other pairs into the same record is refused before it touches it."""
    out = tmp_path / "q.json"
    argv = [sys.executable, str(BENCH), "--model", str(tiny_llama_dir), "--tasks", "STS12"]
    argv += ["--bootstrap", "0", "--peak-seconds", "0", "--data-dir", str(SENTEVAL), "--output", str(out)]
    subprocess.run([*argv, "--pairs", "5", "--configs", "fp32"], check=True, capture_output=True, timeout=600)
    first = json.loads(out.read_text())["results"]["fp32"]
    run = subprocess.run(
        [*argv, "--pairs", "5", "--configs", "fp32,fp16"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "fp32: kept from the run of" in run.stdout
    record = json.loads(out.read_text())
    assert record["results"]["fp32"]["seconds"] == first["seconds"]
    assert record["results"]["fp32"]["measured"] == first["measured"]
    fp16 = record["results"]["fp16"]
    assert (
        fp16["dtype"] == "float16" and fp16["speed_ratio"] > 0 and fp16["cosine_to_reference"]["min"] > 0.99
    )
    table = out.with_suffix(".md").read_text()
    refused = subprocess.run(
        [*argv, "--pairs", "4", "--configs", "fp32"], capture_output=True, text=True, timeout=600
    )
    assert refused.returncode == 2 and "holds rows of another run" in refused.stderr
    assert "remove that folder, or give another --output" in refused.stderr.strip().splitlines()[-1]
    assert out.with_suffix(".md").read_text() == table and json.loads(out.read_text()) == record
