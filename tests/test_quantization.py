"""bitsandbytes loading (int8, nf4, fp4) through the same Embedder, and its errors.

Independent references: a 4-bit model must compute what a float32 model computes with bitsandbytes'
quantize -> dequantize round trip of its weights (up to the CPU kernel's rounding); an 8-bit model
(LLM.int8 also quantizes activations) must stay within a cosine of the float32 model. The missing-package
and unsupported-platform paths are simulated.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import promptlab.backends.quantization as quantization
from promptlab.backends.quantization import bitsandbytes_config, check_quantization, validate_quantization
from promptlab.backends.transformers import TransformersBackend
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError

SENTENCES = ["A man is playing a guitar.", "The cat sits.", "Two dogs run through a field of grass!"]


@pytest.fixture(scope="module")
def llama_dir(tiny_llama, tmp_path_factory):
    """A tiny random LLaMA saved to disk, 64 wide: bitsandbytes' CPU 4-bit kernels need 64-wide blocks."""
    from transformers import LlamaConfig, LlamaModel

    _, tokenizer = tiny_llama
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _fresh_checks():
    check_quantization.cache_clear()
    yield
    check_quantization.cache_clear()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(
    ("name", "expected"), [(None, None), ("none", None), ("int8", "int8"), ("nf4", "nf4"), ("fp4", "fp4")]
)
def test_validate_quantization(name, expected):
    assert validate_quantization(name) == expected


def test_unknown_quantization_lists_the_choices():
    with pytest.raises(PromptlabError, match="unknown quantization 'nf8'.*int8, nf4"):
        validate_quantization("nf8")


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("int8", {"load_in_8bit": True, "load_in_4bit": False}),
        (
            "nf4",
            {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16},
        ),
        (
            "fp4",
            {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_compute_dtype": torch.bfloat16},
        ),
    ],
)
def test_bitsandbytes_config(name, fields):
    config = bitsandbytes_config(name, torch.bfloat16)
    for key, value in fields.items():
        assert getattr(config, key) == value


def test_missing_bitsandbytes_names_the_extra(monkeypatch, llama_dir):
    monkeypatch.setattr(quantization, "bitsandbytes_version", lambda: None)
    with pytest.raises(PromptlabError, match=r"needs bitsandbytes.*pip install 'promptlab\[quant\]'"):
        Embedder(str(llama_dir), "prompteol", dtype="float32", quantization="nf4")


def test_platform_bitsandbytes_cannot_serve_is_reported(monkeypatch):
    import bitsandbytes as bnb

    def unsupported(*args, **kwargs):
        raise RuntimeError("no kernel for this device\nlong traceback text")

    monkeypatch.setattr(bnb.nn, "Linear8bitLt", unsupported)
    with pytest.raises(PromptlabError, match=r"cannot run int8 on cpu here \(no kernel for this device\)"):
        check_quantization("int8", "cpu")


@pytest.mark.parametrize("name", ["nf4", "fp4"])
def test_4bit_model_computes_what_its_dequantized_weights_compute(llama_dir, name):
    import bitsandbytes as bnb

    embedder = Embedder(str(llama_dir), "prompteol", dtype="float32", quantization=name)
    model = embedder.backend.model
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 3 * 7 and embedder.describe()["quantization"] == name
    got = embedder.encode(SENTENCES)

    # Reference: float32 weights put through bitsandbytes' own quantize/dequantize round trip.
    reference = TransformersBackend.load(str(llama_dir))
    for module in reference.model.modules():
        if isinstance(module, torch.nn.Linear):
            packed, state = bnb.functional.quantize_4bit(module.weight.data, quant_type=name)
            module.weight.data.copy_(bnb.functional.dequantize_4bit(packed, state).float())
    expected = Embedder(reference, "prompteol").encode(SENTENCES)
    full = Embedder(str(llama_dir), "prompteol", dtype="float32").encode(SENTENCES)
    # bitsandbytes' CPU kernel rounds a little differently (bf16 scales): equal up to ~1e-2, where
    # the float32 model is ~0.5 away.
    assert cosines(got, expected).min() >= 0.9999
    assert np.abs(got - expected).max() < 0.1 * np.abs(got - full).max()
    assert cosines(got, full).min() > 0.95, "4-bit stays close to float32"


def test_int8_model_is_close_to_float32(llama_dir):
    import bitsandbytes as bnb

    embedder = Embedder(str(llama_dir), "prompteol", dtype="float32", quantization="int8")
    assert sum(isinstance(m, bnb.nn.Linear8bitLt) for m in embedder.backend.model.modules()) == 3 * 7
    got = embedder.encode(SENTENCES)
    full = Embedder(str(llama_dir), "prompteol", dtype="float32").encode(SENTENCES)
    assert cosines(got, full).min() > 0.999
    assert not np.array_equal(got, full)


def test_quantization_goes_through_the_cli(llama_dir, tmp_path):
    from promptlab.cli import main

    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "v.npy"
    argv = ["embed", "--model", str(llama_dir), "--input", str(sentences), "--output", str(out), "--no-cache"]
    argv += ["--dtype", "float32"]
    assert main([*argv, "--quantization", "nf4"]) == 0
    direct = Embedder(str(llama_dir), "prompteol", dtype="float32", quantization="nf4").encode(SENTENCES)
    np.testing.assert_allclose(np.load(out), direct, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "floor"), [("int8", 0.995), ("nf4", 0.95)])
def test_smollm2_quantized_stays_close_to_float32(name, floor):
    torch.set_num_threads(2)
    full = Embedder("smollm2-135m", "prompteol", dtype="float32").encode(SENTENCES)
    got = Embedder("smollm2-135m", "prompteol", quantization=name).encode(SENTENCES)
    assert cosines(got, full).min() > floor
