"""The same embedder, fine-tuning and 4-bit paths on a CUDA GPU as on the CPU.

Each test compares what the GPU computes with an independent CPU computation of the same thing: vectors of
the float32 model, a bf16 model's vectors against float32's, a 4-bit model's against the float32 model with
bitsandbytes' quantize -> dequantize round trip of its weights, an adapter trained on the GPU read back on
the CPU, and a resumed GPU run against an uninterrupted one (LoRA dropout draws from the GPU's RNG).

They run where torch sees a GPU and are skipped elsewhere; set PROMPTLAB_REQUIRE_CUDA=1 to make a missing
GPU a failure instead (a GPU job whose torch lost CUDA must not pass as skipped).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_finetune import TOY, config, run_until, senteval, tokenizer_dir  # noqa: F401 (fixtures)

from promptlab.backends import load_backend
from promptlab.embedder import Embedder
from promptlab.finetune.data import TrainingData

if not torch.cuda.is_available():
    if os.environ.get("PROMPTLAB_REQUIRE_CUDA"):
        pytest.fail("PROMPTLAB_REQUIRE_CUDA is set but torch finds no CUDA GPU", pytrace=False)
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

pytest.importorskip("peft", reason="the fine-tuning checks need the [train] extra (peft)")

SENTENCES = [
    "A man is playing a guitar.",
    "The cat sits on the mat.",
    "Two dogs run through a field of grass!",
    "He said hello to everyone in the room?",
    "A woman is slicing an onion.",
]
# Float32 on a GPU differs from the CPU by summation order only (TF32 is off for float32 matmuls by default).
COSINE_FLOAT32 = 0.99999
# Room for the GPU's summation order only: a resumed run that draws other dropout masks than the
# uninterrupted one fails them (checked on an H200 with the RNG restore removed: both resume tests failed).
RESUME_RTOL, RESUME_ATOL = 1e-4, 1e-6


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(
    ("fixture", "template"),
    [("tiny_llama_dir", "prompteol"), ("tiny_llama_dir", "metaeol"), ("tiny_bert_dir", "promptbert")],
)
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_float32_vectors_on_the_gpu_are_the_cpus(request, fixture, template, prefix_cache):
    folder = str(request.getfixturevalue(fixture))
    options = dict(dtype="float32", prefix_cache=prefix_cache)
    on_gpu = Embedder(folder, template, device="cuda", **options)
    assert on_gpu.backend.device.type == "cuda"
    layers = list(range(on_gpu.backend.num_layers + 1))
    gpu = on_gpu.encode_layers(SENTENCES, layers)
    cpu = Embedder(folder, template, device="cpu", **options).encode_layers(SENTENCES, layers)
    for layer in layers:
        assert cosines(gpu[layer], cpu[layer]).min() >= COSINE_FLOAT32, layer


def test_auto_dtype_on_the_gpu_is_bfloat16_and_near_float32(tiny_llama_dir):
    auto = Embedder(str(tiny_llama_dir), "prompteol", device="cuda")
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    assert auto.describe()["dtype"] == "bfloat16"
    got = auto.encode(SENTENCES)
    assert got.dtype == np.float32  # vectors leave the embedder in float32 whatever the compute dtype
    reference = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32", device="cpu").encode(SENTENCES)
    found = cosines(got, reference)
    print(f"bf16 on GPU vs float32 on CPU: cosine min {found.min():.5f}")
    assert found.min() >= 0.99


@pytest.mark.parametrize("name", ["nf4", "fp4"])
def test_4bit_on_the_gpu_computes_its_dequantized_weights(tokenizer_dir, name):  # noqa: F811
    bnb = pytest.importorskip("bitsandbytes", reason="4-bit needs the [quant] extra (bitsandbytes)")
    quantized = Embedder(str(tokenizer_dir), "prompteol", dtype="float32", quantization=name, device="cuda")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.backend.model.modules())
    got = quantized.encode(SENTENCES)

    reference = load_backend("transformers", str(tokenizer_dir), dtype="float32", device="cpu")
    for module in reference.model.modules():
        if isinstance(module, torch.nn.Linear):  # bitsandbytes' own round trip, run on the GPU
            packed, state = bnb.functional.quantize_4bit(module.weight.data.cuda(), quant_type=name)
            module.weight.data.copy_(bnb.functional.dequantize_4bit(packed, state).float().cpu())
    expected = Embedder(reference, "prompteol").encode(SENTENCES)
    full = Embedder(str(tokenizer_dir), "prompteol", dtype="float32", device="cpu").encode(SENTENCES)
    found = cosines(got, expected)
    print(f"{name} on GPU vs its dequantized weights on CPU: cosine min {found.min():.6f}")
    assert found.min() >= 0.9999
    assert np.abs(got - expected).max() < 0.1 * np.abs(got - full).max()


def _run(tmp_path, senteval, folder, model_dir, *, stop_at=None, resume=False, **overrides):  # noqa: F811
    from promptlab.finetune.trainer import Trainer

    cfg = config(
        tmp_path, senteval, model=str(model_dir), dtype="float32", output_dir=str(tmp_path / folder),
        steps=7, save_every=2, lora_dropout=0.2, **overrides,
    )  # fmt: skip
    backend = None
    if cfg.quantization == "none":
        backend = load_backend("transformers", str(model_dir), dtype="float32", device="cuda")
    trainer = Trainer(cfg, backend=backend, data=TrainingData(TOY[:6]))  # a 4-bit base loads on the GPU
    return run_until(trainer, stop_at, resume=resume)


def _adapter(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_a_gpu_run_resumes_where_an_uninterrupted_one_ends(tmp_path, senteval, tiny_llama_dir):  # noqa: F811
    whole = _run(tmp_path, senteval, "whole", tiny_llama_dir)
    assert next(whole.model.parameters()).device.type == "cuda"
    _run(tmp_path, senteval, "parts", tiny_llama_dir, stop_at=5)  # the last checkpoint is step 4
    state = torch.load(tmp_path / "parts" / "checkpoint-last" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 4 and len(state["cuda_rng"]) == torch.cuda.device_count()
    resumed = _run(tmp_path, senteval, "parts", tiny_llama_dir, resume=True)
    mine, reference = _adapter(resumed), _adapter(whole)
    assert mine.keys() == reference.keys()
    for name in mine:  # GPU attention's backward may sum in any order: equal up to that, not bit for bit
        torch.testing.assert_close(mine[name], reference[name], rtol=RESUME_RTOL, atol=RESUME_ATOL, msg=name)
    assert [e["dev_spearman"] for e in resumed.history] == pytest.approx(
        [e["dev_spearman"] for e in whole.history], abs=1e-3
    )


def test_an_adapter_trained_on_the_gpu_embeds_the_same_on_the_cpu(tmp_path, senteval, tiny_llama_dir):  # noqa: F811
    trainer = _run(tmp_path, senteval, "run", tiny_llama_dir, lr=1e-2)
    best = str(tmp_path / "run" / "best")
    gpu = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32", adapter=best, device="cuda")
    cpu = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32", adapter=best, device="cpu")
    base = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32", device="cpu").encode(SENTENCES)
    got, expected = gpu.encode(SENTENCES), cpu.encode(SENTENCES)
    assert cosines(got, expected).min() >= COSINE_FLOAT32
    assert np.abs(expected - base).max() > 100 * np.abs(got - expected).max(), "the adapter moves the vectors"
    assert trainer.step == 7


def test_qlora_trains_on_the_gpu(tmp_path, senteval, tokenizer_dir):  # noqa: F811
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra (bitsandbytes)")
    trainer = _run(tmp_path, senteval, "run", tokenizer_dir, quantization="nf4", lr=1e-2, eval_every=0)
    layer = trainer.model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit" and layer.base_layer.weight.device.type == "cuda"
    lora_b = layer.lora_B["default"].weight
    assert lora_b.abs().sum() > 0, "LoRA's B starts at zero: training moved it"
    resumed_from = _run(tmp_path, senteval, "parts", tokenizer_dir, quantization="nf4", lr=1e-2,
                        eval_every=0, stop_at=5)  # fmt: skip
    del resumed_from
    resumed = _run(tmp_path, senteval, "parts", tokenizer_dir, quantization="nf4", lr=1e-2, eval_every=0,
                   resume=True)  # fmt: skip
    reference = _adapter(trainer)
    for name, value in _adapter(resumed).items():
        torch.testing.assert_close(value, reference[name], rtol=RESUME_RTOL, atol=RESUME_ATOL, msg=name)
