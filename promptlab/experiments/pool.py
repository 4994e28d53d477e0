"""How the self-labelled demonstration pool was built (no external LLM is reachable here).

PromptEOL (Jiang et al., 2023) searched demonstrations among STS-B train sentences and dictionary
definitions, labelled by a strong LLM. Without one, we let the embedding model label its own candidates:
STS-B *train* sentences that occur in no STS dev/test set, each followed by the word the model generates
greedily after the PromptEOL prompt (the text up to the closing quote, kept only when it is one word).

    python -m promptlab.experiments.pool --model smollm2-135m --n 100 \
        --output prompts/demonstrations/stsb-train-smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

from promptlab.demonstrations import Demonstration
from promptlab.errors import PromptlabError

# Words that only echo the prompt, not the sentence.
_JUNK = {
    "this",
    "sentence",
    "means",
    "mean",
    "meaning",
    "word",
    "one",
    "the",
    "a",
    "an",
    "it",
    "is",
    "in",
    "that",
    "these",
    "those",
    "there",
    "which",
    "what",
    "who",
    "he",
    "she",
    "they",
    "we",
    "you",
    "and",
    "or",
    "but",
    "of",
    "to",
    "for",
    "with",
    "on",
    "at",
    "by",
    "from",
    "two",
    "three",
    "some",
}
_WORD = re.compile(r"^[A-Za-z][A-Za-z-]{1,24}$")


def eval_sentences(data_dir=None) -> dict[str, str]:
    """`letters_and_digits` key -> where it occurs, over every evaluation split (`contamination.EVAL_SPLITS`)."""
    from promptlab.evaluation.contamination import eval_items, letters_and_digits

    items = eval_items(data_dir, key=letters_and_digits)
    return {key: "; ".join(sorted(labels)) for key, labels in items.sentences.items()}


def stsb_train_sentences(data_dir=None) -> list[tuple[int, int, str]]:
    """(line number, column 1|2, sentence) of STS-B train, whitespace-normalised as SentEval reads it."""
    from promptlab.evaluation import resolve_data_dir

    path = resolve_data_dir(data_dir) / "downstream/STS/STSBenchmark/sts-train.csv"
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        fields = line.strip().split("\t")
        if len(fields) >= 7:
            rows += [(number, 1, " ".join(fields[5].split())), (number, 2, " ".join(fields[6].split()))]
    return rows


def word_from_generation(generated: str) -> str | None:
    """The one word before the closing quote, or None for anything else (no quote, several words, junk)."""
    if '"' not in generated:
        return None
    word = generated.split('"', 1)[0].strip()
    if not _WORD.match(word) or word.lower() in _JUNK:
        return None
    return word


class GreedyGenerator:
    """Greedy continuations with the model's LM head (`AutoModelForCausalLM`), loaded once."""

    def __init__(self, model_path: str, *, dtype: str = "bfloat16", max_new_tokens: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from promptlab.backends.transformers import torch_dtype

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"  # generation continues after the last real token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(dtype)).eval()
        self.max_new_tokens = max_new_tokens

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            ids = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def build_self_labelled_pool(
    model: str = "smollm2-135m",
    *,
    n: int = 100,
    seed: int = 0,
    data_dir=None,
    dtype: str = "bfloat16",
    min_words: int = 4,
    max_words: int = 20,
):
    """``n`` STS-B train demonstrations labelled by ``model`` itself; returns (demonstrations, stats)."""
    from promptlab.evaluation.contamination import letters_and_digits
    from promptlab.models import resolve_model
    from promptlab.registry import get_template

    resolved = resolve_model(model)
    banned = eval_sentences(data_dir)
    seen: set[str] = set()
    candidates = []
    for number, column, sentence in stsb_train_sentences(data_dir):
        key = letters_and_digits(sentence)
        if key in banned or key in seen or not min_words <= len(sentence.split()) <= max_words:
            continue
        seen.add(key)
        candidates.append((number, column, sentence))
    random.Random(seed).shuffle(candidates)
    template = get_template("prompteol")
    generate = GreedyGenerator(resolved.path, dtype=dtype)
    demos, tried, rejected = [], 0, []
    for start in range(0, len(candidates), 64):
        batch = candidates[start : start + 64]
        generated = generate([template.render(s).text for _, _, s in batch])
        for (number, column, sentence), text in zip(batch, generated, strict=True):
            tried += 1
            word = word_from_generation(text)
            if word is None:
                rejected.append(text)
                continue
            demos.append(
                Demonstration(
                    id=f"stsb-train-{len(demos) + 1:04d}",
                    sentence=sentence,
                    word=word,
                    source=(
                        f"STS-B train line {number}, sentence {column}; "
                        f"word generated greedily by {resolved.name} "
                        f"({dtype}) after the prompteol template"
                    ),
                )
            )
            if len(demos) == n:
                break
        if len(demos) == n:
            break
    if len(demos) < n:
        raise PromptlabError(f"only {len(demos)} of {n} candidates got a one-word label; lower --n.")
    stats = {
        "clean_train_sentences": len(candidates),
        "labelled": tried,
        "rejected": len(rejected),
        "rejected_examples": rejected[:10],
    }
    return demos, stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    demos, stats = build_self_labelled_pool(
        args.model, n=args.n, seed=args.seed, data_dir=args.data_dir, dtype=args.dtype
    )
    Path(args.output).write_text("".join(json.dumps(d.to_dict(), ensure_ascii=False) + "\n" for d in demos))
    print(json.dumps(stats, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
