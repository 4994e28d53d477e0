"""`benchmarks/forward_profile.py`: its op categories and ceilings on a real (tiny) forward."""

import sys
from pathlib import Path

import pytest
from conftest import backend_for

from promptlab.embedder import Embedder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import forward_profile  # noqa: E402


@pytest.mark.parametrize(
    "op, expected",
    [
        ("aten::mm", "matmul"),
        ("aten::addmm", "matmul"),
        ("mkldnn::_linear_pointwise", "matmul"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::scaled_dot_product_attention", "attention"),
        ("aten::silu", "other"),
        ("aten::linear", "other"),  # a wrapper: its mm is counted as its own leaf
    ],
)
def test_op_categories(op, expected):
    assert forward_profile.category(op) == expected


def test_measure_splits_a_real_forward_and_bounds_it(tiny_llama):
    embedder = Embedder(backend_for(tiny_llama), "prompteol")
    sentences = [f"Sentence {i} is {'quite ' * (i % 4)}short." for i in range(24)]
    embedder.encode(sentences[:4])
    peak = 1e12
    row = forward_profile.measure(embedder, sentences, rounds=1, flops_per_token=2e6, peak=peak)
    split = row["op_seconds"]
    assert split["matmul"] > 0 and split["attention"] > 0 and split["other"] > 0
    assert sum(row["op_share_percent"].values()) == pytest.approx(100)
    assert row["tokens"] == embedder.last_stats["tokens"] > 24
    # Taking time away can only raise the share of peak: each ceiling bounds the one before it. The bound
    # holds within one run (the profiled one); the timed runs are separate, and another process can slow
    # the profiled one, so they are not compared with its op times.
    assert row["profiled_percent_of_peak"] < row["ceiling_matmuls_and_attention_percent"]
    assert row["ceiling_matmuls_and_attention_percent"] < row["ceiling_matmuls_only_percent"]
    assert row["matmul_gflops_in_forward"] == pytest.approx(
        2e6 * row["tokens"] / split["matmul"] / 1e9, rel=1e-9
    )
