"""promptlab's version, recorded in every result (a module of its own: anything may import it), and the
git commit of the source that computed it, when promptlab runs from a git checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def source_commit() -> str | None:
    """The commit of the checkout promptlab runs from: "abc123…", "abc123…+changes" when its package files
    differ from that commit, None outside a git checkout (an installed wheel) or without git."""
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=package, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed else "")
