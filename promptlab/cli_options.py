"""The command-line options every embedding command shares, and the `Embedder` they build.

Used by ``promptlab`` (`promptlab.cli`) and by the subcommands defined beside their packages
(``promptlab.experiments.cli``, ``promptlab.serve.cli``, ``promptlab.export.cli``).
"""

from __future__ import annotations

import argparse

from promptlab.backends import BACKENDS, DTYPE_NAMES, REGISTRY
from promptlab.batching import BATCH_SIZE_HELP, CPU_BATCH_TOKENS, parse_batch_tokens
from promptlab.errors import PromptlabError

BACKEND_HELP = "; ".join(
    f"{e.name}: {e.summary}" + (f" (extra [{e.extra}])" if e.extra else "") for e in REGISTRY.values()
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="packaged name, local dir, .gguf file or hub id")
    p.add_argument(
        "--template", default="prompteol", help="registry name (`promptlab templates`) or text with [X]"
    )
    p.add_argument(
        "--layer", type=int, default=-1, help="hidden-state layer; -1 is the last, 0 the embeddings"
    )
    p.add_argument("--pooling", default=None, help="for prefix templates: cls | cls_mlp | mean | max | last")
    add_dtype_arg(p)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    add_batch_args(p)
    p.add_argument(
        "--max-length",
        type=max_length_arg,
        default=None,
        help="token budget per prompt (cut inside the slot); default: the model's own limit",
    )
    p.add_argument("--no-normalize-input", action="store_true", help="switch off the template's input rules")
    p.add_argument("--demonstration", default=None, help="in-context example: an id, or best-of:SEARCH.jsonl")
    p.add_argument(
        "--adapter", default=None, help="a LoRA adapter folder from `promptlab finetune` (e.g. RUN/best)"
    )
    p.add_argument(
        "--merge-adapter",
        action="store_true",
        help="merge the --adapter into the base weights (same vectors, no LoRA overhead; a 4-bit base is "
        "dequantized for it, to the size of --dtype)",
    )
    p.add_argument("--backend", default="transformers", choices=BACKENDS, help=BACKEND_HELP)
    from promptlab.backends.quantization import QUANTIZATION_HELP, QUANTIZATIONS

    p.add_argument("--quantization", default=None, choices=list(QUANTIZATIONS), help=QUANTIZATION_HELP)
    p.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=None,
        help="--backend vllm: split each layer over this many GPUs (one node)",
    )
    p.add_argument(
        "--pipeline-parallel-size",
        type=int,
        default=None,
        help="--backend vllm: split the layers into this many stages (GPUs or nodes)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the forward (transformers backend): faster on long jobs after a 3-4 min compile",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where computed vectors are kept and reused (default: ~/.cache/promptlab/embeddings, or "
        "$PROMPTLAB_CACHE/embeddings)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk embedding cache")
    p.add_argument(
        "--embedder",
        default=None,
        help="a saved embedder folder (`promptlab export`) or a finetune adapter folder; "
        "--template/--layer/... given with it override what it saved. eval and embed also take a "
        "combination FILE.toml: several embedders and layers as one vector (`promptlab.combination`)",
    )
    mark_defaults(p, ("model", "template", "layer", "dtype", "backend"))


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    """``--dtype``, the same choices and default for every command that loads a model to embed."""
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="auto: bfloat16 where the CPU/GPU computes in it natively (AMX, AVX512-BF16, CUDA), else float32",
    )


def add_batch_args(p: argparse.ArgumentParser) -> None:
    """``--batch-size`` and ``--batch-tokens``, the same for every command that embeds."""
    p.add_argument("--batch-size", type=int, default=None, help=BATCH_SIZE_HELP)
    p.add_argument(
        "--batch-tokens",
        type=_batch_tokens,
        default="auto",
        help=f"most padded tokens per forward: a number, 'none' (no cap) or auto ({CPU_BATCH_TOKENS} on CPU, else none)",
    )


def max_length_arg(value: str) -> int:
    """``--max-length``: a positive number of tokens (0 or a negative number is refused, not "no limit")."""
    try:
        tokens = int(value)
    except ValueError:
        tokens = 0
    if tokens < 1:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a positive number of tokens; give one, or leave --max-length out to use the "
            "model's own limit"
        )
    return tokens


