"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import os
import random

import pytest

# Sentences a backend is compared on against the transformers backend: punctuation, quotes, different
# lengths (so padding matters), and one repeated (so deduplication matters).
BACKEND_SENTENCES = [
    "A man is playing a guitar.",
    "The cat sits.",
    "Two dogs run through a field of grass while children watch!",
    'He said "hello" to everyone in the room?',
    "The cat sits.",
]

WORDS = (
    "a man woman child dog cat horse guitar onion field grass room music river city street car train "
    "plays slices sits runs sleeps rides watches reads writes sings under over near through while"
).split()


def corpus_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct made-up sentences of 3-14 words (a corpus for embedding jobs)."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        words = rng.choices(WORDS, k=rng.randint(3, 14))
        out[f"{' '.join(words).capitalize()} #{len(out)}."] = None
    return list(out)


def require_runtime(module: str, require_env: str, skip_reason: str) -> None:
    """Skip the test when the optional runtime ``module`` is missing, or fail when ``require_env`` is set
    (the CI step that installs the runtime sets it, so a broken install cannot pass as skipped)."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get(require_env):
            pytest.fail(f"{require_env} is set but {module} is not installed in this environment")
        pytest.skip(skip_reason)


def lora_with_weights(backend, seed: int):
    """A LoRA (r=4) on ``backend``'s model with seeded non-zero B matrices: a fresh LoRA has B = 0, a no-op,
    and a test of adapters needs one that moves the vectors."""
    import torch

    from promptlab.finetune.lora import add_lora

    peft_model = add_lora(backend, r=4, alpha=8, dropout=0.0, target_modules=None, quantized=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return peft_model


def save_tiny_llama_64(folder) -> None:
    """Save a tiny LLaMA with hidden size 64 and its tokenizer in ``folder`` (bitsandbytes' 4-bit blocks need
    at least 64 inputs, more than the conftest models have)."""
    import torch
    from conftest import _bpe_tokenizer
    from transformers import LlamaConfig, LlamaModel

    tokenizer = _bpe_tokenizer(bos=None)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    LlamaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
