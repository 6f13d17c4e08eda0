r"""SEAT (Li & Yu, 2022, "Stable and Efficient Adversarial Training through Local Linearization",
arXiv:2210.05373; reference code ``devicerxx/SEAT``): its attack and its local-linearity regulariser (with optional
flooding, SEAT-FL), one method in two parts.

The attack takes one signed step from a random corner of the ε-ball on the softmax margin loss plus ``λ`` times the
local linearity error (the paper's Eq. 9, reconstructed):

.. math:: x_0 = \mathrm{clip}_{[0,1]}(x + \epsilon\,s),\ s \in \{\pm1\}^d,\quad
   \gamma_i = |\ell(x_0) - \ell(x) - \langle x_0 - x, \nabla_x \ell(x)\rangle|,\quad
   \delta = \Pi\big(x_0 - x + \alpha\,\mathrm{sign}\,\nabla_{x_0}[\ell_{MM}(x_0) + \lambda\gamma]\big)

The regulariser penalizes the same error at the adversarial point:

.. math:: \gamma_i = |\ell(x_i+\delta_i) - \ell(x_i) - \langle \delta_i, \nabla_x \ell(x_i)\rangle|,
   \qquad R = \lambda\,\mathrm{mean}_i\,\gamma_i

The first-order term is a stop-gradient constant (the code's ``.item()``): no double backprop.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from ..attacks.base import Attack, LossFn, Magnitude, kernel, register_attack
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy, linearity_error, margin_loss
from ..ops import clip_delta, input_grad, random_sign_like
from ..regularizers.base import Regularizer, register_regularizer

__all__ = ["SEAT", "SEATAttack", "linearity_error", "seat_attack"]


@kernel
def seat_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    lam: float = 0.5,
    margin: Literal["softmax", "logits"] = "softmax",
    reduction: Literal["per_sample", "batch"] = "per_sample",
    loss_fn: LossFn | None = None,
    generator: Any = None,
    clean: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """SEAT's perturbation ``δ`` (``alpha`` defaults to ``eps``); see :class:`SEATAttack`.

    Args:
        clean: ``(clean logits, per-example ∇x CE at x)``, detached; computed here when needed and not given.
        loss_fn: per-sample objective replacing the margin loss.
    """
    objective = loss_fn or partial(margin_loss, on=margin)
    if lam > 0 and clean is None:
        point = x.detach().requires_grad_(True)
        logits = model(point)
        clean = (logits.detach(), input_grad(cross_entropy(logits, y), point).detach())
    x0 = (x + eps * random_sign_like(x, generator)).clamp(0.0, 1.0)
    point = x0.detach().requires_grad_(True)
    logits = model(point)
    obj = objective(logits, y)
    if lam > 0:
        assert clean is not None
        gamma = linearity_error(cross_entropy(logits, y), cross_entropy(clean[0], y), x0 - x, clean[1], reduction)
        obj = obj.sum() + lam * (gamma.sum() if reduction == "per_sample" else gamma * len(y))
    g = input_grad(obj, point)
    return clip_delta(x0 - x + (eps if alpha is None else alpha) * g.sign(), x, eps)


@register_attack("seat", "seat_attack")
class SEATAttack(Attack):
    r"""SEAT's single-step margin-loss attack from a random corner, with the linearity term in its objective.

    Cost: 2 forward + 2 backward (clean gradient, then the corner); with ``lam=0`` the clean pass is
    skipped (1 + 1). The clean logits and gradient are published in the step record, so the
    :class:`~robustfast.SEAT` regularizer reuses them.

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``).
        alpha: step size; ``None`` (default) means ``eps`` (code: ``--train_gamma 8``).
        lam: weight of the linearity error in the attack objective (default 0.5, the best λ of the
            paper's Table 3; the official code hard-codes 0.6).
        margin: ``"softmax"`` (default, the code) or ``"logits"`` (the paper's prose).
        reduction: ``"per_sample"`` (default, the paper's γ per point) or ``"batch"`` (code parity).
        **kwargs: ``loss_fn`` (replaces the margin loss), ``bn_mode``, ``seed``, ``generator``,
            ``check_range``, ``targeted``, ``target_fn`` (see :class:`Attack`).
    """

    alpha = Magnitude(1.0)
    default_loss_is_ce: ClassVar[bool] = False
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "lam", "margin", "reduction")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        *,
        lam: float = 0.5,
        margin: Literal["softmax", "logits"] = "softmax",
        reduction: Literal["per_sample", "batch"] = "per_sample",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        if margin not in ("softmax", "logits"):
            raise RobustfastError(f"SEATAttack(margin={margin!r}): choose 'softmax' or 'logits'")
        if reduction not in ("per_sample", "batch"):
            raise RobustfastError(f"SEATAttack(reduction={reduction!r}): choose 'per_sample' or 'batch'")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
            raise RobustfastError(f"SEATAttack(lam={lam!r}): must be a number >= 0")
        self.alpha, self.lam, self.margin, self.reduction = alpha, float(lam), margin, reduction

    def default_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """SEAT's per-sample max-margin loss (on softmax by default)."""
        return margin_loss(logits, labels, on=self.margin)

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """One step from a random corner on the margin loss plus ``lam`` times the linearity error."""
        clean = None  # published for the regularizers unless the labels are targets (then the kernel computes it)
        if not self.targeted and (self.lam > 0 or ctx.wants("clean_logits") or ctx.wants("clean_grad_graph")):
            g = ctx.clean_ce_grad(self.get_logits, create_graph=ctx.wants("clean_grad_graph"),
                                  keep_logits=ctx.wants("clean_logits"))  # fmt: skip
            assert ctx.clean_logits is not None
            clean = (ctx.clean_logits.detach(), g.detach())
        return x + seat_attack(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, lam=self.lam,
                               margin=self.margin, reduction=self.reduction, loss_fn=self.objective,
                               generator=self.rng.get(x.device), clean=clean)  # fmt: skip


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
        detach_clean: treat ``ℓ(x)`` in ``γ`` as a constant (default ``False``: differentiated, as the official code
            does). Where the adversarial loss exceeds its Taylor expansion, the differentiated ``γ`` contributes
            ``−λ∇θℓ(x)``: it rewards a *larger clean loss*, which is unbounded. On Fashion-MNIST (the CNN, Adam at
            a peak lr of 3e-3) that runs away in 3 of 6 runs: the training clean CE went from 0.86 to 3·10³ in
            one epoch and the model ended a constant classifier; with ``detach_clean=True`` the same run trains
            (``docs/benchmarks.md``, Fashion-MNIST). A stability option, not the paper's or the code's method.
    """

    requests = frozenset({"clean_logits"})
    _repr_params = ("lam", "flood", "reduction", "detach_clean")

    def __init__(
        self,
        lam: float = 0.5,
        *,
        flood: float | None = None,
        reduction: Literal["per_sample", "batch"] = "per_sample",
        detach_clean: bool = False,
    ) -> None:
        super().__init__(lam)
        if reduction not in ("per_sample", "batch"):
            raise RobustfastError(f"SEAT(reduction={reduction!r}): choose 'per_sample' or 'batch'")
        if flood is not None and (isinstance(flood, bool) or not isinstance(flood, (int, float)) or flood < 0):
            raise RobustfastError(f"SEAT(flood={flood!r}): the flood level b must be a number >= 0 (or None)")
        if not isinstance(detach_clean, bool):
            raise RobustfastError(f"SEAT(detach_clean={detach_clean!r}): True or False")
        self.flood = None if flood is None else float(flood)
        self.reduction, self.detach_clean = reduction, detach_clean

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """Mean per-example (or batch) linearity error ``|ℓ(x_adv) − ℓ(x) − ⟨δ, ∇ℓ(x)⟩|``."""
        g = ctx.clean_ce_grad(model, keep_logits=True).detach()
        clean = ctx.clean_logits_graph(model)
        ce_clean = cross_entropy(clean.detach() if self.detach_clean else clean, ctx.y)
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
