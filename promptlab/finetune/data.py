"""Training data for CSE: (anchor, positive, hard negative) examples from the sources at hand.

Sources (``FinetuneConfig.data``):
- ``sick-train``: SICK *train* (Marelli et al., 2014) as SimCSE-style triplets: a premise, its ENTAILMENT
  hypothesis as the positive and one of its CONTRADICTION partners as the hard negative (contradiction is
  symmetric, so a pair in either order counts); an entailment without any contradiction is a plain pair.
- ``stsb-train``: STS-B *train* pairs scored at least ``min_score`` (default 4) as positive pairs.
- a SimCSE CSV (``sent0,sent1[,hard_neg]``, Gao et al., 2021), or ``hub:org/name[@rev]`` with those columns.
- a ``.txt`` file, one sentence per line (blank lines skipped), for the unsupervised objectives; for
  these, ``sick-train`` and ``stsb-train`` give every sentence of their split, labels unused.

STS dev and test data are never read as training data. On top of that, ``holdout`` drops training items
that *are* evaluation items: STS-B train was assembled from the STS12-16 test sets, so most of its
positive pairs are, word for word, pairs scored in STS12-16 test; training on them would train on the test.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from promptlab.errors import PromptlabError

if TYPE_CHECKING:
    from promptlab.evaluation.contamination import EvalItems

BUILDERS = ("sick-train", "stsb-train")
SIMCSE_COLUMNS = ("sent0", "sent1", "hard_neg")


@dataclass(frozen=True)
class Example:
    """One training item: an anchor, and for the supervised objective a positive and maybe a hard negative."""

    anchor: str
    positive: str | None = None
    negative: str | None = None

    def texts(self) -> tuple[str, ...]:
        return tuple(t for t in (self.anchor, self.positive, self.negative) if t is not None)


@dataclass
class TrainingData:
    examples: list[Example]
    report: dict = field(default_factory=dict)  # per source counts, holdout drops: saved in the run's log

    def __len__(self) -> int:
        return len(self.examples)


def _key(text: str) -> str:
    return " ".join(text.split()).lower()


# -- sources ---------------------------------------------------------------------------------------------
def _senteval_file(data_dir, *parts: str) -> Path:
    from promptlab.evaluation import resolve_data_dir

    path = resolve_data_dir(data_dir).joinpath("downstream", *parts)
    if not path.is_file():
        raise PromptlabError(
            f"{path} does not exist; point data_dir (or $PROMPTLAB_DATA) at a SentEval data folder."
        )
    return path


def _read_table(path: Path, *, delimiter: str, required: tuple[str, ...], where: str) -> list[dict[str, str]]:
    """Rows of a headed CSV/TSV; a missing column is named together with the columns found."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(
            f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
        )
        found = [c for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in found]
        if missing:
            raise PromptlabError(
                f"{where}: missing column {', '.join(repr(c) for c in missing)}; columns found: "
                f"{', '.join(repr(c) for c in found) or 'none (empty file)'}. "
                f"The file needs a header row with {', '.join(required)}."
            )
        return list(reader)


def sick_triplets(data_dir=None) -> list[Example]:
    """SICK train → (premise, entailed hypothesis, contradicting sentence) triplets, or pairs if none."""
    path = _senteval_file(data_dir, "SICK", "SICK_train.txt")
    rows = _read_table(
        path, delimiter="\t", required=("sentence_A", "sentence_B", "entailment_judgment"), where=str(path)
    )
    contradictions: dict[str, list[str]] = {}
    for r in rows:
        if r["entailment_judgment"] == "CONTRADICTION":
            a, b = r["sentence_A"], r["sentence_B"]
            contradictions.setdefault(a, []).append(b)
            contradictions.setdefault(b, []).append(a)
    examples, used = [], {}
    for r in rows:
        if r["entailment_judgment"] != "ENTAILMENT":
            continue
        premise, hypothesis = r["sentence_A"], r["sentence_B"]
        negatives = sorted(set(contradictions.get(premise, ())))
        # Spread a premise's entailments over its contradictions, deterministically (file order).
        i = used[premise] = used.get(premise, -1) + 1
        examples.append(Example(premise, hypothesis, negatives[i % len(negatives)] if negatives else None))
    return examples


def stsb_pairs(data_dir=None, min_score: float = 4.0) -> list[Example]:
    """STS-B *train* pairs scored ``>= min_score`` as positives (negatives come from the batch)."""
    from promptlab.evaluation import load_task

    (pairs,) = load_task("STSBenchmark", data_dir=data_dir, split="train")
    return [
        Example(a, b)
        for a, b, score in zip(pairs.sentences1, pairs.sentences2, pairs.scores, strict=True)
        if score >= min_score
    ]


def simcse_csv(path: str | Path) -> list[Example]:
    """A SimCSE-format CSV: ``sent0,sent1`` and optionally ``hard_neg``."""
    path = Path(path)
    if not path.is_file():
        raise PromptlabError(f"training file {path} does not exist; check the path in `data`.")
    rows = _read_table(path, delimiter=",", required=SIMCSE_COLUMNS[:2], where=str(path))
    return _from_records(rows, where=str(path))


def _from_records(rows: Iterable[dict], *, where: str) -> list[Example]:
    examples = []
    for number, r in enumerate(rows, start=2):  # line 1 is the header
        anchor, positive = (r.get("sent0") or "").strip(), (r.get("sent1") or "").strip()
        negative = (r.get("hard_neg") or "").strip() or None
        if not anchor or not positive:
            raise PromptlabError(
                f"{where} row {number}: sent0 and sent1 must both be non-empty; fix or drop the row."
            )
        examples.append(Example(anchor, positive, negative))
    return examples


