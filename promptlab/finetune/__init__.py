"""CSE: contrastive LoRA / QLoRA fine-tuning of prompt embeddings (SimCSE, PromptBERT, PromptEOL-CSE).

    promptlab finetune experiments/finetune/smollm2-sup.toml
    promptlab eval --model smollm2-135m --adapter runs/smollm2-sup/best

Modules: `config` (the validated run config), `data` (SICK / STS-B train builders, SimCSE CSV, text files,
the dev/test holdout), `objectives` (InfoNCE, template denoising), `lora` (targets, LoRA/QLoRA, saving
adapters; loading one is `promptlab.adapters`), `trainer` (the loop), `cli` (``make_finetune_parser``).
torch and peft load only when used.
"""

from __future__ import annotations

__all__ = ["FinetuneConfig", "train"]


def __getattr__(name: str):
    if name == "FinetuneConfig":
        from promptlab.finetune.config import FinetuneConfig

        return FinetuneConfig
    if name == "train":
        from promptlab.finetune.trainer import train

        return train
    raise AttributeError(f"module 'promptlab.finetune' has no attribute {name!r}")
