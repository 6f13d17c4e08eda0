"""What TRADES and MART share (Zhang et al., ICML 2019; Wang et al., ICLR 2020; official code ``yaodongyu/TRADES``,
``YisenWang/MART``): PGD from a small Gaussian start ``x + 0.001·N(0, I)`` with the official step ``0.007`` at
``ε = 0.031``, their argument checks, and a training loss whose strengthening doubles its β.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import check_int
from ..attacks.base import GradFn
from ..errors import RobustfastError
from ..losses import TrainingLoss
from ..ops import clip_delta

__all__ = ["ALPHA_REL", "BetaLoss", "check_beta", "check_std", "check_steps", "gaussian_pgd"]

#: The official step-to-radius ratio of both codes: step 0.007 at ε = 0.031.
ALPHA_REL = 0.007 / 0.031


def gaussian_pgd(
    grad: GradFn, x: Tensor, *, eps: float, alpha: float, steps: int, init_std: float, generator: Any = None
) -> Tensor:
    """``steps`` signed steps ``δ ← Π(δ + alpha·sign grad(δ))`` from ``δ_0 = init_std·N(0, I)``; returns ``δ``.

    The start is not clamped to ``[0, 1]`` before the first gradient (as both codes); each step projects onto the
    ε-box and the image box. ``init_std = 0`` draws nothing and takes the first gradient at the clean ``x``
    (``grad(None)``, which an attack may serve from the step record).
    """
    delta: Tensor | None = None
    if init_std > 0:
        delta = init_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    for _ in range(steps):
        start = torch.zeros_like(x) if delta is None else delta
        delta = clip_delta(start + alpha * grad(delta).sign(), x, eps)
    assert delta is not None
    return delta.detach()


def check_beta(owner: str, beta: Any) -> float:
    """β: a finite number ``>= 0``."""
    ok = isinstance(beta, numbers.Real) and not isinstance(beta, bool) and math.isfinite(float(beta))
    if not ok or float(beta) < 0:
        raise RobustfastError(f"{owner}(beta={beta!r}): beta must be a finite number >= 0 (TRADES and MART use 6)")
    return float(beta)


def check_std(owner: str, value: Any) -> float:
    """A non-negative standard deviation in pixel units (``init_std``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or not 0 <= float(value) <= 1:
        raise RobustfastError(f"{owner}(init_std={value!r}): must be a number in [0, 1] pixel units (official: 0.001)")
    return float(value)


def check_steps(owner: str, steps: Any) -> int:
    """A number of steps: an integer ``>= 1``."""
    return check_int(owner, "steps", steps, 1, hint="official: 10")  # type: ignore[return-value]


class BetaLoss(TrainingLoss):
    """A training loss weighted by β (TRADES's and MART's); strengthening doubles β, at most twice (4× its start)."""

    state_attrs: ClassVar[tuple[str, ...]] = ("beta",)
    _repr_params: ClassVar[tuple[str, ...]] = ("beta",)

    def __init__(self, beta: float = 6.0) -> None:
        self.beta = check_beta(type(self).__name__, beta)

    def _strengthen(self) -> str | None:
        old = self.beta
        self.beta = 2 * old if old > 0 else 1.0
        return f"beta {old:g} -> {self.beta:g}"
