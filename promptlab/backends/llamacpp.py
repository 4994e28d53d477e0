"""The llama.cpp backend: a GGUF file run as it is (Gerganov et al., llama.cpp, through llama-cpp-python), its
own quantized weights (Q4_1, Q4_K_M...) never dequantized.

promptlab renders and tokenizes every prompt itself, with the transformers tokenizer the transformers
backend uses for the same model (`promptlab.models.gguf.resolve_gguf`), and feeds llama.cpp the token ids:
the ids, the BOS token and the cut inside the sentence slot are the same on both backends. Many prompts go
into one ``llama_decode`` call as separate sequences; llama.cpp returns each token's last-layer state
(after the final norm, as ``hidden_states[-1]`` is in transformers), and promptlab's own `pool` reads the
next-token position, the mean or another pooling from them. Only the last layer is exposed, so other
layers are refused before any model loads.

Install with ``pip install 'promptlab[llamacpp]'``: PyPI has only llama-cpp-python's source distribution,
so pip compiles llama.cpp (cmake and a C++ compiler; minutes) and keeps the built wheel in its cache.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptlab.backends.base import READOUTS, BaseBackend, Capabilities, load_failed, model_info
from promptlab.errors import PromptlabError
from promptlab.pooling import last_real, pool
from promptlab.tokenization import TokenBatch

INSTALL_HINT = (
    "--backend llamacpp needs llama-cpp-python, which is not installed; run "
    "`pip install 'promptlab[llamacpp]'` (it compiles llama.cpp from source: cmake and a C++ compiler, "
    "several minutes; pip caches the built wheel)."
)
# Options `load` (and ``Embedder(engine_options=...)``) takes, with their meaning.
OPTIONS = {
    "n_threads": "CPU threads per decode (default: the cores this process may use)",
    "n_batch": "tokens per llama_decode call, shared by its prompts (default 512)",
    "n_ubatch": "tokens per compute step inside a call (default 512)",
    "n_seq_max": "prompts per llama_decode call (default 64)",
    "n_gpu_layers": "layers offloaded to a GPU, -1 all (a GPU build of llama.cpp only)",
    "flash_attn": "llama.cpp's flash attention (default off: on the CPU it rounds through float16)",
    "verbose": "show llama.cpp's own log on stderr",
}
# The prompts of one call share one key/value cache and every token attends over all of it (masks keep the
# prompts apart), so attention work grows with the call's size: on SmolLM2-135M (2 AVX2 cores, 600 STS
# sentences, one run beside other jobs) 512 tokens per call embedded 1.9x faster than 4096, and 256 no
# faster than 512.
DEFAULT_BATCH = 512
DEFAULT_UBATCH = 512
DEFAULT_SEQS = 64

# llama.cpp's recent log lines (it reports load failures there, not in return values); shown on failure.
_LOG: deque[str] = deque(maxlen=64)
_VERBOSE = [False]
_LOG_CALLBACK = None  # the ctypes callback, kept alive while llama.cpp holds it


def _install_log_capture(llama_cpp) -> None:
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return

    @llama_cpp.llama_log_callback
    def capture(level: int, text: bytes, user_data) -> None:
        line = text.decode("utf-8", "replace") if text else ""
        if _VERBOSE[0]:
            print(line, end="", file=sys.stderr, flush=True)
        if line.strip():
            _LOG.append(line.strip())

    _LOG_CALLBACK = capture
    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))


def _last_error() -> str:
    """The most telling line llama.cpp logged: an error if any, else the last line."""
    lines = list(_LOG) or ["it logged nothing"]
    for word in ("error", "failed"):  # "error loading model: unknown model architecture: 'x'" first
        found = [line for line in lines if word in line.lower()]
        if found:
            return found[-1].rstrip(".")
    return lines[-1].rstrip(".")


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise PromptlabError(INSTALL_HINT) from None
    except (OSError, RuntimeError) as err:  # installed, but its compiled library does not load here
        raise PromptlabError(
            f"llama-cpp-python is installed but its llama.cpp library does not load ({str(err).splitlines()[0]}); "
            "reinstall it here: pip install --force-reinstall --no-cache-dir 'promptlab[llamacpp]'."
        ) from None
    return llama_cpp


def _file_type(path: str) -> str:
    """The GGUF's own weight type, e.g. ``q4_1``, ``q4_k_m``, ``f32`` (its ``general.file_type``)."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return "gguf"
    try:
        return (
            LlamaFileType(int(field.parts[field.data[0]][0]))
            .name.lower()
            .removeprefix("mostly_")
            .removeprefix("all_")
        )
    except ValueError:
        return "gguf"


