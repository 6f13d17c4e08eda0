"""Seedable, checkpointable random-number generators for method parts (one ``torch.Generator`` per device).

A method part that draws random numbers keeps a :class:`SeededRNG` in its ``state_attrs``: checkpoints then store
its generators' states and a resumed run draws exactly the numbers the uninterrupted one would (a plain
``torch.Generator`` cannot be stored in a ``weights_only`` checkpoint).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import RobustfastError

__all__ = ["SeededRNG"]


class SeededRNG:
    """A ``torch.Generator`` per device, seeded from one integer, with a checkpointable state.

    ``seed=None`` and no ``generator`` means the global RNG (``get`` returns ``None``). A user-supplied
    ``generator`` is used as is (it must live on the inputs' device). Methods own one of these, so their random
    starts are reproducible without touching the global RNG, and a checkpoint resumes them exactly.

    Args:
        seed: seed of the private generators (``None``: the global RNG).
        generator: a generator to use instead.
        owner: the owning object's name, for error messages.
    """

    def __init__(self, seed: int | None = None, generator: torch.Generator | None = None, owner: str = "") -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RobustfastError(f"{owner}(seed={seed!r}): seed must be an integer or None")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise RobustfastError(f"{owner}(generator=...): expected a torch.Generator, got {type(generator).__name__}")
        self.seed, self.generator, self.owner = seed, generator, owner
        self._per_device: dict[str, torch.Generator] = {}

    def get(self, device: torch.device | str) -> torch.Generator | None:
        """The generator for ``device`` (``None``: use the global RNG)."""
        device = torch.device(device)
        if self.generator is not None:
            if self.generator.device.type != device.type:
                raise RobustfastError(
                    f"{self.owner}: generator is on {self.generator.device} but inputs are on {device}; "
                    f"pass torch.Generator(device='{device.type}')"
                )
            return self.generator
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._per_device:
            self._per_device[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._per_device[key]

    def reset(self) -> None:
        """Forget the per-device generators: the next draw starts again from ``seed``."""
        self._per_device.clear()

    def state_dict(self) -> dict[str, Any]:
        """Generator states by device (``"custom"`` for a user-supplied generator)."""
        states = {k: g.get_state() for k, g in self._per_device.items()}
        if self.generator is not None:
            states["custom"] = self.generator.get_state()
        return {"seed": self.seed, "states": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`, seed included (generators are created on their device as needed)."""
        self.reset()
        if self.generator is None:
            self.seed = state.get("seed")
        for key, s in state["states"].items():
            if key == "custom":
                if self.generator is not None:
                    self.generator.set_state(s)
                continue
            if self.seed is None:
                continue
            g = self.get(key)
            assert g is not None
            g.set_state(s)
