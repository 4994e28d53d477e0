"""The llamacpp backend: a GGUF file run by llama.cpp gives the transformers backend's vectors, and clear refusals.

The fast tests write a tiny float32 GGUF of the random LLaMA fixture with the `gguf` package (weights and
tokenizer), so llama.cpp and transformers compute on the same numbers. They need llama-cpp-python, which
pip builds from source (minutes): they skip where it is missing, and fail instead under
PROMPTLAB_REQUIRE_LLAMACPP=1 (the CI's llamacpp step). The refusals run everywhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BACKEND_SENTENCES, require_runtime

from promptlab.backends import check_request
from promptlab.backends.base import Request
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError

SENTENCES = BACKEND_SENTENCES


@pytest.fixture(scope="module")
def llamacpp_installed():
    require_runtime(
        "llama_cpp",
        "PROMPTLAB_REQUIRE_LLAMACPP",
        "llama-cpp-python is not installed (pip install 'promptlab[llamacpp]' builds it)",
    )


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Q/K rows from transformers' rotate-half order to llama.cpp's interleaved RoPE pairs (as llama.cpp's
    own convert_hf_to_gguf.py does for LLaMA)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_llama_gguf(model, tokenizer, path: Path) -> Path:
    """A float32 GGUF of a transformers `LlamaModel` and its byte-level BPE tokenizer."""
    import gguf

    config = model.config
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(config.hidden_size // n_head)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # The tokenizer, as llama.cpp stores a byte-level BPE one (transformers rebuilds it from these).
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens]
    )
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_add_bos_token(adds_bos)

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute(state[p + "self_attn.q_proj.weight"], n_head))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _permute(state[p + "self_attn.k_proj.weight"], n_kv))
        writer.add_tensor(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", state["norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    model, tokenizer = tiny_llama
    return write_llama_gguf(model, tokenizer, tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.f32.gguf")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("promptlab-cache"))


def _embedder(model, backend: str, template="prompteol", **options):
    return Embedder(model, template, backend=backend, dtype="float32", device="cpu", **options)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


@pytest.fixture(scope="module")
def llamacpp_backend(llamacpp_installed, tiny_gguf, cache):
    from promptlab.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend.load(str(tiny_gguf), cache_dir=cache)


@pytest.fixture(scope="module")
def transformers_backend(tiny_llama):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import backend_for

    return backend_for(tiny_llama)


# -- same vectors as the transformers backend, on the same float32 weights ------------------------------
# (template, options): next-token templates (with a demonstration, an ensemble) and the token poolings.
CASES = [
    ("prompteol", {}),
    ("prompteol", {"demonstration": "eol-opt-125m"}),
    ("metaeol", {}),
    ("none", {"pooling": "mean"}),
    ("none", {"pooling": "last"}),
    ("none", {"pooling": "max"}),
    ("echo", {}),
]


@pytest.mark.parametrize(("template", "options"), CASES, ids=[f"{t}-{o}" for t, o in CASES])
def test_vectors_equal_transformers(llamacpp_backend, transformers_backend, template, options):
    ours = Embedder(llamacpp_backend, template, **options).encode(SENTENCES)
    theirs = Embedder(transformers_backend, template, **options).encode(SENTENCES)
    # llama.cpp computes in float32 with its own kernels (keys/values kept in float32, no flash attention):
    # measured max |difference| 3e-6 on vectors of norm ~5 (cosine 1 - 1e-7), over these templates.
    assert _cosines(ours, theirs).min() >= 0.999999
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_token_ids_are_the_transformers_backends(llamacpp_backend, transformers_backend, monkeypatch):
    fed = []
    decode = type(llamacpp_backend)._decode
    monkeypatch.setattr(
        llamacpp_backend,
        "_decode",
        lambda rows, **kw: fed.extend(rows) or decode(llamacpp_backend, rows, **kw),
    )
    embedder = Embedder(llamacpp_backend, "prompteol", demonstration="eol-opt-125m")
    embedder.encode(SENTENCES)
    expected = Embedder(transformers_backend, "prompteol", demonstration="eol-opt-125m").prompts
    want = {tuple(expected.encode(s).ids) for s in SENTENCES}
    assert {tuple(r) for r in fed} == want


def test_bos_token_added_as_the_transformers_backend_adds_it(llamacpp_installed, tmp_path, cache):
    """A GGUF whose tokenizer adds a BOS token (as Gemma's does): llama.cpp is fed it, like transformers."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import _bpe_tokenizer, backend_for
    from transformers import LlamaConfig, LlamaModel

    from promptlab.backends.llamacpp import LlamaCppBackend

    tokenizer = _bpe_tokenizer(bos="<s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
    )  # fmt: skip
    model = LlamaModel(config).eval()
    backend = LlamaCppBackend.load(
        str(write_llama_gguf(model, tokenizer, tmp_path / "bos.gguf")), cache_dir=cache
    )
    ours = Embedder(backend, "prompteol")
    theirs = Embedder(backend_for((model, tokenizer)), "prompteol")
    assert ours.prompts.encode("The cat sits.").ids == theirs.prompts.encode("The cat sits.").ids
    assert ours.prompts.encode("The cat sits.").ids[0] == tokenizer.bos_token_id
    np.testing.assert_allclose(ours.encode(SENTENCES), theirs.encode(SENTENCES), atol=1e-4)


def test_long_sentence_is_cut_inside_the_slot(llamacpp_backend, transformers_backend):
    long = " ".join(["A man is playing a guitar while the dog sleeps."] * 20)
    ours = Embedder(llamacpp_backend, "prompteol", max_length=40)
    prompt = ours.prompts.encode(long)
    assert prompt.truncated and len(prompt.ids) <= 40
    tail = ours.prompts.encode("short").ids[-4:]  # the template's end survives the cut
    assert prompt.ids[-4:] == tail
    with pytest.warns(UserWarning, match="shortened inside"):
        a = ours.encode([long])
    with pytest.warns(UserWarning, match="shortened inside"):
        b = Embedder(transformers_backend, "prompteol", max_length=40).encode([long])
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_many_prompts_per_decode_call_equal_one_at_a_time(llamacpp_backend):
    embedder = Embedder(llamacpp_backend, "prompteol")
    together = embedder.encode(SENTENCES)
    assert llamacpp_backend.last_decode_calls == 1  # one batch of 4 unique prompts: one llama_decode
    alone = np.stack([embedder.encode([s])[0] for s in SENTENCES])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_prompts_split_over_calls_by_n_seq_max(llamacpp_installed, tiny_gguf, cache):
    from promptlab.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend.load(str(tiny_gguf), cache_dir=cache, n_seq_max=2, n_threads=1)
    assert backend.n_threads == 1
    split = Embedder(backend, "prompteol").encode(SENTENCES)
    assert backend.last_decode_calls == 2  # 4 unique prompts, 2 per call
    whole = Embedder(LlamaCppBackend.load(str(tiny_gguf), cache_dir=cache), "prompteol").encode(SENTENCES)
    np.testing.assert_allclose(split, whole, atol=1e-5)


def test_describe_records_the_file(llamacpp_backend, tiny_gguf):
    info = llamacpp_backend.describe()
    assert info["backend"] == "llamacpp" and info["dtype"] == "f32" and info["quantization"] is None
    assert info["model_source"] == "gguf" and info["model_path"] == str(tiny_gguf.resolve())
    assert len(info["model_file_sha256"]) == 64 and info["n_threads"] >= 1
    assert llamacpp_backend.attends_both_ways is False


def test_embedder_loads_by_backend_name(llamacpp_installed, tiny_gguf, cache, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_CACHE", cache)
    embedder = Embedder(str(tiny_gguf), "prompteol", backend="llamacpp", device="cpu")
    assert embedder.encode(SENTENCES[:2]).shape == (2, 32)


# -- refusals --------------------------------------------------------------------------------------------
def test_other_layer_refused_before_any_load():
    with pytest.raises(PromptlabError, match="--backend transformers") as err:
        Embedder("/nonexistent/model.gguf", "prompteol", backend="llamacpp", layer=20)
    assert "llamacpp" in str(err.value) and "last layer" in str(err.value)
    with pytest.raises(PromptlabError, match="--backend transformers"):
        check_request("llamacpp", Request(readouts=("mask",)))
    with pytest.raises(PromptlabError, match="--quantization"):
        check_request("llamacpp", Request(quantization="int8"))


def test_missing_extra_names_it(monkeypatch):
    from promptlab.backends.llamacpp import LlamaCppBackend

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    with pytest.raises(PromptlabError, match=r"pip install 'promptlab\[llamacpp\]'.*compiles llama.cpp"):
        LlamaCppBackend.load("model.gguf")


def test_not_gguf_refused(llamacpp_installed, tmp_path, cache):
    from promptlab.backends.llamacpp import LlamaCppBackend

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(PromptlabError, match="is not a GGUF file") as err:
        LlamaCppBackend.load(str(fake), cache_dir=cache)
    assert str(fake) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PromptlabError, match="does not exist"):
        LlamaCppBackend.load(str(tmp_path / "missing.gguf"), cache_dir=cache)


@pytest.mark.parametrize("keep", [0.5, 0.01], ids=["tensors-cut", "header-cut"])
def test_truncated_gguf_refused(llamacpp_installed, tiny_gguf, tmp_path, cache, keep):
    from promptlab.backends.llamacpp import LlamaCppBackend

    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: max(8, int(len(data) * keep))])
    with pytest.raises(PromptlabError, match="truncated") as err:
        LlamaCppBackend.load(str(cut), cache_dir=cache)
    assert str(cut) in str(err.value) and "\n" not in str(err.value)


