"""Small name -> class registries with close-match error messages (timm style)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import RobustfastError

T = TypeVar("T")

__all__ = ["Registry"]


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


class Registry:
    """A registry of named objects of one kind (``"attack"``, ``"regularizer"``, ``"model"``).

    Names are case-insensitive and ``-``/``_`` are interchangeable.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._canonical: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name`` and optional ``aliases``."""

        def deco(obj: T) -> T:
            for n in (name, *aliases):
                key = _norm(n)
                if key in self._items and self._items[key] is not obj:
                    raise RobustfastError(f"{self.kind} name {n!r} is already registered")
                self._items[key] = obj
                self._canonical[key] = _norm(name)
            return obj

        return deco

    def get(self, name: str) -> Any:
        """Return the object registered as ``name``; unknown names raise with suggestions."""
        key = _norm(name)
        if key not in self._items:
            canonical = sorted(set(self._canonical.values()))  # canonical names first, then aliases
            close = difflib.get_close_matches(key, canonical, n=3)
            close += [self._canonical[c] for c in difflib.get_close_matches(key, list(self._items), n=3)]
            close = list(dict.fromkeys(close))[:3]
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise RobustfastError(f"Unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.list())}")
        return self._items[key]

    def list(self, pattern: str = "*") -> list[str]:
        """Canonical names matching an fnmatch ``pattern``, sorted."""
        names = sorted(set(self._canonical.values()))
        return [n for n in names if fnmatch.fnmatch(n, _norm(pattern))]

    def __contains__(self, name: str) -> bool:
        return _norm(name) in self._items
