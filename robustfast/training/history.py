"""Per-epoch training history: a list of flat dicts, saved as JSON and CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .._io import atomic_write, write_text

__all__ = ["History"]


class History(list):
    """A list of per-epoch records (``dict``), with column access and JSON/CSV export.

    ``history["val_pgd_acc"]`` returns that column (``None`` where an epoch lacks it); ``history[-1]`` is the last
    record as for any list.
    """

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return [r.get(key) for r in self]
        return super().__getitem__(key)

    @property
    def columns(self) -> list[str]:
        """All keys, in first-seen order."""
        cols: dict[str, None] = {}
        for r in self:
            cols.update(dict.fromkeys(r))
        return list(cols)

    def to_json(self, path: str | Path) -> None:
        """Write the records as a JSON list (atomically)."""
        write_text(path, json.dumps(list(self), indent=1, default=str), what="history")

    def to_csv(self, path: str | Path) -> None:
        """Write the records as CSV, one row per epoch (atomically)."""

        def write(f: Any) -> None:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            w.writerows(self)

        atomic_write(path, write, binary=False, what="history")

    def state_dict(self) -> list[dict[str, Any]]:
        """The records (plain Python values, safe for ``weights_only`` loading)."""
        return [dict(r) for r in self]