class LlamaCppBackend(BaseBackend):
    name = "llamacpp"
    # llama.cpp returns the last layer's per-token states only (not other layers, not a pooler head); its
    # quantization is the GGUF file's own; no torch.compile, no gradients, no adapters.
    capabilities = Capabilities(
        layers="last",
        readouts=frozenset(READOUTS) - {"mask", "cls_mlp"},
        engine_options=True,
    )
    pooler = None

    def __init__(self, llama_cpp, model_ptr, tokenizer, *, path: str, info: dict[str, Any], **options: Any):
        self._lib = llama_cpp
        self._model = model_ptr
        self.tokenizer = tokenizer
        self.path = path
        self.num_layers = int(llama_cpp.llama_model_n_layer(model_ptr))
        self.hidden_size = int(llama_cpp.llama_model_n_embd(model_ptr))
        self.max_positions = int(llama_cpp.llama_model_n_ctx_train(model_ptr)) or None
        causal = self._meta(f"{self._meta('general.architecture')}.attention.causal")
        self.attends_both_ways = causal == "false"
        self.n_threads = int(options.get("n_threads") or default_threads())
        self.n_batch = int(options.get("n_batch") or DEFAULT_BATCH)
        self.n_ubatch = min(int(options.get("n_ubatch") or DEFAULT_UBATCH), self.n_batch)
        self.n_seq_max = min(
            int(options.get("n_seq_max") or DEFAULT_SEQS), llama_cpp.llama_max_parallel_sequences()
        )
        self.flash_attn = bool(options.get("flash_attn"))
        self.info = dict(info)
        self._ctx = None  # (n_ctx, context): made at the first batch, remade for a longer prompt
        self._batch = None
        self.last_decode_calls = 0  # llama_decode calls of the last `embed` (tests check batching)

    @classmethod
    def load(
        cls,
        model,
        *,
        dtype: str | None = None,
        device: str | None = None,
        quantization: str | None = None,
        cache_dir: str | None = None,
        **options: Any,
    ) -> LlamaCppBackend:
        """A packaged GGUF model's name or a local ``.gguf`` path, run by llama.cpp as it is.

        ``dtype`` is ignored: the file's own weight types run (recorded as ``dtype`` in `describe`).
        ``options``: see `OPTIONS` (threads, tokens and prompts per decode call).
        """
        if quantization:
            raise PromptlabError(
                f"--quantization {quantization} is not available with --backend llamacpp (the GGUF file's "
                "own quantization runs); drop --quantization, or use --backend transformers for it."
            )
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise PromptlabError(
                f"--backend llamacpp takes no option(s) {', '.join(unknown)}; it takes: {', '.join(OPTIONS)}."
            )
        llama_cpp = require_llama_cpp()
        from transformers import AutoTokenizer

        from promptlab.models.gguf import gguf_architecture, gguf_tokenizer, resolve_gguf

        resolved = resolve_gguf(str(model), cache_dir=cache_dir)
        path = resolved.path
        gpu_layers = int(options.get("n_gpu_layers") or 0)
        if device not in (None, "cpu") or gpu_layers:
            if not llama_cpp.llama_supports_gpu_offload():
                raise PromptlabError(
                    f"device {device or 'gpu'!r}: this llama-cpp-python was built for the CPU only; use "
                    "--device cpu, or rebuild it with CMAKE_ARGS=-DGGML_CUDA=on."
                )
            gpu_layers = gpu_layers or -1
        _install_log_capture(llama_cpp)
        _VERBOSE[0] = bool(options.get("verbose"))
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        _LOG.clear()
        model_ptr = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not model_ptr:
            arch = gguf_architecture(path)
            raise PromptlabError(
                f"{path}: llama.cpp {llama_cpp.__version__} cannot load it (architecture {arch!r}: "
                f"{_last_error()}); use --backend transformers if transformers reads this model."
            )
        try:  # after llama.cpp took the file: an architecture it cannot run is named by llama.cpp
            tokenizer = AutoTokenizer.from_pretrained(gguf_tokenizer(resolved, cache_dir=cache_dir))
        except OSError as err:
            llama_cpp.llama_model_free(model_ptr)
            raise load_failed(resolved, err) from None
        except PromptlabError:
            llama_cpp.llama_model_free(model_ptr)
            raise
        info = model_info(
            resolved, dtype=_file_type(path), device="cpu" if not gpu_layers else "gpu", quantization=None
        )
        return cls(llama_cpp, model_ptr, tokenizer, path=path, info=info, **options)

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buf, ctypes.sizeof(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    # -- context ---------------------------------------------------------------------------------------
    def _context(self, longest: int):
        """A context holding ``n_batch`` tokens (more if one prompt is longer), made once and reused."""
        lib = self._lib
        n_ctx = max(self.n_batch, longest)
        if self._ctx is not None and self._ctx[0] >= n_ctx:
            return self._ctx[1]
        self._free_context()
        params = lib.llama_context_default_params()
        params.n_ctx = params.n_batch = n_ctx
        params.n_ubatch = min(self.n_ubatch, n_ctx)
        params.n_seq_max = self.n_seq_max
        params.kv_unified = True  # the prompts of one call share the cache; masks keep them apart
        params.n_threads = params.n_threads_batch = self.n_threads
        params.embeddings = True
        params.pooling_type = lib.LLAMA_POOLING_TYPE_NONE  # every token's state; `pool` reads them
        # Keys and values kept in float32, as the transformers backend computes them (f16 by default).
        params.type_k = params.type_v = lib.GGML_TYPE_F32
        # Off by default: the CPU flash-attention kernel rounds through float16 (vectors then move by ~1e-3
        # and depend on how prompts are grouped into calls); plain attention gives the float32 result.
        params.flash_attn_type = (
            lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        _LOG.clear()
        ctx = lib.llama_init_from_model(self._model, params)
        if not ctx:
            raise PromptlabError(
                f"llama.cpp could not make a context of {n_ctx} tokens for {self.path} ({_last_error()}); "
                "lower n_batch, or free memory."
            )
        self._ctx = (n_ctx, ctx)
        self._batch = lib.llama_batch_init(n_ctx, 0, 1)
        return ctx

    def _free_context(self) -> None:
        if self._ctx is not None:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx[1])
            self._ctx = self._batch = None

    def __del__(self):
        try:
            self._free_context()
            if getattr(self, "_model", None):
                self._lib.llama_model_free(self._model)
                self._model = None
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

    def _decode(self, rows: list[list[int]], *, last_only: bool = False) -> list[np.ndarray]:
        """Each row's per-token last-layer states [len, H] (``last_only``: its last token's state [1, H]),
        from as few ``llama_decode`` calls as fit. Only the tokens read are outputs: llama.cpp computes its
        full-vocabulary output layer for every output token, a quarter of the work or more on these models."""
        lib = self._lib
        ctx = self._context(max(len(r) for r in rows))
        n_ctx = self._ctx[0]
        out: list[np.ndarray] = []
        start = 0
        while start < len(rows):
            stop, tokens = start, 0  # the next rows that fit one call: n_ctx tokens, n_seq_max prompts
            while stop < len(rows) and stop - start < self.n_seq_max and tokens + len(rows[stop]) <= n_ctx:
                tokens += len(rows[stop])
                stop += 1
            batch = self._batch
            i = 0
            for seq, ids in enumerate(rows[start:stop]):
                for pos, token in enumerate(ids):
                    batch.token[i] = token
                    batch.pos[i] = pos
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = not last_only or pos == len(ids) - 1  # an output: returned
                    i += 1
            batch.n_tokens = i
            lib.llama_memory_clear(lib.llama_get_memory(ctx), True)  # no state from the last call
            status = lib.llama_decode(ctx, batch)
            self.last_decode_calls += 1
            if status != 0:
                raise PromptlabError(
                    f"llama.cpp failed to run {stop - start} prompt(s) of {tokens} tokens (status {status}: "
                    f"{_last_error()}); lower n_batch or the batch size."
                )
            if last_only:  # each prompt's one output, looked up by its token's index in the call
                offset = 0
                for ids in rows[start:stop]:
                    offset += len(ids)
                    state = lib.llama_get_embeddings_ith(ctx, offset - 1)
                    out.append(np.ctypeslib.as_array(state, shape=(1, self.hidden_size)).copy())
            else:
                states = np.ctypeslib.as_array(lib.llama_get_embeddings(ctx), shape=(i, self.hidden_size))
                offset = 0
                for ids in rows[start:stop]:
                    out.append(states[offset : offset + len(ids)].copy())
                    offset += len(ids)
            start = stop
        return out

    # -- protocol --------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Make the context (its key/value and output buffers) and run one token now, at load."""
        self._decode([[0]])

    def embed(self, batch: TokenBatch, pooling: str, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        other = [layer for layer in layers if layer != self.num_layers]
        if other:
            raise PromptlabError(
                f"the llamacpp backend returns only the last layer ({self.num_layers}), not hidden-state "
                f"layer(s) {', '.join(map(str, other))}; use --layer -1, or --backend transformers for them."
            )
        if pooling not in self.capabilities.readouts:
            raise PromptlabError(
                f"the llamacpp backend cannot read {pooling!r} (it reads: "
                f"{', '.join(sorted(self.capabilities.readouts))}); use --backend transformers for it."
            )
        mask = batch.attention_mask.bool()  # [B, L]
        rows = [batch.input_ids[b][mask[b]].tolist() for b in range(mask.shape[0])]  # unpadded ids
        start = mask.long().argmax(1)  # [B] first real token
        self.last_decode_calls = 0
        # A read-out at each prompt's last token (PromptEOL's next-token position, "last") needs that
        # token's state alone.
        last = last_real(batch.attention_mask)
        last_only = pooling == "last" or (pooling == "next_token" and bool((batch.targets == last).all()))
        states = self._decode(rows, last_only=last_only)
        # The states read, put back in the batch's own layout, read by the shared pooling code.
        hidden = torch.zeros(*batch.input_ids.shape, self.hidden_size)  # [B, L, H]
        for b, s in enumerate(states):
            first = int(start[b]) + (len(rows[b]) - 1 if last_only else 0)
            hidden[b, first : first + s.shape[0]] = torch.from_numpy(s)
        return {self.num_layers: pool(pooling, hidden, batch)}

    def describe(self) -> dict[str, Any]:
        import transformers

        return {
            "backend": self.name,
            **self.info,
            "architecture": self._meta("general.architecture"),
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "gguf_file": Path(self.path).name,
            "n_threads": self.n_threads,
            "n_batch": self.n_batch,
            "flash_attn": self.flash_attn,
            "llama_cpp_python": self._lib.__version__,
            "transformers": transformers.__version__,
        }
