"""Prompting against pooling: score the methods of the literature on one model, on STS-B dev.

    python demos/compare_methods.py                               # SmolLM2-135M: PromptEOL and kin vs pooling
    python demos/compare_methods.py --model mpnet-base            # an encoder: PromptBERT vs CLS / mean
    python demos/compare_methods.py --dev-pairs 1500 --methods prompteol,mean
    python demos/compare_methods.py --adapter experiments/finetune/runs/smollm2-sup-lora/best  # + CSE

The model loads once; every method is an `Embedder` over that one backend. Scores are Spearman x 100 of
cosine similarity on a seeded subset of STS-B dev (the papers' selection split; the test splits are for
the final report: `promptlab eval`). STS data: --data-dir or $PROMPTLAB_DATA (a SentEval-layout folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from promptlab import Embedder
from promptlab.backends import DTYPE_NAMES
from promptlab.errors import PromptlabError
from promptlab.evaluation import score_encoder, sts_dev

# key: (what the papers call it, template, pooling, demonstration)
DECODER_METHODS = {
    "prompteol": ("PromptEOL", "prompteol", None, None),
    "prompteol-demo": ("PromptEOL + one demonstration", "prompteol", None, "eol-opt-125m"),
    "pcot": ("Pretended CoT", "pcot", None, None),
    "ke": ("Knowledge Enhancement", "ke", None, None),
    "metaeol": ("MetaEOL (4-prompt ensemble)", "metaeol", None, None),
    "e5-mean": ("E5 instruction prefix, mean", "e5-query", "mean", None),
    "mean": ("no prompt, mean pooling", "none", "mean", None),
    "last": ("no prompt, last token", "none", "last", None),
}
ENCODER_METHODS = {
    "promptbert": ("PromptBERT ([MASK] state)", "promptbert", None, None),
    "cls": ("no prompt, CLS", "none", "cls", None),
    "mean": ("no prompt, mean pooling", "none", "mean", None),
    "max": ("no prompt, max pooling", "none", "max", None),
}


def adapter_template(folder: str) -> tuple[str, int]:
    """(template, layer) an adapter was trained on, from its `promptlab_adapter.json`."""
    from promptlab import get_template

    meta = Path(folder) / "promptlab_adapter.json"
    try:
        trained = json.loads(meta.read_text(encoding="utf-8"))
        name, text, layer = trained["template"]["name"], trained["template"]["text"], trained["layer"]
    except (OSError, ValueError, KeyError):
        raise PromptlabError(
            f"--adapter {folder}: no readable promptlab_adapter.json; pass a `promptlab finetune` RUN/best folder."
        ) from None
    try:
        return (name if get_template(name).text == text else text), layer
    except PromptlabError:  # trained on a literal template text, not a registry name
        return text, layer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="packaged name, local dir, .gguf or hub id")
    parser.add_argument("--methods", default=None, help="comma-separated keys (default: all for the model)")
    parser.add_argument("--dev-pairs", type=int, default=300, help="seeded STS-B dev subset (1500: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", choices=DTYPE_NAMES)
    parser.add_argument(
        "--adapter",
        default=None,
        help="also score a CSE adapter (`promptlab finetune` RUN/best) on its template",
    )
    parser.add_argument("--data-dir", default=None, help="SentEval layout folder (default: $PROMPTLAB_DATA)")
    args = parser.parse_args(argv)

    try:
        pairs = sts_dev(args.data_dir, n_pairs=args.dev_pairs, seed=args.seed)
        first = Embedder(args.model, "none", pooling="mean", dtype=args.dtype)
        backend = first.backend
        # A tokenizer with a mask token is a masked LM: PromptBERT reads [MASK]; decoders read the next token.
        methods = ENCODER_METHODS if backend.tokenizer.mask_token is not None else DECODER_METHODS
        keys = args.methods.split(",") if args.methods else list(methods)
        unknown = [key for key in keys if key not in methods]
        if unknown:
            raise PromptlabError(
                f"--methods {','.join(unknown)}: not a method for {args.model}; choose from {', '.join(methods)}."
            )
        described = first.describe()
        print(
            f"{described['model']}, {described['dtype']}, {len(pairs)} STS-B dev pairs (seed {args.seed})\n"
        )
        print(f"| {'method':32} | {'template':10} | STS-B dev | sent/s |")
        print(f"|{'-' * 34}|{'-' * 12}|----------:|-------:|")
        rows = [(*methods[key], backend, -1, None) for key in keys]
        if args.adapter:
            # Its own model copy: LoRA would otherwise change the shared backend under the other methods.
            template, layer = adapter_template(args.adapter)
            rows.append(("+ CSE adapter (LoRA)", template, None, None, args.model, layer, args.adapter))
        for label, template, pooling, demonstration, model, layer, adapter in rows:
            embedder = Embedder(
                model,
                template,
                layer=layer,
                pooling=pooling,
                demonstration=demonstration,
                dtype=args.dtype,
                adapter=adapter,
            )
            started = time.perf_counter()
            score = score_encoder(embedder.encode, pairs)
            rate = 2 * len(pairs) / (time.perf_counter() - started)
            print(f"| {label:32} | {template:10} | {score:9.2f} | {rate:6.1f} |", flush=True)
    except PromptlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
