"""Embedders written for other tools: a sentence-transformers folder (`export_sentence_transformers`).

The promptlab format itself (config + adapter, reloaded by `Embedder.load`) is `promptlab.artifact`.
"""

from __future__ import annotations

__all__ = ["export_sentence_transformers"]


def __getattr__(name: str):
    if name == "export_sentence_transformers":
        from promptlab.export.sentence_transformers import export_sentence_transformers

        return export_sentence_transformers
    raise AttributeError(f"module 'promptlab.export' has no attribute {name!r}")
