"""The sentence-transformers export, loaded as a user loads it: ``SentenceTransformer(DIR,
trust_remote_code=True)``, in float32, against promptlab's own vectors for the same configuration.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip(
    "sentence_transformers", reason="the export tests load the folder in sentence-transformers"
)

from conftest import CORPUS  # noqa: E402
from helpers import lora_with_weights, save_tiny_llama_64  # noqa: E402

from promptlab.embedder import Embedder  # noqa: E402
from promptlab.errors import PromptlabError  # noqa: E402
from promptlab.export.sentence_transformers import export_sentence_transformers  # noqa: E402

SENTENCES = [*CORPUS, "A man is playing a guitar", 'Quotes "inside" a sentence without a final stop']

CASES = {
    "prompteol": ("tiny_llama_dir", dict(template="prompteol", layer=2)),
    "prompteol-cut": ("tiny_llama_dir", dict(template="prompteol", layer=-1, max_length=18)),
    "demonstration": ("tiny_llama_dir", dict(template="prompteol", demonstration="eol-opt-125m")),
    "promptbert": ("tiny_bert_dir", dict(template="promptbert", layer=1)),
    "bert-cls_mlp": ("tiny_bert_dir", dict(template="none", pooling="cls_mlp")),
    "prefix-mean": ("tiny_llama_dir", dict(template="e5-query", pooling="mean", layer=1)),
    "prefix-max": ("tiny_llama_dir", dict(template="none", pooling="max")),
    "prefix-last": ("tiny_llama_dir", dict(template="none", pooling="last")),
    "echo-span": ("tiny_llama_dir", dict(template="echo", max_length=30)),
    "metaeol-ensemble": ("tiny_llama_dir", dict(template="metaeol", layer=2)),
}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def load(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")


@pytest.mark.filterwarnings("ignore:.*shortened inside the template")
@pytest.mark.parametrize("case", list(CASES))
def test_exported_folder_gives_promptlabs_vectors(request, tmp_path, case):
    fixture, options = CASES[case]
    embedder = Embedder(str(request.getfixturevalue(fixture)), dtype="float32", **options)
    expected = embedder.encode(SENTENCES)
    folder = export_sentence_transformers(embedder, tmp_path / case)
    model = load(folder)
    served = model.encode(SENTENCES, batch_size=4)
    assert served.shape == expected.shape and served.dtype == np.float32
    assert cosines(served, expected).min() >= 0.9999
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-3)
    assert model.get_embedding_dimension() == expected.shape[1]


def test_the_module_file_does_not_need_promptlab(tiny_llama_dir, tmp_path):
    embedder = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32")
    folder = export_sentence_transformers(embedder, tmp_path / "st")
    source = (folder / "promptlab_prompt_embedding.py").read_text()
    assert "promptlab." not in source.replace("promptlab.tokenization", "").replace("promptlab.pooling", "")
    assert "import promptlab" not in source and "from promptlab" not in source
    modules = json.loads((folder / "modules.json").read_text())
    assert modules == [
        {"idx": 0, "name": "0", "path": "", "type": "promptlab_prompt_embedding.PromptEmbedding"}
    ]


def test_loading_without_trust_remote_code_is_refused(tiny_llama_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = export_sentence_transformers(Embedder(str(tiny_llama_dir), dtype="float32"), tmp_path / "st")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(folder), device="cpu")


def test_refuses_to_overwrite(tiny_llama_dir, tmp_path):
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "keep").write_text("x")
    with pytest.raises(PromptlabError, match="--overwrite"):
        export_sentence_transformers(Embedder(str(tiny_llama_dir), dtype="float32"), tmp_path / "st")


def test_adapter_is_merged_into_the_exported_weights(tiny_llama_dir, tmp_path):
    pytest.importorskip("peft")
    from promptlab.adapters import base_identity
    from promptlab.backends import load_backend
    from promptlab.finetune.lora import save_adapter

    backend = load_backend("transformers", str(tiny_llama_dir), dtype="float32")
    identity = base_identity(backend)
    peft_model = lora_with_weights(backend, seed=2)
    meta = {"base": identity, "layer": -1, "config": {"model": str(tiny_llama_dir), "dtype": "float32"}}
    save_adapter(peft_model, tmp_path / "adapter", meta)
    embedder = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32", adapter=str(tmp_path / "adapter"))
    expected = embedder.encode(SENTENCES)
    plain = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32").encode(SENTENCES)
    assert cosines(expected, plain).min() < 0.999, "the adapter changes the vectors"
    folder = export_sentence_transformers(embedder, tmp_path / "st")
    shutil.rmtree(tmp_path / "adapter")  # the export carries the merged weights, not a reference
    assert cosines(load(folder).encode(SENTENCES), expected).min() >= 0.9999


def test_cli_export_both_formats(tiny_llama_dir, tmp_path):
    from promptlab.cli import main

    model = ["--model", str(tiny_llama_dir), "--layer", "2", "--dtype", "float32"]
    assert main(["export", *model, "--output", str(tmp_path / "saved")]) == 0
    saved = ["--embedder", str(tmp_path / "saved")]
    assert (
        main(["export", *saved, "--format", "sentence-transformers", "--output", str(tmp_path / "st")]) == 0
    )
    expected = Embedder(str(tiny_llama_dir), "prompteol", layer=2, dtype="float32").encode(SENTENCES)
    assert cosines(load(tmp_path / "st").encode(SENTENCES), expected).min() >= 0.9999
    np.testing.assert_array_equal(Embedder.load(tmp_path / "saved").encode(SENTENCES), expected)
    assert main(["export", *saved, "--output", str(tmp_path / "st")]) == 2  # exists: needs --overwrite


@pytest.mark.slow
def test_packaged_smollm2_export_and_reload(tmp_path):
    """The real packaged model: saved, reloaded and exported, all giving promptlab's float32 vectors."""
    from promptlab.models import get_model

    if not get_model("smollm2-135m").is_pulled():
        pytest.skip("run `promptlab models pull smollm2-135m` first")
    embedder = Embedder("smollm2-135m", "prompteol", dtype="float32")
    expected = embedder.encode(SENTENCES)
    embedder.save(tmp_path / "saved")
    np.testing.assert_array_equal(Embedder.load(tmp_path / "saved").encode(SENTENCES), expected)
    folder = export_sentence_transformers(embedder, tmp_path / "st")
    assert cosines(load(folder).encode(SENTENCES), expected).min() >= 0.9999


