"""Ray Data embedding: `EmbedBatch` in a user's pipeline and ``promptlab embed --ray`` shards, both equal to
single-process `Embedder.encode`; a stopped Ray job resumes without losing a finished shard."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import corpus_sentences

from promptlab.cli import main
from promptlab.distributed import shards
from promptlab.embedder import Embedder

ray = pytest.importorskip("ray")
from promptlab.distributed.ray import EmbedBatch, embed_shards_ray  # noqa: E402


def test_an_unreachable_address_fails_in_one_line_within_the_timeout(
    tiny_llama_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("promptlab.distributed.ray.CONNECT_TIMEOUT", 2.0)
    (tmp_path / "in.txt").write_text("A sentence.\n")
    argv = [
        "embed",
        "--model",
        str(tiny_llama_dir),
        "--input",
        str(tmp_path / "in.txt"),
        "--output",
        str(tmp_path / "v"),
    ]
    for address in ("127.0.0.1:1", "10.255.255.1:6379"):  # a closed port; an address nothing answers
        started = time.perf_counter()
        assert main([*argv, "--ray", address]) == 2
        assert time.perf_counter() - started < 10
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"cannot reach a Ray cluster at {address} within 2 s" in err
        assert not (tmp_path / "v").exists()
    assert not ray.is_initialized()


def test_a_running_cluster_passes_the_address_check(cluster):
    from promptlab.distributed.ray import check_address

    check_address(ray.get_runtime_context().gcs_address, timeout=5)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    return Embedder(str(tiny_llama_dir), "prompteol", dtype="float32")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_embed_batch_in_a_users_pipeline(cluster, tiny_llama_dir, reference):
    sentences = corpus_sentences(120, seed=1)
    ds = ray.data.from_items([{"text": s, "id": i} for i, s in enumerate(sentences)]).map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"model": str(tiny_llama_dir), "dtype": "float32", "normalize": True},
        batch_size=16,
        concurrency=2,
        num_cpus=1,
    )
    rows = sorted(ds.take_all(), key=lambda row: row["id"])
    assert [row["text"] for row in rows] == sentences
    vectors = np.stack([row["embedding"] for row in rows])
    expected = reference.encode(sentences, normalize_embeddings=True)
    assert vectors.dtype == np.float32 and cosines(vectors, expected).min() >= 0.9999


def computed_sentences(cache: Path) -> int:
    """How many sentences the actors embedded: each `encode` stores what it computed in its disk cache."""
    return sum(np.load(path)["keys"].shape[0] for path in cache.glob("*/layer*/*.npz"))


@pytest.mark.slow  # two Ray jobs of two actors each: about 45 s on two shared cores
def test_ray_shards_equal_encode_and_a_stopped_job_recomputes_at_most_one_shard_per_actor(
    cluster, tiny_llama_dir, tmp_path, reference, capsys
):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [corpus_sentences(1000, seed=2)[:600], corpus_sentences(1000, seed=2)[600:]]
    for name, part in zip(("a.txt", "b.txt"), texts, strict=True):
        (corpus / name).write_text("\n".join(part) + "\n")
    out = tmp_path / "vectors"
    argv = ["embed", "--model", str(tiny_llama_dir), "--dtype", "float32", "--input", str(corpus)]
    # 30 + 20 shards: more than the actors finish before the driver has taken in three of them
    argv += ["--output", str(out), "--shard-size", "20", "--ray", "--ray-actors", "2"]
    # The first job stops (as if killed) once three shards are recorded; each job's actors keep what they
    # compute in their own disk cache, which counts the sentences embedded.
    from promptlab.cli import embedder_options, make_parser

    options = embedder_options(make_parser().parse_args(argv))
    config = {
        "embedder": shards.vector_options(options),
        "normalize": False,
        "field": "text",
        "shard_size": 20,
    }
    folder = shards.ShardFolder(out, config, shards.corpus_files(str(corpus)))

    def stop(shard):
        if len(folder.records) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_shards_ray(
            {**options, "cache_dir": str(tmp_path / "computed-1")},
            folder,
            shard_size=20,
            on_shard=stop,
            actors=2,
        )
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.npy")}
    done = len(finished) // 2  # lines + vectors of each finished shard
    assert len(finished) % 2 == 0 and 3 <= done < 50
    # The rerun, through the CLI on the same Ray, writes only the other shards.
    assert main([*argv, "--cache-dir", str(tmp_path / "computed-2")]) == 0
    err = capsys.readouterr().err
    # An actor stopped mid-write may still land its shard after the snapshot: it then counts as done too.
    wrote, already = (
        int(n) for n in re.search(r"wrote (\d+) shard\(s\).*?(\d+) were already done", err).groups()
    )
    assert wrote + already == 50 and already >= done
    for name, mtime in finished.items():
        assert (out / "shards" / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    recomputed = (
        computed_sentences(tmp_path / "computed-1") + computed_sentences(tmp_path / "computed-2") - 1000
    )
    print(
        f"stopped after {done} of 50 shards; the rerun on 2 actors recomputed {recomputed} sentences (shards of 20)"
    )
    assert 0 <= recomputed <= 2 * 20
    _, lines, vectors = shards.load_shards(out)
    assert lines.tolist() == list(range(1, 601)) + list(range(1, 401))
    expected = np.concatenate([reference.encode(part) for part in texts])
    assert vectors.dtype == np.float32 and cosines(vectors, expected).min() >= 0.9999
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
