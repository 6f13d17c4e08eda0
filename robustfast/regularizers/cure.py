r"""CURE, curvature regularisation (Moosavi-Dezfooli et al., CVPR 2019, "Robustness via curvature
regularization, and vice versa"), as used as a baseline by GradAlign (App. D.5) and AdvLC.

.. math:: R = \lambda\,\mathrm{mean}_i\,\|\nabla_x \ell_i(x_i + \delta_i) - \nabla_x \ell_i(x_i)\|_2^2

with the neighbour ``x + δ`` at ``x_adv`` (GradAlign's FGSM + CURE) or at ``x + h·sign(∇x ℓ(x))`` (AdvLC).
Needs double backpropagation through both gradients.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .._checks import as_magnitude
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy
from ..ops import input_grad
from ._gradscale import check_grad_scale, mean_sq_norm
from .base import Regularizer, register_regularizer

__all__ = ["CURE"]


@register_regularizer("cure")
class CURE(Regularizer):
    r"""Finite-difference curvature penalty ``λ·mean_i ‖∇x ℓ_i(x+δ) − ∇x ℓ_i(x)‖²`` (both differentiated).

    Gradient scale: per-example gradients of the per-sample CE by default (batch-size independent, see
    :mod:`robustfast.regularizers.base`); ``grad_scale="batch_mean"`` uses gradients of the batch-mean CE
    (rows ``g_i/B``, penalty divided by ``B²``), the convention of the papers' code, to use their λ as is.

    Cost (shared-record path): the clean gradient with graph is the attack's when it is taken at ``x``
    (FGSM, PGD without random start; the attack is asked for ``"clean_grad_graph"``), else one forward and
    backward; with ``neighbour="x_adv"`` the neighbour gradient is read off the training forward
    (``"adv_grad_graph"``): one backward; plus second-order passes in the final backward.

    Args:
        lam: weight λ (default ``700/128²`` ≈ 0.043: GradAlign's λ = 700 at ε = 8/255 (20000 at ε = 16),
            converted to per-example gradients at the paper's batch size 128 under the batch-mean reading;
            AdvLC uses 1500). The released GradAlign code has no CURE, so that conversion is a reading.
        neighbour: ``"x_adv"`` (default) or ``"sign"`` for ``x + h·sign(∇x ℓ(x))`` (AdvLC's fixed direction).
        h: step of the ``"sign"`` neighbour in pixel units (default ``8/255``; not clamped to ``[0, 1]``).
        grad_scale: ``"per_example"`` (default) or ``"batch_mean"``.
    """

    needs_double_backward = True
    _repr_params = ("lam", "neighbour", "h", "grad_scale")

    def __init__(
        self,
        lam: float = 700 / 128**2,
        *,
        neighbour: Literal["x_adv", "sign"] = "x_adv",
        h: float = 8 / 255,
        grad_scale: Literal["per_example", "batch_mean"] = "per_example",
    ) -> None:
        super().__init__(lam)
        if neighbour not in ("x_adv", "sign"):
            raise RobustfastError(f"CURE(neighbour={neighbour!r}): choose 'x_adv' or 'sign'")
        h = as_magnitude("CURE", "h", h, allow_none=False)
        self.neighbour, self.h, self.grad_scale = neighbour, float(h), check_grad_scale("CURE", grad_scale)
        extra = {"adv_grad_graph"} if neighbour == "x_adv" else set()
        self.requests = frozenset({"clean_grad_graph", *extra})

    @property
    def needs_x_adv(self) -> bool:  # type: ignore[override]
        return self.neighbour == "x_adv"

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """Mean over examples of ``‖∇ℓ(x') − ∇ℓ(x)‖²`` at the neighbour ``x'``."""
        g_clean = ctx.clean_ce_grad(model, create_graph=True)
        if self.neighbour == "x_adv":
            g_near = ctx.adv_ce_grad(model, create_graph=True)
        else:
            point = (ctx.x.detach() + self.h * g_clean.detach().sign()).requires_grad_(True)
            g_near = input_grad(cross_entropy(model(point), ctx.y), point, create_graph=True)
        return mean_sq_norm(g_near - g_clean, self.grad_scale)
