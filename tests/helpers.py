"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import os
import random

import pytest

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


def require_runtime(module: str, require_env: str, skip_reason: str) -> None:
    """Skip the test when the optional runtime ``module`` is missing, or fail when ``require_env`` is set
    (the CI step that installs the runtime sets it, so a broken install cannot pass as skipped)."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get(require_env):
            pytest.fail(f"{require_env} is set but {module} is not installed in this environment")
        pytest.skip(skip_reason)
