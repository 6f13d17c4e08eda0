"""Import every module of a package so that new method files register themselves (no list to edit)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

__all__ = ["import_submodules"]


def import_submodules(package: str, namespace: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """Import the public modules of ``package`` (sorted by name) and copy each module's ``__all__`` into
    ``namespace``; returns the names copied. Modules starting with ``_`` and those in ``skip`` are left out."""
    pkg = importlib.import_module(package)
    names: list[str] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in skip:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for name in getattr(module, "__all__", ()):
            if name not in namespace or namespace[name] is getattr(module, name):
                namespace[name] = getattr(module, name)
                if name not in names:
                    names.append(name)
    return names
