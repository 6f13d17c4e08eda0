r"""FGSM-RS, a.k.a. RS-FGSM or "Fast" (Wong, Rice & Kolter, ICLR 2020).

.. math:: \eta \sim U([-\epsilon,\epsilon]^d),\quad
   \delta = \Pi_{[-\epsilon,\epsilon]}\big(\eta + \alpha\,\mathrm{sign}\,\nabla_x \ell(x+\eta, y)\big)
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from ..context import StepContext
from ..ops import clip_delta, uniform_start
from .base import Attack, GradFn, LossFn, Magnitude, kernel, loss_grad_fn, register_attack

__all__ = ["RS", "fgsm_rs"]


@kernel
def fgsm_rs(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    loss_fn: LossFn | None = None,
    generator: Any = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """FGSM-RS perturbation ``δ`` (``‖δ‖∞ ≤ eps``; ``alpha`` defaults to ``1.25 * eps``); see :class:`RS`."""
    grad = grad_fn or loss_grad_fn(model, x, y, loss_fn)
    eta = uniform_start(x, eps, generator)
    return clip_delta(eta + (1.25 * eps if alpha is None else alpha) * grad(eta).sign(), x, eps)


@register_attack("rs", "fgsm_rs", "fgsmrs", "rs_fgsm")
class RS(Attack):
    r"""FGSM with a uniform random start, projected back onto the ε-ball.

    The random start is first clamped so that ``x + η ∈ [0, 1]`` (Wong et al.'s code), the gradient is
    taken there, one signed step of ``alpha`` is added to ``η``, and the result is projected onto the ε-ball
    and the image box. Cost: 1 forward + 1 backward.

    Not torchattacks' ``RFGSM`` (an iterative attack); this is torchattacks' ``FFGSM`` with α relative to ε.
    Strengthening after catastrophic overfitting: the step shrinks by 0.8 per rollback, down to ``ε/2``
    (locuslab's advice: Wong et al.'s FGSM-RS overfits for α ≥ 2ε, not at α ≤ ε); cap: 3 steps (α = 0.64ε from
    the default 1.25ε).

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``).
        alpha: step size; ``None`` (default) means ``1.25 * eps`` (Wong et al.). ZeroGrad's paper uses
            ``1.0 * eps`` on CIFAR-100 and ``0.875 * eps`` on SVHN.
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``,
            ``target_fn`` (see :class:`Attack`).
    """

    alpha = Magnitude(1.25)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha")
    state_attrs: ClassVar[tuple[str, ...]] = ("alpha",)
    max_strength: ClassVar[int] = 3

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float | None = None, **kwargs: Any) -> None:
        super().__init__(model, eps, **kwargs)
        self.alpha = alpha

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """Uniform start in the ε-ball, one signed step of ``alpha`` at ``x + η``, projected back."""
        return x + fgsm_rs(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, generator=self.rng.get(x.device),
                           grad_fn=self.grad_fn(x, y, ctx))  # fmt: skip

    def _strengthen(self) -> str | None:
        if self.alpha > self.eps / 2 + 1e-12:
            old, self.alpha = self.alpha, max(0.8 * self.alpha, self.eps / 2)
            return f"alpha {old:.4g} -> {self.alpha:.4g}"
        return None
