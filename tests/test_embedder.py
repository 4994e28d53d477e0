"""The extractor, checked against independent forward passes on tiny random models.

The reference in each test is computed here from scratch: the prompt string is written out by hand,
tokenized with the plain tokenizer call, run unbatched and unpadded through the model, and the vector is
read at the position found by hand. The code under test batches, sorts, pads and deduplicates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import backend_for

from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError

SENTENCES = [
    "A man is playing a guitar",
    "The cat sits.",
    'He said "hello" to everyone in the room?',
    "Two dogs run through a field of grass while children watch!",
    "A man is playing a guitar",  # a duplicate
]


def eol_prompt(sentence: str) -> str:
    # PromptEOL's own preprocessing, written out independently of promptlab.templates.
    if sentence[-1] not in ".?!\"'":
        sentence += "."
    return 'This sentence : "' + sentence.replace('"', "'") + '" means in one word:"'


def reference_hidden(model, tokenizer, text: str, layer: int) -> torch.Tensor:
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**enc, output_hidden_states=True).hidden_states[layer][0], enc["input_ids"][0]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("layer", [-1, 1, 0])
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_opt"])
def test_next_token_vector_equals_independent_forward(request, fixture, padding_side, layer):
    model, tokenizer = request.getfixturevalue(fixture)
    embedder = Embedder(backend_for((model, tokenizer)), "prompteol", layer=layer, padding_side=padding_side)
    vectors = embedder.encode(SENTENCES, batch_size=3)
    assert vectors.shape == (len(SENTENCES), 32) and vectors.dtype == np.float32
    for sentence, vector in zip(SENTENCES, vectors, strict=True):
        hidden, ids = reference_hidden(model, tokenizer, eol_prompt(sentence), layer)
        assert tokenizer.decode(ids[-1:]) == '"', "the read-out position is the prompt's last token"
        torch.testing.assert_close(torch.from_numpy(vector), hidden[-1], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("layer", [-1, 1])
@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_mpnet"])
def test_mask_vector_equals_independent_forward(request, fixture, padding_side, layer):
    model, tokenizer = request.getfixturevalue(fixture)
    embedder = Embedder(backend_for((model, tokenizer)), "promptbert", layer=layer, padding_side=padding_side)
    vectors = embedder.encode(SENTENCES, batch_size=2)
    for sentence, vector in zip(SENTENCES, vectors, strict=True):
        s = sentence if sentence[-1] in ".?!\"'" else sentence + "."
        text = 'This sentence : "' + s.replace('"', "'") + '" means [MASK] .'
        hidden, ids = reference_hidden(model, tokenizer, text, layer)
        position = (ids == tokenizer.mask_token_id).nonzero().item()
        torch.testing.assert_close(torch.from_numpy(vector), hidden[position], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["cls", "cls_mlp", "mean", "max", "last"])
def test_classic_poolings_equal_independent_computation(tiny_bert, pooling, padding_side):
    model, tokenizer = tiny_bert
    embedder = Embedder(backend_for(tiny_bert), "none", pooling=pooling, padding_side=padding_side)
    vectors = embedder.encode(SENTENCES, batch_size=4)
    for sentence, vector in zip(SENTENCES, vectors, strict=True):
        hidden, _ = reference_hidden(model, tokenizer, sentence, -1)  # [L, H], no padding at all
        expected = {
            "cls": hidden[0],
            "cls_mlp": torch.tanh(model.pooler.dense(hidden[0])),
            "mean": hidden.mean(0),
            "max": hidden.max(0).values,
            "last": hidden[-1],
        }[pooling]
        torch.testing.assert_close(torch.from_numpy(vector), expected, atol=2e-5, rtol=1e-4)


def test_e5_prefix_is_pooled_with_the_prefix(tiny_llama):
    model, tokenizer = tiny_llama
    vector = Embedder(backend_for(tiny_llama), "e5-query").encode("A man is playing a guitar")
    hidden, _ = reference_hidden(model, tokenizer, "query: A man is playing a guitar", -1)
    torch.testing.assert_close(torch.from_numpy(vector), hidden.mean(0), atol=2e-5, rtol=1e-4)


def test_encode_layers_shares_one_forward_and_matches_single_layers(tiny_llama):
    backend = backend_for(tiny_llama)
    calls = []
    forward = backend.forward_hidden_states
    backend.forward_hidden_states = lambda batch, **kw: calls.append(1) or forward(batch, **kw)
    embedder = Embedder(backend, "prompteol")
    many = embedder.encode_layers(SENTENCES, [1, 2, -1], batch_size=8)
    assert len(calls) == 1, "one forward pass serves every layer"
    for layer in (1, 2, -1):
        single = Embedder(backend_for(tiny_llama), "prompteol", layer=layer).encode(SENTENCES)
        np.testing.assert_allclose(many[layer], single, atol=1e-5)


def test_duplicates_are_embedded_once_and_order_is_kept(tiny_llama):
    backend = backend_for(tiny_llama)
    seen = []
    embed = backend.embed
    backend.embed = lambda batch, pooling, layers: (
        seen.append(len(batch.input_ids)) or embed(batch, pooling, layers)
    )
    embedder = Embedder(backend, "prompteol")
    vectors = embedder.encode(SENTENCES * 3)
    assert sum(seen) == 4 and embedder.last_stats["unique_sentences"] == 4
    np.testing.assert_array_equal(vectors[0], vectors[4])
    np.testing.assert_array_equal(vectors[:5], vectors[5:10])


def test_long_sentence_is_cut_inside_the_slot_and_the_template_survives(tiny_bert):
    model, tokenizer = tiny_bert
    embedder = Embedder(backend_for(tiny_bert), "promptbert", max_length=40)
    long_sentence = " ".join(["the cat sits on the mat"] * 350)  # 2,100 words
    prompt = embedder.prompts.encode(long_sentence)
    assert prompt.truncated and len(prompt.ids) <= 40
    tail = tokenizer.convert_ids_to_tokens(prompt.ids[-5:])
    assert tail == ['"', "means", "[MASK]", ".", "[SEP]"], "suffix and [MASK] survive truncation"
    assert prompt.ids[prompt.target] == tokenizer.mask_token_id
    with pytest.warns(UserWarning, match="shortened inside the template's slot"):
        vector = embedder.encode([long_sentence])[0]
    with torch.no_grad():
        hidden = model(torch.tensor([prompt.ids]), output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(torch.from_numpy(vector), hidden[prompt.target], atol=2e-5, rtol=1e-4)


def test_next_token_long_sentence_keeps_the_final_quote(tiny_llama):
    embedder = Embedder(backend_for(tiny_llama), "prompteol", max_length=30)
    prompt = embedder.prompts.encode("a man is playing a guitar " * 400)
    assert len(prompt.ids) <= 30
    assert embedder.backend.tokenizer.decode(prompt.ids).endswith('." means in one word:"')


def test_bfloat16_is_close_to_float32(tiny_llama):
    model, tokenizer = tiny_llama
    fp32 = Embedder(backend_for(tiny_llama), "prompteol").encode(SENTENCES)
    bf16_model = type(model)(model.config).to(torch.bfloat16)
    bf16_model.load_state_dict(model.state_dict())
    bf16 = Embedder(backend_for((bf16_model, tokenizer)), "prompteol").encode(SENTENCES)
    assert bf16.dtype == np.float32
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() > 0.99


def test_normalize_embeddings_and_single_string(tiny_llama):
    embedder = Embedder(backend_for(tiny_llama), "prompteol")
    vectors = embedder.encode(SENTENCES, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    single = embedder.encode("The cat sits.")
    assert single.shape == (32,)


@pytest.mark.parametrize(
    ("sentences", "message"),
    [
        (["fine", "   "], "sentence #2 is empty"),
        ([""], "sentence #1 is empty"),
        (["ok", 3], "sentence #2 is a int"),
    ],
)
def test_bad_sentences_are_refused(tiny_llama, sentences, message):
    with pytest.raises(PromptlabError, match=message):
        Embedder(backend_for(tiny_llama), "prompteol").encode(sentences)


def test_mask_template_on_a_tokenizer_without_mask_token(tiny_llama):
    with pytest.raises(PromptlabError, match="no mask token"):
        Embedder(backend_for(tiny_llama), "promptbert")


@pytest.mark.parametrize("layer", [4, -5, 100])
def test_layer_out_of_range_names_the_layer_count(tiny_llama, layer):
    with pytest.raises(PromptlabError, match="the model has 3 layers"):
        Embedder(backend_for(tiny_llama), "prompteol", layer=layer)


def test_describe_carries_the_configuration(tiny_llama):
    record = Embedder(backend_for(tiny_llama), "prompteol", layer=-2).describe()
    assert record["template_text"] == 'This sentence : "[X]" means in one word:"'
    assert record["layer"] == -2 and record["layer_index"] == 2 and record["num_layers"] == 3
    assert record["promptlab"] and record["transformers"] and record["backend"] == "transformers"


def test_auto_dtype_is_bf16_only_where_the_hardware_computes_in_it():
    from promptlab.backends import resolve_dtype

    assert resolve_dtype("auto", "cpu", cpu_flags={"avx2", "amx_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", "cpu", cpu_flags={"avx512f", "avx512_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", "cpu", cpu_flags={"avx2", "avx512f"}) == "float32"  # bf16 only emulated
    assert resolve_dtype("auto", "cpu", cpu_flags=set()) == "float32"
    assert resolve_dtype("float16", "cpu", cpu_flags={"amx_bf16"}) == "float16"  # explicit wins
    with pytest.raises(PromptlabError, match="choose one of auto, float32"):
        resolve_dtype("fp32", "cpu")


def test_auto_dtype_is_resolved_before_loading_and_recorded(tiny_llama_dir):
    from promptlab.backends import resolve_dtype

    embedder = Embedder(str(tiny_llama_dir), "prompteol")
    assert embedder.describe()["dtype"] == resolve_dtype("auto", "cpu") != "auto"


@pytest.mark.slow  # inductor compiles two graphs: about a minute on 2 cores
def test_compiled_forward_gives_the_eager_vectors_on_both_paths(tiny_llama):
    """`compile=True` (torch.compile, dynamic shapes) changes speed, not vectors: plain and prefix-cached paths."""
    sentences = ["A man is playing a guitar.", "A woman slices an onion into rings.", "Rain."]
    for options in ({"prefix_cache": False}, {"demonstration": "eol-opt-125m"}):
        eager = Embedder(backend_for(tiny_llama), "prompteol", **options)
        compiled = Embedder(backend_for(tiny_llama), "prompteol", compile=True, **options)
        expected = eager.encode_layers(sentences, [1, -1], batch_size=2)
        got = compiled.encode_layers(sentences, [1, -1], batch_size=2)
        for layer in (1, -1):
            np.testing.assert_allclose(got[layer], expected[layer], atol=1e-5, rtol=1e-4)
        assert compiled.last_stats["prefix_length"] == eager.last_stats["prefix_length"]
        assert compiled.describe()["compiled"] is True and "compiled" not in eager.describe()


def test_compile_is_refused_by_a_backend_that_cannot(tiny_llama):
    import dataclasses

    from promptlab.backends.transformers import TransformersBackend

    class NoCompile(TransformersBackend):
        name = "other"
        capabilities = dataclasses.replace(TransformersBackend.capabilities, compile=False)

    model, tokenizer = tiny_llama
    with pytest.raises(
        PromptlabError,
        match=r"^the other backend does not torch.compile its forward; use --backend transformers for",
    ):
        Embedder(NoCompile(model, tokenizer), "prompteol", compile=True)


def test_a_tokenizer_without_a_limit_is_cut_at_the_models_positions(tiny_llama_dir, tmp_path):
    # The fixture's tokenizer declares no limit (model_max_length=1e30); its model has 256 positions.
    from promptlab.cli import main

    long_sentence = "a man is playing a guitar " * 100  # about 600 tokens
    source = tmp_path / "in.txt"
    source.write_text(f"{long_sentence}\nThe cat sits.\n")
    output = tmp_path / "v.npy"
    with pytest.warns(UserWarning, match="1 sentence\\(s\\) exceeded 256 tokens"):
        assert (
            main(
                [
                    "embed",
                    "--model",
                    str(tiny_llama_dir),
                    "--input",
                    str(source),
                    "--output",
                    str(output),
                    "--no-cache",
                ]
            )  # cached vectors would not be computed, so not cut
            == 0
        )
    assert np.isfinite(np.load(output)).all()
    embedder = Embedder(str(tiny_llama_dir), "prompteol", dtype="float32")
    assert embedder.describe()["max_length"] == 256
    prompt = embedder.prompts.encode(long_sentence)
    assert prompt.truncated and len(prompt.ids) <= 256
    assert embedder.backend.tokenizer.decode(prompt.ids).endswith('." means in one word:"')
    assert Embedder(embedder.backend, "prompteol", max_length=40).describe()["max_length"] == 40


def test_positions_reserved_by_the_model_are_not_counted(tiny_mpnet):
    backend = backend_for(tiny_mpnet)  # RoBERTa-style: positions start at padding_idx + 1
    model, _ = tiny_mpnet
    assert backend.max_positions == model.config.max_position_embeddings - backend.position_offset


def test_no_known_limit_is_recorded_as_none(tiny_llama):
    backend = backend_for(tiny_llama)
    backend.max_positions = None  # a model that declares no positions, with a tokenizer without a limit
    embedder = Embedder(backend, "prompteol")
    assert embedder.describe()["max_length"] is None
    prompt = embedder.prompts.encode("a man is playing a guitar " * 100)
    assert not prompt.truncated and len(prompt.ids) > 256


@pytest.mark.parametrize("max_length", [0, -1, True, 2.5, "64"])
def test_max_length_must_be_a_positive_number(tiny_llama, max_length):
    with pytest.raises(PromptlabError, match="give a positive number of tokens"):
        Embedder(backend_for(tiny_llama), "prompteol", max_length=max_length)


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_cli_refuses_a_max_length_that_is_not_positive(tiny_llama_dir, tmp_path, capsys, value):
    from promptlab.cli import main

    source = tmp_path / "in.txt"
    source.write_text("The cat sits.\n")
    with pytest.raises(SystemExit) as exit_:
        main(["embed", "--model", str(tiny_llama_dir), "--input", str(source), "--max-length", value])
    assert exit_.value.code == 2
    assert f"{value!r} is not a positive number of tokens" in capsys.readouterr().err
