"""Package-level re-exports that import their module on first use.

Packages re-export their public names with ``__all__``, but importing a package must stay cheap (the
CLIs answer ``--help`` without loading torch) and must not import siblings in an order that makes a
circle. Each package therefore maps its public names to the submodule that defines them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any],
                                                                     Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` re-exporting ``name -> submodule`` lazily.

    A submodule is given relative to the package (``"pixmix"`` means ``package + ".pixmix"``).
    """
    table = dict(exports)

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(f"{package}.{table[name]}"), name)
            globals_of(package)[name] = value  # later lookups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals_of(package)) | set(table))

    return list(table), __getattr__, __dir__


def globals_of(package: str) -> dict[str, Any]:
    """The namespace of an already-imported package."""
    import sys

    return vars(sys.modules[package])
