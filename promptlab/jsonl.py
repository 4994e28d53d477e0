"""Reading JSONL results files (one JSON object a line), as experiments write them.

A last line cut short by a hard kill is ignored with a warning; any other malformed line is refused,
naming its line.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from promptlab.errors import PromptlabError


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a results file; a malformed line (other than a torn last one) names its line."""
    path = Path(path)
    if not path.is_file():
        raise PromptlabError(f"results file {path} does not exist; pass the JSONL a sweep or search wrote.")
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number == len(lines) and not data.endswith(b"\n"):  # torn by a hard kill mid-write
                warnings.warn(
                    f"{path}: ignoring an incomplete last line (an interrupted write).", stacklevel=2
                )
                continue
            raise PromptlabError(
                f"{path}:{number}: not a JSON row; remove the line or use another file."
            ) from None
        if not isinstance(row, dict):
            raise PromptlabError(
                f"{path}:{number}: expected a JSON object; remove the line or use another file."
            )
        rows.append(row)
    return rows
