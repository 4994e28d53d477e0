"""The template registry: every ``prompts/*.toml`` file loaded into validated `Template` objects.

Templates are data: a file holds ``[[template]]`` tables with ``name``, ``kind``, ``text``, ``paper`` and
optionally ``pooling`` and ``normalize``. Names are unique across files; an unknown name is answered with
the closest matches. Extra template folders can be added with ``PROMPTLAB_PROMPTS`` (``:``-separated).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from promptlab.config_types import read_toml
from promptlab.errors import PromptlabError, did_you_mean, unknown_name
from promptlab.templates import SLOT, Template, template_from_text

_TEMPLATE_KEYS = {"name", "kind", "text", "paper", "pooling", "normalize", "members"}


def prompts_dirs() -> list[Path]:
    """Where templates and demonstrations live: the wheel's copy or the repo's ``prompts/``, then extras."""
    here = Path(__file__).resolve().parent
    dirs = [d for d in (here / "_prompts", here.parent / "prompts") if d.is_dir()][:1]
    extra = os.environ.get("PROMPTLAB_PROMPTS", "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    if not dirs:
        raise PromptlabError(
            "no prompts/ folder found next to the promptlab package; reinstall promptlab "
            "or set PROMPTLAB_PROMPTS to a folder of template .toml files."
        )
    return dirs


def load_templates(path: Path) -> list[Template]:
    """The templates of one TOML file, each validated."""
    rows = read_toml(path).get("template", [])
    if not isinstance(rows, list):
        raise PromptlabError(f"{path.name}: write each template as a [[template]] table.")
    templates = []
    for i, row in enumerate(rows, start=1):
        where = f"{path.name} template #{i}"
        if not isinstance(row, dict):
            raise PromptlabError(f"{where}: write each template as a [[template]] table, not {row!r}.")
        unknown = set(row) - _TEMPLATE_KEYS
        if unknown:
            raise PromptlabError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_TEMPLATE_KEYS))}."
            )
        missing = {"name", "kind", "members" if row.get("kind") == "ensemble" else "text"} - set(row)
        if missing:
            raise PromptlabError(f"{where}: missing {', '.join(sorted(missing))}.")
        templates.append(Template(**{"text": "", **row}, source=str(path.name)))  # an ensemble has no text
    return templates


class Registry:
    """Templates by name; refuses duplicates."""

    def __init__(self, templates: list[Template]):
        self._by_name: dict[str, Template] = {}
        for template in templates:
            if template.name in self._by_name:
                first = self._by_name[template.name]
                raise PromptlabError(
                    f"duplicate template name {template.name!r} in {template.source} "
                    f"(already defined in {first.source}); rename one."
                )
            self._by_name[template.name] = template
        for template in templates:  # an ensemble's members are plain templates of this registry
            for member in template.members:
                where = f"ensemble {template.name!r} ({template.source}) lists {member!r}"
                if member not in self._by_name:
                    hint = did_you_mean(member, self._by_name)
                    raise PromptlabError(f"{where}, which is not a template.{hint}")
                if self._by_name[member].kind == "ensemble":
                    raise PromptlabError(f"{where}, an ensemble itself; list plain templates only.")

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> Template:
        try:
            return self._by_name[name]
        except KeyError:
            raise unknown_name("template", name, self._by_name) from None


@functools.cache
def default_registry() -> Registry:
    templates = []
    for folder in prompts_dirs():
        for path in sorted(folder.glob("*.toml")):
            templates += load_templates(path)
    return Registry(templates)


def get_template(name_or_text: str | Template, *, pooling: str | None = None) -> Template:
    """A registry template by name, or an ad-hoc one when the argument is literal text with ``[X]``."""
    if isinstance(name_or_text, Template):
        template = name_or_text
    elif SLOT in name_or_text:
        template = template_from_text(name_or_text, pooling=pooling)
    elif "[" in name_or_text or " " in name_or_text:
        raise PromptlabError(
            f"template text {name_or_text!r} has no sentence slot; put {SLOT} where the sentence goes."
        )
    else:
        template = default_registry().get(name_or_text)
    return template.with_pooling(pooling)


def list_templates() -> list[Template]:
    return list(default_registry())
