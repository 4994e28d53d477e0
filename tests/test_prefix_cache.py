"""The prefix KV cache, checked against independent unbatched forward passes of the full prompts.

The reference for every sentence is the plain model run on the whole prompt text, tokenized by the plain
tokenizer call, with no cache, no batching and no padding; the code under test runs the shared prefix once
and only the suffixes per batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import backend_for

from promptlab.embedder import Embedder
from promptlab.prefix_cache import shared_prefix_length

SENTENCES = [
    "A man is playing a guitar.",
    "The cat sits.",
    "Two dogs run through a field of grass while children watch!",
    "A woman is slicing an onion.",
    "He said hello to everyone in the room?",
    "A jockey riding a horse.",
    "A man is playing a guitar.",  # a duplicate
]
# A demonstration in front of the PromptEOL template: the shared prefix is most of the prompt.
DEMO_HEAD = 'This sentence : "A man is playing a guitar." means in one word:"Guitar". '
LONG_TEMPLATE = DEMO_HEAD + 'This sentence : "[X]" means in one word:"'


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a[None], b[None])[0])


def reference(model, tokenizer, text: str) -> tuple[torch.Tensor, ...]:
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return tuple(h[0] for h in model(**enc, output_hidden_states=True).hidden_states)  # each [L, H]


@pytest.mark.parametrize(
    ("sequences", "expected"),
    [
        ([[1, 2, 3, 4], [1, 2, 5]], 2),
        ([[1, 2, 3], [1, 2, 3]], 2),  # identical: one token of each row still runs
        ([[1, 2, 3]], 2),
        ([[7, 2], [1, 2]], 0),
        ([[1], [1, 2, 3]], 0),  # the shortest row keeps its only token
        ([], 0),
    ],
)
def test_shared_prefix_length(sequences, expected):
    assert shared_prefix_length(sequences) == expected


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_opt"])
def test_long_shared_prefix_equals_independent_forward_at_every_layer(request, fixture, padding_side):
    model, tokenizer = request.getfixturevalue(fixture)
    backend = backend_for((model, tokenizer))
    lengths = []
    # Every forward (the model's own or the fast decoder's) embeds its input ids: record their lengths.
    hook = model.get_input_embeddings().register_forward_pre_hook(
        lambda module, args: lengths.append(args[0].shape[1])
    )
    try:
        embedder = Embedder(backend, LONG_TEMPLATE, padding_side=padding_side)
        layers = [0, 1, -1]
        got = embedder.encode_layers(SENTENCES, layers, batch_size=2)
    finally:
        hook.remove()
    prefix = embedder.last_stats["prefix_length"]
    full = [len(embedder.prompts.encode(s).ids) for s in dict.fromkeys(SENTENCES)]
    assert prefix >= 20, "the demonstration and the template head are shared"
    assert backend.prefix_cache.misses == 1 and backend.prefix_cache.hits == 2, "one prefix run, reused"
    assert max(lengths[-3:]) <= max(full) - prefix, "batches run only their suffixes"
    for row, sentence in enumerate(SENTENCES):
        s = sentence.replace('"', "'")
        states = reference(model, tokenizer, DEMO_HEAD + f'This sentence : "{s}" means in one word:"')
        for layer in layers:
            expected = states[layer][-1]
            vector = torch.from_numpy(got[layer][row])
            assert cosine(vector, expected) >= 0.9999
            torch.testing.assert_close(vector, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["mean", "max", "last", "cls"])
def test_token_poolings_see_the_prefix_states_too(tiny_llama, pooling, padding_side):
    model, tokenizer = tiny_llama
    embedder = Embedder(backend_for(tiny_llama), "e5-query", pooling=pooling, padding_side=padding_side)
    vectors = embedder.encode(SENTENCES, batch_size=3)
    assert embedder.last_stats["prefix_length"] >= 2  # "query:" is shared
    for sentence, vector in zip(SENTENCES, vectors, strict=True):
        hidden = reference(model, tokenizer, "query: " + sentence)[-1]  # [L, H]
        expected = {"mean": hidden.mean(0), "max": hidden.max(0).values, "last": hidden[-1], "cls": hidden[0]}
        torch.testing.assert_close(torch.from_numpy(vector), expected[pooling], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_opt"])
def test_cached_and_uncached_paths_agree(request, fixture):
    pair = request.getfixturevalue(fixture)
    cached = Embedder(backend_for(pair), LONG_TEMPLATE).encode_layers(SENTENCES, [0, 1, -1], batch_size=3)
    plain = Embedder(backend_for(pair), LONG_TEMPLATE, prefix_cache=False)
    uncached = plain.encode_layers(SENTENCES, [0, 1, -1], batch_size=3)
    assert plain.last_stats["prefix_length"] == 0
    for layer in (0, 1, -1):
        a, b = cached[layer], uncached[layer]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() >= 0.9999
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_encoder_keeps_the_plain_path(tiny_bert):
    backend = backend_for(tiny_bert)
    assert not backend.prefix_cache.supported(backend.model), "bidirectional attention: no prefix reuse"
    model, tokenizer = tiny_bert
    vectors = Embedder(backend, "promptbert").encode(SENTENCES[:3])
    for sentence, vector in zip(SENTENCES[:3], vectors, strict=True):
        enc = tokenizer('This sentence : "' + sentence + '" means [MASK] .', return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]
        position = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().item()
        torch.testing.assert_close(torch.from_numpy(vector), hidden[position], atol=2e-5, rtol=1e-4)
    assert backend.prefix_cache.misses == 0


def test_weights_changed_in_place_invalidate_stored_prefixes(tiny_llama):
    model, tokenizer = tiny_llama
    clone = type(model)(model.config).eval()
    clone.load_state_dict(model.state_dict())
    embedder = Embedder(backend_for((clone, tokenizer)), LONG_TEMPLATE)
    before = embedder.encode(SENTENCES[:2])
    with torch.no_grad():
        clone.layers[0].self_attn.k_proj.weight.mul_(1.5)  # as an optimizer step would, in place
    after = embedder.encode(SENTENCES[:2])
    assert embedder.backend.prefix_cache.misses == 2, "the stored prefix was recomputed"
    assert not np.allclose(before, after, atol=1e-4)
    for sentence, vector in zip(SENTENCES[:2], after, strict=True):
        expected = reference(
            clone, tokenizer, DEMO_HEAD + f'This sentence : "{sentence}" means in one word:"'
        )
        torch.testing.assert_close(torch.from_numpy(vector), expected[-1][-1], atol=2e-5, rtol=1e-4)


def test_prefix_cache_is_used_again_across_calls(tiny_llama):
    embedder = Embedder(backend_for(tiny_llama), LONG_TEMPLATE)
    first = embedder.encode(SENTENCES[:3])
    second = embedder.encode(SENTENCES[3:5])
    cache = embedder.backend.prefix_cache
    assert cache.misses == 1 and cache.hits == 1
    assert first.shape == (3, 32) and second.shape == (2, 32)


@pytest.mark.slow
def test_smollm2_demonstration_prompt_equals_the_uncached_path():
    torch.set_num_threads(2)
    sentences = SENTENCES[:4]
    cached = Embedder("smollm2-135m", "prompteol", dtype="float32", demonstration="eol-opt-125m")
    plain = Embedder(cached.backend, "prompteol", demonstration="eol-opt-125m", prefix_cache=False)
    a = cached.encode_layers(sentences, [15, -1])
    b = plain.encode_layers(sentences, [15, -1])
    assert cached.last_stats["prefix_length"] >= 20
    for layer in (15, -1):
        cos = (
            (a[layer] * b[layer]).sum(1) / np.linalg.norm(a[layer], axis=1) / np.linalg.norm(b[layer], axis=1)
        )
        assert cos.min() >= 0.9999
