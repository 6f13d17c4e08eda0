r"""GAT: Guided Adversarial Training (Sriramanan, Addepalli, Baburaj & Babu, NeurIPS 2020).

Paper: "Guided Adversarial Attack for Evaluating and Enhancing Adversarial Defenses", arXiv:2011.14969.
Official code: ``val-iisc/GAMA-GAT``, ``CIFAR10/GAT_cifar10.py`` (this module follows that script, which produced
the README numbers).

The attack is one signed step of size ``α = ε`` from a Bernoulli start ``x_0 = clip(x ± ε/2)`` on the cross-entropy
plus, on every other iteration, λ times the squared distance between the clean and the perturbed softmax:

.. math:: J(x_0) = \mathrm{CE}(f(x_0), y) + [k \text{ odd}]\ \lambda\,\lVert p(x) - p(x_0)\rVert_2^2,\quad
   p = \mathrm{softmax}\circ f,\quad
   \delta = \Pi_\epsilon\big(\mathrm{clip}_{[0,1]}(x_0 + \alpha\,\mathrm{sign}\,\nabla_{x_0} J) - x\big)

(``k`` counts the minibatches of the epoch from 0). The training loss is the **clean** cross-entropy plus the same
distance at the adversarial point, averaged over the batch (nothing detached):

.. math:: L = \tfrac1B\sum_i \mathrm{CE}(f(x_i), y_i) + \lambda\,\tfrac1B\sum_i
   \lVert p(x_i) - p(x_{adv,i})\rVert_2^2

with λ = 10, multiplied by 4 from epoch 86 on (0-indexed; the code multiplies after epoch 85), ResNet-18, batch 64,
100 epochs, SGD lr 0.1 divided by 10 after epochs 70 and 85.

The attack's forward at ``x_0`` runs in eval mode (``model.eval()`` in the code); the guide ``p(x)`` comes from the
clean forward the code runs in train mode before the attack. :class:`GATAttack` computes the guide in the mode the
model is in when the attack is called (``train()`` inside the trainer), publishes it for :class:`GATLoss` (which
reuses it instead of a second clean forward), and runs its own forward in its ``bn_mode`` (``"eval"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_number
from ..attacks.base import LossFn, kernel, register_attack
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import TrainingLoss, at_least_fp32, register_loss
from ..regularizers.base import check_lam
from ._guided import EpochLam, GuidedAttack, caller_mode_clean_logits, guided_step

__all__ = ["GATAttack", "GATLoss", "gat"]


# ------------------------------------------------------------------------------------------ kernel
def _softmax(logits: Tensor) -> Tensor:
    return at_least_fp32(logits).softmax(1)


def _softmax_sq_distance(guide: Tensor, logits: Tensor) -> Tensor:
    """``Σ_i ‖guide_i − softmax f(x_0)_i‖²`` (the guide is the clean softmax)."""
    return (guide - _softmax(logits)).pow(2).sum()


@kernel
def gat(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    init: float | None = None,
    lam: float = 10.0,
    guide: Tensor | None = None,
    loss_fn: LossFn | None = None,
    generator: Any = None,
) -> Tensor:
    """GAT's guided single-step perturbation ``δ``; see :class:`GATAttack`.

    Args:
        model: pixel-space classifier (its mode is the caller's).
        x: clean inputs in ``[0, 1]``. y: labels.
        eps: L∞ radius. alpha: step (default ``eps``). init: radius of the ``±init`` Bernoulli start (default
            ``eps / 2``; the code's ``B_val = 4/255`` at ε = 8/255).
        lam: weight of the guide term (0: plain cross-entropy, the code's even iterations).
        guide: clean softmax probabilities ``(N, C)``, detached; computed here from ``model(x)`` when ``lam > 0``
            and not given.
        loss_fn: per-sample objective replacing the cross-entropy. generator: for the random start.
    """
    return guided_step(model, x, y, eps=eps, alpha=alpha, init=init, lam=lam, guide=guide, guide_of=_softmax,
                       distance=_softmax_sq_distance, loss_fn=loss_fn, generator=generator)  # fmt: skip


# ------------------------------------------------------------------------------------------ λ schedule
def check_milestones(owner: str, milestones: Any) -> tuple[int, ...]:
    """Increasing epoch indices ``>= 0`` (a list from YAML is accepted)."""
    ok = isinstance(milestones, Iterable) and not isinstance(milestones, (str, bytes))
    ms = list(milestones) if ok else []
    if not ok or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in ms) or ms != sorted(set(ms)):
        raise RobustfastError(
            f"{owner}(lam_milestones={milestones!r}): expected increasing epoch indices >= 0, e.g. (86,) for "
            "the official '×4 after epoch 85'"
        )
    return tuple(ms)


def check_positive(owner: str, name: str, value: Any) -> float:
    """A finite number ``> 0``."""
    return check_number(owner, name, value, 0.0, lo_open=True)  # type: ignore[return-value]


class _MilestoneLam(EpochLam):
    lam_milestones: tuple[int, ...]
    lam_factor: float

    @property
    def current_lam(self) -> float:
        """``lam · lam_factor^k``, k = number of milestones ``<=`` the current epoch."""
        if self._epoch is None:
            return self.lam
        return self.lam * self.lam_factor ** sum(self._epoch >= m for m in self.lam_milestones)


# ------------------------------------------------------------------------------------------ classes
@register_attack("gat")
class GATAttack(_MilestoneLam, GuidedAttack):
    r"""GAT's training attack: one signed step of ``alpha`` from a ``±init`` Bernoulli start on
    ``CE + λ‖p(x) − p(x0)‖²`` (``p`` = softmax), the λ term on odd minibatches of each epoch (official code).

    Cost: 1 forward + 1 backward, plus the clean forward for the guide (on odd minibatches, or always when the
    training loss wants the clean logits: :class:`GATLoss` then reuses that forward, so a GAT training step costs
    3 forwards + 3 backward traversals, against about 4 + 4 in the official code).

    Modes: the attack's own forward runs in its ``bn_mode`` (``"eval"``, as the official code); the guide runs in
    the mode the model was in when the attack was called. Note that ``AdversarialTrainer`` forces
    ``attack_bn_mode="train"`` unless you pass ``attack_bn_mode=None``, which keeps GAT's eval-mode attack.

    λ schedule: ``on_epoch_start`` (a trainer hook) sets the epoch; λ is multiplied by ``lam_factor`` at each
    epoch of ``lam_milestones`` (the code: ``(86,)`` with factor 4 over 100 epochs; the default ``()`` keeps λ
    constant). Give the loss the same schedule. The minibatch counter (``_iter``) restarts at every epoch start.

    Strengthening after catastrophic overfitting: λ doubles, at most twice (4× its start).

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``); the final perturbation is clipped to it.
        alpha: step size; ``None`` (default) means ``eps`` (the code's ``Feps``).
        init: radius of the Bernoulli start; ``None`` (default) means ``eps / 2`` (the code's ``B_val = 4``).
        lam: λ of the guide term (default 10, the code's ``l2_reg``).
        lam_milestones: epochs (0-indexed) from which λ is multiplied by ``lam_factor`` (default ``()``).
        lam_factor: the multiplier (default 4, the code's ``mul``).
        alternate: use the λ term on odd minibatches only (default True, the code); False: on every one.
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``, ``target_fn``
            (see :class:`~robustfast.Attack`).

    Example:
        >>> atk = GATAttack(model, eps=8/255, lam=10, lam_milestones=(86,))
        >>> trainer = AdversarialTrainer(model, atk, criterion=GATLoss(10, lam_milestones=(86,)),
        ...                              attack_bn_mode=None)
    """

    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "init", "lam", "lam_milestones")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        *,
        init: float | None = None,
        lam: float = 10.0,
        lam_milestones: Sequence[int] = (),
        lam_factor: float = 4.0,
        alternate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, alpha, init=init, lam=lam, alternate=alternate, **kwargs)
        self.lam_milestones = check_milestones(type(self).__name__, lam_milestones)
        self.lam_factor = check_positive(type(self).__name__, "lam_factor", lam_factor)

    guide_of = staticmethod(_softmax)
    distance = staticmethod(_softmax_sq_distance)


@register_loss("gat")
class GATLoss(_MilestoneLam, TrainingLoss):
    r"""GAT's training loss: clean cross-entropy plus λ times the mean squared L2 distance between the clean and
    the adversarial softmax outputs (official code; the cross-entropy is on the **clean** input only).

    .. math:: L = \tfrac1B\sum_i \mathrm{CE}(f(x_i), y_i) + \lambda\,\tfrac1B\sum_i
       \lVert \mathrm{softmax} f(x_i) - \mathrm{softmax} f(x_{adv,i})\rVert_2^2

    Both outputs keep their graph. The clean logits are reused from :class:`GATAttack` (which computes them in the
    mode the model is in) or from any attack whose passes ran in the current mode; otherwise one forward here.
    After any attack (FGSM...) it is clean CE + λ·distance at that attack's ``x_adv``.

    λ schedule: as :class:`GATAttack` (``lam_milestones``, ``lam_factor``, driven by the ``on_epoch_start`` hook).
    Strengthening after catastrophic overfitting: λ doubles, at most twice (4× its start).

    Args:
        lam: λ (default 10, the code's ``l2_reg``).
        lam_milestones: epochs (0-indexed) from which λ is multiplied by ``lam_factor`` (default ``()``; the
            official 100-epoch recipe: ``(86,)``).
        lam_factor: the multiplier (default 4).
    """

    requests = frozenset({"clean_logits"})
    _repr_params: ClassVar[tuple[str, ...]] = ("lam", "lam_milestones", "lam_factor")
    state_attrs: ClassVar[tuple[str, ...]] = ("lam", "_epoch")

    def __init__(self, lam: float = 10.0, *, lam_milestones: Sequence[int] = (), lam_factor: float = 4.0) -> None:
        self.lam = check_lam("GATLoss", lam)
        self.lam_milestones = check_milestones("GATLoss", lam_milestones)
        self.lam_factor = check_positive("GATLoss", "lam_factor", lam_factor)
        self._epoch: int | None = None

    def forward(self, ctx: StepContext) -> Tensor:
        """``CE(f(x), y) + λ · mean_i ‖softmax f(x_i) − softmax f(x_adv,i)‖²``."""
        adv = at_least_fp32(ctx.adv_logits_graph())  # the code's order: adversarial forward, then clean
        clean = at_least_fp32(caller_mode_clean_logits(ctx))
        dist = (clean.softmax(1) - adv.softmax(1)).pow(2).sum(1).mean()
        return F.cross_entropy(clean, ctx.y) + self.current_lam * dist
