"""Export an `Embedder` as a sentence-transformers folder: ``SentenceTransformer(DIR, trust_remote_code=True)``.

The folder holds the model's weights (a LoRA adapter merged in), its tokenizer, and one custom module,
``promptlab_prompt_embedding.py`` (a copy of `promptlab.export.st_module`), that applies the template and
reads the chosen layer at the template's read-out. That module imports torch, transformers and
sentence-transformers only, so the folder works where promptlab is not installed; loading it runs that
file, hence ``trust_remote_code=True`` (sentence-transformers 6 asks for it for any module outside its own
package, local folders included).

Why a module of our own and not sentence-transformers' ``Transformer`` + ``Pooling``: those cannot put the
sentence inside a template, read the ``[MASK]`` or last prompt token of a template, or cut a long sentence
inside the slot. And in sentence-transformers 6 a decoder whose tokenizer carries a chat template (most
instruct models) has its plain text routed through that chat template (the ``message`` modality), which
wraps every sentence in chat markup before any prompt of ours. The module here tokenizes the rendered
template itself, so the exported model sees exactly the prompt promptlab sends.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptlab.artifact import template_record
from promptlab.backends.quantization import FOUR_BIT
from promptlab.errors import PromptlabError

if TYPE_CHECKING:
    from promptlab.embedder import Embedder

MODULE_FILE = "promptlab_prompt_embedding.py"
MODULE_CLASS = "promptlab_prompt_embedding.PromptEmbedding"
MODULE_CONFIG = "promptlab_prompt_embedding.json"


def module_config(embedder: Embedder) -> dict[str, Any]:
    """What the exported module needs to rebuild promptlab's prompts and read-out."""
    from promptlab.version import __version__

    parts = embedder.members or [embedder]
    described = embedder.describe()
    return {
        "prompts": [template_record(part.template) for part in parts],
        "layer": embedder.layer_index,
        "max_length": parts[0].prompts.max_length,
        "dtype": described.get("dtype") or "float32",
        "promptlab": {
            "version": __version__,
            "model": described.get("model"),
            "model_file_sha256": described.get("model_file_sha256"),
            "template": embedder.template.name,
            "template_text": embedder.template.text,
            "layer": embedder.layer,
            "demonstration": described.get("demonstration"),
            "adapter_sha256": described.get("adapter_sha256"),
        },
    }


def _merged_model(embedder: Embedder, dtype: str):
    """A fresh copy of the embedder's model in ``dtype``, its adapter (if any) merged into the weights.

    A 4-bit (nf4/fp4) embedder is exported with the weights its layers compute with, dequantized to
    ``dtype``: a QLoRA adapter was trained on those, and the original full-precision weights would give other
    vectors.
    """
    from transformers import AutoModel

    from promptlab.backends.transformers import torch_dtype

    described = embedder.describe()
    quantization = described.get("quantization")
    if quantization and quantization not in FOUR_BIT:
        raise PromptlabError(
            f"a {quantization}-quantized embedder cannot be exported for sentence-transformers; export it "
            f"without --quantization (the folder then holds the full-precision weights), or from a "
            f"{' or '.join(FOUR_BIT)} base (exported dequantized)."
        )
    path = described.get("model_path")
    if not path:
        raise PromptlabError(
            "this embedder's model was given as a ready backend, so there are no weights to export; build "
            "the Embedder from a model spec (packaged name, local dir, .gguf, hub id)."
        )
    model = AutoModel.from_pretrained(
        path, revision=described.get("model_revision"), dtype=torch_dtype(dtype)
    )
    adapter = described.get("adapter")
    if quantization:
        from promptlab.adapters import attach_adapter
        from promptlab.backends import load_backend
        from promptlab.backends.quantization import dequantize_4bit_layers

        four_bit = load_backend("transformers", path, dtype=dtype, quantization=quantization)
        if adapter:
            attach_adapter(four_bit, adapter, merge=True)  # dequantizes, then merges exactly
        else:
            dequantize_4bit_layers(four_bit.model)
        model.load_state_dict(four_bit.model.state_dict())
    elif adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval()


def _versions() -> dict[str, str]:
    import torch
    import transformers

    versions = {"transformers": transformers.__version__, "pytorch": torch.__version__}
    try:
        import sentence_transformers

        versions["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        versions["sentence_transformers"] = "6.3.0"
    return versions


def _model_card(config: dict[str, Any]) -> str:
    info = config["promptlab"]
    return f"""---
library_name: sentence-transformers
tags: [sentence-transformers, feature-extraction, promptlab]
---
# {info["model"]} with the {info["template"]!r} template (layer {info["layer"]})

Exported by promptlab {info["version"]}. Each sentence is put into the template below, and its embedding
is the hidden state of layer {info["layer"]} at the template's read-out ({", ".join(p["pooling"] for p in config["prompts"])}).

    {info["template_text"]}

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("PATH/TO/THIS/FOLDER", trust_remote_code=True)
vectors = model.encode(["A man is playing a guitar."])
```

`trust_remote_code=True` runs `{MODULE_FILE}` from this folder (torch + transformers only). Do not pass
`prompt` / `prompt_name`: the template is applied by the module. Model weights SHA-256 at export:
`{info["model_file_sha256"]}`.
"""


def export_sentence_transformers(embedder: Embedder, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``embedder`` as a folder that ``SentenceTransformer(folder, trust_remote_code=True)`` loads."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise PromptlabError(f"{folder} already exists and is not empty; pass overwrite=True / --overwrite.")
    if not folder.parent.exists():
        raise PromptlabError(f"folder {folder.parent} does not exist; create it or choose another output.")
    config = module_config(embedder)
    model = _merged_model(embedder, config["dtype"])
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        model.save_pretrained(staging)
        embedder.backend.tokenizer.save_pretrained(staging)
        shutil.copyfile(Path(__file__).with_name("st_module.py"), staging / MODULE_FILE)
        (staging / MODULE_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE_CLASS}]
        (staging / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
        st_config = {
            "__version__": _versions(),
            "model_type": "SentenceTransformer",
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        }
        text = json.dumps(st_config, indent=2) + "\n"
        (staging / "config_sentence_transformers.json").write_text(text, encoding="utf-8")
        (staging / "README.md").write_text(_model_card(config), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
