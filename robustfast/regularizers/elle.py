r"""ELLE and ELLE-A (Abad Rocamora, Liu, Chrysos, Olmos & Cevher, ICLR 2024, "Efficient local linearity
regularization to overcome catastrophic overfitting"; official code ``LIONS-EPFL/ELLE`` ``core/utils/train.py``).

.. math:: x_a, x_b = x + \epsilon\,U(-1, 1)^d,\quad \alpha_i \sim U(0, 1),\quad x_c = (1-\alpha)x_a + \alpha x_b

.. math:: \mathrm{lin\_err} = \frac1B \sum_i \big(\ell(x_{c,i}) - (1-\alpha_i)\,\ell(x_{a,i})
   - \alpha_i\,\ell(x_{b,i})\big)^2

added as ``λ·lin_err`` to the training loss: the loss must be linear along random segments of the ε-ball. One
forward over the ``3B`` concatenated points, no double backpropagation.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._checks import as_magnitude
from .._random import SeededRNG
from ..context import StepContext
from ..losses import cross_entropy
from ..ops import uniform_like
from ._adaptive import AdaptiveWeight
from .base import Regularizer, check_lam, register_regularizer

__all__ = ["ELLE", "ELLEA", "elle_lin_err"]


def elle_lin_err(model: Any, x: Tensor, y: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """ELLE's linearity error on one random triplet per example (one forward over the ``3B`` points).

    ``x_a``, ``x_b`` are uniform in the ε-box around ``x`` (not clamped to ``[0, 1]``, as the official code), and
    ``α`` is drawn per example. Returns the scalar mean of the squared errors (``MSELoss``).
    """
    xa = x + uniform_like(x, eps, generator)
    xb = x + uniform_like(x, eps, generator)
    a = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    ab = a.view(-1, *([1] * (x.dim() - 1)))
    xc = (1 - ab) * xa + ab * xb
    losses = cross_entropy(model(torch.cat([xa, xb, xc])), y.repeat(3))
    la, lb, lc = losses.chunk(3)
    return (lc - (1 - a) * la - a * lb).pow(2).mean()


@register_regularizer("elle")
class ELLE(Regularizer):
    r"""Efficient local linearity regularization: ``λ·mean_i (ℓ(x_c) − (1−α)ℓ(x_a) − αℓ(x_b))²``.

    Follows the official code: two independent uniform points of the ε-box (not clamped to ``[0, 1]``), α per
    example, one forward over the ``3B`` batch (BatchNorm statistics over the three points together), the mean
    squared error over the batch; nothing detached. The paper pairs it with FGSM from the clean point, α = ε
    (``FGSM(model, eps)``). Cost: one forward over ``3B`` and its backward, no double backprop (compare exact
    GradAlign's double backward in ``benchmarks/step_cost.py``).

    Not FastAT_Benchmark's version, which uses λ = 1 (about 1000 times too small) and FGSM-RS at 1.25ε without
    projection as the base attack; one of its three seeds overfits catastrophically (AutoAttack 3.3%).

    Strengthening after catastrophic overfitting: λ doubles.

    Args:
        eps: radius of the uniform points in pixel units (default ``8/255``; use the training ε).
        lam: weight λ; ``None`` (default) uses the official scripts' value for ``eps`` (:meth:`paper_lambda`:
            1000 for ε ≤ 8/255, 5000 up to 20/255, 10000 above).
        seed: seeds a private generator for the points and α (``None``: the global RNG).
    """

    needs_x_adv: ClassVar[bool] = False
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "lam")
    state_attrs: ClassVar[tuple[str, ...]] = ("rng",)

    def __init__(self, eps: float = 8 / 255, lam: float | None = None, *, seed: int | None = None) -> None:
        self.eps = float(as_magnitude(type(self).__name__, "eps", eps, allow_none=False))  # type: ignore[arg-type]
        super().__init__(self.paper_lambda(self.eps) if lam is None else lam)
        self.rng = SeededRNG(seed, owner=type(self).__name__)
        self.last_lin_err: float | None = None

    @staticmethod
    def paper_lambda(eps: float) -> float:
        """λ of the official ELLE scripts for ``eps`` in pixel units: 1000 (ε ≤ 8/255), 5000 (≤ 20/255), 10000."""
        e = float(as_magnitude("ELLE.paper_lambda", "eps", eps, allow_none=False)) * 255  # type: ignore[arg-type]
        return 1000.0 if e <= 8 + 1e-6 else 5000.0 if e <= 20 + 1e-6 else 10000.0

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """The linearity error on one random triplet per example."""
        err = elle_lin_err(model, ctx.x.detach(), ctx.y, self.eps, self.rng.get(ctx.x.device))
        self.last_lin_err = float(err.detach())
        return err


@register_regularizer("elle_a", "ellea")
class ELLEA(ELLE):
    r"""ELLE-A: ELLE with λ adapted online, so that no λ needs tuning.

    λ starts at 0. After every training step (model in ``train()`` mode) with linearity error ``e``: if at least
    three earlier values exist and ``e > mean + 2·std`` of all earlier values, λ jumps to ``lam_max``; otherwise
    ``λ ← 0.99·λ``. The value is appended after the comparison and the new λ applies from the next step
    (``LIONS-EPFL/ELLE``'s on/off schedule; FastAT_Benchmark appends before comparing). The history is kept as
    running moments in the regularizer's state, so a resumed run continues it exactly. The current λ is logged as
    ``lam_ellea`` in the trainer's history.

    Strengthening after catastrophic overfitting: ``lam_max`` doubles.

    Args:
        eps: radius of the uniform points (default ``8/255``).
        lam_max: the weight set on an outlier (default 4000, the official value for every ε).
        decay: decay per step otherwise (default 0.99).
        sensitivity: ``s`` in ``mean + s·std`` (default 2).
        seed: seeds a private generator for the points and α.
    """

    state_attrs: ClassVar[tuple[str, ...]] = ("adaptive",)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "lam", "lam_max")

    def __init__(
        self,
        eps: float = 8 / 255,
        lam_max: float = 4000.0,
        *,
        decay: float = 0.99,
        sensitivity: float = 2.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps, 0.0, seed=seed)
        self.adaptive = AdaptiveWeight(check_lam(type(self).__name__, lam_max), decay, sensitivity)

    @property
    def lam_max(self) -> float:
        """The weight set on an outlier."""
        return self.adaptive.lam_max

    def weighted(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """``λ·lin_err`` with the current λ; in training mode, λ is then updated for the next step."""
        err = self.penalty(model, ctx)
        out = self.lam * err
        if getattr(model, "training", True) and torch.is_grad_enabled():
            self.lam = self.adaptive.next_lam(self.lam, float(err.detach()))
        return out

    def _strengthen(self) -> str | None:
        old = self.adaptive.lam_max
        self.adaptive.lam_max = 2 * old if old > 0 else 1000.0
        return f"lam_max {old:g} -> {self.adaptive.lam_max:g}"
