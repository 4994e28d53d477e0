"""Loading STS sentence pairs: a local SentEval copy (the default) or MTEB's hub datasets.

The SentEval reader reproduces `senteval/sts.py` as SimCSE's fork runs it, so pair counts and scores match
the published tables: STS12-16 input/gold files read with `io.open(..., encoding='utf8').read().splitlines()`
and pairs whose gold line is blank dropped; STS-B and SICK read line by line with
`line.strip().split('\\t')` (STS-B: score = field 4, sentences = fields 5 and 6; SICK: header skipped,
sentences = fields 1 and 2, score = field 3). SentEval tokenises with `str.split()` and its batchers join
with one space, so every sentence here is whitespace-normalised the same way.

Parsed files are cached in-process, keyed by path, mtime and size, so repeated evaluations (a sweep, a
dev score every N steps) do not reread the disk.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptlab.errors import PromptlabError
from promptlab.evaluation.tasks import RELEASE_PAIRS, TaskSpec, check_split, get_spec

ENV_VAR = "PROMPTLAB_DATA"
SOURCES = ("senteval", "hub")
_FOLDER = "SentEval data folder (the one holding downstream/STS and downstream/SICK)"
_HOW = f"point --data-dir (or {ENV_VAR}) at a {_FOLDER}"
_REPLACE = "replace it with an unchanged copy from the SentEval download"


@dataclass(frozen=True, eq=False)
class STSPairs:
    """Scored sentence pairs of one task subset (STS12-16) or one split (STS-B, SICK-R)."""

    task: str
    subset: str  # STS12-16: SentEval subset name ("all" from the hub); STS-B/SICK-R: the split
    split: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray  # (n,) float64 gold similarity; scales differ between tasks and sources

    def __post_init__(self) -> None:
        if not len(self.sentences1) == len(self.sentences2) == len(self.scores):
            raise ValueError(
                f"{self.task}/{self.subset}: {len(self.sentences1)} first sentences, "
                f"{len(self.sentences2)} second sentences and {len(self.scores)} scores"
            )

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Loaded:
    """What a load produced: the pairs and a digest per input read (file or hub dataset)."""

    pairs: list[STSPairs]
    digests: dict[str, str]  # label (path relative to the data root, or hub id@revision) -> sha256


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The SentEval data root: `data_dir` if given, else $PROMPTLAB_DATA, else a PromptlabError.

    Accepts the folder that holds `downstream/` (SentEval's `data/`), the `downstream/` folder itself, or
    a SentEval checkout (which keeps its data in `data/`).
    """
    origin = "--data-dir / data_dir"
    if data_dir is None or str(data_dir) == "":
        data_dir, origin = os.environ.get(ENV_VAR, ""), ENV_VAR
        if not data_dir:
            raise PromptlabError(
                f"no STS data folder given: pass data_dir=... or set {ENV_VAR} to a {_FOLDER}, "
                "or load the Hugging Face Hub copies with source='hub' (needs internet).",
                cli=f"no STS data folder given: pass --data-dir DIR or set {ENV_VAR} to a {_FOLDER}, "
                "or load the Hugging Face Hub copies with --source hub (needs internet).",
            )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise PromptlabError(f"STS data folder {path} (from {origin}) does not exist; {_HOW}.")
    for root in [path.parent] if path.name == "downstream" else [path, path / "data"]:
        if (root / "downstream").is_dir():
            return root.resolve()
    raise PromptlabError(f"{path} (from {origin}) has no downstream/ folder; {_HOW}.")


# --------------------------------------------------------------------------- reading files (cached)