def _batch_tokens(value: str):
    try:
        return parse_batch_tokens(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class _DefaultStr(str):
    """A default argparse filled in, told apart from the same value typed by the user."""


class _DefaultInt(int):
    """A default argparse filled in, told apart from the same value typed by the user."""


def mark_defaults(p: argparse.ArgumentParser, names) -> None:
    """Wrap the defaults of ``names`` so `given` can tell whether the user typed the option."""
    for name in names:
        value = p.get_default(name)
        p.set_defaults(**{name: _DefaultInt(value) if isinstance(value, int) else _DefaultStr(value)})


def given(value) -> bool:
    """Whether an option marked by `mark_defaults` was typed by the user (None: not given)."""
    return value is not None and not isinstance(value, _DefaultStr | _DefaultInt)


def build_embedder(args: argparse.Namespace, *, combination: bool = False):
    """The command line's embedder; with ``combination``, ``--embedder FILE.toml`` builds a `Combination`."""
    from promptlab.embedder import Embedder

    if getattr(args, "embedder", None):
        if is_combination_file(args.embedder):
            return _build_combination(args, combination)
        return Embedder.load(args.embedder, **saved_embedder_options(args))
    return Embedder(
        args.model,
        args.template,
        layer=args.layer,
        dtype=args.dtype,
        pooling=args.pooling,
        device=args.device,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        max_length=args.max_length,
        normalize_input=False if args.no_normalize_input else None,
        adapter=getattr(args, "adapter", None),
        merge_adapter=getattr(args, "merge_adapter", False),
        demonstration=getattr(args, "demonstration", None),
        backend=getattr(args, "backend", "transformers"),
        quantization=getattr(args, "quantization", None),
        cache_dir=embedding_cache_dir(args),
        compile=getattr(args, "compile", False),
        engine_options=engine_options_of(args),
    )


def is_combination_file(spec: str) -> bool:
    return str(spec).endswith(".toml")


def _build_combination(args: argparse.Namespace, allowed: bool):
    from promptlab.combination import Combination

    if not allowed:
        command = getattr(args, "command", None) or "this command"
        raise PromptlabError(
            f"--embedder {args.embedder} is a combination of embedders, which {command} does not take (eval "
            "and embed into one .npy do); give one member's model or saved folder instead."
        )
    runtime = ("device", "batch_size", "batch_tokens", "cache_dir")
    options = saved_embedder_options(args)
    refused = sorted(k for k in options if k not in runtime and not (k == "compile" and not options[k]))
    if refused:
        flags = {
            "normalize_input": "--no-normalize-input",
            "engine_options": "--tensor/pipeline-parallel-size",
        }
        named = ", ".join(flags.get(k, "--" + k.replace("_", "-")) for k in refused)
        raise PromptlabError(
            f"{named} cannot apply to a combination ({args.embedder}); write it into its [[member]] tables."
        )
    return Combination.load(args.embedder, **{k: options[k] for k in runtime})


def engine_options_of(args: argparse.Namespace) -> dict | None:
    """``vllm.LLM`` options from ``--tensor-parallel-size`` / ``--pipeline-parallel-size`` (None: none)."""
    sizes = (getattr(args, "tensor_parallel_size", None), getattr(args, "pipeline_parallel_size", None))
    if sizes == (None, None):
        return None
    from promptlab.backends.vllm import parallel_options

    return parallel_options(*sizes)


def saved_embedder_options(args: argparse.Namespace) -> dict:
    """`Embedder.load` options from the command line: runtime options, and the overrides the user typed."""
    if given(getattr(args, "model", None)):
        raise PromptlabError("--embedder brings its own model; drop --model (or drop --embedder).")
    if getattr(args, "adapter", None):
        raise PromptlabError("--embedder brings its own adapter; drop --adapter (or drop --embedder).")
    options = {
        "device": args.device,
        "batch_size": args.batch_size,
        "batch_tokens": args.batch_tokens,
        "cache_dir": embedding_cache_dir(args),
        "compile": getattr(args, "compile", False),
    }
    engine = engine_options_of(args)
    if engine:
        options["engine_options"] = engine
    if getattr(args, "merge_adapter", False):
        options["merge_adapter"] = True
    if args.no_normalize_input:
        options["normalize_input"] = False
    for name in (
        "template",
        "layer",
        "dtype",
        "backend",
        "pooling",
        "max_length",
        "quantization",
        "demonstration",
    ):
        if given(getattr(args, name, None)):
            options[name] = getattr(args, name)
    return options


def embedding_cache_dir(args: argparse.Namespace) -> str | None:
    """The CLI caches vectors by default (models given by spec are hashed); --no-cache switches it off."""
    if getattr(args, "no_cache", True):  # a Namespace built without the cache options: no cache
        return None
    from promptlab.cache import default_cache_dir

    return getattr(args, "cache_dir", None) or str(default_cache_dir())
