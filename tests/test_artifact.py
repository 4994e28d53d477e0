"""A saved embedder is a folder: save → load rebuilds the same vectors, and a changed model is refused.

The reference vectors come from an `Embedder` built directly from the same model spec and options; the
loaded one is rebuilt from the folder alone.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from promptlab.artifact import CONFIG_NAME
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError

SENTENCES = [
    "A man is playing a guitar",
    'He said "hello" to everyone in the room?',
    "Two dogs run through a field of grass while children watch!",
]

CASES = {
    "prompteol+demonstration": (
        "tiny_llama_dir",
        dict(template="prompteol", layer=2, demonstration="eol-opt-125m"),
    ),
    "promptbert": ("tiny_bert_dir", dict(template="promptbert", layer=1)),
    "prefix-mean-cut": ("tiny_llama_dir", dict(template="none", pooling="mean", max_length=6)),
    "metaeol-ensemble": ("tiny_llama_dir", dict(template="metaeol", layer=1)),
    "custom-text": ("tiny_llama_dir", dict(template='In one word, "[X]" is:"', layer=-1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_save_load_gives_identical_vectors(request, tmp_path, case):
    fixture, options = CASES[case]
    model_dir = request.getfixturevalue(fixture)
    original = Embedder(str(model_dir), dtype="float32", **options)
    expected = original.encode(SENTENCES)
    original.save(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / CONFIG_NAME).read_text())
    assert config["model"]["sha256"] == original.describe()["model_file_sha256"]
    assert config["template"]["text"] == original.template.text
    loaded = Embedder.load(tmp_path / "saved")
    np.testing.assert_array_equal(loaded.encode(SENTENCES), expected)
    same = {"template", "layer_index", "max_length", "template_text", "pooling", "demonstration", "dtype"}
    assert {k: loaded.describe()[k] for k in same} == {k: original.describe()[k] for k in same}


def test_load_override_is_explicit(tiny_llama_dir, tmp_path):
    Embedder(str(tiny_llama_dir), "prompteol", layer=2, dtype="float32").save(tmp_path / "saved")
    reread = Embedder.load(tmp_path / "saved", layer=1, template="none", pooling="last")
    direct = Embedder(str(tiny_llama_dir), "none", layer=1, pooling="last", dtype="float32")
    np.testing.assert_array_equal(reread.encode(SENTENCES), direct.encode(SENTENCES))


def test_a_new_template_keeps_the_saved_demonstration(tiny_llama_dir, tmp_path):
    Embedder(str(tiny_llama_dir), "prompteol", demonstration="eol-opt-125m", dtype="float32").save(
        tmp_path / "s"
    )
    reread = Embedder.load(tmp_path / "s", template="eol-summarize")
    direct = Embedder(str(tiny_llama_dir), "eol-summarize", demonstration="eol-opt-125m", dtype="float32")
    assert reread.template.text == direct.template.text
    assert reread.describe()["demonstration"] == direct.describe()["demonstration"]
    with pytest.raises(PromptlabError, match="name the template too"):
        Embedder.load(tmp_path / "s", demonstration="none")
    plain = Embedder.load(tmp_path / "s", template="prompteol", demonstration="none")
    assert plain.template.text == Embedder(str(tiny_llama_dir), "prompteol", dtype="float32").template.text


def _tamper(weights):
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights, metadata={"format": "pt"})


def test_changed_model_is_refused(tiny_llama_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    Embedder(str(model_dir), dtype="float32").save(tmp_path / "saved")
    _tamper(model_dir / "model.safetensors")
    with pytest.raises(PromptlabError, match="saved with other weights"):
        Embedder.load(tmp_path / "saved")


def test_newer_format_is_refused(tiny_llama_dir, tmp_path):
    Embedder(str(tiny_llama_dir), dtype="float32").save(tmp_path / "saved")
    path = tmp_path / "saved" / CONFIG_NAME
    config = json.loads(path.read_text())
    config["format_version"] += 1
    path.write_text(json.dumps(config))
    with pytest.raises(PromptlabError, match="newer than this promptlab reads.*upgrade promptlab"):
        Embedder.load(tmp_path / "saved")


def test_ready_backend_cannot_be_saved(tiny_llama, tmp_path):
    from conftest import backend_for

    with pytest.raises(PromptlabError, match="build the Embedder from a model spec"):
        Embedder(backend_for(tiny_llama)).save(tmp_path / "saved")


def test_not_an_embedder_folder(tmp_path):
    with pytest.raises(PromptlabError, match="neither"):
        Embedder.load(tmp_path)


def test_adapter_folder_loads_with_its_template_and_layer(tiny_llama_dir, adapter_dir, tmp_path):
    direct = Embedder(str(tiny_llama_dir), "prompteol", layer=2, dtype="float32", adapter=str(adapter_dir))
    plain = Embedder(str(tiny_llama_dir), "prompteol", layer=2, dtype="float32")
    expected = direct.encode(SENTENCES)
    assert not np.allclose(expected, plain.encode(SENTENCES), atol=1e-3), "the adapter changes the vectors"
    loaded = Embedder.load(adapter_dir)
    assert loaded.layer == 2 and loaded.template.text == direct.template.text
    np.testing.assert_array_equal(loaded.encode(SENTENCES), expected)
    # Saved again, the adapter travels inside the folder: the original can go.
    loaded.save(tmp_path / "saved")
    shutil.rmtree(adapter_dir)
    np.testing.assert_array_equal(Embedder.load(tmp_path / "saved").encode(SENTENCES), expected)


def test_cli_embedder_option(tiny_llama_dir, tmp_path):
    from promptlab.cli import main

    Embedder(str(tiny_llama_dir), "prompteol", layer=2, dtype="float32").save(tmp_path / "saved")
    (tmp_path / "in.txt").write_text("\n".join(SENTENCES) + "\n")
    common = ["embed", "--input", str(tmp_path / "in.txt"), "--no-cache"]
    assert main([*common, "--embedder", str(tmp_path / "saved"), "--output", str(tmp_path / "a.npy")]) == 0
    expected = Embedder(str(tiny_llama_dir), "prompteol", layer=2, dtype="float32").encode(SENTENCES)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), expected)
    # An option typed with --embedder overrides what was saved, even when it is the usual default.
    args = ["--embedder", str(tmp_path / "saved"), "--layer", "-1", "--output", str(tmp_path / "b.npy")]
    assert main([*common, *args]) == 0
    top = Embedder(str(tiny_llama_dir), "prompteol", layer=-1, dtype="float32").encode(SENTENCES)
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), top)
    conflict = [
        "--embedder",
        str(tmp_path / "saved"),
        "--model",
        str(tiny_llama_dir),
        "--output",
        str(tmp_path / "c"),
    ]
    assert main([*common, *conflict]) == 2
