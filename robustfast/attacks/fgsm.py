r"""FGSM (Goodfellow et al., 2015), zero-init, as used by GradAlign (Andriushchenko & Flammarion, 2020).

.. math:: \delta = \Pi_{[-\epsilon,\epsilon]}\big(\eta + \alpha\,\mathrm{sign}\,\nabla_x \ell(x + \eta, y)\big),
   \quad \eta = 0 \ \text{(default)},\quad x_{adv} = \mathrm{clip}_{[0,1]}(x + \delta)
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from ..context import StepContext
from ..ops import clip_delta, uniform_start
from .base import Attack, GradFn, LossFn, Magnitude, kernel, loss_grad_fn, register_attack

__all__ = ["FGSM", "fgsm"]


@kernel
def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    noise: float = 0.0,
    loss_fn: LossFn | None = None,
    generator: Any = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """FGSM perturbation ``δ`` (``x + δ ∈ [0, 1]``, ``‖δ‖∞ ≤ eps``); see :class:`FGSM`.

    Args:
        model: pixel-space classifier (its mode is the caller's).
        x: clean inputs in ``[0, 1]``. y: labels.
        eps: L∞ radius. alpha: step (default ``eps``). noise: radius of a uniform random start (default 0).
        loss_fn: per-sample loss to ascend (default cross-entropy). generator: for the random start.
        grad_fn: gradient oracle (default :func:`~robustfast.attacks.base.loss_grad_fn`).
    """
    grad = grad_fn or loss_grad_fn(model, x, y, loss_fn)
    eta = uniform_start(x, noise, generator) if noise > 0 else None
    step = (eps if alpha is None else alpha) * grad(eta).sign()
    return clip_delta(step if eta is None else eta + step, x, eps)


@register_attack("fgsm")
class FGSM(Attack):
    r"""Fast Gradient Sign Method from the clean point (no random start by default).

    Cost: 1 forward + 1 backward. Its gradient is taken at the clean ``x``, so a following
    :class:`~robustfast.GradAlign` reuses it as ``∇x ℓ(x)`` (paper code parity) at no extra cost.

    Strengthening after catastrophic overfitting: first a uniform random start of radius ``ε/2``, then ``ε``
    (projection to the ε-ball kept, as FGSM-RS), then the step shrinks by 0.8 per rollback down to ``ε/2``
    (Wong et al.'s and locuslab's advice against CO: noise and a smaller α); cap: 4 steps (noise ε, α = 0.64ε).

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``).
        alpha: step size; ``None`` (default) means ``eps``. GradAlign's Table 1 also uses ``7/255``.
        noise: radius of a uniform random start (default 0: FGSM from the clean point).
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``,
            ``target_fn`` (see :class:`Attack`).

    Example:
        >>> atk = FGSM(model, eps=8/255)
        >>> x_adv = atk(x, y)
    """

    alpha = Magnitude(1.0)
    noise = Magnitude(0.0)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "noise")
    state_attrs: ClassVar[tuple[str, ...]] = ("alpha", "noise")
    max_strength: ClassVar[int] = 4

    def __init__(
        self, model: nn.Module, eps: float = 8 / 255, alpha: float | None = None, *, noise: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(model, eps, **kwargs)
        self.alpha, self.noise = alpha, noise

    @property
    def randomized(self) -> bool:
        """Only with a random start (``noise > 0``)."""
        return self.noise > 0 or self.target_fn == "random"

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """One signed step of ``alpha`` (from the clean point unless ``noise``), projected to the ε-ball."""
        return x + fgsm(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, noise=self.noise,
                        generator=self.rng.get(x.device), grad_fn=self.grad_fn(x, y, ctx))  # fmt: skip

    def _strengthen(self) -> str | None:
        if self.noise < self.eps - 1e-12:
            old, self.noise = self.noise, min(self.noise + self.eps / 2, self.eps)
            return f"noise {old:.4g} -> {self.noise:.4g}"
        if self.alpha > self.eps / 2 + 1e-12:
            old, self.alpha = self.alpha, max(0.8 * self.alpha, self.eps / 2)
            return f"alpha {old:.4g} -> {self.alpha:.4g}"
        return None
