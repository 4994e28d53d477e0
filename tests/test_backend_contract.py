"""The backend contract: declared capabilities refuse a request before any model loads, naming the backend
that can; adapters go in through `TrainableBackend.replace_model`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import backend_for
from helpers import lora_with_weights

from promptlab import backends
from promptlab.backends import BaseBackend, Capabilities, Request, TrainableBackend
from promptlab.backends.transformers import TransformersBackend
from promptlab.backends.vllm import VllmBackend
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError

MISSING = "/nonexistent/model-that-is-never-loaded"


class LastLayerOnly(BaseBackend):
    """A backend as a GGUF runtime would declare itself: the last layer, next-token and mean read-outs."""

    name = "lastonly"
    capabilities = Capabilities(layers="last", readouts={"next_token", "mean"})

    @classmethod
    def load(cls, model, **options):
        raise AssertionError("a refused request must not load the model")


@pytest.fixture
def no_loading(monkeypatch):
    """Every backend load fails the test; a `lastonly` backend is registered beside the real ones."""

    def load(*args, **kwargs):
        raise AssertionError("a refused request must not load the model")

    monkeypatch.setattr("promptlab.embedder.load_backend", load)
    entry = backends.BackendEntry("lastonly", f"{__name__}:LastLayerOnly", "a test backend")
    monkeypatch.setitem(backends.REGISTRY, "lastonly", entry)
    monkeypatch.setattr(backends, "BACKENDS", tuple(backends.REGISTRY))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"backend": "vllm", "layer": 20},
            "the vllm backend reads the last layer only (--layer -1); use --backend transformers for layer 20.",
        ),
        (
            {"backend": "vllm", "layer": 0},
            "the vllm backend reads the last layer only (--layer -1); use --backend transformers for layer 0.",
        ),
        (
            {"backend": "vllm", "quantization": "nf4"},
            "the vllm backend takes no --quantization; use --backend transformers for --quantization nf4.",
        ),
        (
            {"backend": "vllm", "compile": True},
            "the vllm backend does not torch.compile its forward; use --backend transformers for "
            "compile=True (--compile).",
        ),
        (
            {"backend": "vllm", "adapter": "some/adapter"},
            "the vllm backend cannot attach a LoRA adapter; use --backend transformers for --adapter.",
        ),
        (
            {"backend": "vllm", "template": "none", "pooling": "cls_mlp"},
            "the vllm backend cannot read pooling 'cls_mlp' (it reads: cls, last, mask, max, mean, "
            "next_token, span); use --backend transformers for pooling 'cls_mlp'.",
        ),
        (
            {"engine_options": {"tensor_parallel_size": 2}},
            "the transformers backend takes no engine options (--tensor-parallel-size); use --backend vllm "
            "(extra [vllm]) for engine options.",
        ),
        (
            {"backend": "lastonly", "template": "promptbert"},
            "the lastonly backend cannot read the [MASK] position (it reads: mean, next_token); use --backend "
            "transformers for the [MASK] position.",
        ),
        (
            {"backend": "lastonly", "template": "none", "pooling": "max"},
            "the lastonly backend cannot read pooling 'max' (it reads: mean, next_token); use --backend "
            "transformers for pooling 'max'.",
        ),
        (
            {"backend": "lastonly", "layer": -2},
            "the lastonly backend reads the last layer only (--layer -1); use --backend transformers for "
            "layer -2.",
        ),
    ],
)
def test_a_request_the_backend_cannot_serve_is_refused_before_loading(no_loading, options, message):
    with pytest.raises(PromptlabError) as caught:
        Embedder(MISSING, **options)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_when_no_backend_can_serve_it_the_refusal_says_how_to_do_without(no_loading, monkeypatch):
    monkeypatch.delitem(backends.REGISTRY, "transformers")
    with pytest.raises(PromptlabError, match=r"^the lastonly backend reads .*; use --layer -1\.$"):
        Embedder(MISSING, backend="lastonly", layer=3)


def test_an_unknown_backend_or_quantization_lists_the_choices(no_loading):
    with pytest.raises(
        PromptlabError, match="unknown backend 'vlm'.*Known backends: lastonly, llamacpp, transformers, vllm"
    ):
        Embedder(MISSING, backend="vlm")
    with pytest.raises(PromptlabError, match="unknown quantization 'nf8'. Did you mean: nf4"):
        Embedder(MISSING, quantization="nf8")


def test_an_ensemble_is_checked_member_by_member(no_loading):
    with pytest.raises(AssertionError, match="must not load"):  # metaeol's members read next_token: served
        Embedder(MISSING, "metaeol", backend="lastonly")


def test_what_a_backend_serves_passes_the_check_and_then_loads(no_loading):
    with pytest.raises(AssertionError, match="must not load"):
        Embedder(MISSING, backend="lastonly", template="none", pooling="mean")


def test_the_check_reads_the_class_declaration():
    assert backends.backend_class("vllm").capabilities.layers == "last"
    assert backends.backend_class("transformers").capabilities.layers == "any"
    declared = TransformersBackend.capabilities
    assert declared.compile and declared.gradients and declared.adapters and "nf4" in declared.quantizations
    vllm = VllmBackend.capabilities
    assert not (vllm.compile or vllm.gradients or vllm.adapters or vllm.quantizations)
    assert "cls_mlp" not in vllm.readouts and {"mask", "next_token", "mean"} <= vllm.readouts


def test_a_ready_backend_is_checked_with_its_own_layer_count(tiny_llama):
    class LastOnly(TransformersBackend):
        name = "last-only"
        capabilities = dataclasses.replace(TransformersBackend.capabilities, layers="last")

    model, tokenizer = tiny_llama
    backend = LastOnly(model, tokenizer)
    n = backend.num_layers
    Embedder(backend, "prompteol", layer=n)  # the last layer by its index: served
    with pytest.raises(
        PromptlabError, match=rf"^the last-only backend reads the last layer only .* layer {n - 1}\.$"
    ):
        Embedder(backend, "prompteol", layer=n - 1)


def test_capabilities_are_validated_and_required():
    with pytest.raises(ValueError, match="layers"):
        Capabilities(layers="first")
    with pytest.raises(ValueError, match="unknown"):
        Capabilities(readouts={"median"})
    with pytest.raises(TypeError, match="must declare capabilities"):

        class Undeclared(BaseBackend):
            name = "undeclared"


def test_last_layer_requests_before_and_after_loading():
    assert Request(layer=-1).reads_last_layer() is True
    assert Request(layer=4).reads_last_layer() is False  # the layer count is unknown before loading
    assert Request(layer=4, num_layers=4).reads_last_layer() is True
    assert Request(layer=-5, num_layers=4).reads_last_layer() is False
    assert Request(layer=9, num_layers=4).reads_last_layer() is None  # out of range: reported elsewhere


# -- the training contract ---------------------------------------------------------------------------------
def test_the_transformers_backend_fulfils_both_protocols(tiny_llama):
    backend = backend_for(tiny_llama)
    assert isinstance(backend, backends.Backend) and isinstance(backend, TrainableBackend)
    with pytest.raises(AttributeError):
        backend.model = backend.model  # swapped only through replace_model


def _saved_adapter(tiny_llama, folder):
    """A LoRA adapter with non-zero weights on a copy of the tiny LLaMA, saved as `promptlab finetune` does."""
    from promptlab.adapters import base_identity
    from promptlab.finetune.lora import save_adapter

    model, tokenizer = tiny_llama
    clone = type(model)(model.config).eval()
    clone.load_state_dict(model.state_dict())
    backend = backend_for((clone, tokenizer))
    identity = base_identity(backend)
    peft_model = lora_with_weights(backend, seed=1)
    save_adapter(peft_model, folder, {"base": identity, "layer": -1})
    return folder


@pytest.mark.parametrize("merge", [False, True])
def test_an_adapter_is_attached_through_replace_model(tiny_llama, tmp_path, merge):
    pytest.importorskip("peft")
    folder = _saved_adapter(tiny_llama, tmp_path / "adapter")
    model, tokenizer = tiny_llama
    base = type(model)(model.config).eval()
    base.load_state_dict(model.state_dict())
    calls = []

    class Recording(TransformersBackend):
        def replace_model(self, new, *, info=None):
            calls.append(info)
            super().replace_model(new, info=info)

    backend = Recording(base, tokenizer, info={"model": "tiny-random", "dtype": "float32"})
    before = Embedder(backend, "prompteol").encode(["A man is playing a guitar."])
    embedder = Embedder(backend, "prompteol", adapter=str(folder), merge_adapter=merge)
    after = embedder.encode(["A man is playing a guitar."])
    assert len(calls) == 1 and calls[0]["adapter"] == str(folder) and calls[0]["adapter_merged"] is merge
    assert embedder.describe()["adapter"] == str(folder)
    assert not np.allclose(before, after), "the adapter changes the vectors"


def test_fine_tuning_needs_a_backend_with_gradients_and_adapters():
    from promptlab.backends.base import refusal

    error = refusal(
        "vllm",
        VllmBackend.capabilities,
        Request(gradients=True, adapter=True),
        {"transformers": TransformersBackend.capabilities},
    )
    assert str(error) == "the vllm backend computes no gradients; use --backend transformers for fine-tuning."
    assert refusal("transformers", TransformersBackend.capabilities, Request(gradients=True), {}) is None