def _stat(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PromptlabError(
            f"missing SentEval file {path}; point --data-dir (or {ENV_VAR}) at a complete {_FOLDER}."
        ) from None
    return str(path), st.st_mtime_ns, st.st_size


def _read_text(path: str) -> tuple[str, str]:
    """(text, sha256 of the bytes), decoded exactly as `io.open(path, encoding='utf8').read()` does."""
    raw = Path(path).read_bytes()
    try:
        # TextIOWrapper = open() in text mode: strict utf-8 and universal newlines ("\r\n" -> "\n").
        text = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8").read()
    except UnicodeDecodeError as err:
        raise PromptlabError(
            f"{path} is not valid UTF-8 ({err.reason} at byte {err.start}); "
            "replace it with an unchanged copy from the SentEval download."
        ) from None
    return text, hashlib.sha256(raw).hexdigest()


def _fields(line: str, need: int, path: str, lineno: int, *, strip: bool = True) -> list[str]:
    fields = (line.strip() if strip else line).split("\t")
    if len(fields) < need:
        raise PromptlabError(
            f"{path}:{lineno} has {len(fields)} tab-separated fields, expected at least {need}; "
            "replace the file with an unchanged copy from the SentEval download."
        )
    return fields


def _score(text: str, path: str, lineno: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise PromptlabError(
            f"{path}:{lineno}: score {text!r} is not a number; "
            "replace the file with an unchanged copy from the SentEval download."
        ) from None


def _norm(sentence: str) -> str:
    return " ".join(sentence.split())


@functools.lru_cache(maxsize=128)
def _parse(kind: str, path: str, mtime_ns: int, size: int) -> tuple[tuple, str]:
    """Parse one file into immutable rows; cached by (kind, path, mtime, size). Returns (rows, sha256)."""
    del mtime_ns, size  # only part of the cache key
    text, digest = _read_text(path)
    if not text.strip():
        raise PromptlabError(f"{path} is empty; {_REPLACE}.")
    if not text.endswith("\n"):  # every file of the release ends with a newline
        raise PromptlabError(
            f"{path} ends in the middle of a line (its last line has no newline), so the file looks "
            f"truncated; {_REPLACE}."
        )
    rows: list = []
    if kind == "sts-input":  # rows: (sentence1, sentence2)
        for i, line in enumerate(text.splitlines(), 1):
            fields = _fields(line, 2, path, i, strip=False)  # SentEval: l.split("\t"), no strip
            rows.append((_norm(fields[0]), _norm(fields[1])))
    elif kind == "sts-gold":  # rows: score, or None where the gold line is blank (pair not scored)
        rows = [_score(x, path, i) if x.strip() else None for i, x in enumerate(text.splitlines(), 1)]
    else:  # "stsb" / "sick": rows (sentence1, sentence2, score)
        a, b, s = (5, 6, 4) if kind == "stsb" else (1, 2, 3)
        lines = text.split("\n")  # what iterating the text-mode file yields
        for i, line in enumerate(lines[1:] if kind == "sick" else lines, 2 if kind == "sick" else 1):
            if not line.strip():  # the final newline, or a stray blank line
                continue
            fields = _fields(line, max(a, b, s) + 1, path, i)
            rows.append((_norm(fields[a]), _norm(fields[b]), _score(fields[s], path, i)))
        if not rows:
            raise PromptlabError(f"{path} holds no sentence pairs; {_REPLACE}.")
    return tuple(rows), digest


def _check_release(label: str, path: Path, rows: tuple) -> None:
    """A file identified (by its first pair) as one of SentEval's release must hold all its pairs."""
    known = RELEASE_PAIRS.get(label)
    if known is None or not rows:
        return
    count, first = known
    if hashlib.sha256("\t".join(map(str, rows[0])).encode()).hexdigest()[:16] != first:
        return  # not the release's file (a different or hand-made copy): nothing to compare with
    if len(rows) != count:
        raise PromptlabError(
            f"{path} has {len(rows):,} sentence pairs but SentEval's release of this file has {count:,}, "
            f"so the file is truncated or altered; {_REPLACE}."
        )


def _load_senteval(spec: TaskSpec, split: str, root: Path) -> Loaded:
    folder = root / spec.folder
    pairs, digests = [], {}

    def parse(kind: str, name: str) -> tuple:
        rows, digest = _parse(kind, *_stat(folder / name))
        label = f"{spec.folder}/{name}"
        _check_release(label, folder / name, rows)
        digests[label] = digest
        return rows

    if spec.kind == "sts":
        for subset in spec.subsets:
            inputs = parse("sts-input", f"STS.input.{subset}.txt")
            gold = parse("sts-gold", f"STS.gs.{subset}.txt")
            if len(inputs) != len(gold):
                raise PromptlabError(
                    f"{folder}: STS.input.{subset}.txt has {len(inputs)} lines but STS.gs.{subset}.txt has "
                    f"{len(gold)}; replace both with unchanged copies from the SentEval download."
                )
            kept = [(s1, s2, g) for (s1, s2), g in zip(inputs, gold, strict=True) if g is not None]
            pairs.append(_pairs(spec.name, subset, split, kept))
    else:
        rows = parse(spec.kind, dict(spec.files)[split])
        pairs.append(_pairs(spec.name, split, split, rows))
    return Loaded(pairs, digests)


def _pairs(task: str, subset: str, split: str, rows: Iterable[tuple[str, str, float]]) -> STSPairs:
    rows = list(rows)
    scores = np.array([r[2] for r in rows], dtype=np.float64)
    scores.flags.writeable = False
    return STSPairs(task, subset, split, [r[0] for r in rows], [r[1] for r in rows], scores)


# --------------------------------------------------------------------------- the hub


def _load_hub(spec: TaskSpec, split: str) -> Loaded:
    hub_split = dict(spec.hub_splits)[split]
    try:
        import datasets

        ds = datasets.load_dataset(spec.hub_id, revision=spec.hub_revision, split=hub_split)
    except Exception as err:  # offline mode, no network, hub errors: all mean "use the local copy"
        raise PromptlabError(
            f"cannot load {spec.hub_id} from the Hugging Face Hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else 'no details'}); the hub is unreachable or "
            f"offline mode is on: use a local SentEval copy with --data-dir or {ENV_VAR}."
        ) from err
    rows = [(_norm(r["sentence1"]), _norm(r["sentence2"]), float(r["score"])) for r in ds]
    # The hub copies of STS12-16 carry no subset column: one pooled subset, named as SentEval's pooled score.
    pairs = _pairs(spec.name, "all" if spec.kind == "sts" else split, split, rows)
    digest = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()
    return Loaded([pairs], {f"hub:{spec.hub_id}@{spec.hub_revision}/{hub_split}": digest})


# --------------------------------------------------------------------------- public API


def load_with_digests(task: str, *, data_dir=None, split: str = "test", source: str = "senteval") -> Loaded:
    """`load_task`, plus a sha256 per file (or hub dataset) read, for the result's data fingerprint."""
    spec = get_spec(task)
    if source not in SOURCES:
        raise PromptlabError(f"unknown data source {source!r}; choose 'senteval' (local copy) or 'hub'.")
    check_split(spec, split, source)
    if source == "hub":
        return _load_hub(spec, split)
    return _load_senteval(spec, split, resolve_data_dir(data_dir))


def load_task(task: str, *, data_dir=None, split: str = "test", source: str = "senteval") -> list[STSPairs]:
    """The scored pairs of one task: one `STSPairs` per subset (STS12-16), or one (STS-B, SICK-R).

    `task` is matched case-insensitively and accepts short forms ("sts-b", "sick-r"). STS12-16 have only
    a test split; STS-B and SICK-R have train/dev/test locally (the hub's SICK-R has only test).
    """
    return load_with_digests(task, data_dir=data_dir, split=split, source=source).pairs


def sts_dev(
    data_dir=None, *, n_pairs: int | None = None, seed: int = 0, source: str = "senteval"
) -> STSPairs:
    """STS-B dev (1,500 pairs), the model-selection split of SimCSE/PromptBERT.

    With `n_pairs`, a seeded random subset of that size, kept in file order (cheaper dev scores during
    training); `n_pairs` at or above the split size returns the whole split.
    """
    (pairs,) = load_task("STSBenchmark", data_dir=data_dir, split="dev", source=source)
    return subset_pairs(pairs, n_pairs, seed=seed)


def subset_pairs(pairs: STSPairs, n_pairs: int | None, *, seed: int = 0) -> STSPairs:
    """A seeded random subset of ``n_pairs`` pairs, kept in file order; None or at least all: ``pairs``."""
    if n_pairs is None or n_pairs >= len(pairs):
        return pairs
    if n_pairs < 2:
        raise PromptlabError(f"n_pairs={n_pairs} is too few for a Spearman correlation; use at least 2.")
    idx = np.sort(np.random.default_rng(seed).choice(len(pairs), size=n_pairs, replace=False))
    rows = [(pairs.sentences1[i], pairs.sentences2[i], float(pairs.scores[i])) for i in idx]
    return _pairs(pairs.task, pairs.subset, pairs.split, rows)


def fingerprint(digests: dict[str, str]) -> str:
    """One sha256 over every input read (label and content digest, in sorted order)."""
    h = hashlib.sha256()
    for label in sorted(digests):
        h.update(f"{label}\t{digests[label]}\n".encode())
    return h.hexdigest()
