"""``promptlab export``: write an embedder as a folder, for promptlab or for sentence-transformers."""

from __future__ import annotations

import argparse
import sys

from promptlab.errors import PromptlabError

FORMATS = ("promptlab", "sentence-transformers")


def make_export_parser(sub) -> None:
    from promptlab.cli_options import add_model_args

    p = sub.add_parser(
        "export",
        help="save an embedder as a folder: promptlab (Embedder.load, --embedder, serve) or sentence-transformers",
    )
    add_model_args(p)
    p.add_argument(
        "--format",
        default="promptlab",
        choices=FORMATS,
        help="promptlab: config + adapter, reloads the same embedder; sentence-transformers: a folder that "
        "SentenceTransformer(DIR, trust_remote_code=True) loads (weights included)",
    )
    p.add_argument("--output", required=True, help="the folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    # Exporting embeds nothing: no vector cache.
    p.set_defaults(handler=export_command, no_cache=True)


def export_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from promptlab.cli_options import build_embedder

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise PromptlabError(f"{output} already exists; pass --overwrite or choose another --output.")
    embedder = build_embedder(args)
    if args.format == "promptlab":
        embedder.save(output, overwrite=args.overwrite)
        how = f"Embedder.load({str(output)!r}) or --embedder {output}"
    else:
        from promptlab.export.sentence_transformers import export_sentence_transformers

        export_sentence_transformers(embedder, output, overwrite=args.overwrite)
        how = f"SentenceTransformer({str(output)!r}, trust_remote_code=True)"
    print(f"wrote {output}; load it with {how}", file=sys.stderr)
    return 0
