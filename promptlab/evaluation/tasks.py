"""The seven STS tasks of SentEval, declared as data.

Task names, subsets and file layout follow SentEval (Conneau & Kiela, 2018, `senteval/sts.py`,
`senteval/sick.py`) as used by SimCSE (Gao et al., 2021), PromptBERT (Jiang et al., 2022) and PromptEOL
(Jiang et al., 2023), so our numbers are comparable with the tables in those papers. The hub copies are
MTEB's (Muennighoff et al., 2023), pinned to the revisions MTEB itself evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass

from promptlab.errors import PromptlabError, unknown_name

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class TaskSpec:
    """Where one task's data lives and how it is scored."""

    name: str  # canonical SentEval name, e.g. "STSBenchmark"
    column: str  # short header used in tables, e.g. "STSB"
    kind: str  # "sts" (STS12-16: input/gold file per subset), "stsb" or "sick" (one file per split)
    folder: str  # relative to the data root (the folder holding downstream/)
    subsets: tuple[str, ...] = ()  # "sts" only: the subsets SentEval evaluates, in its order
    files: tuple[tuple[str, str], ...] = ()  # "stsb"/"sick" only: (split, file name)
    hub_id: str = ""
    hub_revision: str = ""
    hub_splits: tuple[tuple[str, str], ...] = ()  # (our split, the hub dataset's split)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("test",) if self.kind == "sts" else tuple(s for s, _ in self.files)

    def available_splits(self, source: str = "senteval") -> tuple[str, ...]:
        """The splits of the local SentEval copy, or of the hub copy (MTEB's SICK-R has only test)."""
        return self.splits if source == "senteval" else tuple(s for s, _ in self.hub_splits)

    @property
    def pooled(self) -> bool:
        """STS12-16 report one Spearman over all subsets concatenated (SimCSE's SentEval fork)."""
        return self.kind == "sts"


def _sts(year: int, subsets: tuple[str, ...], revision: str) -> TaskSpec:
    return TaskSpec(
        name=f"STS{year}",
        column=f"STS{year}",
        kind="sts",
        folder=f"downstream/STS/STS{year}-en-test",
        subsets=subsets,
        hub_id=f"mteb/sts{year}-sts",
        hub_revision=revision,
        hub_splits=(("test", "test"),),
    )


_SPECS = (
    _sts(
        12,
        ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
        "a0d554a64d88156834ff5ae9920b964011b16384",
    ),
    # SentEval's STS13 lacks the licensed "SMT" subset; the papers report it that way.
    _sts(13, ("FNWN", "headlines", "OnWN"), "7e90230a92c190f1bf69ae9002b8cea547a64cca"),
    _sts(
        14,
        ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
        "6031580fec1f6af667f0bd2da0a551cf4f0b2375",
    ),
    _sts(
        15,
        ("answers-forums", "answers-students", "belief", "headlines", "images"),
        "ae752c7c21bf194d8b67fd573edf7ae58183cbe3",
    ),
    _sts(
        16,
        ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
        "4d8694f8f0e0100860b497b999b3dbed754a0513",
    ),
    TaskSpec(
        name="STSBenchmark",
        column="STSB",
        kind="stsb",
        folder="downstream/STS/STSBenchmark",
        files=(("train", "sts-train.csv"), ("dev", "sts-dev.csv"), ("test", "sts-test.csv")),
        hub_id="mteb/stsbenchmark-sts",
        hub_revision="b0fddb56ed78048fa8b90373c8a3cfc37b684831",
        hub_splits=(("train", "train"), ("dev", "validation"), ("test", "test")),
    ),
    TaskSpec(
        name="SICKRelatedness",
        column="SICK-R",
        kind="sick",
        folder="downstream/SICK",
        files=(("train", "SICK_train.txt"), ("dev", "SICK_trial.txt"), ("test", "SICK_test_annotated.txt")),
        hub_id="mteb/sickr-sts",
        hub_revision="20a6d6f312dd54037fe07a32d58e5e168867909d",
        hub_splits=(("test", "test"),),
    ),
)

SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
TASKS: tuple[str, ...] = tuple(SPECS)

