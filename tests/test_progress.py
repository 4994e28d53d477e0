"""Long work tells a log how it goes, and an interrupted encode keeps what it finished."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from conftest import CORPUS, backend_for

import promptlab.embedder as embedder_module
from promptlab.embedder import Embedder
from promptlab.progress import Progress


def test_progress_prints_rate_and_eta_lines_when_not_on_a_terminal():
    log = io.StringIO()  # not a terminal: no bar, dated lines
    with Progress(100, "embedding", enabled=True, interval=0.0, stream=log) as progress:
        for _ in range(4):
            progress.update(25)
    lines = log.getvalue().splitlines()
    assert len(lines) == 5  # one per update at interval 0, and the closing line
    pattern = (
        r"^\d\d:\d\d:\d\d embedding: (\d+)/100 sentences \(\d+%\), [\d.]+ sentences/s, \S+ elapsed, ETA \S+$"
    )
    assert [int(re.match(pattern, line).group(1)) for line in lines] == [25, 50, 75, 100, 100]
    quiet = io.StringIO()
    with Progress(100, "embedding", enabled=True, interval=3600.0, stream=quiet) as progress:
        progress.update(100)
    assert quiet.getvalue() == ""  # a job shorter than the interval logs nothing


def test_a_long_encode_logs_progress_to_a_non_terminal_stderr(tiny_llama, monkeypatch, capsys):
    monkeypatch.setattr(embedder_module, "PROGRESS_SECONDS", 0.0)
    embedder = Embedder(backend_for(tiny_llama), "prompteol", batch_size=2)
    embedder.encode(CORPUS)  # more sentences than a batch: progress is shown by default
    err = capsys.readouterr().err
    assert f"embedding: {len(CORPUS)}/{len(CORPUS)} sentences (100%)" in err and "ETA" in err
    embedder.encode(CORPUS[:1], show_progress_bar=False)
    assert capsys.readouterr().err == ""


class Interrupting:
    """A backend that raises Ctrl-C on its n-th forward, and counts the rows it embeds."""

    def __init__(self, model_and_tokenizer, interrupt_at: int | None):
        self.backend = backend_for(model_and_tokenizer)
        self.backend.info["model_file_sha256"] = "0" * 64  # a hashed model: the disk cache applies
        self.rows, self.forwards, embed = 0, 0, self.backend.embed

        def counted(batch, pooling, layers):
            self.forwards += 1
            if self.forwards == interrupt_at:
                raise KeyboardInterrupt
            self.rows += len(batch.input_ids)
            return embed(batch, pooling, layers)

        self.backend.embed = counted


@pytest.mark.parametrize("flush_seconds", [0.0, 3600.0])  # flushed as it goes / only when interrupted
def test_an_interrupted_encode_resumes_from_the_batches_it_finished(
    tiny_llama, tmp_path, monkeypatch, flush_seconds
):
    monkeypatch.setattr(embedder_module, "CACHE_FLUSH_SECONDS", flush_seconds)
    first = Interrupting(tiny_llama, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        Embedder(first.backend, "prompteol", batch_size=2, cache_dir=tmp_path).encode(CORPUS)
    assert first.rows == 4  # two batches of two finished before the interruption
    second = Interrupting(tiny_llama, interrupt_at=None)
    resumed = Embedder(second.backend, "prompteol", batch_size=2, cache_dir=tmp_path)
    vectors = resumed.encode(CORPUS)
    assert second.rows == len(CORPUS) - 4 and resumed.last_stats["from_cache"] == 4
    fresh = Embedder(backend_for(tiny_llama), "prompteol", batch_size=2).encode(CORPUS)
    np.testing.assert_allclose(vectors, fresh, atol=1e-6)


def _wait_for_more_cpu_seconds(pid: int, seconds: float) -> None:
    """Wait until process ``pid`` has used ``seconds`` more CPU time than it had (a wall-clock wait would
    measure the machine's load instead of the work done); a plain wait of ``seconds`` where /proc is missing."""
    import os
    import time
    from pathlib import Path

    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        time.sleep(seconds)
        return

    def used() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    start, deadline = used(), time.monotonic() + 300
    while used() - start < seconds and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_killed_embed_resumes_from_what_it_finished(tiny_llama_dir, tmp_path):
    """`promptlab embed` stopped by SIGTERM (a scheduler, `kill`) keeps its finished batches; a rerun
    embeds only the rest and writes the same vectors as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    source = tmp_path / "in.txt"
    source.write_text("".join(f"Sentence number {i} about {CORPUS[i % len(CORPUS)]}\n" for i in range(1000)))
    env = {**os.environ, "PROMPTLAB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}

    def embed(output: str) -> subprocess.Popen:
        argv = ["embed", "--model", str(tiny_llama_dir), "--input", str(source), "--output", output]
        code = "import sys; from promptlab.cli import main; sys.exit(main(sys.argv[1:]))"
        return subprocess.Popen(
            [sys.executable, "-c", code, *argv, "--batch-size", "1", "--dtype", "float32"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = embed(str(tmp_path / "first.npy"))
    while "ready" not in (line := first.stderr.readline()):  # the model loaded: the work starts
        assert line, "the embed process ended before loading its model"
    _wait_for_more_cpu_seconds(first.pid, 2.0)  # some batches done, however busy the machine is
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 130, first.stderr.read()
    assert "interrupted" in first.stderr.read() and not (tmp_path / "first.npy").exists()
    second = embed(str(tmp_path / "second.npy"))
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    cached = int(re.search(r"(\d+) read from the embedding cache", err).group(1))
    embedded = int(re.search(r"embedded (\d+) sentences", err).group(1))
    assert cached > 0 and embedded > 0 and cached + embedded == 1000
    fresh = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32").encode(
        source.read_text().splitlines()
    )
    np.testing.assert_allclose(np.load(tmp_path / "second.npy"), fresh, atol=1e-5)
