"""Data for the tasks beyond STS, read from local files (nothing is downloaded).

- TREC QA answer selection (Wang et al., 2007; the Yao et al., 2013 preparation shipped by
  brmson/dataset-sts as ``data/anssel/wang/``): ``answer-selection/wang/{train,dev}.csv`` with the header
  ``qtext,label,atext``, one row per (question, candidate sentence), label 1 when the sentence answers the
  question. Read as reranking: each question ranks its own candidates. The folder is looked for under the
  data folder (``data_dir`` / $PROMPTLAB_DATA) and beside it, so one ``data/`` folder holding both
  ``senteval/`` and ``answer-selection/`` works.
- SICK (Marelli et al., 2014) entailment labels, from the SentEval copy's ``downstream/SICK`` files (the
  same files as SICK-R): ENTAILMENT is the positive class, NEUTRAL and CONTRADICTION the negative one.
- STS-B as retrieval: each distinct first sentence of a split is a query, the distinct second sentences
  are the corpus, and a second sentence is relevant to its first sentence when their gold score is at
  least `RELEVANT_AT` (4 of 5: "mostly equivalent"). Queries with no relevant sentence are left out.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
from pathlib import Path

import numpy as np

from promptlab.errors import PromptlabError
from promptlab.evaluation.data import (
    ENV_VAR,
    _fields,
    _norm,
    _read_text,
    _stat,
    load_with_digests,
    resolve_data_dir,
)
from promptlab.evaluation.task_types import PairClassificationTask, RerankingTask, RetrievalTask
from promptlab.evaluation.tasks import SPECS

TRECQA_FOLDER = "answer-selection/wang"
TRECQA_FILES = {"train": "train.csv", "dev": "dev.csv"}
TRECQA_COLUMNS = ("qtext", "label", "atext")
SICK_LABELS = ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")
RELEVANT_AT = 4.0


# --------------------------------------------------------------------------- TREC QA


def find_folder(folder: str, need: str, data_dir=None, *, task: str) -> Path:
    """``folder`` under the data folder or beside it (its parent); an error names the file and the places."""
    given = data_dir if data_dir not in (None, "") else os.environ.get(ENV_VAR, "")
    if not given:
        raise PromptlabError(
            f"{task} reads {folder}/{need}, but no data folder is given: pass data_dir=... or set {ENV_VAR} "
            f"to the folder holding {folder.split('/')[0]}/ (or a folder beside it).",
            cli=f"{task} reads {folder}/{need}, but no data folder is given: pass --data-dir DIR or set "
            f"{ENV_VAR} to the folder holding {folder.split('/')[0]}/ (or a folder beside it).",
        )
    root = Path(given).expanduser().resolve()
    places = [root / folder, root.parent / folder]
    for place in places:
        if (place / need).is_file():
            return place
    raise PromptlabError(
        f"{task} needs {folder}/{need}, which is in neither {places[0]} nor {places[1]}; put the file "
        f"there, or point --data-dir (or {ENV_VAR}) at the folder holding {folder.split('/')[0]}/."
    )


@functools.lru_cache(maxsize=16)
def _parse_trecqa(path: str, mtime_ns: int, size: int) -> tuple[tuple, str]:
    """Rows (question, answer, label) of a TREC QA CSV, checked; cached by (path, mtime, size)."""
    del mtime_ns, size
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptlabError(f"{path} is not valid UTF-8 (byte {err.start}); save it as UTF-8.") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != list(TRECQA_COLUMNS):
        raise PromptlabError(
            f"{path}:1: the header is {','.join(header or []) or '(empty file)'!s}; a TREC QA file starts with "
            f"the header {','.join(TRECQA_COLUMNS)} (brmson/dataset-sts data/anssel/wang)."
        )
    rows = []
    line = reader.line_num
    for fields in reader:
        start, line = line + 1, reader.line_num  # a quoted field may span lines: report where the row starts
        if not fields or not any(f.strip() for f in fields):
            continue
        if len(fields) != 3:
            raise PromptlabError(
                f"{path}:{start}: {len(fields)} fields, expected 3 (qtext,label,atext); quote a field that "
                "holds a comma, or fix the row."
            )
        question, label, answer = _norm(fields[0]), fields[1].strip(), _norm(fields[2])
        if label not in ("0", "1"):
            raise PromptlabError(f"{path}:{start}: label {label!r} is not 0 or 1; fix the row.")
        if not question or not answer:
            raise PromptlabError(
                f"{path}:{start}: empty {'question' if not question else 'answer'}; fix or drop the row."
            )
        rows.append((question, answer, label == "1"))
    if not rows:
        raise PromptlabError(f"{path} holds no rows after its header; use a complete copy of the file.")
    return tuple(rows), hashlib.sha256(raw).hexdigest()


def load_trecqa(name: str, split: str, data_dir=None) -> RerankingTask:
    """TREC QA answer selection as reranking: the questions in file order, each with its candidates."""
    file = TRECQA_FILES[split]
    folder = find_folder(TRECQA_FOLDER, file, data_dir, task=name)
    path = folder / file
    st = path.stat()
    rows, digest = _parse_trecqa(str(path), st.st_mtime_ns, st.st_size)
    groups: dict[str, tuple[list[str], list[bool]]] = {}
    for question, answer, label in rows:
        answers, labels = groups.setdefault(question, ([], []))
        answers.append(answer)
        labels.append(label)
    return RerankingTask(
        name=name,
        split=split,
        queries=list(groups),
        candidates=[a for a, _ in groups.values()],
        labels=[np.array(y, dtype=bool) for _, y in groups.values()],
        digests={f"{TRECQA_FOLDER}/{file}": digest},
    )


# --------------------------------------------------------------------------- SICK entailment


@functools.lru_cache(maxsize=8)
def _parse_sick_entailment(path: str, mtime_ns: int, size: int) -> tuple[tuple, str]:
    """Rows (sentence A, sentence B, is entailment) of a SICK file, read as SentEval reads SICK."""
    del mtime_ns, size
    text, digest = _read_text(path)
    rows = []
    for i, line in enumerate(text.split("\n")[1:], 2):  # line 1 is the header
        if not line.strip():
            continue
        fields = _fields(line, 5, path, i)
        if fields[4] not in SICK_LABELS:
            raise PromptlabError(
                f"{path}:{i}: entailment label {fields[4]!r} is not one of {', '.join(SICK_LABELS)}; replace "
                "the file with an unchanged copy from the SentEval download."
            )
        rows.append((_norm(fields[1]), _norm(fields[2]), fields[4] == "ENTAILMENT"))
    if not rows:
        raise PromptlabError(f"{path} holds no sentence pairs; replace it with an unchanged copy.")
    return tuple(rows), digest


def load_sick_entailment(name: str, split: str, data_dir=None) -> PairClassificationTask:
    spec = SPECS["SICKRelatedness"]
    file = dict(spec.files)[split]
    rows, digest = _parse_sick_entailment(*_stat(resolve_data_dir(data_dir) / spec.folder / file))
    return PairClassificationTask(
        name=name,
        split=split,
        sentences1=[r[0] for r in rows],
        sentences2=[r[1] for r in rows],
        labels=np.array([r[2] for r in rows], dtype=bool),
        digests={f"{spec.folder}/{file}": digest},
    )


# --------------------------------------------------------------------------- STS-B as retrieval


def load_stsb_retrieval(name: str, split: str, data_dir=None, source: str = "senteval") -> RetrievalTask:
    loaded = load_with_digests("STSBenchmark", data_dir=data_dir, split=split, source=source)
    (pairs,) = loaded.pairs
    corpus = list(dict.fromkeys(pairs.sentences2))
    row = {s: i for i, s in enumerate(corpus)}
    relevant: dict[str, set[int]] = {}
    for first, second, gold in zip(pairs.sentences1, pairs.sentences2, pairs.scores, strict=True):
        if gold >= RELEVANT_AT:
            relevant.setdefault(first, set()).add(row[second])
    return RetrievalTask(
        name=name,
        split=split,
        queries=list(relevant),
        corpus=corpus,
        relevant=[frozenset(r) for r in relevant.values()],
        digests=dict(loaded.digests),
    )
