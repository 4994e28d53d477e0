"""The package's import structure: no import cycles, and imports point down the layer table only.

The layers are those of ``ARCHITECTURE.md`` (registry < models < backends < embedder < evaluation <
experiments/finetune < serve/export/distributed < cli), with small helpers every part may use as a base
layer. Every in-package import counts, at module level or inside a function (the lazy imports that keep
``import promptlab`` light); imports under ``if TYPE_CHECKING:`` do not run and are not counted. Backend
classes reached through the registry's ``module:Class`` names are not imports either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "promptlab"

# Layer of each part, low to high: a module may import modules of its own layer or a lower one.
LAYERS = (
    "base",
    "registry",
    "models",
    "backends",
    "embedder",
    "evaluation",
    "experiments/finetune",
    "serve/export/distributed",
    "cli",
)
# Module (or package prefix) -> layer; the longest matching prefix decides.
PARTS = {
    "promptlab.errors": "base",
    "promptlab.progress": "base",
    "promptlab.config_types": "base",
    "promptlab.version": "base",
    "promptlab.jsonl": "base",
    "promptlab.batching": "base",
    "promptlab.inputs": "base",
    "promptlab.templates": "registry",
    "promptlab.registry": "registry",
    "promptlab.demonstrations": "registry",
    "promptlab.models": "models",
    "promptlab.tokenization": "backends",
    "promptlab.pooling": "backends",
    "promptlab.prefix_cache": "backends",
    "promptlab.backends": "backends",
    "promptlab": "embedder",  # the package itself: lazy exports of `Embedder` and the registry
    "promptlab.embedder": "embedder",
    "promptlab.cache": "embedder",
    "promptlab.artifact": "embedder",
    "promptlab.adapters": "embedder",
    "promptlab.combination": "embedder",
    "promptlab.evaluation": "evaluation",
    "promptlab.experiments": "experiments/finetune",
    "promptlab.finetune": "experiments/finetune",
    "promptlab.serve": "serve/export/distributed",
    "promptlab.export": "serve/export/distributed",
    "promptlab.distributed": "serve/export/distributed",
    "promptlab.cli": "cli",
    "promptlab.cli_options": "cli",
}
CLI_MODULE = (
    "cli"  # a part's command line (`promptlab.serve.cli`...) is in the cli layer, whatever its package
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    if module.rsplit(".", 1)[-1] == CLI_MODULE:
        return "cli"
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in PARTS:
            return PARTS[prefix]
    raise AssertionError(f"{module} is in no layer: add it to PARTS in tests/test_architecture.py")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """In-package modules that ``module`` imports -> the line of the first such import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        while name and name not in modules:  # `from promptlab.x import name`: the module that defines it
            name = name.rpartition(".")[0]
        if name and name != module:
            found.setdefault(name, line)

    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "promptlab":
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "promptlab":
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else source, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    for module in all_modules():
        assert layer_of(module) in LAYERS


def test_there_are_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    lines = []
    for component in found:
        edges = [f"{a} -> {b} (line {graph[a][b]})" for a in component for b in graph[a] if b in component]
        lines.append(f"cycle among {', '.join(component)}: " + "; ".join(edges))
    assert not found, "import cycles; move the shared code down a layer:\n" + "\n".join(lines)


def test_imports_point_down_the_layer_table():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for module, targets in import_graph().items():
        for target, line in targets.items():
            if rank[layer_of(target)] > rank[layer_of(module)]:
                upward.append(
                    f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)}) at line {line}"
                )
    assert not upward, "imports that point up the layer table:\n" + "\n".join(upward)


def test_nothing_imports_the_command_line():
    importers = [module for module, targets in import_graph().items() if "promptlab.cli" in targets]
    assert not importers, f"{', '.join(importers)} import promptlab.cli; share code through cli_options"


def test_inference_does_not_import_training():
    inference = [m for m in all_modules() if layer_of(m) in ("backends", "embedder", "evaluation")]
    graph = import_graph()
    bad = [f"{m} -> {t}" for m in inference for t in graph[m] if t.startswith("promptlab.finetune")]
    assert not bad, "the inference core imports the training package: " + ", ".join(bad)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b": 1}, "b": {"a": 1}}, [["a", "b"]]),
        ({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}, [["a", "b", "c"]]),
        ({"a": {"b": 1}, "b": {}, "c": {"b": 1}}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert cycles(graph) == expected


def test_the_import_reader_counts_lazy_imports_and_skips_type_checking(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from promptlab.errors import PromptlabError\n"
        "if TYPE_CHECKING:\n"
        "    from promptlab.embedder import Embedder\n"
        "def f():\n"
        "    from promptlab.backends import resolve_dtype\n"
        "    from promptlab import registry\n"
    )
    modules = all_modules()
    found = imports_of("promptlab.fake", source, modules)
    assert set(found) == {"promptlab.errors", "promptlab.backends", "promptlab.registry"}
