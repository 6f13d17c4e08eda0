r"""LLR, local linearity regularization, as the ELLE repository implements it (``LIONS-EPFL/ELLE``
``core/utils/train.py``, ``scripts/run_LLR_cifar10.sh``); Qin et al. (NeurIPS 2019) released no code.

.. math:: x_2, x_3 = x + \epsilon\,U(-1, 1)^d,\quad
   \mathrm{LLR} = \frac1B\sum_i\big(\ell(x_{3,i}) - \ell(x_{2,i})
   - \langle x_{3,i} - x_{2,i}, \nabla_x \ell(x_{2,i})\rangle\big)^2

a random-pair variant of Qin et al.'s LLR (which maximizes the residual with inner PGD steps and adds
``μ·|δᵀ∇ℓ|``). Needs double backpropagation through ``∇x ℓ(x_2)``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from .._checks import as_magnitude
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy
from ..ops import input_grad, uniform_like
from ..rng import SeededRNG
from ._adaptive import AdaptiveWeight
from .base import Regularizer, check_lam, register_regularizer

__all__ = ["LLR"]


@register_regularizer("llr")
class LLR(Regularizer):
    r"""Random-pair local linearity: ``λ·mean_i (ℓ(x_3) − ℓ(x_2) − ⟨x_3 − x_2, ∇x ℓ(x_2)⟩)²`` (double backprop).

    Follows the ELLE repository: two independent uniform points of the ε-box (not clamped to ``[0, 1]``), the
    gradient at ``x_2`` from its own forward (kept with its graph), the two losses from one forward over ``2B``, and
    the ELLE-A on/off rule for λ with ``lam_max`` (its scripts pass ``--lambda_schedule onoff``;
    ``adaptive=False`` uses ``lam_max`` as a constant λ). The repository differentiates the batch-*mean* loss, so
    its first-order term is ``1/B`` of the per-example one and its penalty is close to ``(ℓ(x_3) − ℓ(x_2))²``;
    ``grad_scale="per_example"`` (default) uses the per-example gradient (the formula), ``"batch_mean"``
    reproduces the repository. Cost: 3 forwards' worth of batch (``B`` + ``2B``), one backward with
    ``create_graph`` and a second-order pass in the final backward.

    Strengthening after catastrophic overfitting: ``lam_max`` doubles, at most twice (4× its start).

    Args:
        eps: radius of the uniform points (default ``8/255``; use the training ε).
        lam_max: λ (the on/off maximum when ``adaptive``); ``None`` (default): the repository's scripts' value for
            ``eps`` (:meth:`paper_lambda`: 200 for ε ≤ 8/255).
        adaptive: the ELLE-A on/off rule (default True, as the repository's scripts).
        grad_scale: ``"per_example"`` (default) or ``"batch_mean"`` (repository parity).
        seed: seeds a private generator for the points.
    """

    needs_double_backward = True
    needs_x_adv: ClassVar[bool] = False
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "lam", "lam_max", "adaptive", "grad_scale")
    state_attrs: ClassVar[tuple[str, ...]] = ("rng", "adaptive_weight")

    def __init__(
        self,
        eps: float = 8 / 255,
        lam_max: float | None = None,
        *,
        adaptive: bool = True,
        grad_scale: Literal["per_example", "batch_mean"] = "per_example",
        seed: int | None = None,
    ) -> None:
        self.eps = float(as_magnitude("LLR", "eps", eps, allow_none=False))  # type: ignore[arg-type]
        lam_max = check_lam("LLR", self.paper_lambda(self.eps) if lam_max is None else lam_max)
        if grad_scale not in ("per_example", "batch_mean"):
            raise RobustfastError(f"LLR(grad_scale={grad_scale!r}): choose 'per_example' or 'batch_mean'")
        if not isinstance(adaptive, bool):
            raise RobustfastError(f"LLR(adaptive={adaptive!r}): True or False")
        super().__init__(0.0 if adaptive else lam_max)
        self.adaptive, self.grad_scale = adaptive, grad_scale
        self.adaptive_weight = AdaptiveWeight(lam_max)
        self.rng = SeededRNG(seed, owner="LLR")

    @property
    def lam_max(self) -> float:
        """λ's maximum (the constant λ when not adaptive)."""
        return self.adaptive_weight.lam_max

    @staticmethod
    def paper_lambda(eps: float) -> float:
        """λ_max of the ELLE repository's LLR scripts: 200 (ε ≤ 8/255), 500 (≤ 12, and 16, 20), 1000 (14, 18),
        2000 (22, 26), 5000 (24), for ``eps`` in pixel units; values in between take the next listed ε's."""
        e = round(float(as_magnitude("LLR.paper_lambda", "eps", eps, allow_none=False)) * 255)  # type: ignore[arg-type]
        table = {14: 1000.0, 18: 1000.0, 22: 2000.0, 24: 5000.0, 26: 2000.0}
        if e <= 8:
            return 200.0
        return table.get(e, 500.0 if e <= 20 else 2000.0)

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """Mean squared residual of the first-order expansion at ``x_2`` evaluated at ``x_3``."""
        x = ctx.x.detach()
        gen = self.rng.get(x.device)
        x2 = (x + uniform_like(x, self.eps, gen)).requires_grad_(True)
        x3 = x + uniform_like(x, self.eps, gen)
        g = input_grad(cross_entropy(model(x2), ctx.y), x2, create_graph=True)
        if self.grad_scale == "batch_mean":
            g = g / x.shape[0]
        losses = cross_entropy(model(torch.cat([x2, x3])), ctx.y.repeat(2))
        l2, l3 = losses.chunk(2)
        lin = ((x3 - x2) * g).flatten(1).sum(1)
        return (l3 - l2 - lin).pow(2).mean()

    def weighted(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """``λ·LLR`` with the current λ; adaptive and in training mode, λ is then updated for the next step."""
        err = self.penalty(model, ctx)
        out = self.lam * err
        if self.adaptive and getattr(model, "training", True):
            self.lam = self.adaptive_weight.next_lam(self.lam, float(err.detach()))
        return out

    def _strengthen(self) -> str | None:
        old = self.adaptive_weight.lam_max
        self.adaptive_weight.lam_max = 2 * old if old > 0 else 100.0
        if not self.adaptive:
            self.lam = self.adaptive_weight.lam_max
        return f"lam_max {old:g} -> {self.adaptive_weight.lam_max:g}"