# The pair count of each file in SentEval's release (path relative to the data root), and a short sha256
# of its first pair (the fields of its first row, tab-joined) that identifies the file even when its end
# is missing. A file whose first pair matches must hold exactly this many pairs: fewer means a truncated
# download. STS12-16 gold files hold one line per input line; that is checked against the input file.
RELEASE_PAIRS: dict[str, tuple[int, str]] = {
    "downstream/STS/STS12-en-test/STS.input.MSRpar.txt": (750, "6f879cf48fd7a19d"),
    "downstream/STS/STS12-en-test/STS.input.MSRvid.txt": (750, "201d3e7b651878ab"),
    "downstream/STS/STS12-en-test/STS.input.SMTeuroparl.txt": (459, "a0f226fb9c23e721"),
    "downstream/STS/STS12-en-test/STS.input.surprise.OnWN.txt": (750, "ce7307500ba18cb8"),
    "downstream/STS/STS12-en-test/STS.input.surprise.SMTnews.txt": (399, "a4167bc569d08150"),
    "downstream/STS/STS13-en-test/STS.input.FNWN.txt": (189, "b30f1e87b304433e"),
    "downstream/STS/STS13-en-test/STS.input.headlines.txt": (750, "22b140bc6ac334b8"),
    "downstream/STS/STS13-en-test/STS.input.OnWN.txt": (561, "8461a4b242bca843"),
    "downstream/STS/STS14-en-test/STS.input.deft-forum.txt": (450, "ac2530034a00eaf3"),
    "downstream/STS/STS14-en-test/STS.input.deft-news.txt": (300, "82f2784003067198"),
    "downstream/STS/STS14-en-test/STS.input.headlines.txt": (750, "6272864789481313"),
    "downstream/STS/STS14-en-test/STS.input.images.txt": (750, "e51547f720c51145"),
    "downstream/STS/STS14-en-test/STS.input.OnWN.txt": (750, "041b334c1f10636c"),
    "downstream/STS/STS14-en-test/STS.input.tweet-news.txt": (750, "15d15c9e354f3e53"),
    "downstream/STS/STS15-en-test/STS.input.answers-forums.txt": (2000, "fdbb1dd6e00b5266"),
    "downstream/STS/STS15-en-test/STS.input.answers-students.txt": (1500, "a19ea7d066c0a09a"),
    "downstream/STS/STS15-en-test/STS.input.belief.txt": (2000, "8d304f14b190ce55"),
    "downstream/STS/STS15-en-test/STS.input.headlines.txt": (1500, "e5a0f5235c08dba5"),
    "downstream/STS/STS15-en-test/STS.input.images.txt": (1500, "ef11e35919c257bd"),
    "downstream/STS/STS16-en-test/STS.input.answer-answer.txt": (1572, "4b1c1f7526844029"),
    "downstream/STS/STS16-en-test/STS.input.headlines.txt": (1498, "93b4fc42f11ff48a"),
    "downstream/STS/STS16-en-test/STS.input.plagiarism.txt": (1271, "cfad367e62f3cb7d"),
    "downstream/STS/STS16-en-test/STS.input.postediting.txt": (3287, "fe990788ad44734e"),
    "downstream/STS/STS16-en-test/STS.input.question-question.txt": (1555, "e697b502c6a41a96"),
    "downstream/STS/STSBenchmark/sts-train.csv": (5749, "82bed40072976577"),
    "downstream/STS/STSBenchmark/sts-dev.csv": (1500, "1da798ca51e159d6"),
    "downstream/STS/STSBenchmark/sts-test.csv": (1379, "06040afe547c5329"),
    "downstream/SICK/SICK_train.txt": (4500, "fee82d72ae4a1865"),
    "downstream/SICK/SICK_trial.txt": (500, "2617dc1c72fd1eb3"),
    "downstream/SICK/SICK_test_annotated.txt": (4927, "ba77bd8dc2db1ca3"),
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


# Normalised spelling (lower case, letters and digits only) -> canonical name.
_ALIASES = {_key(name): name for name in TASKS} | {
    "stsb": "STSBenchmark",
    "sick": "SICKRelatedness",
    "sickr": "SICKRelatedness",
}


def canonical_task(name: str) -> str:
    """'sts-b', 'STSB', 'sick-r', 'sts12' ... -> the canonical SentEval task name."""
    if not isinstance(name, str):
        raise PromptlabError(f"a task name must be a string, got {name!r}; choose from {', '.join(TASKS)}.")
    found = _ALIASES.get(_key(name))
    if found is None:
        raise unknown_name("STS task", name, TASKS)
    return found


def get_spec(name: str) -> TaskSpec:
    return SPECS[canonical_task(name)]


def check_split(spec: TaskSpec, split: str, source: str) -> None:
    """Reject a split the task (or its hub copy) does not have, saying which ones it has."""
    if split not in SPLITS:
        raise PromptlabError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    have = spec.available_splits(source)
    if split not in have:
        where = "" if source == "senteval" else " on the hub"
        others = [name for name, other in SPECS.items() if split in other.available_splits(source)]
        raise PromptlabError(
            f"{spec.name} has no {split!r} split{where} (it has: {', '.join(have)}); split={split!r} exists "
            f"for {', '.join(others)} only: choose those tasks, or leave the tasks unset to get exactly them."
        )
