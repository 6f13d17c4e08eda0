"""ELLE-A's adaptive weight (Abad Rocamora et al., ICLR 2024; LIONS-EPFL/ELLE ``core/utils/train.py``).

After every training step with linearity error ``e_t``: if at least three earlier values exist and
``e_t > mean + s·std`` of all earlier values (population std, the history is never reset), λ jumps to
``λ_max``; otherwise ``λ ← decay·λ``. The value is appended after the comparison, and the new λ applies from
the next step. The history is kept as Welford running moments (count, mean, M2): the same mean and std as the
official list, in O(1) memory and checkpoint size.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import RobustfastError

__all__ = ["AdaptiveWeight"]


class AdaptiveWeight:
    """The on/off rule of ELLE-A (see the module docs).

    Args:
        lam_max: the weight set on an outlier (ELLE-A: 4000 for every ε; the ELLE repo's LLR: 200 at ε ≤ 8/255).
        decay: multiplicative decay otherwise (0.99).
        sensitivity: ``s`` in ``mean + s·std`` (2).
        min_history: earlier values needed before a jump is possible (3: the code's ``len(H) > 2``).
    """

    def __init__(self, lam_max: float, decay: float = 0.99, sensitivity: float = 2.0, min_history: int = 3) -> None:
        for name, v in (("lam_max", lam_max), ("sensitivity", sensitivity)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise RobustfastError(f"adaptive weight: {name}={v!r} must be a finite number >= 0")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
            raise RobustfastError(f"adaptive weight: decay={decay!r} must be in [0, 1]")
        if isinstance(min_history, bool) or not isinstance(min_history, int) or min_history < 1:
            raise RobustfastError(f"adaptive weight: min_history={min_history!r} must be an integer >= 1")
        self.lam_max, self.decay, self.sensitivity, self.min_history = (
            float(lam_max),
            float(decay),
            sensitivity,
            min_history,
        )
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    @property
    def std(self) -> float:
        """Population standard deviation of the history (``np.std``)."""
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def is_outlier(self, value: float) -> bool:
        """Whether ``value`` would switch the weight on (compared with the earlier values only)."""
        return (
            math.isfinite(value) and self.count >= self.min_history and value > self.mean + self.sensitivity * self.std
        )

    def next_lam(self, lam: float, value: float, jump: float | None = None) -> float:
        """The weight for the next step, given the current weight and this step's linearity error.

        ``jump``: the weight an outlier switches on (default ``lam_max``; ELLE-A's data-scaled rule passes its own).
        """
        if not math.isfinite(value):
            return lam
        new = (self.lam_max if jump is None else jump) if self.is_outlier(value) else self.decay * lam
        self.count += 1  # append after the comparison (Welford update)
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        return new

    def state_dict(self) -> dict[str, Any]:
        """Settings and running moments (plain values)."""
        return {"lam_max": self.lam_max, "count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.lam_max, self.count = float(state["lam_max"]), int(state["count"])
        self.mean, self.m2 = float(state["mean"]), float(state["m2"])
