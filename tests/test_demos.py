"""The runnable examples in demos/, run as a user runs them (a subprocess, offline) on the real packaged models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SENTEVAL

from promptlab.experiments.results import read_rows

DEMOS = Path(__file__).resolve().parents[1] / "demos"
pytestmark = pytest.mark.slow
needs_data = pytest.mark.skipif(not SENTEVAL.is_dir(), reason=f"SentEval data not at {SENTEVAL}")


def run_demo(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PROMPTLAB_DATA": str(SENTEVAL.resolve()),
    }
    return subprocess.run(
        [sys.executable, str(DEMOS / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_every_demo_is_tested():
    tested = {
        "quickstart.py", "semantic_search.py", "compare_methods.py", "demonstration_search.py", "finetune_cse.py",
    }  # fmt: skip
    assert {p.name for p in DEMOS.glob("*.py")} == tested


def test_quickstart_finds_every_paraphrase(tmp_path):
    done = run_demo("quickstart.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "smollm2-135m, template 'prompteol'" in done.stdout
    assert "8/8 sentences have their paraphrase as nearest neighbour" in done.stdout
    nf4 = run_demo("quickstart.py", "--quantization", "nf4", cwd=tmp_path)  # bitsandbytes 4-bit on the CPU
    assert nf4.returncode == 0, nf4.stderr
    assert ", nf4: (8, 576)" in nf4.stdout and "8/8 sentences" in nf4.stdout
    bad = run_demo("quickstart.py", "--template", "prompteoll", cwd=tmp_path)
    assert bad.returncode == 2 and "prompteol" in bad.stderr and "Traceback" not in bad.stderr


def test_semantic_search_ranks_and_reuses_cached_vectors(tmp_path):
    cache = tmp_path / "vectors"
    first = run_demo("semantic_search.py", "--cache-dir", str(cache), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    hits = int(re.search(r"(\d)/5 queries found the expected sentence first", first.stdout).group(1))
    assert hits >= 4, first.stdout
    assert any(cache.rglob("*.npz"))  # the corpus vectors were written to the cache...
    again = run_demo("semantic_search.py", "--cache-dir", str(cache), cwd=tmp_path)
    # ...and read back: the same rankings and scores (only the timing line differs).
    assert again.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat chased a mouse.\n\nStocks rallied after the earnings report.\n")
    own = run_demo(
        "semantic_search.py", "--corpus", str(corpus), "--query", "share prices", "--top", "1", "--no-cache",
        cwd=tmp_path,
    )  # fmt: skip
    assert own.returncode == 0, own.stderr
    assert "1. " in own.stdout and "Stocks rallied after the earnings report." in own.stdout
    assert "The cat chased" not in own.stdout and "queries found" not in own.stdout
    missing = run_demo("semantic_search.py", "--corpus", str(tmp_path / "nope.txt"), cwd=tmp_path)
    assert missing.returncode == 2 and "cannot read --corpus" in missing.stderr


@needs_data
def test_compare_methods_puts_the_prompt_far_ahead_of_last_token_pooling(tmp_path):
    adapter = DEMOS.parent / "experiments/finetune/runs/smollm2-sup-lora/best"  # the committed CSE adapter
    done = run_demo(
        "compare_methods.py", "--dev-pairs", "100", "--methods", "prompteol,last", "--adapter", str(adapter),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    scores = {
        row[0].strip(): float(row[2])
        for row in (line.strip("|").split("|") for line in done.stdout.splitlines() if line.startswith("| "))
        if row[2].strip().replace(".", "").isdigit()
    }
    assert set(scores) == {"PromptEOL", "no prompt, last token", "+ CSE adapter (LoRA)"}
    # The PromptEOL paper's findings, on a real model: the prompt beats raw last-token pooling by a wide
    # margin, and contrastive fine-tuning (CSE) lifts the prompt further (80.96 vs ~60 on its dev subset).
    assert scores["PromptEOL"] > scores["no prompt, last token"] + 10
    assert scores["+ CSE adapter (LoRA)"] > scores["PromptEOL"] + 5
    bad = run_demo("compare_methods.py", "--methods", "promptbert", cwd=tmp_path)
    assert bad.returncode == 2 and "choose from prompteol" in bad.stderr
    no_adapter = run_demo("compare_methods.py", "--adapter", str(tmp_path), cwd=tmp_path)
    assert no_adapter.returncode == 2 and "no readable promptlab_adapter.json" in no_adapter.stderr


@needs_data
def test_demonstration_search_scores_resumes_and_reports_test(tmp_path):
    out = tmp_path / "search.jsonl"
    args = ["--limit", "1", "--dev-pairs", "50", "--test-pairs", "200", "--output", str(out)]
    done = run_demo("demonstration_search.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert sorted(r["key"]["demonstration"] for r in rows) == ["eol-opt-1.3b", "none"]
    assert {r["fixed"]["dtype"] for r in rows} <= {"bfloat16", "float32"}  # the dtype that ran, never "auto"
    assert "STS-B test (200 pairs)" in done.stdout and "best: eol-opt-1.3b" in done.stdout
    again = run_demo("demonstration_search.py", *args, cwd=tmp_path)
    assert again.returncode == 0 and "2 done, 0 to do" in again.stdout
    assert len(read_rows(out)) == 2


@needs_data
def test_finetune_cse_trains_saves_and_reloads_the_adapter(tmp_path):
    run = tmp_path / "run"
    args = [
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--max-examples",
        "64",
        "--dev-pairs",
        "40",
        "--eval-every",
        "1",
    ]
    done = run_demo("finetune_cse.py", *args, "--output-dir", str(run), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    before = float(re.search(r"before training: ([\d.]+)", done.stdout).group(1))
    best = float(re.search(r"best: step \d, dev ([\d.]+)", done.stdout).group(1))
    reloaded = float(re.search(r"reloaded: dev ([\d.]+)", done.stdout).group(1))
    assert "64 training examples; 2 steps of 8" in done.stdout and "step   2: loss" in done.stdout
    assert best != before  # two optimizer steps moved the vectors
    assert reloaded == pytest.approx(best, abs=0.05)  # the saved adapter is the one training scored
    assert (run / "best" / "adapter_config.json").is_file() and (run / "log.jsonl").is_file()
    again = run_demo("finetune_cse.py", *args, "--output-dir", str(run), cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # an earlier run is never lost silently
