"""User-facing errors.

Every mistake a user can make (bad input, a missing file, an unknown name) raises `PromptlabError`
with a one-line message that says what is wrong *and how to fix it*. The CLI prints such errors
without a traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PromptlabError(Exception):
    """An error caused by the user's input; the message names the fix.

    Where the fix is spelled differently in Python and on the command line (``data_dir=...`` vs
    ``--data-dir``), `cli` holds the command line's wording, which the CLI prints instead.
    """

    def __init__(self, message: str, *, cli: str | None = None):
        super().__init__(message)
        self.cli = cli


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the closest `choices` to `name`, or '' when none is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    # Substring matches catch short forms ("smollm" -> "smollm2-135m") that difflib scores low.
    close += [c for c in lowered if name.lower() in c and c not in close][: max(0, n - len(close))]
    return f" Did you mean: {', '.join(lowered[c] for c in close)}?" if close else ""


def unknown_name(
    what: str, name: str, choices: Iterable[str], *, listed_by: str | None = None
) -> PromptlabError:
    """The standard error for an unknown registry/model/task name, with suggestions and the full list.

    A long list (more than `LIST_AT_MOST` names) is not printed when `listed_by` names the command that
    lists them: the line stays readable.
    """
    choices = sorted(choices)
    if listed_by and len(choices) > LIST_AT_MOST:
        known = f"{len(choices)} {what}s are known: `{listed_by}` lists them."
    else:
        known = f"Known {what}s: {', '.join(choices)}."
    return PromptlabError(f"unknown {what} {name!r}.{did_you_mean(name, choices)} {known}")


LIST_AT_MOST = 20
