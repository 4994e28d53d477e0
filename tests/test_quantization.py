"""Quantized loading through the same Embedder, and its errors: bitsandbytes (int8, nf4, fp4) and torchao
(int8-weight-only).

Independent references: a 4-bit model must compute what a float32 model computes with bitsandbytes'
quantize -> dequantize round trip of its weights (up to the CPU kernel's rounding); an 8-bit model
(LLM.int8 also quantizes activations) must stay within a cosine of the float32 model; an int8-weight-only
model must compute what a float32 model computes with its int8 weights dequantized, each within half a step
of the float32 weight on a grid of amax / 127.5 per row. The missing-package and unsupported-platform paths
are simulated.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import promptlab.backends.quantization as quantization
from promptlab.backends.quantization import bitsandbytes_config, check_quantization, validate_quantization
from promptlab.backends.transformers import TransformersBackend
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError

SENTENCES = ["A man is playing a guitar.", "The cat sits.", "Two dogs run through a field of grass!"]
# int8-weight-only on the tiny model, measured (2026-12-03): cosine to the dequantized-weights reference
# 0.99999994 (largest difference 8e-7), to float32 0.99994 at the last layer and 0.99994-0.999995 at layers
# 1-3 (largest difference 0.028). The floors leave 100x and 15x room for other CPUs' rounding.
COSINE_TO_REFERENCE = 0.99999
COSINE_TO_FLOAT32 = 0.999


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
    ("name", "expected"),
    [(None, None), ("none", None), ("int8", "int8"), ("nf4", "nf4"), ("fp4", "fp4")]
    + [("int8-weight-only", "int8-weight-only")],
)
def test_validate_quantization(name, expected):
    assert validate_quantization(name) == expected


def test_unknown_quantization_lists_the_choices():
    with pytest.raises(PromptlabError, match="unknown quantization 'nf8'.*fp4, int8, int8-weight-only, nf4"):
        validate_quantization("nf8")


def test_cli_choices_and_help_come_from_the_registry():
    from promptlab.cli import make_parser

    parser = make_parser()
    for verb in ("embed", "eval"):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
        (action,) = [a for a in sub._actions if "--quantization" in a.option_strings]
        assert action.choices == list(quantization.QUANTIZATIONS)
        for name, spec in quantization.QUANTIZATIONS.items():
            assert f"{name}: {spec.summary} ({spec.library})" in action.help


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


@pytest.mark.parametrize("name", ["nf4", "int8-weight-only"])
def test_quantization_goes_through_the_cli(llama_dir, tmp_path, name):
    from promptlab.cli import main

    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "v.npy"
    argv = ["embed", "--model", str(llama_dir), "--input", str(sentences), "--output", str(out), "--no-cache"]
    argv += ["--dtype", "float32"]
    assert main([*argv, "--quantization", name]) == 0
    direct = Embedder(str(llama_dir), "prompteol", dtype="float32", quantization=name).encode(SENTENCES)
    np.testing.assert_allclose(np.load(out), direct, atol=1e-6)


# -- int8-weight-only (torchao) -----------------------------------------------------------------------------
def int8_weights(model) -> dict:
    from torchao.quantization import Int8Tensor

    return {
        n: m.weight for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), Int8Tensor)
    }


def test_int8_weight_only_quantizes_every_linear_layer(llama_dir):
    embedder = Embedder(str(llama_dir), "prompteol", dtype="float32", quantization="int8-weight-only")
    model = embedder.backend.model
    weights = int8_weights(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(weights) == len(linears) == 3 * 7
    full = TransformersBackend.load(str(llama_dir)).model
    for name, weight in weights.items():
        original = full.get_submodule(name).weight.detach()
        step = original.abs().amax(1, keepdim=True) / 127.5  # symmetric int8, one scale per output row
        assert weight.qdata.dtype == torch.int8
        torch.testing.assert_close(weight.scale.reshape(step.shape), step)
        assert (weight.dequantize() - original).abs().le(step / 2 + 1e-7).all()
    assert embedder.describe()["quantization"] == "int8-weight-only"


def test_int8_weight_only_computes_its_dequantized_weights(llama_dir):
    embedder = Embedder(str(llama_dir), "prompteol", dtype="float32", quantization="int8-weight-only")
    got = embedder.encode(SENTENCES)

    reference = TransformersBackend.load(str(llama_dir))
    for name, weight in int8_weights(embedder.backend.model).items():
        reference.model.get_submodule(name).weight.data.copy_(weight.dequantize())
    expected = Embedder(reference, "prompteol").encode(SENTENCES)
    full = Embedder(str(llama_dir), "prompteol", dtype="float32").encode(SENTENCES)
    assert cosines(got, expected).min() >= COSINE_TO_REFERENCE
    assert np.abs(got - expected).max() < 0.1 * np.abs(got - full).max()
    assert cosines(got, full).min() > COSINE_TO_FLOAT32


def test_int8_weight_only_reads_any_layer_and_the_prefix_cache(llama_dir):
    cached = Embedder(str(llama_dir), "prompteol", dtype="float32", quantization="int8-weight-only")
    got = cached.encode_layers(SENTENCES, [1, 2, 3])
    assert cached.last_stats["prefix_length"] > 0, "PromptEOL's shared prefix goes through the cache"
    full = Embedder(str(llama_dir), "prompteol", dtype="float32").encode_layers(SENTENCES, [1, 2, 3])
    for layer in (1, 2, 3):
        assert cosines(got[layer], full[layer]).min() > COSINE_TO_FLOAT32
    uncached = Embedder(
        str(llama_dir), "prompteol", dtype="float32", quantization="int8-weight-only", prefix_cache=False
    )
    np.testing.assert_allclose(got[3], uncached.encode(SENTENCES), atol=1e-4, rtol=1e-4)
    one_by_one = np.stack([uncached.encode(s) for s in SENTENCES])  # no batch-wide activation scales
    np.testing.assert_allclose(one_by_one, got[3], atol=1e-4, rtol=1e-4)


def test_int8_weight_only_embedder_saves_and_loads(llama_dir, tmp_path):
    embedder = Embedder(str(llama_dir), "prompteol", dtype="float32", quantization="int8-weight-only")
    embedder.save(str(tmp_path / "embedder"))
    loaded = Embedder.load(str(tmp_path / "embedder"))
    assert loaded.describe()["quantization"] == "int8-weight-only"
    assert len(int8_weights(loaded.backend.model)) == 3 * 7
    np.testing.assert_array_equal(loaded.encode(SENTENCES), embedder.encode(SENTENCES))


def test_missing_torchao_names_the_extra(monkeypatch, llama_dir):
    monkeypatch.setattr(quantization, "torchao_version", lambda: None)
    with pytest.raises(PromptlabError, match=r"needs torchao.*pip install 'promptlab\[torchao\]'"):
        Embedder(str(llama_dir), "prompteol", quantization="int8-weight-only")


def test_torchao_that_cannot_run_is_reported(monkeypatch):
    def broken(model):
        raise RuntimeError("operator torchao::foo does not exist\nlong traceback text")

    monkeypatch.setattr(quantization, "_quantize_int8_weights", broken)
    with pytest.raises(PromptlabError, match=r"cannot run int8-weight-only on cpu .*\(operator torchao::foo"):
        check_quantization("int8-weight-only", "cpu")


def test_finetuning_refuses_int8_weight_only():
    from promptlab.finetune.config import FinetuneConfig

    with pytest.raises(PromptlabError, match=r"quantization = 'int8-weight-only' is not one of none, nf4"):
        FinetuneConfig(
            model="smollm2-135m", output_dir="out", quantization="int8-weight-only", data=["stsb-train"]
        )


@pytest.mark.slow  # int8-weight-only: cosine to fp32 >= 0.9992 on 48-64 STS-B dev sentences (benchmark)
@pytest.mark.parametrize(("name", "floor"), [("int8", 0.995), ("nf4", 0.95), ("int8-weight-only", 0.998)])
def test_smollm2_quantized_stays_close_to_float32(name, floor):
    torch.set_num_threads(2)
    full = Embedder("smollm2-135m", "prompteol", dtype="float32").encode(SENTENCES)
    got = Embedder("smollm2-135m", "prompteol", quantization=name).encode(SENTENCES)
    assert cosines(got, full).min() > floor
