"""Batch planning: exact minimum of padding + per-batch cost, within the row and token caps."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from conftest import backend_for

from promptlab.batching import CPU_BATCH_ROWS, CPU_BATCH_TOKENS, default_batching, plan_batches
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError


def cost(lengths, batches, batch_cost):
    return sum(batch_cost + len(b) * lengths[b.start] for b in batches)


def feasible(lengths, batches, max_rows, max_tokens):
    return all(
        len(b) <= max_rows and (max_tokens is None or len(b) == 1 or len(b) * lengths[b.start] <= max_tokens)
        for b in batches
    )


def all_plans(n):
    """Every way to cut 0..n into consecutive non-empty ranges."""
    for cuts in itertools.product([False, True], repeat=n - 1):
        starts = [0] + [i + 1 for i, c in enumerate(cuts) if c]
        yield [range(a, b) for a, b in zip(starts, starts[1:] + [n], strict=True)]


@pytest.mark.parametrize("seed", range(30))
def test_the_plan_is_the_cheapest_feasible_one(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    lengths = sorted((rng.randint(1, 60) for _ in range(n)), reverse=True)
    max_rows, batch_cost = rng.randint(1, 5), rng.choice([0, 5, 40, 150])
    max_tokens = rng.choice([None, 50, 120])
    plan = plan_batches(lengths, max_rows, max_tokens=max_tokens, batch_cost=batch_cost)
    assert [i for b in plan for i in b] == list(range(n)), "every row once, in order"
    assert feasible(lengths, plan, max_rows, max_tokens)
    best = min(
        cost(lengths, p, batch_cost) for p in all_plans(n) if feasible(lengths, p, max_rows, max_tokens)
    )
    assert cost(lengths, plan, batch_cost) == best


def test_a_long_tail_row_gets_its_own_batch_and_never_costs_more_than_fixed_chunks():
    lengths = [85, 84, 55] + [20] * 60 + [12] * 40
    plan = plan_batches(lengths, 32)
    assert min(lengths[i] for i in plan[0]) > 20, "the long rows do not pad 20-token ones to 85"
    fixed = [range(i, min(i + 32, len(lengths))) for i in range(0, len(lengths), 32)]
    assert cost(lengths, plan, 150) < cost(lengths, fixed, 150)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="sorted longest first"):
        plan_batches([3, 5], 4)
    with pytest.raises(ValueError, match="at least 1"):
        plan_batches([3], 0)
    assert plan_batches([], 4) == []


def test_defaults_depend_on_the_device():
    assert default_batching("cpu") == (CPU_BATCH_ROWS, CPU_BATCH_TOKENS)
    assert default_batching("cuda:0") == (32, None)


def test_embedder_forwards_respect_both_caps_and_vectors_do_not_depend_on_batching(tiny_llama):
    sentences = [f"Sentence number {i} has {'many ' * (i % 7)}words." for i in range(40)]
    backend = backend_for(tiny_llama)
    shapes = []
    embed = backend.embed

    def recording(batch, pooling, layers):
        shapes.append(
            (batch.input_ids.shape[0], int(batch.attention_mask.sum(1).max()) - batch.prefix_length)
        )
        return embed(batch, pooling, layers)

    backend.embed = recording
    small = Embedder(backend, "prompteol", batch_size=8, batch_tokens=60, dtype="float32")
    vectors = small.encode(sentences)
    assert all(rows <= 8 and (rows == 1 or rows * longest <= 60) for rows, longest in shapes)
    assert len(shapes) > 40 // 8
    one_batch = Embedder(backend, "prompteol", batch_size=64, batch_tokens=None).encode(sentences)
    np.testing.assert_allclose(vectors, one_batch, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_tokens": 0}, "batch_tokens 0: give a positive number"),
        ({"batch_tokens": True}, "True"),
        ({"batch_tokens": "x"}, "'x'"),
    ],
)
def test_embedder_refuses_bad_batch_settings(tiny_llama, options, message):
    with pytest.raises(PromptlabError, match=message):
        Embedder(backend_for(tiny_llama), "prompteol", **options)
