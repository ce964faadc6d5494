"""The two layers: pixmix is the library and never imports mixset."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_pixmix_never_imports_mixset() -> None:
    files = sorted((ROOT / "pixmix").rglob("*.py"))
    assert len(files) >= 10
    offenders = {f.name: sorted(m for m in imported_modules(f) if m.split(".")[0] == "mixset") for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_lucent_is_imported_by_one_mixset_module_only() -> None:
    users = [f.name for f in sorted((ROOT / "mixset").rglob("*.py"))
             if any(m.split(".")[0] == "lucent" for m in imported_modules(f))]
    assert users in ([], ["fvis.py"])
    assert not any(any(m.split(".")[0] == "lucent" for m in imported_modules(f)) for f in (ROOT / "pixmix").rglob("*.py"))
