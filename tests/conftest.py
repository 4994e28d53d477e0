"""Shared fixtures: tiny random models with real fast tokenizers, built in memory (no downloads).

Exact-equality tests run on these in milliseconds; the real packaged models are exercised in tests
marked ``slow``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CORPUS = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The cat sits on the mat, and the dog sleeps.",
    'He said "hello" to everyone in the room?',
    "This sentence : means in one word of the",
    "Two dogs run through a field of grass while children watch!",
    "A jockey riding a horse. Smoking Music Swiss Equestrian",
    "query: Represent the sentence for searching relevant passages",
]

SENTEVAL = Path(
    os.environ.get("PROMPTLAB_DATA", Path(__file__).resolve().parents[2] / "shared/data/senteval")
)


def _bpe_tokenizer(bos: str | None):
    """A byte-level BPE fast tokenizer trained on CORPUS (like GPT-2/LLaMA-3 style tokenizers).

    Its alphabet is all 256 bytes, as real byte-level tokenizers have: trained on CORPUS alone, a character
    CORPUS lacks (digits, most capitals) would be dropped, so "dev 3 a" and "dev 11 a" became one prompt and
    scores over such sentences were exact ties that each CPU's rounding broke its own way.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>"] + ([bos] if bos else [])
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", bos_token=bos, pad_token=None, model_max_length=10**30
    )


def _wordpiece_tokenizer():
    from transformers import BertTokenizerFast

    words = sorted({w.strip(".,!?:\"'").lower() for s in CORPUS for w in s.split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", ":", '"', "'"] + words
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=64)


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer): a 3-layer random LLaMA; the tokenizer adds no BOS and has no pad token."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    tokenizer = _bpe_tokenizer(bos=None)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        # At the default std of 0.02 every prompt lands on nearly one direction (cosines 0.9996-0.9999, gaps
        # of 1e-9), so ranks of its scores are decided by float rounding, which differs between CPUs.
        initializer_range=0.2,
    )
    return LlamaModel(config).eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_opt():
    """(model, tokenizer): a 2-layer random OPT; the tokenizer prepends a BOS, positions are learned."""
    import torch
    from transformers import OPTConfig, OPTModel

    tokenizer = _bpe_tokenizer(bos="<s>")
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=256,
        pad_token_id=tokenizer.eos_token_id,
    )
    return OPTModel(config).eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_bert():
    """(model, tokenizer): a 2-layer random BERT with its pooler and a WordPiece tokenizer with [MASK]."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = _wordpiece_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return BertModel(config).eval(), tokenizer


def _saved(model_and_tokenizer, tmp_path_factory, name: str):
    """A fixture model and its tokenizer saved as a local model directory (a model spec like any user's)."""
    model, tokenizer = model_and_tokenizer
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama, tmp_path_factory):
    return _saved(tiny_llama, tmp_path_factory, "tiny-llama")


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_bert, tmp_path_factory):
    return _saved(tiny_bert, tmp_path_factory, "tiny-bert")


def backend_for(model_and_tokenizer):
    from promptlab.backends.transformers import TransformersBackend

    model, tokenizer = model_and_tokenizer
    return TransformersBackend(model, tokenizer, info={"model": "tiny-random", "dtype": "float32"})


@pytest.fixture(scope="session")
def tiny_mpnet():
    """(model, tokenizer): a 2-layer random MPNet; its positions start at padding_idx + 1 (RoBERTa-style)."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    tokenizer = _wordpiece_tokenizer()
    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=80,
        pad_token_id=tokenizer.pad_token_id,
    )
    return MPNetModel(config).eval(), tokenizer


@pytest.fixture
def adapter_dir(tiny_llama_dir, tmp_path):
    """A LoRA adapter with non-zero weights, saved as `promptlab finetune` saves its best/ folder."""
    pytest.importorskip("peft")
    from helpers import lora_with_weights

    from promptlab.adapters import base_identity
    from promptlab.backends import load_backend
    from promptlab.finetune.lora import save_adapter

    backend = load_backend("transformers", str(tiny_llama_dir), dtype="float32")
    identity = base_identity(backend)
    peft_model = lora_with_weights(backend, seed=1)
    folder = tmp_path / "best"
    meta = {
        "base": identity,
        "template": {
            "name": "prompteol",
            "kind": "next_token",
            "text": 'This sentence : "[X]" means in one word:"',
        },
        "layer": 2,
        "config": {
            "model": str(tiny_llama_dir),
            "dtype": "float32",
            "quantization": "none",
            "max_length": None,
        },
    }
    save_adapter(peft_model, folder, meta)
    return folder