def test_unknown_architecture_refused(llamacpp_installed, tiny_llama, tmp_path, cache):
    import gguf

    from promptlab.backends.llamacpp import LlamaCppBackend

    path = write_llama_gguf(*tiny_llama, tmp_path / "odd.gguf")
    reader = gguf.GGUFReader(str(path), "r+")  # rename the architecture in place: same length
    field = reader.fields["general.architecture"]
    field.parts[field.data[0]][:] = np.frombuffer(b"zzzzz", dtype=np.uint8)
    del reader
    with pytest.raises(PromptlabError, match="cannot load it") as err:
        LlamaCppBackend.load(str(path), cache_dir=cache)
    message = str(err.value)
    assert str(path) in message and "zzzzz" in message and "\n" not in message


# -- the real packaged model: its own Q4_1 file through llama.cpp vs its dequantized weights ---------------
def _stsb_dev(n: int):
    from conftest import SENTEVAL

    from promptlab.evaluation import load_task

    if not SENTEVAL.is_dir():
        pytest.skip(f"SentEval data not at {SENTEVAL}")
    (pairs,) = load_task("STSBenchmark", data_dir=SENTEVAL, split="dev")
    idx = np.sort(np.random.default_rng(0).choice(len(pairs), size=n, replace=False))
    return [pairs.sentences1[i] for i in idx], [pairs.sentences2[i] for i in idx], pairs.scores[idx]


