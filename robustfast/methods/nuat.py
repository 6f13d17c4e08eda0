r"""NuAT: Nuclear-norm regularized Adversarial Training (Sriramanan, Addepalli, Baburaj & Babu, NeurIPS 2021).

Paper: "Towards Efficient and Effective Adversarial Training", NeurIPS 2021. Official code: ``val-iisc/NuAT``,
``CIFAR10/NuAT_cifar10.py`` (this module follows that script, which produced the README numbers).

As GAT, with the nuclear norm of the batch's logit-difference matrix instead of a per-example softmax distance.
With ``Z(x) ∈ R^{B×C}`` the logits of the batch (a batch-coupled term: the singular values of the whole matrix),
the attack is one signed step of ``α = ε`` from a Bernoulli start ``x_0 = clip(x ± ε/2)`` on

.. math:: J(x_0) = \mathrm{CE}(f(x_0), y) + [k \text{ odd}]\ \tfrac{\lambda}{B}\,\lVert Z(x) - Z(x_0)\rVert_*,\quad
   \delta = \Pi_\epsilon\big(\mathrm{clip}_{[0,1]}(x_0 + \alpha\,\mathrm{sign}\,\nabla_{x_0} J) - x\big)

(``k`` counts the minibatches of the epoch; the forward at ``x_0`` in eval mode), and the training loss is

.. math:: L = \tfrac1B\sum_i \mathrm{CE}(f(x_i), y_i) + \tfrac{\lambda}{B}\,\lVert Z(x) - Z(x_{adv})\rVert_*

(clean cross-entropy only, nothing detached). λ ramps linearly from 0: ``λ_e = λ_max · min(e / 90, 1)`` for the
0-indexed epoch ``e`` of the 100-epoch recipe (λ_max = 4.5), so epoch 0 is plain clean training. The README's
formulas have neither the ``1/B``, the alternate iterations, the eval-mode attack nor the ramp; the code has all
four, and we follow the code.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_number
from ..attacks.base import LossFn, kernel, register_attack
from ..context import StepContext
from ..losses import TrainingLoss, at_least_fp32, register_loss
from ..regularizers.base import check_lam
from ._guided import EpochLam, GuidedAttack, caller_mode_clean_logits, guided_step

__all__ = ["NuATAttack", "NuATLoss", "nuat", "nuclear_norm"]


def nuclear_norm(m: Tensor) -> Tensor:
    """Sum of the singular values of a 2-d matrix, in fp32 at least (differentiable: ``∂/∂M = U Vᵀ``)."""
    return torch.linalg.svdvals(at_least_fp32(m)).sum()


# ------------------------------------------------------------------------------------------ kernel
def _logits(logits: Tensor) -> Tensor:
    return logits


def _nuclear_distance(guide: Tensor, logits: Tensor) -> Tensor:
    """``‖Z(x) − Z(x_0)‖_*``: the nuclear norm of the batch's logit difference (the guide is the clean logits)."""
    return nuclear_norm(at_least_fp32(guide) - at_least_fp32(logits))


@kernel
def nuat(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    init: float | None = None,
    lam: float = 4.5,
    guide: Tensor | None = None,
    loss_fn: LossFn | None = None,
    generator: Any = None,
) -> Tensor:
    """NuAT's single-step perturbation ``δ``; see :class:`NuATAttack`.

    Args:
        model: pixel-space classifier (its mode is the caller's).
        x: clean inputs in ``[0, 1]``. y: labels.
        eps: L∞ radius. alpha: step (default ``eps``). init: radius of the ``±init`` Bernoulli start (default
            ``eps / 2``).
        lam: λ of the nuclear-norm term (0: plain cross-entropy, the code's even iterations); the batch sum of
            the code's objective ``mean CE + λ‖·‖_*/B`` is ``Σ CE + λ‖·‖_*``.
        guide: clean logits ``(B, C)``, detached; computed here from ``model(x)`` when ``lam > 0`` and not given.
        loss_fn: per-sample objective replacing the cross-entropy. generator: for the random start.
    """
    return guided_step(model, x, y, eps=eps, alpha=alpha, init=init, lam=lam, guide=guide, guide_of=_logits,
                       distance=_nuclear_distance, loss_fn=loss_fn, generator=generator)  # fmt: skip


# ------------------------------------------------------------------------------------------ the λ ramp
def _check_ramp(owner: str, ramp_epochs: Any) -> float | None:
    return check_number(owner, "ramp_epochs", ramp_epochs, 0.0, allow_none=True,
                        hint="epochs of the ramp, 0: no ramp; None: 90% of the run's epochs")  # fmt: skip


class _RampLam(EpochLam):
    """``λ_e = lam · min(e / R, 1)``; ``R = ramp_epochs``, or 90% of the run's epochs (``on_fit_start``)."""

    ramp_epochs: float | None
    _ramp: float | None

    @property
    def current_lam(self) -> float:
        """λ of the current epoch: ``lam · min(epoch / R, 1)`` (``lam`` until a trainer hook sets the epoch)."""
        ramp = self._ramp if self.ramp_epochs is None else self.ramp_epochs
        if self._epoch is None or ramp is None or ramp <= 0:
            return self.lam
        return self.lam * min(self._epoch / ramp, 1.0)

    def on_fit_start(self, epochs: int) -> None:
        """Trainer hook: with ``ramp_epochs=None`` the ramp spans 90% of the run's epochs.

        Not the code's rule, which ramps over ``epochs − 10`` epochs: the two agree at the official 100 epochs (90)
        and differ elsewhere (30 epochs: 27 here, 20 there); pass ``ramp_epochs=epochs - 10`` for the code's.
        """
        self._ramp = 0.9 * float(epochs)


