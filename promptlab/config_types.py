"""Type checks for values read from config files and ``--set KEY=VALUE``, before any model loads.

A TOML value of the wrong type (``seed = "zero"``, ``lora_r = 2.5``) would otherwise pass a config's
checks and fail deep inside a run, after the model has loaded. Types are written as in annotations:
``int``, ``float``, ``str``, ``bool``, ``list[str]``, unions with ``|`` and ``None``. ``true`` is never a
number here, although Python's ``bool`` is an ``int``: ``steps = true`` is refused, not read as 1.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from promptlab.errors import PromptlabError

_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "None": "left out",
}


def is_type(value: Any, kind: str) -> bool:
    """Whether ``value`` has the annotation-like type ``kind`` (``"int | None"``, ``"list[str]"``...)."""
    return any(_is(value, part.strip()) for part in kind.split("|"))


def _is(value: Any, kind: str) -> bool:
    if kind.startswith("list[") and kind.endswith("]"):
        return isinstance(value, list) and all(_is(v, kind[5:-1]) for v in value)
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    raise ValueError(f"unsupported type {kind!r}")


def describe_type(kind: str) -> str:
    """``"list[str] | None"`` -> ``"a list of strings, or left out"``."""
    words = []
    for part in (p.strip() for p in kind.split("|")):
        if part.startswith("list["):
            words.append(f"a list of {describe_type(part[5:-1]).removeprefix('a ')}s")
        else:
            words.append(_WORDS.get(part, part))
    return ", or ".join(words)


def check_type(value: Any, kind: str, where: str, *, example: Any = None) -> Any:
    """Return ``value`` if it has type ``kind``; else a PromptlabError naming ``where`` and what to write."""
    if is_type(value, kind):
        return value
    hint = f", e.g. {as_toml(example)}" if example is not None else ""
    raise PromptlabError(f"{where} = {as_toml(value)} must be {describe_type(kind)}{hint}.")


def as_toml(value: Any) -> str:
    """``value`` as it is written in a TOML file (``true``, ``"20"``), for messages."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:  # a TOML date or time
        return str(value)


def read_toml(path: Path) -> dict:
    """A TOML file's table; invalid TOML or a file that is not UTF-8 is refused in one line naming it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise PromptlabError(f"{path}: not valid TOML ({err}); fix the file.") from None
    except UnicodeDecodeError as err:
        raise PromptlabError(f"{path} is not UTF-8 (byte {err.start}); save it as UTF-8.") from None