@pytest.mark.slow
def test_packaged_q4_gguf_matches_dequantized_transformers(llamacpp_installed):
    from transformers import AutoTokenizer

    from promptlab.evaluation import score_pairs
    from promptlab.models import get_model
    from promptlab.models.gguf import gguf_tokenizer_dir

    s1, s2, gold = _stsb_dev(60)
    ours = Embedder("smollm2-135m", "prompteol", backend="llamacpp", device="cpu")
    theirs = Embedder("smollm2-135m", "prompteol", dtype="float32", device="cpu")
    info = ours.backend.describe()
    assert info["dtype"] == "q4_1" and info["model_path"].endswith(get_model("smollm2-135m").artifact)
    # The tokenizer built from the GGUF file (a model not pulled yet) gives the converted folder's ids.
    built = AutoTokenizer.from_pretrained(
        gguf_tokenizer_dir(Path(info["model_path"]), info["model_file_sha256"])
    )
    for s in s1[:20]:
        text = f'This sentence : "{s}" means in one word:"'
        assert built(text)["input_ids"] == theirs.backend.tokenizer(text)["input_ids"]
    a = ours.encode(s1 + s2)
    b = theirs.encode(s1 + s2)
    cos = _cosines(a, b)
    score_ours = score_pairs(a[:60], a[60:], gold)
    score_theirs = score_pairs(b[:60], b[60:], gold)
    print(f"Q4_1 llama.cpp vs dequantized transformers: cosine min {cos.min():.5f} mean {cos.mean():.5f}; "
          f"STS-B dev 60 pairs {score_ours:.2f} vs {score_theirs:.2f}")  # fmt: skip
    # The same Q4_1 weights on both sides; llama.cpp rounds activations to 8 bits for its matmuls.
    # Measured (2026-12-03, 400 STS-B dev sentences): min 0.9975, mean 0.9997; Spearman 66.37 vs 66.95.
    assert cos.min() >= 0.99
    assert abs(score_ours - score_theirs) <= 3
