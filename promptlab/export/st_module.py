"""Sentence embeddings by prompting, as a sentence-transformers module (written by ``promptlab export``).

This file is copied into an exported folder as ``promptlab_prompt_embedding.py`` and loaded by
``SentenceTransformer(folder, trust_remote_code=True)``. It needs only torch, transformers and
sentence-transformers (not promptlab): it renders each sentence into the saved template (PromptEOL,
Jiang et al. 2023; PromptBERT, Jiang et al. 2022; or a plain prefix), tokenizes it, cuts an over-long
sentence inside the template's slot so the template's tail survives, runs the model's body (no LM head)
and reads the saved layer at the template's read-out: the ``[MASK]`` position, the last prompt token
(next-token templates), or a pooling over the tokens. An ensemble template averages its members' vectors.

It gives the vectors promptlab gives for the same configuration (``promptlab.tokenization``,
``promptlab.pooling``); rows are padded on the right and positions count real tokens only.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

try:  # sentence-transformers >= 6
    from sentence_transformers.base.modules import InputModule
except ImportError:  # sentence-transformers 5
    from sentence_transformers.models import InputModule

SLOT = "[X]"
MASK = "[MASK]"
_FINAL_PUNCTUATION = ".?!\"'"
_QUOTES = "\"'"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- templates ----------------------------------------------------------------------------------------------
def _slot_quote(text: str) -> str | None:
    before, after = text.split(SLOT)[0].rstrip(" "), text.split(SLOT)[-1].lstrip(" ")
    if before and after and before[-1] in _QUOTES and before[-1] == after[0]:
        return before[-1]
    return None


def _normalize(prompt: dict, sentence: str) -> str:
    """PromptEOL/PromptBERT input rules: a final '.', and '"' as "'" inside a '"'-quoted slot."""
    if not prompt["normalize"]:
        return sentence
    if sentence and sentence[-1] not in _FINAL_PUNCTUATION:
        sentence += "."
    if _slot_quote(prompt["text"]) == '"':
        sentence = sentence.replace('"', "'")
    return sentence


def _render(prompt: dict, sentence: str, mask_token: str | None) -> tuple[str, int, int]:
    """(prompt text, start and end characters of the sentence's last copy)."""
    parts = prompt["text"].split(SLOT)
    if MASK in prompt["text"]:
        parts = [part.replace(MASK, mask_token) for part in parts]
    before = sentence.join(parts[:-1])
    return before + sentence + parts[-1], len(before), len(before) + len(sentence)


# -- the module ---------------------------------------------------------------------------------------------
class PromptEmbedding(InputModule):
    """Template → tokens → model body → the hidden state at the template's read-out, at one layer."""

    config_file_name = "promptlab_prompt_embedding.json"
    config_keys = ["prompts", "layer", "max_length", "dtype", "promptlab"]
    save_in_root = True

    def __init__(
        self,
        model_name_or_path: str,
        prompts: list[dict],
        layer: int = -1,
        max_length: int | None = None,
        dtype: str = "float32",
        promptlab: dict | None = None,
        model_kwargs: dict | None = None,
    ):
        super().__init__()
        self.prompts = prompts
        self.layer = layer
        self.max_length = max_length
        self.dtype = dtype
        self.promptlab = promptlab or {}
        kwargs = {"dtype": _DTYPES[dtype], **(model_kwargs or {})}
        self.model = AutoModel.from_pretrained(model_name_or_path, **kwargs).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        if not self.tokenizer.is_fast:
            raise ValueError("this module needs a fast (Rust) tokenizer to locate the sentence slot")
        params = inspect.signature(self.model.forward).parameters
        self._takes_position_ids = "position_ids" in params
        self._takes_use_cache = "use_cache" in params
        self.position_offset = 0  # RoBERTa/MPNet-style positions start after the padding index
        for name, module in self.model.named_modules():
            if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
                if module.padding_idx is not None:
                    self.position_offset = module.padding_idx + 1
                    break
        tok = self.tokenizer
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)

    # -- sentence-transformers plumbing ------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict | None = None,
        **kwargs,
    ):
        config = cls.load_config(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        folder = cls.load_dir_path(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        return cls(folder, model_kwargs=model_kwargs, **config)

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.tokenizer.save_pretrained(output_path)
        with open(os.path.join(output_path, self.config_file_name), "w", encoding="utf-8") as f:
            json.dump(self.get_config_dict(), f, indent=2)

    def get_embedding_dimension(self) -> int:
        config = self.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        return int(config.hidden_size)

    # -- tokenization ------------------------------------------------------------------------------------
    def _tokens(self, text: str):
        return self.tokenizer(
            text,
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
        )

    def _encode(self, prompt: dict, sentence: str) -> tuple[list[int], int, tuple[int, int]]:
        """(token ids, read-out index, sentence token span) of one prompt, cut inside the slot to fit."""
        mask_token = self.tokenizer.mask_token if prompt["kind"] == "mask" else None
        sentence = _normalize(prompt, sentence)
        text, start, end = _render(prompt, sentence, mask_token)
        enc = self._tokens(text)
        for _ in range(8):
            overflow = len(enc["input_ids"]) - (self.max_length or len(enc["input_ids"]))
            if overflow <= 0:
                break
            offsets = self.tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
            copies = prompt["text"].count(SLOT)
            keep = len(offsets) - -(-overflow // copies) - 1
            if keep <= 0:
                raise ValueError(f"the template alone is longer than max_length={self.max_length} tokens")
            sentence = _normalize(prompt, sentence[: offsets[keep][0]].rstrip())
            text, start, end = _render(prompt, sentence, mask_token)
            enc = self._tokens(text)
        else:
            raise ValueError(f"could not fit a sentence into max_length={self.max_length} tokens")
        ids, offsets, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
        inside = [i for i, (a, b) in enumerate(offsets) if not special[i] and b > start and a < end]
        slot = (inside[0], inside[-1] + 1) if inside else (0, 0)
        if prompt["kind"] == "mask":
            mask_id = self.tokenizer.mask_token_id
            found = [i for i, t in enumerate(ids) if t == mask_id and not slot[0] <= i < slot[1]]
            if len(found) != 1:
                raise ValueError(f"the template produced {len(found)} mask tokens outside the sentence")
            target = found[0]
        else:
            real = [i for i in range(len(ids)) if not special[i]]
            target = real[-1] if real else len(ids) - 1
        return list(ids), target, slot

    def preprocess(self, inputs: list[str], prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        if prompt:
            raise ValueError(
                "this model renders every sentence into its own template; encode without prompt/prompt_name"
            )
        texts = [x if isinstance(x, str) else x[0] for x in inputs]
        features: dict[str, torch.Tensor] = {}
        for m, spec in enumerate(self.prompts):
            rows = [self._encode(spec, text) for text in texts]
            length = max(len(ids) for ids, _, _ in rows)
            input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
            for r, (ids, _, _) in enumerate(rows):  # right padding
                input_ids[r, : len(ids)] = torch.tensor(ids)
                attention_mask[r, : len(ids)] = 1
            features[f"prompt{m}_input_ids"] = input_ids  # [B, L]
            features[f"prompt{m}_attention_mask"] = attention_mask  # [B, L]
            features[f"prompt{m}_target"] = torch.tensor([t for _, t, _ in rows])  # [B]
            features[f"prompt{m}_slot"] = torch.tensor([s for _, _, s in rows])  # [B, 2]
        return features

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        vectors = [self._embed(m, spec, features) for m, spec in enumerate(self.prompts)]
        features["sentence_embedding"] = torch.stack(vectors).mean(0)  # an ensemble: the members' mean
        return features

    def _embed(self, m: int, spec: dict, features: dict[str, Any]) -> torch.Tensor:
        input_ids = features[f"prompt{m}_input_ids"]
        mask = features[f"prompt{m}_attention_mask"]
        args: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "output_hidden_states": True,
            "return_dict": True,
        }
        if self._takes_position_ids:  # real tokens only, from the first real token's position
            args["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0) + self.position_offset
        if self._takes_use_cache:
            args["use_cache"] = False
        hidden = self.model(**args).hidden_states[self.layer]  # [B, L, H]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooling = spec["pooling"]
        if pooling in ("mask", "next_token"):
            out = hidden[rows, features[f"prompt{m}_target"]]
        elif pooling in ("cls", "cls_mlp"):
            out = hidden[rows, mask.argmax(-1)]
            if pooling == "cls_mlp":
                out = self.model.pooler(out.unsqueeze(1))
        elif pooling == "last":
            out = hidden[rows, mask.shape[-1] - 1 - mask.flip(-1).argmax(-1)]
        elif pooling in ("mean", "span"):
            if pooling == "span":  # the sentence's last copy (Echo embeddings)
                slot = features[f"prompt{m}_slot"]
                positions = torch.arange(hidden.shape[1], device=hidden.device)
                weights = ((positions >= slot[:, :1]) & (positions < slot[:, 1:])).unsqueeze(-1).float()
            else:
                weights = mask.unsqueeze(-1).float()
            out = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
        elif pooling == "max":
            out = hidden.float().masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(1)
        else:
            raise ValueError(f"unknown pooling {pooling!r}")
        return out.float()
