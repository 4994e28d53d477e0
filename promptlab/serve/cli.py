"""``promptlab serve``: an embedder behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from promptlab.errors import PromptlabError


def make_serve_parser(sub) -> None:
    from promptlab.cli_options import add_model_args

    p = sub.add_parser(
        "serve",
        help="serve an embedder over HTTP: OpenAI-compatible POST /v1/embeddings, /v1/models, /health, /metrics",
    )
    p.add_argument("folder", nargs="?", default=None, help="a saved embedder folder (the same as --embedder)")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("PROMPTLAB_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (default: $PROMPTLAB_API_KEY; none: open)",
    )
    p.add_argument(
        "--served-model-name", default=None, help="the model id clients send (default: folder/model name)"
    )
    p.add_argument("--max-inputs", type=int, default=256, help="most inputs per request (more: 400)")
    p.add_argument(
        "--no-truncate",
        action="store_true",
        help="answer 400 to an input longer than --max-length tokens instead of cutting it inside the slot",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="how long to collect concurrent requests into one encode call",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level",
    )
    # A server keeps no vector cache on disk (--cache-dir does not apply).
    p.set_defaults(handler=serve_command, no_cache=True)


def serve_command(args: argparse.Namespace) -> int:
    from promptlab.cli_options import build_embedder
    from promptlab.serve import Limits, serve
    from promptlab.serve.app import require_serve

    require_serve()
    if args.folder:
        if args.embedder:
            raise PromptlabError("give the embedder folder once: as FOLDER or as --embedder, not both.")
        args.embedder = args.folder
    if args.max_inputs < 1:
        raise PromptlabError(f"--max-inputs {args.max_inputs}: give a positive number.")
    embedder = build_embedder(args)
    model_id = args.served_model_name or (
        Path(args.embedder).resolve().name if args.embedder else str(embedder.describe()["model"])
    )
    limits = Limits(max_inputs=args.max_inputs, max_tokens=embedder.prompts.max_length or Limits.max_tokens)
    print(
        f"serving {model_id!r} on http://{args.host}:{args.port}/v1 "
        f"({'API key required' if args.api_key else 'no API key'})",
        file=sys.stderr,
    )
    serve(
        embedder,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        model_id=model_id,
        api_key=args.api_key,
        limits=limits,
        window=args.batch_window_ms / 1000,
        truncate=not args.no_truncate,
    )
    return 0
