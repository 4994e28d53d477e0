"""Backends: tokenised prompts in, pooled hidden states at the requested layers out.

One contract for every runtime (`promptlab.backends.base`: the `Backend` and `TrainableBackend`
protocols and each backend's declared `Capabilities`); the embedder never knows which one produced its
vectors. Backends are chosen by name from `REGISTRY`, from which the CLI's ``--backend`` choices come, and a
request is checked against the chosen backend's capabilities (`check_request`) before any model loads.
Heavy optional runtimes are imported inside each backend's ``load``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from promptlab.backends.base import (
    Backend,
    BaseBackend,
    Capabilities,
    Request,
    TrainableBackend,
    capabilities_of,
    load_failed,
    model_info,
    refusal,
)
from promptlab.backends.device import DTYPE_NAMES, check_device, resolve_dtype
from promptlab.errors import unknown_name

__all__ = [
    "BACKENDS",
    "DTYPE_NAMES",
    "REGISTRY",
    "Backend",
    "BackendEntry",
    "BaseBackend",
    "Capabilities",
    "Request",
    "TrainableBackend",
    "backend_class",
    "capabilities_of",
    "check_device",
    "check_request",
    "load_backend",
    "load_failed",
    "model_info",
    "resolve_dtype",
]


@dataclass(frozen=True)
class BackendEntry:
    """One registered backend: its class, named as ``module:Class`` so that listing backends imports none."""

    name: str
    target: str  # "promptlab.backends.<module>:<Class>"; the module imports its runtime inside `load` only
    summary: str  # one line for --help
    extra: str | None = None  # the pip extra that installs its runtime

    def backend_class(self) -> type[BaseBackend]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


REGISTRY: dict[str, BackendEntry] = {
    entry.name: entry
    for entry in (
        BackendEntry(
            "transformers",
            "promptlab.backends.transformers:TransformersBackend",
            "any layer, every read-out, quantization, compile, gradients and adapters",
        ),
        BackendEntry(
            "vllm",
            "promptlab.backends.vllm:VllmBackend",
            "vLLM's pooling runner: the last layer only",
            extra="vllm",
        ),
        BackendEntry(
            "llamacpp",
            "promptlab.backends.llamacpp:LlamaCppBackend",
            "llama.cpp on a GGUF file's own quantized weights: the last layer only",
            extra="llamacpp",
        ),
    )
}
BACKENDS = tuple(REGISTRY)


def backend_class(name: str) -> type[BaseBackend]:
    """The class registered as ``name`` (its capabilities are readable without loading a model)."""
    if name not in REGISTRY:
        raise unknown_name("backend", name, BACKENDS)
    return REGISTRY[name].backend_class()


def check_request(backend: str | Backend, request: Request) -> None:
    """Refuse what ``backend`` (a registered name, or a ready backend) cannot do, in one line that names a
    registered backend that can; for a name this reads the class's declaration, before any model loads."""
    if isinstance(backend, str):
        name, capabilities = backend, backend_class(backend).capabilities
    else:
        name, capabilities = getattr(backend, "name", type(backend).__name__), capabilities_of(backend)
    if capabilities.shortfall(request) is None:
        return
    if request.quantization:  # a name no backend knows: the choices, with the closest ones
        known = {q for entry in REGISTRY.values() for q in entry.backend_class().capabilities.quantizations}
        if request.quantization not in known:
            raise unknown_name("quantization", request.quantization, known)
    others = {}
    # A backend that needs no extra is named first: the fix a user can apply without installing anything.
    for other, entry in sorted(REGISTRY.items(), key=lambda item: item[1].extra is not None):
        if other != name:
            label = f"{other} (extra [{entry.extra}])" if entry.extra else other
            others[label] = entry.backend_class().capabilities
    raise refusal(name, capabilities, request, others)


def load_backend(name: str, model, **options) -> Backend:
    """Build backend ``name`` for a model spec (see `promptlab.models.resolve_model`)."""
    return backend_class(name).load(model, **options)
