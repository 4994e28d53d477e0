"""The evaluation items that training data and demonstrations must not contain, built in one place.

Every split a score is reported on (`EVAL_SPLITS`: STS-B and SICK dev and test, STS12-16 test) is read
once into an `EvalItems`: each sentence, under a normalised key, with the places it occurs
("STS12 test (MSRpar)"), and each scored pair. Fine-tuning drops training items found here
(`promptlab.finetune.data`, key `fold_space_and_case`); the demonstration pool builder skips candidate
sentences found here (`promptlab.experiments.pool`, key `letters_and_digits`, which also catches copies
that differ only in punctuation).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

EVAL_SPLITS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("STSBenchmark", ("dev", "test")),
    ("SICKRelatedness", ("dev", "test")),  # SICK dev is SICK_trial
    *((f"STS{year}", ("test",)) for year in range(12, 17)),
)


def fold_space_and_case(sentence: str) -> str:
    """Runs of whitespace as one space, lower case."""
    return " ".join(sentence.split()).lower()


def letters_and_digits(sentence: str) -> str:
    """Lower case, letters and digits only: also matches copies that differ in punctuation."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", sentence.lower()).split())


@dataclass(frozen=True)
class EvalItems:
    """Every sentence and scored pair of the evaluation splits, under ``key``."""

    sentences: Mapping[str, frozenset[str]]  # key(sentence) -> where it occurs, e.g. "STS-B test"
    pairs: frozenset[frozenset[str]]  # {key(a), key(b)} of each scored pair
    key: Callable[[str], str]

    def where(self, sentence: str) -> str:
        """Where ``sentence`` occurs ("SICKRelatedness test; STS14 test (images)"), or "" if nowhere."""
        return "; ".join(sorted(self.sentences.get(self.key(sentence), ())))

    def has_pair(self, a: str, b: str) -> bool:
        return frozenset((self.key(a), self.key(b))) in self.pairs


def eval_items(data_dir=None, *, key: Callable[[str], str] = fold_space_and_case) -> EvalItems:
    """Read every split of `EVAL_SPLITS` from the SentEval folder (``data_dir`` / $PROMPTLAB_DATA)."""
    from promptlab.evaluation.data import load_task

    where: dict[str, set[str]] = {}
    pairs: set[frozenset[str]] = set()
    for task, splits in EVAL_SPLITS:
        for split in splits:
            for scored in load_task(task, data_dir=data_dir, split=split):
                label = f"{task} {split}" + (f" ({scored.subset})" if scored.subset != split else "")
                for a, b in zip(scored.sentences1, scored.sentences2, strict=True):
                    ka, kb = key(a), key(b)
                    where.setdefault(ka, set()).add(label)
                    where.setdefault(kb, set()).add(label)
                    pairs.add(frozenset((ka, kb)))
    return EvalItems({k: frozenset(v) for k, v in where.items()}, frozenset(pairs), key)
