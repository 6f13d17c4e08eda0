r"""Input-gradient norm penalty (IGR; Ross & Doshi-Velez, 2018; Drucker & LeCun, 1992), used as a baseline by
GradAlign (App. D.5, "FGSM + ‖∇x‖₂²") and AdvLC ("IGR").

.. math:: R = \lambda\,\mathrm{mean}_i\,\|\nabla_x \ell_i(x_i)\|_2^2

Needs double backpropagation.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ..context import StepContext
from ._gradscale import check_grad_scale, mean_sq_norm
from .base import Regularizer, register_regularizer

__all__ = ["GradNorm"]


@register_regularizer("gradnorm", "grad_norm", "igr")
class GradNorm(Regularizer):
    r"""Squared L2 norm of the clean input gradient, ``λ·mean_i ‖∇x ℓ_i(x)‖²``, differentiated (double backprop).

    Gradient scale as :class:`~robustfast.CURE`: per-example gradients by default; ``grad_scale="batch_mean"``
    for gradients of the batch-mean CE (penalty divided by ``B²``).

    Cost (shared-record path): the attack's clean gradient with graph when taken at ``x`` (FGSM, PGD
    without random start; ``"clean_grad_graph"`` is requested), else one forward and backward; plus
    second-order passes in the final backward. ``x_adv`` is not used.

    Args:
        lam: weight λ (default ``1000/128²`` ≈ 0.061: GradAlign's λ = 1000 at ε = 8/255 (2000 at ε = 16),
            converted to per-example gradients at batch size 128 under the batch-mean reading; AdvLC uses
            1200 with FGSM-N and 1000 with PGD10).
        grad_scale: ``"per_example"`` (default) or ``"batch_mean"``.
    """

    requests = frozenset({"clean_grad_graph"})
    needs_double_backward = True
    needs_x_adv = False
    _repr_params = ("lam", "grad_scale")

    def __init__(
        self, lam: float = 1000 / 128**2, *, grad_scale: Literal["per_example", "batch_mean"] = "per_example"
    ) -> None:
        super().__init__(lam)
        self.grad_scale = check_grad_scale("GradNorm", grad_scale)

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """Mean over examples of ``‖∇x ℓ(x)‖²`` (input-gradient regularization)."""
        return mean_sq_norm(ctx.clean_ce_grad(model, create_graph=True), self.grad_scale)
