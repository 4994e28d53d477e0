"""`benchmarks/template_cost.py` on a tiny model: every row measured, costs relative to the first row, and the
tokens each row runs counted again from the prompts themselves."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SENTEVAL

from promptlab.embedder import Embedder
from promptlab.prefix_cache import shared_prefix_length

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "template_cost.py"
sys.path.insert(0, str(BENCH.parent))
from bench import sample_sentences  # noqa: E402

pytestmark = pytest.mark.skipif(not SENTEVAL.is_dir(), reason=f"no SentEval data at {SENTEVAL}")
ROWS = ["prompteol", "metaeol", "none:mean", "prompteol+eol-opt-125m"]


def test_template_cost_rows_ratios_and_tokens(tiny_llama_dir, tmp_path):
    out = tmp_path / "cost.json"
    argv = [sys.executable, str(BENCH), "--model", str(tiny_llama_dir), "--rows", ",".join(ROWS)]
    argv += ["--pairs", "5", "--rounds", "2", "--threads", "1", "--data-dir", str(SENTEVAL)]
    subprocess.run([*argv, "--output", str(out)], check=True, capture_output=True, timeout=600)
    record = json.loads(out.read_text())
    assert list(record["rows"]) == ROWS
    first = record["rows"]["prompteol"]
    for row in record["rows"].values():
        assert len(row["rounds_seconds"]) == 2 and row["seconds"] == min(row["rounds_seconds"])
        assert row["ratio"] == pytest.approx(row["seconds"] / first["seconds"])
    assert first["ratio"] == 1.0

    # Tokens, recounted: each member's prompts of the unique sentences, the prefix they all share once.
    unique = list(dict.fromkeys(sample_sentences(str(SENTEVAL), 5, 0)))
    assert record["unique_sentences"] == len(unique)
    expected = {}
    for name, options in {
        "prompteol": {"template": "prompteol"},
        "metaeol": {"template": "metaeol"},
        "none:mean": {"template": "none", "pooling": "mean"},
        "prompteol+eol-opt-125m": {"template": "prompteol", "demonstration": "eol-opt-125m"},
    }.items():
        embedder = Embedder(str(tiny_llama_dir), dtype="float32", **options)
        prompt_tokens = run = 0
        for part in embedder.members or [embedder]:
            ids = [part.prompts.encode(s).ids for s in unique]
            prompt_tokens += sum(map(len, ids))
            run += sum(map(len, ids)) - shared_prefix_length(ids) * (len(ids) - 1)
        expected[name] = (prompt_tokens, run)
        assert (record["rows"][name]["prompt_tokens"], record["rows"][name]["tokens_run"]) == expected[name]
    # MetaEOL's four long prompts run about four times PromptEOL's tokens; a demonstration's prefix runs once.
    assert expected["metaeol"][1] > 3 * expected["prompteol"][1]
    demo = record["rows"]["prompteol+eol-opt-125m"]
    assert demo["tokens_run"] < demo["prompt_tokens"]
    table = out.with_suffix(".md").read_text()
    assert "| metaeol |" in table and "cost (× prompteol)" in table


def test_template_cost_refuses_an_unknown_template_before_loading(tmp_path):
    run = subprocess.run(
        [sys.executable, str(BENCH), "--model", str(tmp_path / "no-model"), "--rows", "prompteol,metaeoll"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "metaeoll" in run.stderr and "Traceback" not in run.stderr
