"""The package's import graph: acyclic at module level, and no room imports a room downstream of it (GUIDE §2)."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "oodml"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The oodml module an import names (`oodml.eval.knn`, or a package's `__init__`), None outside oodml."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, top_level_only: bool) -> Iterator[str]:
    """oodml modules that `module` imports (at module level only, or anywhere, e.g. inside functions)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if top_level_only and isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks import nothing at runtime
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # `from pkg import mod` imports the submodule; `from pkg import name` a name of pkg's __init__
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for n in names:
            target = _resolve(n)
            if target is not None and target != module:
                yield target


@functools.lru_cache(maxsize=2)
def graph(top_level_only: bool) -> dict[str, set[str]]:
    """module -> the oodml modules it imports."""
    return {m: set(_imports(m, top_level_only)) for m in MODULES}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `g` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_module_level_import_graph_is_acyclic() -> None:
    g = graph(top_level_only=True)
    assert "oodml.runner.plan" in g["oodml.runner.cell"]  # the graph sees imports
    assert find_cycle(g) is None, " -> ".join(find_cycle(g) or [])


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


#: room -> rooms it must never import, even inside a function (downstream of it in the data flow)
FORBIDDEN: dict[str, set[str]] = {
    "data": {"features", "splits", "methods", "eval", "runner", "report", "cli"},
    "features": {"splits", "methods", "eval", "runner", "report", "cli"},
    "splits": {"methods", "eval", "runner", "report", "cli"},
    "eval": {"splits", "methods", "runner", "report", "cli", "data", "features"},
    "methods": {"splits", "runner", "report", "cli"},
    "runner": {"report", "cli"},
    "report": {"data", "features", "splits", "methods", "eval", "runner", "cli"},
    "schema": {"data", "features", "splits", "methods", "eval", "runner", "report", "cli"},
}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_no_room_imports_downstream(room: str) -> None:
    g = graph(top_level_only=False)
    bad = sorted(f"{m} -> {n}" for m, targets in g.items() if _room(m) == room
                 for n in targets if _room(n) in FORBIDDEN[room])
    assert not bad, bad
