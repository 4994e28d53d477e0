"""The fast decoder forward against transformers' own, layer by layer, on tiny random LLaMA-family models.

float32 is compared tightly (the same math, other op order); bf16 on the real SmolLM2 (slow tier) within
bf16 rounding. The backend uses the fast forward by default, so every other Embedder test on a LLaMA fixture
exercises it too; these tests pin the forward itself: padding sides, prefix continuation, early stop, and
which models it refuses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import backend_for

from promptlab.backends.fast_decoder import FastDecoder, PrefixKV, unsupported_reason
from promptlab.embedder import Embedder


def _randomized(model):
    """Random norm weights (they start as ones, which would hide a norm applied wrongly)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.5 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _model(kind: str):
    from transformers import LlamaConfig, LlamaModel, MistralConfig, MistralModel, Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    shape = dict(
        vocab_size=100,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if kind == "llama":
        return _randomized(LlamaModel(LlamaConfig(**shape, rope_theta=500.0)))
    if kind == "qwen2":  # biases on q/k/v
        return _randomized(Qwen2Model(Qwen2Config(**shape)))
    return _randomized(MistralModel(MistralConfig(**shape, sliding_window=None)))


def _batch(padding_side: str):
    """Three rows of lengths 7, 4, 2 (token ids 1..), padded on one side; position ids count real tokens."""
    lengths = [7, 4, 2]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for row, n in enumerate(lengths):
        span = slice(0, n) if padding_side == "right" else slice(7 - n, 7)
        ids[row, span] = torch.arange(1, n + 1) * (row + 3) % 97 + 1
        mask[row, span] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions


def _reference(model, ids, mask, positions):
    with torch.inference_mode():
        return model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            output_hidden_states=True,
            use_cache=False,
        ).hidden_states


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_every_layer_equals_the_transformers_forward(kind, padding_side):
    model = _model(kind)
    assert unsupported_reason(model) is None
    ids, mask, positions = _batch(padding_side)
    expected = _reference(model, ids, mask, positions)
    with torch.inference_mode():
        got, _ = FastDecoder(model).forward(ids, positions, mask)
    assert len(got) == len(expected) == 4
    real = mask.bool()
    for layer, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-4, msg=f"layer {layer}")
        assert torch.isfinite(a).all(), "padding positions stay finite (poolings mask them, NaN would leak)"


def test_upto_stops_early_with_the_unnormed_state():
    model = _model("llama")
    ids, mask, positions = _batch("right")
    expected = _reference(model, ids, mask, positions)
    with torch.inference_mode():
        got, _ = FastDecoder(model).forward(ids, positions, mask, upto=2)
    assert len(got) == 3
    torch.testing.assert_close(got[2][mask.bool()], expected[2][mask.bool()], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_a_suffix_continuing_a_stored_prefix_equals_the_full_forward(kind):
    model = _model(kind)
    fast = FastDecoder(model)
    ids, mask, positions = _batch("right")
    prefix = torch.tensor([[5, 9, 13, 2]])
    full_ids = torch.cat([prefix.expand(3, -1), ids], 1)
    full_mask = torch.cat([torch.ones(3, 4, dtype=torch.long), mask], 1)
    expected = _reference(model, full_ids, full_mask, (full_mask.cumsum(1) - 1).clamp(min=0))
    with torch.inference_mode():
        head, kv = fast.forward(prefix, torch.arange(4)[None], keep_kv=True)
        got, _ = fast.forward(ids, positions + 4, mask, prefix=kv)
    assert isinstance(kv, PrefixKV) and kv.length == 4
    for layer in range(4):
        torch.testing.assert_close(head[layer][0], expected[layer][0, :4], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            got[layer][mask.bool()], expected[layer][:, 4:][mask.bool()], atol=1e-5, rtol=1e-4
        )


def test_models_outside_the_llama_family_keep_the_transformers_forward(tiny_opt, tiny_bert, tiny_llama):
    from transformers import LlamaConfig, LlamaModel, MistralConfig, MistralModel

    assert "OPTModel" in unsupported_reason(tiny_opt[0])
    assert "BertModel" in unsupported_reason(tiny_bert[0])
    gelu = LlamaModel(LlamaConfig(**{**tiny_llama[0].config.to_dict(), "hidden_act": "gelu"}))
    assert "gelu" in unsupported_reason(gelu)
    windowed = MistralModel(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
                                          sliding_window=8))  # fmt: skip
    assert "sliding" in unsupported_reason(windowed)
    assert backend_for(tiny_opt).fast_decoder is None
    assert "fast_decoder" not in backend_for(tiny_opt).describe()


