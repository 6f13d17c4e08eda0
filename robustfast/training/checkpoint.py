"""Atomic checkpoints, safe loading and exact RNG capture.

:func:`save_checkpoint` writes to a temporary file in the same folder, flushes it to disk and renames it over
the target (``os.replace`` is atomic on POSIX and Windows), so a crash or error during saving never damages the
previous checkpoint. :func:`load_checkpoint` uses ``torch.load(weights_only=True)``: no arbitrary code is
unpickled; everything saved is tensors and plain Python values. Methods' own generators are part of their state
(:meth:`robustfast.component.Component.state_dict`); :func:`capture_rng` covers the global generators and the
loaders'.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import read_torch_file
from ..errors import RobustfastError

__all__ = ["capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Save ``state`` to ``path`` atomically (write a temporary file, fsync, rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a trainer checkpoint safely (``torch.load(weights_only=True)``: tensors and plain values only).

    Raises:
        RobustfastError: the file is missing, truncated, not a torch file, or holds objects other than
            tensors and plain values; the message names the file.
    """
    state = read_torch_file(path, map_location, what="checkpoint")
    if not isinstance(state, dict):
        raise RobustfastError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a dict")
    return state


def _generators(loaders: Iterable[Any]) -> dict[str, torch.Generator]:
    gens: dict[str, torch.Generator] = {}
    seen: set[int] = set()
    for i, loader in enumerate(loaders):
        sampler = getattr(loader, "sampler", None)
        for j, g in enumerate((getattr(loader, "generator", None), getattr(sampler, "generator", None))):
            if isinstance(g, torch.Generator) and id(g) not in seen:
                seen.add(id(g))
                gens[f"loader{i}:{j}"] = g
    return gens


def capture_rng(loaders: Iterable[Any] = ()) -> dict[str, Any]:
    """The global RNG states a run consumes (torch CPU and CUDA, Python, NumPy) and the loaders' generators."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "generators": {k: g.get_state() for k, g in _generators(loaders).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], loaders: Iterable[Any] = ()) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gens = _generators(loaders)
    for key, s in state["generators"].items():
        if key not in gens:
            raise RobustfastError(
                f"checkpoint has the loader RNG state {key!r} that this run lacks; resume with the same loader set-up "
                "(a DataLoader built with generator=torch.Generator())"
            )
        gens[key].set_state(s)