# ------------------------------------------------------------------------------------------ classes
@register_attack("nuat")
class NuATAttack(_RampLam, GuidedAttack):
    r"""NuAT's training attack: one signed step of ``alpha`` from a ``±init`` Bernoulli start on
    ``CE + (λ/B)‖Z(x) − Z(x0)‖_*`` (nuclear norm of the batch's B×C logit difference), the λ term on odd
    minibatches of each epoch (official code).

    Cost: as :class:`~robustfast.GATAttack` (1 forward + 1 backward, plus the clean forward for the guide, reused by
    :class:`NuATLoss`), plus one SVD of a B×C matrix (negligible).

    Modes: the attack's forward runs in its ``bn_mode`` (``"eval"``, as the code); the guide in the mode the model
    is in when called. ``AdversarialTrainer`` forces ``attack_bn_mode="train"`` unless given
    ``attack_bn_mode=None``.

    λ ramp: ``on_fit_start``/``on_epoch_start`` (trainer hooks) set ``λ_e = lam · min(e / R, 1)`` for the 0-indexed
    epoch ``e`` (R: ``ramp_epochs``, default 90% of the run). In a loop without these hooks λ is ``lam``.
    Strengthening after catastrophic overfitting: λ (its maximum) doubles.

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``).
        alpha: step size; ``None`` (default) means ``eps`` (the code's ``Feps``).
        init: radius of the Bernoulli start; ``None`` (default) means ``eps / 2`` (the code's ``B_val = 4``).
        lam: λ at the end of the ramp (default 4.5, the code's ``Nuc_max``).
        ramp_epochs: epochs of the linear ramp from 0; ``None`` (default): 90% of the run's epochs; 0: no ramp.
        alternate: use the λ term on odd minibatches only (default True, the code); False: on every one.
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``, ``target_fn``
            (see :class:`~robustfast.Attack`).

    Example:
        >>> atk = NuATAttack(model, eps=8/255)
        >>> trainer = AdversarialTrainer(model, atk, criterion=NuATLoss(4.5), attack_bn_mode=None)
    """

    state_attrs: ClassVar[tuple[str, ...]] = ("_ramp",)

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        *,
        init: float | None = None,
        lam: float = 4.5,
        ramp_epochs: float | None = None,
        alternate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, alpha, init=init, lam=lam, alternate=alternate, **kwargs)
        self.ramp_epochs = _check_ramp(type(self).__name__, ramp_epochs)
        self._ramp: float | None = None

    guide_of = staticmethod(_logits)
    distance = staticmethod(_nuclear_distance)


@register_loss("nuat")
class NuATLoss(_RampLam, TrainingLoss):
    r"""NuAT's training loss: clean cross-entropy plus λ/B times the nuclear norm of the B×C matrix of clean minus
    adversarial logits (official code; batch-coupled, nothing detached).

    .. math:: L = \tfrac1B\sum_i \mathrm{CE}(f(x_i), y_i) + \tfrac{\lambda}{B}\,\lVert Z(x) - Z(x_{adv})\rVert_*

    ``B`` is the actual batch size (the code divides by its configured batch size 64, also for the smaller last
    batch). The clean logits are reused from :class:`NuATAttack` (or any attack whose passes ran in the current
    mode); otherwise one forward here. After any other attack (FGSM...) it is the same loss at that ``x_adv``.

    λ ramp: as :class:`NuATAttack` (``λ_e = lam · min(e / R, 1)`` through the trainer's hooks; ``lam`` without
    them). Strengthening after catastrophic overfitting: λ doubles.

    Args:
        lam: λ at the end of the ramp (default 4.5, the code's ``Nuc_max``).
        ramp_epochs: epochs of the linear ramp from 0; ``None`` (default): 90% of the run's epochs; 0: no ramp.
    """

    requests = frozenset({"clean_logits"})
    _repr_params: ClassVar[tuple[str, ...]] = ("lam", "ramp_epochs")
    state_attrs: ClassVar[tuple[str, ...]] = ("lam", "_epoch", "_ramp")

    def __init__(self, lam: float = 4.5, *, ramp_epochs: float | None = None) -> None:
        self.lam = check_lam("NuATLoss", lam)
        self.ramp_epochs = _check_ramp("NuATLoss", ramp_epochs)
        self._epoch: int | None = None
        self._ramp: float | None = None

    def forward(self, ctx: StepContext) -> Tensor:
        """``CE(f(x), y) + (λ/B)·‖Z(x) − Z(x_adv)‖_*``."""
        adv = at_least_fp32(ctx.adv_logits_graph())  # the code's order: adversarial forward, then clean
        clean = at_least_fp32(caller_mode_clean_logits(ctx))
        reg = nuclear_norm(clean - adv) / clean.shape[0]
        return F.cross_entropy(clean, ctx.y) + self.current_lam * reg
