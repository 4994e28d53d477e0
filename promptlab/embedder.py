"""`Embedder`: a template, a backend and a pooling, behind the ``encode`` signature of sentence-transformers.

The one path every caller uses (CLI, Python API, evaluation, experiments, fine-tuning):
render + tokenize (`PromptTokenizer`) → sort by length, deduplicate, pad (`pad_batch`) →
forward and pool (`Backend.embed`) → vectors in the caller's order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from promptlab.backends import Backend, Request, check_request, load_backend, resolve_dtype
from promptlab.batching import default_batching, parse_batch_tokens, plan_batches
from promptlab.cache import EmbeddingCache
from promptlab.errors import PromptlabError
from promptlab.prefix_cache import shared_prefix_length
from promptlab.progress import Progress
from promptlab.registry import get_template
from promptlab.templates import Template
from promptlab.tokenization import PromptTokenizer, check_max_length, pad_batch

# How often vectors computed so far are written to the disk cache during a long encode.
CACHE_FLUSH_SECONDS = 60.0
# How often a long encode whose stderr is not a terminal (a log) prints a progress line.
PROGRESS_SECONDS = 30.0


def check_sentences(sentences: Sequence[str]) -> list[str]:
    """Reject what cannot be embedded, naming the first offending item (1-based)."""
    if isinstance(sentences, str):
        raise TypeError("check_sentences takes a list of sentences")
    out = list(sentences)
    for i, sentence in enumerate(out, start=1):
        if not isinstance(sentence, str):
            raise PromptlabError(f"sentence #{i} is a {type(sentence).__name__}, not text; pass strings.")
        if not sentence.strip():
            raise PromptlabError(
                f"sentence #{i} is empty or whitespace-only; remove blank lines from the input."
            )
    return out


def sentences_per_second(done: int, seconds: float) -> float | None:
    """Sentences per second, or None when nothing was computed."""
    return done / seconds if done and seconds > 0 else None


@contextlib.contextmanager
def _finally(action):
    try:
        yield
    finally:
        action()


class Embedder:
    """Sentence embeddings from a language model and a prompt template.

    Args:
        model: a model spec (packaged name such as ``smollm2-135m``, local dir, ``.gguf``, hub id) or a
            ready `Backend`.
        template: a registry name (``prompteol``, ``promptbert``, ``none``…) or literal text with ``[X]``.
        layer: hidden-state index; negative counts from the top (-1 = last), 0 is the embedding output.
        dtype: ``auto`` (bfloat16 where the CPU/GPU computes in it natively, else float32; see
            `promptlab.backends.resolve_dtype`) | ``float32`` | ``bfloat16`` | ``float16``. The dtype used is
            in `describe()`.
        pooling: for ``prefix`` templates only: ``cls`` | ``cls_mlp`` | ``mean`` | ``max`` | ``last``.
        backend: the runtime that runs the model, by its registered name (``transformers``, ``vllm``; see
            `promptlab.backends.REGISTRY`). Each declares what it can read (layers, read-out positions,
            quantizations, compile, adapters); a request it cannot serve is refused before the model loads,
            naming the backend that can.
        normalize_input: override the template's input rules (None keeps the template's setting).
        padding_side: ``right`` (default) or ``left``; results are the same either way.
        batch_size: most sentences per forward (None: 128 on CPU, 32 elsewhere; `promptlab.batching`).
        batch_tokens: most padded tokens per forward, a cached prefix not counted (``auto``: 1536 on CPU, no
            cap elsewhere; None: no cap). Within both, batches are cut where padding costs least.
        max_length: token budget per prompt; longer sentences are cut inside the slot.
        adapter: a LoRA adapter folder from `promptlab finetune` (its base must be this model).
        merge_adapter: fold the adapter into the base weights (same vectors, no LoRA overhead; a 4-bit base
            is dequantized to its compute dtype for it, so it takes that dtype's memory; into an int8 base peft
            quantizes the merged weights again, which moves the vectors slightly).
        quantization: ``int8`` | ``nf4`` | ``fp4`` (bitsandbytes) when loading ``model`` from a spec.
        prefix_cache: run the token prefix all prompts of a call share once (decoders; same vectors).
        cache_dir: keep vectors on disk there and reuse them (see `promptlab.cache`); None: no disk cache.
        compile: run forwards through ``torch.compile`` (transformers backend): faster on long jobs, after a
            one-off compile of a few minutes (see `TransformersBackend.compile`).
        demonstration: a `Demonstration`, a shipped id (``eol-opt-125m``) or ``best-of:RESULTS.jsonl``,
            solved in front of the prompt (PromptEOL's in-context learning; `promptlab.demonstrations`).
        engine_options: extra keyword arguments for ``vllm.LLM`` (``backend="vllm"`` only), e.g.
            `promptlab.backends.vllm.parallel_options` to split a model over GPUs.

    An ``ensemble`` template (MetaEOL) is encoded through one Embedder per member, sharing the backend, and
    its vectors are the members' mean at each layer.
    """

    def __init__(
        self,
        model: str | Backend,
        template: str | Template = "prompteol",
        layer: int = -1,
        dtype: str = "auto",
        *,
        pooling: str | None = None,
        backend: str = "transformers",
        device: str | None = None,
        batch_size: int | None = None,
        batch_tokens: int | str | None = "auto",
        max_length: int | None = None,
        padding_side: str = "right",
        normalize_input: bool | None = None,
        adapter: str | None = None,
        merge_adapter: bool = False,
        quantization: str | None = None,
        prefix_cache: bool = True,
        cache_dir: str | None = None,
        demonstration: Any = None,
        compile: bool = False,
        engine_options: dict[str, Any] | None = None,
    ):
        check_max_length(max_length)  # before the model loads
        if merge_adapter and adapter is None:
            raise PromptlabError(
                "merge_adapter (--merge-adapter) needs an adapter to merge: pass --adapter FOLDER (or an "
                "--embedder that has one), or drop --merge-adapter."
            )
        template = get_template(template, pooling=pooling)
        if normalize_input is not None and normalize_input != template.normalize:
            template = dataclasses.replace(template, normalize=normalize_input)
        if demonstration is not None:
            from promptlab.demonstrations import resolve_demonstration, with_demonstration

            demonstration = resolve_demonstration(demonstration)
            template = with_demonstration(template, demonstration)
        self.demonstration = demonstration
        self.template = template
        loaded = isinstance(model, str) or not hasattr(model, "embed")
        # What the backend must do, checked against its declared capabilities before any model loads.
        request = Request(
            layer=layer,
            num_layers=None if loaded else model.num_layers,
            readouts=tuple(get_template(m).pooling for m in template.members) or (template.pooling,),
            quantization=quantization if loaded and quantization not in ("", "none") else None,
            compile=compile,
            adapter=adapter is not None,
            engine_options=tuple(sorted(engine_options or ())),
        )
        check_request(backend if loaded else model, request)
        if loaded:
            quant = {"quantization": quantization} if quantization else {}
            dtype = resolve_dtype(dtype, device)
            model = load_backend(
                backend, model, dtype=dtype, device=device, **quant, **(engine_options or {})
            )
        self.backend: Backend = model
        if adapter is not None:
            from promptlab.adapters import attach_adapter

            attach_adapter(self.backend, adapter, merge=merge_adapter, template=template, layer=layer)
        if compile:
            self.backend.compile()
        self.layer = layer
        self.layer_index = self.resolve_layer(layer)
        if batch_size is not None and batch_size < 1:
            raise PromptlabError(f"batch_size={batch_size}: pass a positive number of sentences, or None.")
        rows, tokens = default_batching(self.backend.device)
        self.batch_size = batch_size or rows
        try:
            batch_tokens = parse_batch_tokens(batch_tokens)
        except ValueError as err:
            raise PromptlabError(str(err)) from None
        self.batch_tokens = tokens if batch_tokens == "auto" else batch_tokens
        self.padding_side = padding_side
        self.prompts = PromptTokenizer(
            self.backend.tokenizer,
            template,
            max_length=max_length,
            model_positions=self.backend.max_positions,
        )
        tok = self.backend.tokenizer
        # Padded positions are masked out, so any id works; prefer the tokenizer's own pad/eos token.
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        self.last_stats: dict[str, Any] = {}
        self.use_prefix_cache = prefix_cache
        self.cache = EmbeddingCache(cache_dir) if cache_dir else None
        options = dict(
            batch_size=batch_size,
            batch_tokens=batch_tokens,
            max_length=max_length,
            padding_side=padding_side,
            normalize_input=normalize_input,
            prefix_cache=prefix_cache,
            cache_dir=cache_dir,
        )
        self.members = [Embedder(self.backend, name, layer, **options) for name in template.members]
        if template.kind == "next_token" and self.backend.attends_both_ways:
            warnings.warn(
                f"template {template.name!r} reads the next-token position, which only a causal decoder (LLaMA, "
                f"Qwen, OPT...) fills with a prediction; {self.backend.describe().get('model')!r} attends both "
                "ways (an encoder): use a mask template (promptbert) or --template none --pooling mean.",
                stacklevel=2,
            )
        if loaded:
            self.backend.warm_up()  # a backend this embedder loaded: its first-forward costs belong to loading

    # -- layers ----------------------------------------------------------------------------------------
    def resolve_layer(self, layer: int) -> int:
        """A hidden-state index in ``0..num_layers`` from a possibly negative layer."""
        n = self.backend.num_layers
        if not -(n + 1) <= layer <= n:
            raise PromptlabError(
                f"layer {layer} is out of range: the model has {n} layers (use -{n + 1}..{n}; "
                "0 is the embedding output, -1 the last layer)."
            )
        return layer % (n + 1)

    # -- encoding --------------------------------------------------------------------------------------
    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        normalize_embeddings: bool = False,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
    ) -> np.ndarray:
        """Embed sentences; returns float32 [N, H] (or [H] for a single string)."""
        single = isinstance(sentences, str)
        vectors = self.encode_layers(
            [sentences] if single else sentences,
            [self.layer],
            batch_size=batch_size,
            normalize_embeddings=normalize_embeddings,
            show_progress_bar=show_progress_bar,
        )[self.layer]
        return vectors[0] if single else vectors

    def encode_layers(
        self,
        sentences: Sequence[str],
        layers: Sequence[int],
        *,
        batch_size: int | None = None,
        normalize_embeddings: bool = False,
        show_progress_bar: bool | None = None,
    ) -> dict[int, np.ndarray]:
        """Embed at several layers from one forward pass per batch: {layer: float32 [N, H]}."""
        sentences = check_sentences(sentences)
        if self.members:
            return self._encode_members(
                sentences, layers, batch_size, normalize_embeddings, show_progress_bar
            )
        indices = {layer: self.resolve_layer(layer) for layer in layers}
        for layer in indices:  # a backend that reads the last layer only refuses the others before any work
            check_request(self.backend, Request(layer=layer, num_layers=self.backend.num_layers))
        wanted = sorted(set(indices.values()))
        unique = list(dict.fromkeys(sentences))  # duplicates are embedded once
        start = time.perf_counter()
        out = {i: np.empty((len(unique), self.backend.hidden_size), dtype=np.float32) for i in wanted}
        namespace = self.cache.key_for(self) if self.cache else None
        todo = self.cache.fill(namespace, unique, out) if namespace else range(len(unique))
        prompts = {i: self.prompts.encode(unique[i]) for i in todo}
        n_truncated = sum(p.truncated for p in prompts.values())
        if n_truncated:
            warnings.warn(
                f"{n_truncated} sentence(s) exceeded {self.prompts.max_length} tokens and were shortened inside "
                "the template's slot (the template itself is kept whole).",
                stacklevel=2,
            )
        # Longest first: similar lengths share a batch (little padding), and memory peaks at the start.
        order = sorted(todo, key=lambda i: -len(prompts[i].ids))
        prefix = shared_prefix_length([p.ids for p in prompts.values()]) if self.use_prefix_cache else 0
        batch_size = batch_size or self.batch_size
        lengths = [len(prompts[i].ids) - prefix for i in order]  # tokens each row runs (the prefix once)
        n_tokens = 0
        pending: list[int] = []  # rows computed but not yet in the disk cache
        flushed = time.perf_counter()

        def flush() -> None:
            # Computed vectors reach the disk cache as the job goes, so a killed job's rerun resumes.
            if namespace and pending:
                self.cache.store(
                    namespace,
                    [unique[i] for i in pending],
                    {i: out[i][pending] for i in wanted},
                    self.describe(),
                )
            pending.clear()

        with (
            Progress(
                len(order),
                "embedding",
                enabled=show_progress_bar,
                min_total=batch_size,
                interval=PROGRESS_SECONDS,
                total_work=sum(lengths),  # rows differ in cost (longest first): the ETA follows tokens
            ) as progress,
            _finally(flush),  # an interrupted job keeps every batch it finished
        ):
            # Length-sorted rows cut where padding and per-forward costs are least (`promptlab.batching`).
            for span in plan_batches(lengths, batch_size, max_tokens=self.batch_tokens):
                rows = order[span.start : span.stop]
                batch = pad_batch(
                    [prompts[i] for i in rows], pad_id=self.pad_id, padding_side=self.padding_side
                )
                batch.prefix_length = prefix
                n_tokens += batch.num_tokens
                for index, vectors in self.backend.embed(batch, self.template.pooling, wanted).items():
                    out[index][rows] = vectors.numpy()
                pending.extend(rows)
                progress.update(len(rows), work=sum(lengths[span.start : span.stop]))
                if time.perf_counter() - flushed >= CACHE_FLUSH_SECONDS:
                    flush()
                    flushed = time.perf_counter()
        seconds = time.perf_counter() - start
        self.last_stats = {
            "sentences": len(sentences),
            "unique_sentences": len(unique),
            "tokens": n_tokens,
            "truncated": n_truncated,
            "embedded": len(order),
            "from_cache": len(unique) - len(order),
            "prefix_length": prefix,
            "seconds": seconds,
            # The rate of the work done: sentences read from the cache are counted apart, not as speed.
            "sentences_per_second": sentences_per_second(len(order), seconds),
        }
        position = {s: i for i, s in enumerate(unique)}
        take = np.fromiter((position[s] for s in sentences), dtype=np.int64, count=len(sentences))
        result = {}
        for layer, index in indices.items():
            vectors = out[index][take]
            if normalize_embeddings:
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            result[layer] = vectors
        return result

    def _encode_members(self, sentences, layers, batch_size, normalize_embeddings, show_progress_bar):
        """An ensemble's vectors: its members' mean, layer by layer (MetaEOL, Lei et al. 2024)."""
        total: dict[int, np.ndarray] = {}
        stats: dict[str, Any] = {}
        for member in self.members:
            vectors = member.encode_layers(
                sentences, layers, batch_size=batch_size, show_progress_bar=show_progress_bar
            )
            for layer, v in vectors.items():
                total[layer] = total[layer] + v if layer in total else v
            for key in ("tokens", "truncated", "seconds"):
                stats[key] = stats.get(key, 0) + member.last_stats.get(key, 0)
        result = {layer: v / len(self.members) for layer, v in total.items()}
        if normalize_embeddings:
            for v in result.values():
                v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        embedded = max(member.last_stats["embedded"] for member in self.members)
        unique = len(set(sentences))
        self.last_stats = {
            **self.members[-1].last_stats,
            **stats,
            "sentences": len(sentences),
            "unique_sentences": unique,
            "embedded": embedded,
            "from_cache": unique - embedded,
            "sentences_per_second": sentences_per_second(embedded, stats["seconds"]),
        }
        return result

    def describe(self) -> dict[str, Any]:
        """The full configuration behind these vectors, for result records."""
        from promptlab.version import __version__

        t = self.template
        return {
            **self.backend.describe(),
            "template": t.name,
            "template_kind": t.kind,
            "template_text": t.text,
            "template_paper": t.paper,
            "pooling": t.pooling,
            "normalize_input": t.normalize,
            "layer": self.layer,
            "layer_index": self.layer_index,
            "max_length": self.prompts.max_length,
            "demonstration": self.demonstration.to_dict() if self.demonstration else None,
            "template_members": {m.template.name: m.template.text for m in self.members},
            "promptlab": __version__,
        }

    @property
    def label(self) -> str:
        """A one-line name for tables: model, template (and its pooling), layer, dtype."""
        described = self.backend.describe()
        t = self.template
        shown = t.name + (f" ({t.pooling})" if t.kind == "prefix" else "")
        return f"{described['model']}, {shown}, layer {self.layer}, {described['dtype']}"

    def computes(self) -> dict[str, Any]:
        """What shapes these vectors (`promptlab.cache.computes`): what a task log or cache entry is keyed by."""
        from promptlab.cache import computes

        return computes(self)

    # -- artifacts -------------------------------------------------------------------------------------
    def save(self, folder: str, *, overwrite: bool = False):
        """Save as a folder that `Embedder.load` rebuilds (config + adapter); see `promptlab.artifact`."""
        from promptlab.artifact import save_embedder

        return save_embedder(self, folder, overwrite=overwrite)

    @classmethod
    def load(cls, folder: str, **options) -> Embedder:
        """An embedder saved with `save` (or a fine-tuning adapter folder); ``options`` as in `load_embedder`."""
        from promptlab.artifact import load_embedder

        return load_embedder(cls, folder, **options)
