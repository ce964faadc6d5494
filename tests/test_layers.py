"""The architecture as the import graph: floors that only import downwards, and no circles.

Floors, bottom to top: ``pixmix.utils`` < ``pixmix.augment`` < ``pixmix.data``, ``pixmix.models`` < ``pixmix.train`` /
``pixmix.evaluate`` (side by side, neither imports the other) < ``mixset`` (its tools) < ``pipelines``
< the command lines (``pixmix.cli``, ``mixset.cli``). Every import counts, also those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pixmix", "mixset", "pipelines")

# (floor, prefix): the longest matching prefix decides a module's floor.
FLOORS = {
    "pixmix.utils": 0,
    "pixmix": 0,  # the package itself: version and lazy re-exports only
    "pixmix.augment": 1,
    "pixmix.data": 2,
    "pixmix.demo": 2,
    "pixmix.models": 2,
    "pixmix.train": 3,
    "pixmix.evaluate": 3,
    "mixset": 4,
    "pipelines": 5,
    "pixmix.cli": 6,
    "mixset.cli": 6,
}
SIDE_BY_SIDE = {("pixmix.train", "pixmix.evaluate"), ("pixmix.evaluate", "pixmix.train")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(module: str) -> str:
    """The longest FLOORS prefix of ``module``."""
    best = ""
    for prefix in FLOORS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return best


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports (``from a.b import c`` counts a.b.c when that is a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in modules)
    return {n for n in names if n in modules}


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def test_every_module_has_a_floor() -> None:
    modules = project_modules()
    assert len(modules) > 60
    assert [m for m in modules if room(m) == ""] == []


def test_imports_only_go_down() -> None:
    upward = []
    for module, imports in graph().items():
        for target in imports:
            a, b = room(module), room(target)
            # A package __init__ may name its own submodules (lazy re-exports); pixmix/__init__ is floor 0.
            if target.startswith(module + "."):
                continue
            if FLOORS[b] > FLOORS[a] or (a, b) in SIDE_BY_SIDE:
                upward.append(f"{module} ({a}) imports {target} ({b})")
    assert upward == []


def test_pixmix_never_imports_mixset_or_pipelines() -> None:
    offenders = [(m, t) for m, imports in graph().items() if m.split(".")[0] == "pixmix"
                 for t in imports if t.split(".")[0] in ("mixset", "pipelines")]
    assert offenders == []


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    # Package __init__ files re-export lazily and are not part of a module's real dependencies.
    edges = {m: {t for t in imports if not project_modules()[t].name == "__init__.py"}
             for m, imports in graph().items()}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_shadows_the_standard_library(package: str) -> None:
    import sys

    clashes = [p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")
               if p.stem in sys.stdlib_module_names]
    assert clashes == []


def test_lucent_is_imported_by_one_mixset_module_only() -> None:
    def uses_lucent(path: Path) -> bool:
        tree = ast.parse(path.read_text())
        return any((isinstance(n, ast.Import) and any(a.name.split(".")[0] == "lucent" for a in n.names))
                   or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "lucent")
                   for n in ast.walk(tree))

    users = [p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
             if uses_lucent(p)]
    assert users == ["mixset/sources/fvis.py"]
