"""Sentences from what users feed the CLI: a text file (one sentence a line), a JSONL file, or stdin.

Text is read as UTF-8; a UTF-8 byte-order mark (as Windows editors write) is dropped rather than kept
inside the first sentence. Blank lines at the end of a file are ignored (editors add them); a blank line
between sentences is an error, because it would shift every later row of the output against the input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from promptlab.errors import PromptlabError

_BOM = "\ufeff"


def _decode(data: bytes, name: str) -> str:
    """UTF-8 text, or a one-line error giving the line and byte offset of the first bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise PromptlabError(
            f"{name} line {line} is not UTF-8 (byte {err.start}: 0x{data[err.start]:02x}); "
            "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None
    return text.removeprefix(_BOM)


def _source_name(source: str) -> str:
    return "stdin" if source == "-" else str(source)


def read_lines(source: str) -> list[str]:
    """The lines of a file or of stdin (``-``), decoded as UTF-8, without line endings or a BOM."""
    name = _source_name(source)
    if source == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    else:
        path = Path(source)
        if not path.is_file():
            raise PromptlabError(f"input file {path} does not exist; pass a .txt/.jsonl file or - for stdin.")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise PromptlabError(f"cannot read {path} ({err.strerror}); check its permissions.") from None
    return _decode(data, name).splitlines()


def read_sentences(source: str, field: str = "text") -> list[str]:
    """Sentences from a text file (one per line), a ``.jsonl`` file (``field`` of each object), or stdin
    (``-``, one per line). Raises `PromptlabError` naming the source and line for anything unusable."""
    return [sentence for _, sentence in read_numbered_sentences(source, field)]


def read_numbered_sentences(source: str, field: str = "text") -> list[tuple[int, str]]:
    """`read_sentences` with each sentence's 1-based line number in ``source`` (a JSONL file may skip
    blank lines, so numbers and positions can differ there)."""
    name = _source_name(source)
    lines = read_lines(source)
    while lines and not lines[-1].strip():  # trailing blank lines: an editor's final newline(s)
        lines.pop()
    if source.endswith(".jsonl"):
        sentences = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)[field]
            except (json.JSONDecodeError, KeyError, TypeError, IndexError):
                raise PromptlabError(
                    f"{name} line {number}: expected a JSON object with a {field!r} field; fix the line or pass --field."
                ) from None
            if not isinstance(value, str) or not value.strip():
                raise PromptlabError(
                    f"{name} line {number}: field {field!r} is {type(value).__name__ if not isinstance(value, str) else 'empty'}, "
                    "not a sentence; give it non-empty text."
                )
            sentences.append((number, value))
        return sentences
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise PromptlabError(
                f"{name} line {number} is empty; remove blank lines (one sentence per line)."
            )
    return list(enumerate(lines, start=1))
