r"""SEAT's local-linearity regulariser (Li & Yu, 2022, "Stable and Efficient Adversarial Training through
Local Linearization", arXiv:2210.05373; reference code ``devicerxx/SEAT``), with optional flooding (SEAT-FL).

.. math:: \gamma_i = |\ell(x_i+\delta_i) - \ell(x_i) - \langle \delta_i, \nabla_x \ell(x_i)\rangle|,
   \qquad R = \lambda\,\mathrm{mean}_i\,\gamma_i

The first-order term is a stop-gradient constant (the code's ``.item()``): no double backprop.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy, linearity_error
from .base import Regularizer, register_regularizer

__all__ = ["SEAT"]


@register_regularizer("seat", "seat_fl")
class SEAT(Regularizer):
    r"""Linearity-error penalty ``λ·γ`` and, with ``flood=b``, SEAT-FL's flooded cross-entropy.

    ``γ`` compares the CE at ``x_adv`` with its first-order Taylor expansion at ``x`` (per-example
    gradient ``∇x ℓ_i(x)``, detached); both CE terms are differentiated. Pair it with
    :class:`~robustfast.SEATAttack`, whose clean pass it reuses (logits and gradient): then the penalty
    costs no extra pass. After other attacks it costs one forward and one backward at ``x``, except FGSM
    (and PGD without random start), whose clean pass is reused as well.

    Flooding (Ishida et al., 2020) replaces the training loss ``J`` by ``|J − b| + b``. To keep the
    regularizer additive it returns ``λ·γ + (|J − b| + b − J)``; added to the training loss this *is* the
    flooded objective. In a training step (:func:`~robustfast.training.adversarial_step`, the trainer) ``J`` is
    the step's actual training loss (label smoothing and custom criteria included); called standalone it is the
    mean CE at ``x_adv``, so add it to exactly that loss. The correction is not multiplied by ``λ``.

    Args:
        lam: weight λ of ``γ`` (default 0.5, the best λ of the paper's Table 3; 0.6 reproduces the code).
        flood: flood level ``b`` for SEAT-FL (default ``None``: no flooding, equivalent to ``b = 0``; the
            paper's value of ``b`` is not recoverable, so it has no default).
        reduction: ``"per_sample"`` (default: ``mean_i |γ_i|``, the paper's per-point γ) or ``"batch"``
            (``|mean_i γ_i|``, the official code, where errors of opposite sign cancel).
    """

    requests = frozenset({"clean_logits"})
    _repr_params = ("lam", "flood", "reduction")

    def __init__(
        self, lam: float = 0.5, *, flood: float | None = None, reduction: Literal["per_sample", "batch"] = "per_sample"
    ) -> None:
        super().__init__(lam)
        if reduction not in ("per_sample", "batch"):
            raise RobustfastError(f"SEAT(reduction={reduction!r}): choose 'per_sample' or 'batch'")
        if flood is not None and (isinstance(flood, bool) or not isinstance(flood, (int, float)) or flood < 0):
            raise RobustfastError(f"SEAT(flood={flood!r}): the flood level b must be a number >= 0 (or None)")
        self.flood = None if flood is None else float(flood)
        self.reduction = reduction

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """Mean per-example (or batch) linearity error ``|ℓ(x_adv) − ℓ(x) − ⟨δ, ∇ℓ(x)⟩|``."""
        g = ctx.clean_ce_grad(model, keep_logits=True).detach()
        ce_clean = cross_entropy(ctx.clean_logits_graph(model), ctx.y)
        ce_adv = cross_entropy(ctx.adv_logits_graph(model), ctx.y)
        gamma = linearity_error(ce_adv, ce_clean, ctx.x_adv - ctx.x, g, self.reduction)
        return gamma.mean()

    def flood_correction(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """``|J − b| + b − J`` for the training loss ``J`` (zero without flooding or when ``J ≥ b``).

        In a training step ``J`` is the step's own training loss (``ctx.loss``), whatever the criterion (label
        smoothing, a custom loss); standalone, it is the mean CE at ``x_adv``.
        """
        j = ctx.loss if ctx.loss is not None else cross_entropy(ctx.adv_logits_graph(model), ctx.y).mean()
        assert self.flood is not None
        return (j - self.flood).abs() + self.flood - j

    def weighted(self, model: nn.Module, ctx: StepContext) -> Tensor:
        out = self.lam * self.penalty(model, ctx)
        return out if self.flood is None else out + self.flood_correction(model, ctx)
