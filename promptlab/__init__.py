"""promptlab: sentence embeddings from language models by prompting (PromptBERT, PromptEOL and kin).

`import promptlab` stays light: torch and transformers load only when an `Embedder` is built.
"""

from __future__ import annotations

from promptlab.version import __version__

__all__ = ["Embedder", "__version__", "get_template", "list_templates"]


def __getattr__(name: str):
    # Lazy exports keep `import promptlab` (and the CLI's --help) free of torch.
    if name == "Embedder":
        from promptlab.embedder import Embedder

        return Embedder
    if name in ("get_template", "list_templates"):
        from promptlab import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'promptlab' has no attribute {name!r}")