def test_a_qlora_embedder_is_exported_with_its_dequantized_weights(tmp_path):
    """A 4-bit embedder with its adapter: the folder holds the 4-bit weights dequantized, the adapter merged,
    so it gives the embedder's vectors (the original full-precision weights would give others)."""
    pytest.importorskip("bitsandbytes", reason="4-bit bases need the [quant] extra (bitsandbytes)")
    pytest.importorskip("peft")
    from promptlab.adapters import base_identity
    from promptlab.backends import load_backend
    from promptlab.finetune.lora import save_adapter

    model_dir = tmp_path / "tiny-llama-64"
    save_tiny_llama_64(model_dir)
    backend = load_backend("transformers", str(model_dir), dtype="float32")
    meta = {"base": base_identity(backend), "layer": -1, "config": {"model": str(model_dir)}}
    save_adapter(lora_with_weights(backend, seed=3), tmp_path / "adapter", meta)
    options = dict(dtype="float32", quantization="nf4", adapter=str(tmp_path / "adapter"))
    embedder = Embedder(str(model_dir), "prompteol", **options, merge_adapter=True)
    expected = embedder.encode(SENTENCES)
    on_full_weights = Embedder(str(model_dir), "prompteol", dtype="float32", adapter=options["adapter"])
    assert cosines(on_full_weights.encode(SENTENCES), expected).min() < 0.9999, "4-bit weights move them"
    # Exported from the unmerged embedder: the export merges on its own copy.
    folder = export_sentence_transformers(Embedder(str(model_dir), "prompteol", **options), tmp_path / "st")
    shutil.rmtree(tmp_path / "adapter")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    served = load(folder).encode(SENTENCES)
    assert cosines(served, expected).min() >= 0.99999
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-3)


def test_an_int8_embedder_is_not_exported(tiny_llama_dir, tmp_path):
    pytest.importorskip("bitsandbytes", reason="int8 needs the [quant] extra (bitsandbytes)")
    embedder = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32", quantization="int8")
    with pytest.raises(PromptlabError, match="int8-quantized embedder cannot be exported .* nf4 or fp4 base"):
        export_sentence_transformers(embedder, tmp_path / "st")