def hub_dataset(spec: str) -> list[Example]:
    """``hub:org/name[@revision]``: a hub dataset's train split with SimCSE columns."""
    import datasets

    name, _, revision = spec.removeprefix("hub:").partition("@")
    try:
        ds = datasets.load_dataset(name, revision=revision or None, split="train")
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "unreachable"
        why = (str(err) or type(err).__name__).splitlines()[0][:160]
        raise PromptlabError(
            f"could not load hub dataset {name!r} ({why}); "
            "the hub may be unreachable: download it and pass the CSV path instead."
        ) from None
    missing = [c for c in SIMCSE_COLUMNS[:2] if c not in ds.column_names]
    if missing:
        raise PromptlabError(
            f"hub dataset {name!r}: missing column {', '.join(repr(c) for c in missing)}; columns found: "
            f"{', '.join(repr(c) for c in ds.column_names)}. It needs sent0, sent1 and optionally hard_neg."
        )
    return _from_records(ds, where=f"hub dataset {name!r}")


def text_sentences(path: str | Path) -> list[Example]:
    """One sentence per line (blank lines skipped), for the unsupervised objectives."""
    path = Path(path)
    if not path.is_file():
        raise PromptlabError(f"training file {path} does not exist; check the path in `data`.")
    return [Example(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def all_sentences(source: str, data_dir=None) -> list[Example]:
    """Every sentence of SICK train or STS-B train, whatever its label (for the unsupervised objectives)."""
    from promptlab.evaluation import load_task

    task = {"sick-train": "SICKRelatedness", "stsb-train": "STSBenchmark"}[source]
    (pairs,) = load_task(task, data_dir=data_dir, split="train")
    pairwise = (t for a, b in zip(pairs.sentences1, pairs.sentences2, strict=True) for t in (a, b))
    return [Example(s) for s in dict.fromkeys(pairwise)]


def load_source(source: str, *, data_dir=None, min_score: float = 4.0, labels: bool = True) -> list[Example]:
    """One source's examples; ``labels=False`` (unsupervised) turns the builders into plain sentences."""
    if source in BUILDERS and not labels:
        return all_sentences(source, data_dir)
    if source == "sick-train":
        return sick_triplets(data_dir)
    if source == "stsb-train":
        return stsb_pairs(data_dir, min_score)
    if source.startswith("hub:"):
        return hub_dataset(source)
    suffix = Path(source).suffix.lower()
    if suffix == ".csv":
        return simcse_csv(source)
    if suffix == ".txt":
        return text_sentences(source)
    raise PromptlabError(
        f"data source {source!r} is not one of {', '.join(BUILDERS)}, a .csv (sent0,sent1[,hard_neg]), "
        "a .txt (one sentence per line) or hub:org/name."
    )


# -- the holdout -----------------------------------------------------------------------------------------
def eval_items(data_dir=None) -> EvalItems:
    """Every sentence and scored pair of the STS dev and test splits, keys whitespace/case folded."""
    from promptlab.evaluation.contamination import eval_items as build

    return build(data_dir, key=_key)


def is_held_out(example: Example, items: EvalItems, mode: str) -> bool:
    if mode == "sentences":
        return any(_key(t) in items.sentences for t in example.texts())
    if mode == "pairs":
        anchor = _key(example.anchor)
        return any(frozenset((anchor, _key(t))) in items.pairs for t in example.texts()[1:])
    return False


# -- assembling ------------------------------------------------------------------------------------------
def build_training_data(
    sources: list[str],
    *,
    objective: str,
    data_dir=None,
    min_score: float = 4.0,
    holdout: str = "pairs",
    max_examples: int | None = None,
    seed: int = 0,
) -> TrainingData:
    """Load, check against the objective, de-duplicate, apply the holdout, subsample."""
    report: dict = {"sources": {}}
    examples: list[Example] = []
    per_source: list[list[Example]] = []
    for source in sources:
        loaded = load_source(source, data_dir=data_dir, min_score=min_score, labels=objective == "supervised")
        report["sources"][source] = {
            "examples": len(loaded),
            "with_hard_negative": sum(e.negative is not None for e in loaded),
        }
        if objective == "supervised" and any(e.positive is None for e in loaded):
            raise PromptlabError(
                f"data source {source!r} holds single sentences, but objective 'supervised' needs pairs; "
                "use a CSV with sent0,sent1[,hard_neg], or objective 'dropout' / 'two_template'."
            )
        examples += loaded
        per_source.append(loaded)
    if objective != "supervised":  # unsupervised: every distinct sentence once, its own positive
        per_source = [[Example(t) for e in loaded for t in e.texts()] for loaded in per_source]
        examples = [Example(t) for t in dict.fromkeys(t for e in examples for t in e.texts())]
    examples = list(dict.fromkeys(examples))
    report["unique_examples"] = len(examples)
    if holdout != "none" and examples:
        items = eval_items(data_dir)
        held = {e for e in examples if is_held_out(e, items, holdout)}
        report["holdout"] = {"mode": holdout, "dropped": len(held)}
        for source, loaded in zip(sources, per_source, strict=True):
            report["sources"][source]["held_out"] = len(held.intersection(loaded))
        examples = [e for e in examples if e not in held]
    if max_examples is not None and len(examples) > max_examples:
        examples = random.Random(seed).sample(examples, max_examples)
    report["examples"] = len(examples)
    if not examples:
        dropped = report.get("holdout", {}).get("dropped", 0)
        raise PromptlabError(
            f"no training examples: {report['unique_examples']} read from {', '.join(sources)}, "
            f"{dropped} dropped by holdout={holdout!r}; add data (or relax the holdout if you mean to)."
        )
    return TrainingData(examples, report)