def test_backend_uses_it_by_default_and_can_turn_it_off(tiny_llama):
    sentences = ["A man is playing a guitar.", "The cat sits.", "Two dogs run through a field!"]
    fast_backend = backend_for(tiny_llama)
    assert fast_backend.fast_decoder is not None and fast_backend.describe()["fast_decoder"] is True
    plain_backend = backend_for(tiny_llama)
    plain_backend.use_fast_decoder = False
    assert "fast_decoder" not in plain_backend.describe()
    for options in ({}, {"prefix_cache": False}, {"padding_side": "left"}):
        a = Embedder(fast_backend, "prompteol", **options).encode_layers(sentences, [1, -1])
        b = Embedder(plain_backend, "prompteol", **options).encode_layers(sentences, [1, -1])
        for layer in (1, -1):
            np.testing.assert_allclose(a[layer], b[layer], atol=2e-5, rtol=1e-4)


def test_an_adapter_wrapped_model_keeps_the_transformers_forward(tiny_llama):
    peft = pytest.importorskip("peft")
    model, tokenizer = tiny_llama
    clone = type(model)(model.config).eval()
    clone.load_state_dict(model.state_dict())
    backend = backend_for((clone, tokenizer))
    assert backend.fast_decoder is not None
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    backend.replace_model(peft.get_peft_model(clone, config))
    assert backend.fast_decoder is None, "rebuilt for the new model object, which it does not cover"


@pytest.mark.slow
def test_real_smollm2_bf16_vectors_match_the_transformers_forward():
    from promptlab.backends import load_backend

    sentences = [
        "A man is playing a guitar.",
        "A woman is slicing an onion.",
        "The stock market fell sharply today.",
    ]
    backend = load_backend("transformers", "smollm2-135m", dtype="bfloat16")
    fast = Embedder(backend, "prompteol").encode(sentences)
    backend.use_fast_decoder = False
    plain = Embedder(backend, "prompteol").encode(sentences)
    cos = (fast * plain).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(plain, axis=1)
    assert cos.min() >= 0.995, cos  # bf16 rounding of two op orders (float32 is exact: tests above)


def test_lora_injected_in_place_runs_through_the_fast_forward_exactly():
    peft = pytest.importorskip("peft")
    model = _model("llama")
    peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # LoRA's B starts at zero; make the adapter matter
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.eval()
    assert unsupported_reason(model) is None, "in place, the model is still a LlamaModel"
    ids, mask, positions = _batch("right")
    expected = _reference(model, ids, mask, positions)
    with torch.inference_mode():
        got, _ = FastDecoder(model).forward(ids, positions, mask)
    torch.testing.assert_close(got[-1][mask.bool()], expected[-1][mask.bool()], atol=1e-5, rtol=1e-4)


def test_fp32_norms_in_a_bf16_model_promote_like_transformers():
    """QLoRA's preparation keeps norms in float32 beside 4-bit layers that take float32 inputs.

    Here: bf16 embeddings feed float32 norms and layers, so the first norm must promote to float32.
    """
    model = _model("llama")
    model.embed_tokens.to(torch.bfloat16)
    ids, mask, positions = _batch("right")
    expected = _reference(model, ids, mask, positions)
    with torch.inference_mode():
        got, _ = FastDecoder(model).forward(ids, positions, mask)
    assert got[-1].dtype == expected[-1].dtype == torch.float32
    real = mask.bool()
    cos = torch.nn.functional.cosine_similarity(got[-1][real], expected[-1][real].float())
    assert cos.min() > 0.99
