"""Data-parallel CSE under a real ``torchrun --nproc-per-node 2`` (gloo on CPU): the loss curve and the
adapter equal a one-process run on the same (combined) batches; only rank 0 writes; a run resumes on
another number of ranks; a batch size the ranks cannot share is refused before the model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from promptlab.cli import main
from promptlab.distributed.ddp import DataParallel
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError

PAIRS = [  # (anchor, positive, hard negative or "")
    ("A man is playing a guitar.", "a man playing guitar", "a woman slicing onion"),
    ("A woman is slicing an onion.", "woman slicing onion", ""),
    ("The cat sits on the mat.", "cat sits mat", "dogs run field"),
    ("Two dogs run through a field.", "dogs run field", ""),
    ("He said hello to everyone in the room?", "hello everyone room", "cat sits mat"),
    ("A jockey riding a horse.", "jockey horse riding", ""),
    ("Children watch while dogs run!", "children watch dogs", "jockey horse riding"),
    ("Represent the sentence for searching.", "represent searching", ""),
]


def write_run(tmp_path: Path, model: Path, **extra) -> Path:
    """A config for 4 supervised steps of batch 4 (hard negatives on some rows), a small STS-B dev."""
    dev = tmp_path / "senteval" / "downstream" / "STS" / "STSBenchmark"
    dev.mkdir(parents=True, exist_ok=True)
    rows = [(a, p, 5.0 - i / 2) for i, (a, p, _) in enumerate(PAIRS)]
    (dev / "sts-dev.csv").write_text(
        "".join(
            f"main-captions\tMSRvid\t2012\t{i:04d}\t{g:.3f}\t{a}\t{b}\n" for i, (a, b, g) in enumerate(rows)
        )
    )
    csv = tmp_path / "pairs.csv"
    csv.write_text("sent0,sent1,hard_neg\n" + "".join(f"{a},{p},{n or ''}\n" for a, p, n in PAIRS))
    values = {
        "model": str(model),
        "data": [str(csv)],
        "data_dir": str(tmp_path / "senteval"),
        "holdout": "none",
        "dtype": "float32",
        "steps": 4,
        "batch_size": 4,
        "lr": 0.01,
        "schedule": "constant",
        "lora_dropout": 0.0,
        "eval_every": 2,
        "save_every": 1,
        "dev_pairs": 0,
        "num_threads": 1,
        **extra,
    }
    toml = tmp_path / "run.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return toml


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.run(
        [*command, "-m", "promptlab.cli", "finetune", *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def log_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def losses(run: Path) -> list[float]:
    return [e["loss"] for e in log_of(run) if e["event"] == "step"]


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (path,) = folder.glob("*.safetensors")
    return load_file(path)


@pytest.mark.slow  # a torchrun of two ranks and one-process runs: about a minute on two shared cores
def test_two_ranks_train_as_one_process_on_the_combined_batch(tiny_llama_dir, tmp_path, capsys):
    toml = write_run(tmp_path, tiny_llama_dir)
    single, double = tmp_path / "single", tmp_path / "double"
    assert main(["finetune", str(toml), "--output-dir", str(single), "--no-progress"]) == 0
    done = torchrun(2, str(toml), "--output-dir", str(double))
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(losses(double), losses(single), rtol=1e-5, atol=1e-6)
    events = [e["event"] for e in log_of(double)]  # rank 0 alone wrote the log: each step once
    assert events == ["start", "step", "step", "eval", "step", "step", "eval", "end"]
    assert log_of(double)[0]["world_size"] == 2
    diff = {}
    for name in ("best", "checkpoint-last"):
        ours, theirs = adapter(double / name), adapter(single / name)
        assert set(ours) == set(theirs)
        diff[name] = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    print(f"max abs LoRA weight difference, 2 ranks vs 1 process: {diff}", file=sys.stderr)
    assert max(diff.values()) < 1e-5
    sentences = [a for a, _, _ in PAIRS]
    ours = Embedder(str(tiny_llama_dir), dtype="float32", adapter=str(double / "best")).encode(sentences)
    theirs = Embedder(str(tiny_llama_dir), dtype="float32", adapter=str(single / "best")).encode(sentences)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)

    # The 2-rank run resumed on one process continues as the one-process run does.
    longer = ["--set", "steps=6"]
    assert (
        main(["finetune", str(toml), "--output-dir", str(single), "--resume", "--no-progress", *longer]) == 0
    )
    assert (
        main(["finetune", str(toml), "--output-dir", str(double), "--resume", "--no-progress", *longer]) == 0
    )
    np.testing.assert_allclose(losses(double), losses(single), rtol=1e-5, atol=1e-6)
    assert [e.get("world_size") for e in log_of(double) if e["event"] == "resume"] == [1]


def test_a_batch_the_ranks_cannot_share_is_refused(tiny_llama_dir, tmp_path):
    from promptlab.finetune.config import FinetuneConfig
    from promptlab.finetune.trainer import Trainer

    write_run(tmp_path, tiny_llama_dir)
    config = FinetuneConfig.from_toml(
        str(tmp_path / "run.toml"), {"output_dir": str(tmp_path / "r"), "batch_size": 6}
    )
    with pytest.raises(
        PromptlabError, match=r"batch_size 6 does not split evenly over 4 ranks; set batch_size"
    ):
        Trainer(config, parallel=DataParallel(rank=0, world=4))


@pytest.mark.slow
def test_torchrun_refuses_an_uneven_batch_in_one_line(tiny_llama_dir, tmp_path):
    toml = write_run(tmp_path, tiny_llama_dir, batch_size=3)
    done = torchrun(2, str(toml), "--output-dir", str(tmp_path / "run"))
    assert done.returncode != 0
    assert "batch_size 3 does not split evenly over 2 ranks; set batch_size to a multiple of 2" in done.stderr
    assert not (tmp_path / "run").exists()
