r"""MultiGrad (Golgooni et al., 2023, App. C.2): step only where gradient signs agree across random starts.

Algorithm 2 / official code:

.. math:: g_j = \nabla_x \ell(x+\eta_j, y),\ \eta_j \sim U([-\epsilon,\epsilon]^d),\ j=1..N;\quad
   s = \textstyle\sum_j \mathrm{sign}\,g_j;\quad
   \delta = \Pi_{[-\epsilon,\epsilon]}\big(\alpha\,\mathrm{sign}(s)\,\mathbb 1[|s| \ge 2t-N]\big)

i.e. exactly ``±ε`` where at least ``t`` of the ``N`` signs agree (all of them by default), 0 elsewhere.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..context import StepContext
from ..errors import RobustfastError
from ..ops import clip_delta, uniform_start
from .base import Attack, GradFn, LossFn, Magnitude, kernel, loss_grad_fn, register_attack

__all__ = ["MultiGrad", "multigrad"]


@kernel
def multigrad(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    n_samples: int = 3,
    agree: int | None = None,
    batched: bool = False,
    loss_fn: LossFn | None = None,
    generator: Any = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """MultiGrad perturbation ``δ`` (``alpha`` defaults to ``2 * eps``, ``agree`` to ``n_samples``).

    With ``batched=True`` the ``n_samples`` gradients come from one concatenated batch (``grad_fn`` unused)."""
    agree = n_samples if agree is None else agree
    if batched:
        xs = x.repeat(n_samples, *([1] * (x.dim() - 1)))
        eta = uniform_start(xs, eps, generator)
        grads = list(loss_grad_fn(model, xs, y.repeat(n_samples), loss_fn)(eta).chunk(n_samples))
    else:
        grad = grad_fn or loss_grad_fn(model, x, y, loss_fn)
        grads = [grad(uniform_start(x, eps, generator)) for _ in range(n_samples)]
    s = torch.stack([g.sign() for g in grads]).sum(0)
    step = torch.where(s.abs() >= 2 * agree - n_samples, s.sign(), torch.zeros_like(s))
    return clip_delta((2.0 * eps if alpha is None else alpha) * step, x, eps)


@register_attack("multigrad", "multi_grad")
class MultiGrad(Attack):
    r"""MultiGrad: ``N`` random-start gradients; keep coordinates whose signs agree; final step from 0.

    Cost: ``N`` forward + ``N`` backward for the attack (or one ``N``-times larger batch with
    ``batched=True``, which changes BatchNorm batch statistics to be over ``N·B`` examples).
    Strengthening after catastrophic overfitting: one more random start per rollback (up to 8), all of
    which must agree (the paper's remedy: more samples); cap: 3 steps.

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``).
        alpha: step size; ``None`` (default) means ``2 * eps``.
        n_samples: number of random starts ``N`` (default 3, the official code and README; Table 9's best is 2).
        agree: minimum number of agreeing signs ``t`` (default ``n_samples``: all must agree).
        batched: run the ``N`` gradient evaluations as one concatenated batch.
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``,
            ``target_fn`` (see :class:`Attack`).
    """

    alpha = Magnitude(2.0)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "n_samples", "agree", "batched")
    state_attrs: ClassVar[tuple[str, ...]] = ("n_samples", "agree")
    max_strength: ClassVar[int] = 3

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        *,
        n_samples: int = 3,
        agree: int | None = None,
        batched: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        check_int("MultiGrad", "n_samples", n_samples, 1)
        agree = n_samples if agree is None else agree
        if isinstance(agree, bool) or not isinstance(agree, int) or not (n_samples + 1) // 2 <= agree <= n_samples:
            raise RobustfastError(
                f"MultiGrad(agree={agree!r}): must be an integer between ceil(N/2)={(n_samples + 1) // 2} "
                f"and N={n_samples}"
            )
        self.n_samples, self.agree, self.alpha, self.batched = n_samples, agree, alpha, batched

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """``±alpha`` (clipped to ε) where enough of the N gradient signs agree, 0 elsewhere."""
        return x + multigrad(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, n_samples=self.n_samples,
                             agree=self.agree, batched=self.batched, loss_fn=self.objective,
                             generator=self.rng.get(x.device), grad_fn=self.grad_fn(x, y, ctx))  # fmt: skip

    def _strengthen(self) -> str | None:
        if self.n_samples >= 8:
            return None
        all_agree = self.agree == self.n_samples
        old = self.n_samples
        self.n_samples += 1
        self.agree = self.n_samples if all_agree else self.agree
        return f"n_samples {old} -> {self.n_samples}"
