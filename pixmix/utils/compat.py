"""Old import paths that keep working for one release, with a ``DeprecationWarning``.

``import pixmix.stream`` (release 0.1) now finds a thin module that forwards every attribute to
``pixmix.data.loader``. The forwarding module is a new module object, so the real module's identity,
``__spec__`` and ``__name__`` stay untouched; ``pixmix.stream.ShardLoader is
pixmix.data.loader.ShardLoader``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Mapping
from typing import Any


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(f"{module.__name__} moved to {self.target}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        real = importlib.import_module(self.target)

        def __getattr__(name: str) -> Any:
            return getattr(real, name)

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        module.__dir__ = lambda: dir(real)  # type: ignore[method-assign]
        module.__doc__ = f"Deprecated alias of :mod:`{self.target}`."


class _AliasFinder(importlib.abc.MetaPathFinder):
    def __init__(self, prefix: str, aliases: Mapping[str, str]) -> None:
        self.prefix = prefix
        self.aliases = dict(aliases)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.aliases:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(self.aliases[fullname]))
        return None


def install_aliases(prefix: str, aliases: Mapping[str, str]) -> None:
    """Make every ``old -> new`` module path of ``aliases`` importable under its old name (once)."""
    if any(isinstance(f, _AliasFinder) and f.prefix == prefix for f in sys.meta_path):
        return
    sys.meta_path.append(_AliasFinder(prefix, aliases))
