r"""ZeroGrad (Golgooni et al., 2023): FGSM-RS whose smallest input-gradient coordinates take no step.

Algorithm 1 of the paper (with ``|·|`` as in its Sec. 3.1 and code):

.. math:: \eta \sim U([-\epsilon,\epsilon]^d),\ g = \nabla_x \ell(x+\eta, y),\
   g_i \leftarrow 0 \text{ where } |g_i| < Q_q(|g|),\
   \delta = \Pi_{[-\epsilon,\epsilon]}(\eta + \alpha\,\mathrm{sign}\,g)

with :math:`Q_q` the per-sample lower q-quantile over all C·H·W entries.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from .._checks import check_number
from ..context import StepContext
from ..errors import RobustfastError
from ..ops import bcast, clip_delta, per_sample_quantile, uniform_start
from .base import Attack, GradFn, LossFn, Magnitude, kernel, loss_grad_fn, register_attack

__all__ = ["ZeroGrad", "zerograd", "zerograd_mask"]


def zerograd_mask(grad: Tensor, q: float) -> Tensor:
    """Boolean mask of the coordinates ZeroGrad keeps: ``|g| >= per-sample q-quantile of |g|``."""
    a = grad.abs()
    thr = per_sample_quantile(a, q)
    return a >= bcast(thr, a)


@kernel
def zerograd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    q: float = 0.35,
    zero_mode: Literal["step", "perturbation"] = "step",
    loss_fn: LossFn | None = None,
    generator: Any = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """ZeroGrad perturbation ``δ`` (``alpha`` defaults to ``2 * eps``); see :class:`ZeroGrad`."""
    grad = grad_fn or loss_grad_fn(model, x, y, loss_fn)
    eta = uniform_start(x, eps, generator)
    g = grad(eta)
    keep = zerograd_mask(g, q)
    delta = eta + (2.0 * eps if alpha is None else alpha) * torch.where(keep, g.sign(), torch.zeros_like(g))
    if zero_mode == "perturbation":
        delta = torch.where(keep, delta, torch.zeros_like(delta))
    return clip_delta(delta, x, eps)


@register_attack("zerograd", "zero_grad")
class ZeroGrad(Attack):
    r"""ZeroGrad: zero the fraction ``q`` of smallest-magnitude gradient coordinates, then FGSM-RS.

    With the default ``zero_mode="step"`` (Algorithm 1 and the official code, behind every reported number)
    zeroed coordinates take no step and keep their random start; ``"perturbation"`` instead sets them to 0
    (the paper's Sec. 3.1 formula). Cost: FGSM-RS (1 forward + 1 backward) plus a per-sample selection.
    Strengthening after catastrophic overfitting: ``q`` grows by 0.1 per rollback, up to 0.9 (the paper's
    Sec. 6.2 recipe: a larger q at larger ε); cap: 3 steps (+0.3).

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``).
        alpha: step size; ``None`` (default) means ``2 * eps`` ("the maximum possible step size").
        q: fraction of coordinates zeroed per sample, in ``[0, 1)`` (default 0.35, CIFAR-10; the paper uses
            0.45 on CIFAR-100, 0.7 on SVHN and ViT-B/16, 0.5 on WRN-34-10, 0.2 on ImageNet).
        zero_mode: ``"step"`` (default) or ``"perturbation"``.
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``,
            ``target_fn`` (see :class:`Attack`).
    """

    alpha = Magnitude(2.0)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "q", "zero_mode")
    state_attrs: ClassVar[tuple[str, ...]] = ("q",)
    max_strength: ClassVar[int] = 3

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        *,
        q: float = 0.35,
        zero_mode: Literal["step", "perturbation"] = "step",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        check_number("ZeroGrad", "q", q, 0.0, 1.0, hi_open=True, hint="q is the fraction zeroed per sample")
        if zero_mode not in ("step", "perturbation"):
            raise RobustfastError(f"ZeroGrad(zero_mode={zero_mode!r}): choose 'step' or 'perturbation'")
        self.q, self.alpha, self.zero_mode = float(q), alpha, zero_mode

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """FGSM-RS step on the coordinates whose ``|g|`` reaches the per-sample q-quantile."""
        return x + zerograd(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, q=self.q, zero_mode=self.zero_mode,
                            generator=self.rng.get(x.device), grad_fn=self.grad_fn(x, y, ctx))  # fmt: skip

    def _strengthen(self) -> str | None:
        new = min(round(self.q + 0.1, 6), 0.9)
        if new <= self.q:
            return None
        old, self.q = self.q, new
        return f"q {old:g} -> {new:g}"
