"""Later prompt methods (PCoT, KE, MetaEOL, Echo), checked against independent forward passes.

Each reference writes its prompt out by hand, runs it unbatched and unpadded through the tiny model, and
reads the vector at positions found by hand; the code under test renders, batches, pads and pools.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import backend_for

from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError
from promptlab.registry import Registry, get_template
from promptlab.templates import Template

SENTENCES = [
    "A man is playing a guitar",
    "The cat sits.",
    'He said "hello" to everyone in the room?',
    "Two dogs run through a field of grass while children watch!",
]

PCOT = 'After thinking step by step , this sentence : "{}" means in one word:"'
KE = (
    "The essence of a sentence is often captured by its main subjects and actions, while descriptive terms "
    "provide additional but less central details. With this in mind , "
    'this sentence : "{}" means in one word:"'
)


def eol_sentence(sentence: str) -> str:
    if sentence[-1] not in ".?!\"'":
        sentence += "."
    return sentence.replace('"', "'")


def hidden_states(model, tokenizer, text: str, layer: int):
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**enc, output_hidden_states=True).hidden_states[layer][0]


@pytest.mark.parametrize(("name", "text"), [("pcot", PCOT), ("ke", KE)])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_opt"])
def test_pcot_and_ke_are_next_token_templates_with_the_papers_text(
    request, fixture, name, text, padding_side
):
    assert get_template(name).text == text.format("[X]")
    model, tokenizer = request.getfixturevalue(fixture)
    vectors = Embedder(backend_for((model, tokenizer)), name, layer=-1, padding_side=padding_side).encode(
        SENTENCES, batch_size=3
    )
    for sentence, vector in zip(SENTENCES, vectors, strict=True):
        expected = hidden_states(model, tokenizer, text.format(eol_sentence(sentence)), -1)[-1]
        torch.testing.assert_close(torch.from_numpy(vector), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("layer", [-1, 1])
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_metaeol_is_the_mean_of_its_four_meta_task_vectors(tiny_llama, layer, prefix_cache):
    model, tokenizer = tiny_llama
    metaeol = get_template("metaeol")
    assert metaeol.kind == "ensemble" and len(metaeol.members) == 4
    embedder = Embedder(backend_for(tiny_llama), "metaeol", layer=layer, prefix_cache=prefix_cache)
    vectors = embedder.encode(SENTENCES, batch_size=3)
    for sentence, vector in zip(SENTENCES, vectors, strict=True):
        per_task = []
        for member in metaeol.members:
            head, tail = get_template(member).text.split("[X]")  # written out: head + sentence + tail
            per_task.append(hidden_states(model, tokenizer, head + eol_sentence(sentence) + tail, layer)[-1])
        torch.testing.assert_close(
            torch.from_numpy(vector), torch.stack(per_task).mean(0), atol=2e-5, rtol=1e-4
        )
    record = embedder.describe()
    assert list(record["template_members"]) == list(metaeol.members)
    assert embedder.last_stats["unique_sentences"] == len(SENTENCES)


def test_metaeol_encode_layers_matches_single_layers(tiny_llama):
    embedder = Embedder(backend_for(tiny_llama), "metaeol")
    many = embedder.encode_layers(SENTENCES, [0, 2, -1])
    for layer in (0, 2, -1):
        np.testing.assert_allclose(
            many[layer],
            Embedder(backend_for(tiny_llama), "metaeol", layer=layer).encode(SENTENCES),
            atol=1e-5,
        )


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("prefix_cache", [True, False])
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_opt"])
def test_echo_is_the_mean_over_the_second_copy_only(request, fixture, padding_side, prefix_cache):
    model, tokenizer = request.getfixturevalue(fixture)
    assert get_template("echo").text == "Rewrite the sentence: [X], rewritten sentence: [X]"
    embedder = Embedder(
        backend_for((model, tokenizer)),
        "echo",
        layer=-1,
        padding_side=padding_side,
        prefix_cache=prefix_cache,
    )
    vectors = embedder.encode(SENTENCES, batch_size=3)
    for sentence, vector in zip(SENTENCES, vectors, strict=True):
        before = f"Rewrite the sentence: {sentence}, rewritten sentence: "  # no normalisation for Echo
        full = before + sentence
        hidden = hidden_states(model, tokenizer, full, -1)
        # This tokenizer has no merge of a space into a word: the second copy is exactly the final tokens.
        start = len(tokenizer(before)["input_ids"])
        assert tokenizer.decode(tokenizer(full)["input_ids"][start:]) == sentence
        torch.testing.assert_close(torch.from_numpy(vector), hidden[start:].mean(0), atol=2e-5, rtol=1e-4)


def test_echo_long_sentence_is_cut_in_both_copies(tiny_llama):
    embedder = Embedder(backend_for(tiny_llama), "echo", max_length=40)
    prompt = embedder.prompts.encode("a man is playing a guitar " * 50)
    text = embedder.backend.tokenizer.decode(prompt.ids)
    first, second = text[len("Rewrite the sentence: ") :].split(", rewritten sentence: ")
    assert len(prompt.ids) <= 40 and first == second and prompt.slot[1] == len(prompt.ids)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "ensemble", "text": "", "members": ("a",)}, "two or more template names"),
        ({"kind": "ensemble", "text": "[X]", "members": ("a", "b")}, "no text of its own"),
        ({"kind": "next_token", "text": "[X] is:", "members": ("a", "b")}, "members only belong"),
        ({"kind": "ensemble", "text": "", "members": ("a", "b"), "pooling": "mean"}, "remove pooling"),
        ({"kind": "next_token", "text": "[X] and [X]:"}, "exactly one sentence slot"),
    ],
)
def test_invalid_ensembles_and_repeated_slots_are_refused(kwargs, message):
    with pytest.raises(PromptlabError, match=message):
        Template(name="bad", **kwargs)


def test_span_template_may_repeat_the_sentence_and_records_the_last_copy():
    rendered = Template("t", "span", "[X] again: [X]!", normalize=False).render("Dogs run")
    assert rendered.text == "Dogs run again: Dogs run!"
    assert rendered.text[rendered.slot_start : rendered.slot_end] == "Dogs run" and rendered.slot_start == 16


def test_registry_checks_ensemble_members():
    plain = Template("plain", "next_token", 'S : "[X]" is:"')
    with pytest.raises(PromptlabError, match="'plian', which is not a template. Did you mean: plain"):
        Registry([plain, Template("ens", "ensemble", "", members=("plain", "plian"))])
    with pytest.raises(PromptlabError, match="an ensemble itself"):
        Registry(
            [
                plain,
                Template("e1", "ensemble", "", members=("plain", "e2")),
                Template("e2", "ensemble", "", members=("plain", "plain")),
            ]
        )


def test_ensemble_cannot_be_rendered_directly():
    with pytest.raises(PromptlabError, match="render its members"):
        get_template("metaeol").render("x")


# --------------------------------------------------------------------------- slow: the real SmolLM2-135M


@pytest.mark.slow
def test_real_smollm2_later_methods_embed_sensibly():
    """Each method on a 60-pair STS-B dev subset: far above chance, and the ensemble is its members' mean."""
    from test_demonstrations import REAL

    from promptlab.backends import load_backend
    from promptlab.evaluation import score_pairs, sts_dev

    if not (REAL / "downstream").is_dir():
        pytest.skip(f"no SentEval data at {REAL}")
    pairs = sts_dev(REAL, n_pairs=60, seed=0)
    backend = load_backend("transformers", "smollm2-135m", dtype="bfloat16")
    scores, vectors = {}, {}
    for name in ("pcot", "ke", "echo", "metaeol", *get_template("metaeol").members):
        embedder = Embedder(backend, name)
        a, b = embedder.encode(pairs.sentences1), embedder.encode(pairs.sentences2)
        vectors[name] = a
        scores[name] = score_pairs(a, b, pairs.scores)
    print(
        "\nSTS-B dev (60 pairs), SmolLM2-135M bf16, last layer:", {k: round(v, 1) for k, v in scores.items()}
    )
    assert all(scores[name] > 30 for name in ("pcot", "ke", "echo", "metaeol"))
    members = np.mean([vectors[m] for m in get_template("metaeol").members], axis=0)
    np.testing.assert_allclose(vectors["metaeol"], members, rtol=1e-5, atol=1e-5)
