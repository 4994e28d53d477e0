"""The on-disk embedding cache: hits skip the model, misses never return wrong vectors, damage is survived.

Each test compares what the cache returns with vectors computed afresh by an embedder without a cache.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from conftest import backend_for

import promptlab.cache as cache_module
from promptlab.cache import EmbeddingCache
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError

SENTENCES = ["A man is playing a guitar.", "The cat sits.", "Two dogs run through a field!", "The cat sits."]
MORE = ["A woman is slicing an onion.", "The cat sits."]


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(cache_module, "_warned", set())


def hashed_backend(pair, digest: str = "0" * 64):
    backend = backend_for(pair)
    backend.info["model_file_sha256"] = digest
    return backend


def counting(backend):
    """Count the rows that reach the model."""
    rows = []
    embed = backend.embed
    backend.embed = lambda batch, pooling, layers: (
        rows.append(len(batch.input_ids)) or embed(batch, pooling, layers)
    )
    return rows


def fresh(pair, sentences, **kwargs):
    return Embedder(backend_for(pair), "prompteol", **kwargs).encode(sentences)


def shards(root):
    return sorted(root.rglob("shard-*.npz"))


def test_second_run_reads_vectors_and_runs_no_model(tiny_llama, tmp_path):
    first = Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=tmp_path).encode(SENTENCES)
    backend = hashed_backend(tiny_llama)
    rows = counting(backend)
    embedder = Embedder(backend, "prompteol", cache_dir=tmp_path)
    second = embedder.encode(SENTENCES)
    assert rows == [] and embedder.last_stats["from_cache"] == 3
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(second, fresh(tiny_llama, SENTENCES), atol=1e-6)


def test_only_new_sentences_are_computed(tiny_llama, tmp_path):
    Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=tmp_path).encode(SENTENCES)
    backend = hashed_backend(tiny_llama)
    rows = counting(backend)
    got = Embedder(backend, "prompteol", cache_dir=tmp_path).encode(MORE)
    assert sum(rows) == 1, "only 'A woman…' is new"
    np.testing.assert_allclose(got, fresh(tiny_llama, MORE), atol=1e-5)


def test_several_layers_in_one_call(tiny_llama, tmp_path):
    Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=tmp_path).encode_layers(SENTENCES, [1, -1])
    backend = hashed_backend(tiny_llama)
    rows = counting(backend)
    got = Embedder(backend, "prompteol", cache_dir=tmp_path).encode_layers(SENTENCES, [1, 3])
    assert rows == [], "layer 3 is layer -1 of a 3-layer model: both were cached"
    plain = Embedder(backend_for(tiny_llama), "prompteol").encode_layers(SENTENCES, [1, 3])
    for layer in (1, 3):
        np.testing.assert_allclose(got[layer], plain[layer], atol=1e-5)


@pytest.mark.parametrize(
    ("change", "kwargs"),
    [
        ("template", {"template": "prompteol-no-quotes-probe: [X] means in one word:"}),
        ("layer", {"layer": 1}),
        ("weights", {"digest": "1" * 64}),
        ("max_length", {"max_length": 40}),
    ],
)
def test_a_different_configuration_misses(tiny_llama, tmp_path, change, kwargs):
    Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=tmp_path).encode(SENTENCES)
    backend = hashed_backend(tiny_llama, kwargs.pop("digest", "0" * 64))
    rows = counting(backend)
    template = kwargs.pop("template", "prompteol")
    Embedder(backend, template, cache_dir=tmp_path, **kwargs).encode(SENTENCES)
    assert sum(rows) == 3, f"a change of {change} must not read the old vectors"


def test_corrupt_shards_are_ignored_with_one_warning(tiny_llama, tmp_path):
    Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=tmp_path).encode(SENTENCES)
    Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=tmp_path).encode(MORE)
    first, second = shards(tmp_path)
    first.write_bytes(b"not a zip file")  # truncated or garbage
    data = bytearray(second.read_bytes())
    spot = data.find(b"vectors.npy") + 11 + 20 + 128 + 16  # past the zip and .npy headers: in the data
    data[spot] ^= 0xFF
    second.write_bytes(bytes(data))
    backend = hashed_backend(tiny_llama)
    rows = counting(backend)
    embedder = Embedder(backend, "prompteol", cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="corrupt") as record:
        got = embedder.encode(SENTENCES + MORE)
        again = embedder.encode(SENTENCES)
    assert len([w for w in record if "corrupt" in str(w.message)]) == 1, "warned once"
    assert sum(rows) == 4, "nothing was read from the damaged files"
    np.testing.assert_allclose(got, fresh(tiny_llama, SENTENCES + MORE), atol=1e-5)
    np.testing.assert_allclose(again, fresh(tiny_llama, SENTENCES), atol=1e-5)
    # The damaged files are gone, so a later run (a new process: no memory of the warning) reads the
    # recomputed vectors without a word.
    assert not first.exists() and not second.exists()
    cache_module._warned.clear()
    later = counting(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Embedder(backend, "prompteol", cache_dir=tmp_path).encode(SENTENCES + MORE)
    assert sum(later) == 0


def test_unwritable_cache_warns_once_and_computes(tiny_llama, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module.os, "replace", refuse)  # a read-only folder (root ignores chmod)
    embedder = Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="cannot write") as record:
        got = embedder.encode(SENTENCES)
        embedder.encode(MORE)
    assert len(record) == 1
    assert shards(tmp_path) == [] and not list(tmp_path.rglob(".tmp-*")), "no partial files left"
    np.testing.assert_allclose(got, fresh(tiny_llama, SENTENCES), atol=1e-6)


def test_cache_dir_that_is_a_file(tiny_llama, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    embedder = Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=blocker)
    with pytest.warns(RuntimeWarning, match="cannot write"):
        got = embedder.encode(SENTENCES)
    np.testing.assert_allclose(got, fresh(tiny_llama, SENTENCES), atol=1e-6)


def test_interrupted_writes_leave_only_temp_files_that_readers_skip(tiny_llama, tmp_path):
    Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=tmp_path).encode(SENTENCES[:1])
    (folder,) = {p.parent for p in shards(tmp_path)}
    (folder / ".tmp-999-dead-shard-999-x.npz").write_bytes(b"PK\x03\x04 half a file")
    got = Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=tmp_path).encode(SENTENCES)
    # The cached row was computed alone, the rest in one batch: other matmul shapes, float32 rounding.
    np.testing.assert_allclose(got, fresh(tiny_llama, SENTENCES), atol=1e-5)


def test_concurrent_writers_each_add_a_whole_shard(tiny_llama, tmp_path):
    embedders = [Embedder(hashed_backend(tiny_llama), "prompteol", cache_dir=tmp_path) for _ in range(4)]
    groups = [SENTENCES, MORE, SENTENCES[1:], ["Another sentence here."]]
    threads = [threading.Thread(target=e.encode, args=(g,)) for e, g in zip(embedders, groups, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(shards(tmp_path)) == 4
    everything = sorted({s for g in groups for s in g})
    backend = hashed_backend(tiny_llama)
    rows = counting(backend)
    got = Embedder(backend, "prompteol", cache_dir=tmp_path).encode(everything)
    assert rows == []
    np.testing.assert_allclose(got, fresh(tiny_llama, everything), atol=1e-5)


def test_model_without_weight_hash_is_not_cached(tiny_llama, tmp_path):
    embedder = Embedder(backend_for(tiny_llama), "prompteol", cache_dir=tmp_path)  # in memory: no hash
    with pytest.warns(RuntimeWarning, match="no weight-file hash"):
        embedder.encode(SENTENCES)
    assert shards(tmp_path) == []


def test_namespace_ignores_where_the_model_lies_but_not_what_it_is():
    base = {"model_file_sha256": "a", "model_path": "/x", "template_text": "t", "layer": -1}
    moved = {**base, "model_path": "/elsewhere", "layer": 2}
    assert EmbeddingCache.namespace(base) == EmbeddingCache.namespace(moved)
    for key, value in [("model_file_sha256", "b"), ("template_text", "u"), ("dtype", "bfloat16")]:
        assert EmbeddingCache.namespace({**base, key: value}) != EmbeddingCache.namespace(base)


def test_a_copied_adapter_reads_the_same_cache_and_task_log_but_other_weights_do_not(
    tiny_llama_dir, adapter_dir, tmp_path
):
    import shutil

    from promptlab.experiments.results import open_task_log

    copy = shutil.copytree(adapter_dir, tmp_path / "elsewhere" / "best")
    cache = tmp_path / "cache"

    def read_with(folder) -> Embedder:
        return Embedder(
            str(tiny_llama_dir), "prompteol", layer=2, dtype="float32", adapter=str(folder), cache_dir=cache
        )

    first, moved = read_with(adapter_dir), read_with(copy)
    assert "adapter" not in first.computes() and first.computes() == moved.computes()
    vectors = first.encode(SENTENCES)
    assert np.array_equal(moved.encode(SENTENCES), vectors) and moved.last_stats["embedded"] == 0
    with open_task_log(tmp_path / "tasks.jsonl", first) as log:
        log.append({"task": "STS12"}, {"result": {}})
    with open_task_log(tmp_path / "tasks.jsonl", moved) as log:  # the copy resumes the log
        assert log.done({"task": "STS12"}) is not None
    # Other weights in the copied folder: another hash, so neither the cache nor the log is shared.
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    changed = read_with(copy)
    assert changed.computes()["adapter_sha256"] != first.computes()["adapter_sha256"]
    with pytest.raises(PromptlabError, match="adapter_sha256"):
        open_task_log(tmp_path / "tasks.jsonl", changed)


def test_cli_caches_by_default_and_no_cache_switches_it_off(tmp_path):
    from promptlab.cli import make_parser
    from promptlab.cli_options import embedding_cache_dir

    args = make_parser().parse_args(["embed", "--input", "x", "--output", "y", "--cache-dir", str(tmp_path)])
    assert embedding_cache_dir(args) == str(tmp_path)
    args = make_parser().parse_args(["embed", "--input", "x", "--output", "y", "--no-cache"])
    assert embedding_cache_dir(args) is None


def test_code_fingerprint_ignores_documentation_but_not_code(tmp_path):
    """Editing a docstring or a comment keeps the cache; changing what the code does starts a new one."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    module = package / "sub" / "pooling.py"

    def fingerprint_of(source: str) -> str:
        module.write_text(source)
        return cache_module.source_fingerprint(package)

    base = fingerprint_of('"""Pool."""\n\n\ndef pool(x):\n    """Mean."""\n    return x.mean(0)  # rows\n')
    same_code = [
        '"""Pool the hidden states."""\n\ndef pool(x):\n    """Mean over tokens."""\n    return x.mean(0)\n',
        "def pool(x):\n    # no docstrings at all\n    return (\n        x.mean(0)\n    )\n",
    ]
    other_code = [
        '"""Pool."""\n\n\ndef pool(x):\n    """Mean."""\n    return x.mean(1)  # rows\n',
        '"""Pool."""\n\n\ndef pool(x):\n    """Mean."""\n    return x.sum(0)  # rows\n',
        '"""Pool."""\n\n\ndef pool(y):\n    """Mean."""\n    return y.mean(0)  # rows\n',
        # A string that is not a docstring is code (it may be a template).
        '"""Pool."""\n\n\ndef pool(x):\n    """Mean."""\n    x = x\n    "means"\n    return x.mean(0)\n',
    ]
    assert [fingerprint_of(source) for source in same_code] == [base, base]
    assert len({base, *(fingerprint_of(source) for source in other_code)}) == 1 + len(other_code)

    fingerprint_of('"""Pool."""\n\n\ndef pool(x):\n    """Mean."""\n    return x.mean(0)  # rows\n')
    module.rename(package / "sub" / "pooling_renamed.py")  # a module's path is part of the code
    assert cache_module.source_fingerprint(package) != base

    installed = cache_module.Path(cache_module.__file__).resolve().parent
    assert cache_module.code_fingerprint() == cache_module.source_fingerprint(installed)
