"""Atomic checkpoints, safe loading and exact RNG capture.

:func:`save_checkpoint` writes atomically (a temporary file in the same folder, flushed and renamed over the
target), so a crash, a full disk or an error during saving never damages the previous checkpoint.
:func:`load_checkpoint` uses ``torch.load(weights_only=True)``: no arbitrary code is unpickled; everything saved is
tensors and plain Python values. Methods' own generators are part of their state
(:meth:`robustfast.component.Component.state_dict`); :func:`capture_rng` covers the global generators and the
loaders'.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import read_torch_file, save_torch_file
from ..errors import RobustfastError
from .callbacks import Callback

__all__ = ["Checkpointer", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Save ``state`` to ``path`` atomically (:func:`robustfast._io.atomic_write`); returns the path."""
    return save_torch_file(state, path, what="checkpoint")


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


class Checkpointer(Callback):
    """Save the trainer's state to ``checkpoint_dir`` (the trainer's ``checkpoint_dir``; files written on rank 0).

    * ``last.pt`` after every epoch, after a rollback and, when the run was restored to its best checked state at
      the end, once more: it always holds what the run is (``fit(resume=True)`` continues from it).
    * ``best.pt`` whenever the CO guard keeps a new best checked state (the state a rollback returns to), so a
      resumed run rolls back exactly as the uninterrupted one.

    Under DDP every rank's own state (its random streams, its method parts' per-rank state) is gathered into the
    files, and each rank gets its own back on resume. A rank given no folder (``checkpoint_dir`` on rank 0 only)
    still takes part in the gathering (``checkpoint_dir=None``: it writes nothing).
    """

    def __init__(self, checkpoint_dir: str | Path | None) -> None:
        self.dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    def _writes(self, trainer: Any) -> bool:
        return self.dir is not None and trainer.is_main_process

    def save_last(self, trainer: Any, next_epoch: int) -> None:
        """Write ``last.pt`` with the state before epoch ``next_epoch`` (a collective call under DDP)."""
        state = trainer.state_dict(next_epoch, all_ranks=True)
        if self._writes(trainer):
            assert self.dir is not None
            save_checkpoint(state, self.dir / "last.pt")

    def save_best(self, trainer: Any) -> None:
        """Write ``best.pt`` when the guard's best state changed (a collective call under DDP)."""
        policy = trainer.guard_policy
        if policy is None or not policy.best_changed or policy.best_state is None:
            return
        state = trainer.gather_ranks(policy.best_state)
        if self._writes(trainer):
            assert self.dir is not None
            save_checkpoint(state, self.dir / "best.pt")
        policy.best_changed = False

    def on_epoch_end(self, trainer: Any, epoch: int) -> None:
        self.save_best(trainer)
        self.save_last(trainer, epoch + 1)

    def on_rollback(self, trainer: Any, epoch: int) -> None:
        self.save_best(trainer)
        self.save_last(trainer, epoch)

    def on_fit_end(self, trainer: Any) -> None:
        policy = trainer.guard_policy
        if policy is not None and policy.restored_at_end is not None:
            self.save_last(trainer, trainer.epoch)
