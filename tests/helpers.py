"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import random

WORDS = (
    "a man woman child dog cat horse guitar onion field grass room music river city street car train "
    "plays slices sits runs sleeps rides watches reads writes sings under over near through while"
).split()


def corpus_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct made-up sentences of 3-14 words (a corpus for embedding jobs)."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        words = rng.choices(WORDS, k=rng.randint(3, 14))
        out[f"{' '.join(words).capitalize()} #{len(out)}."] = None
    return list(out)
