r"""MART (Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified Examples", ICLR 2020).

OpenReview: https://openreview.net/forum?id=rklOg6EFwS · official code: https://github.com/YisenWang/MART
(``mart.py``, ``train_wideresnet.py``, ``train_resnet.py``; read at commit 2d83e17).

The attack is PGD on the cross-entropy from a Gaussian start (eval mode in the official code). The loss boosts the
adversarial cross-entropy with a margin term on the hardest wrong class and weights the KL divergence between the
clean and adversarial predictions by how badly the clean example is classified:

.. math::
   \mathcal L = \underbrace{\mathrm{CE}(f(x'), y) - \frac1B\sum_i \log\big(1.0001 - p'_{i,\hat y_i} + 10^{-12}\big)}_
   {\text{BCE}}
   + \beta\,\frac1B\sum_i \mathrm{KL}\big(p(x_i)\,\|\,p(x'_i)\big)\,\big(1.0000001 - p_{i,y_i}(x_i)\big)

with :math:`p = \mathrm{softmax} f(x)`, :math:`p' = \mathrm{softmax} f(x')`, :math:`\hat y_i` the most likely
class of :math:`p'_i` other than :math:`y_i`, and the KL taken as
:math:`\sum_c p_{ic}(\log p_{ic} - \log(p'_{ic} + 10^{-12}))`. Nothing is detached: the weight
:math:`1 - p_y(x)` also receives gradient.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks.base import Attack, GradFn, LossFn, Magnitude, kernel, loss_grad_fn, register_attack
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import at_least_fp32, register_loss
from ._gaussian_pgd import ALPHA_REL, BetaLoss, check_std, check_steps, gaussian_pgd

__all__ = ["MARTAttack", "MARTLoss", "mart_attack", "mart_loss"]


def _mart_terms(adv_logits: Tensor, clean_logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The official MART loss's two terms: the boosted CE at ``x_adv`` and the weighted KL (before β)."""
    adv, clean = at_least_fp32(adv_logits), at_least_fp32(clean_logits)
    adv_probs = F.softmax(adv, dim=1)
    top2 = adv_probs.topk(2, dim=1).indices
    hardest_wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    bce = F.cross_entropy(adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), hardest_wrong)
    nat_probs = F.softmax(clean, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    return bce, (kl * (1.0000001 - true_probs)).mean()


def mart_loss(adv_logits: Tensor, clean_logits: Tensor, y: Tensor, beta: float = 6.0) -> Tensor:
    """The official MART loss from the two sets of logits (scalar; computed in fp32 at least); see :class:`MARTLoss`."""
    bce, weighted_kl = _mart_terms(adv_logits, clean_logits, y)
    return bce + beta * weighted_kl


@kernel
def mart_attack(
    model: Any,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    init_std: float = 0.001,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """MART's attack: PGD from ``x + init_std·N(0, I)``; returns ``δ`` (``‖δ‖∞ ≤ eps``); see :class:`MARTAttack`.

    ``alpha`` defaults to ``eps · 0.007/0.031`` (the official ratio); ``loss_fn`` is the per-sample objective to
    ascend (default: cross-entropy). With ``init_std=0`` the first gradient is taken at the clean ``x``.
    """
    return gaussian_pgd(grad_fn or loss_grad_fn(model, x, y, loss_fn), x, eps=eps,
                        alpha=eps * ALPHA_REL if alpha is None else alpha, steps=steps, init_std=init_std,
                        generator=generator)  # fmt: skip


@register_attack("mart", "mart_pgd")
class MARTAttack(Attack):
    r"""MART's training attack: PGD on the cross-entropy from a Gaussian start ``x + 0.001·N(0, I)``.

    As the official ``mart_loss``: the start is not clamped to ``[0, 1]`` before the first forward, each of the
    ``steps`` steps moves by ``alpha·sign(∇ CE)`` and projects onto the ε-box and the image box. The official
    code averages the CE over the batch before differentiating; the sign of the gradient is the same.

    It differs from :class:`~robustfast.PGD` only in the start (``PGD(random_start=False)`` starts at ``x``,
    ``random_start=True`` from ``U(-ε, ε)``); the 0.001 Gaussian start is small against the step (0.007), so
    ``PGD(model, eps, alpha, 10, random_start=False)`` is a close substitute, and this class is the exact one.

    **Model mode.** The official attack runs in **eval** mode (the class's default ``bn_mode``);
    :class:`~robustfast.training.AdversarialTrainer` forces ``attack_bn_mode="train"`` unless you pass
    ``attack_bn_mode=None``.

    Cost: ``steps`` × (1 forward + 1 backward). Strengthening after catastrophic overfitting: none (multi-step;
    strengthen :class:`MARTLoss`'s β).

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``; the official scripts use 0.031 ≈ 7.9/255).
        alpha: step size; ``None`` (default) means ``eps · 0.007/0.031`` (official: 0.007 at ε = 0.031).
        steps: number of steps (default 10, official).
        init_std: standard deviation of the Gaussian start, pixel units (default 0.001, official; 0 starts at
            ``x`` and then shares the clean gradient like PGD without random start).
        **kwargs: ``loss_fn``, ``bn_mode`` (default ``"eval"``, official), ``seed``, ``generator``,
            ``check_range``, ``targeted``, ``target_fn`` (see :class:`Attack`).
    """

    alpha = Magnitude(ALPHA_REL)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "steps", "init_std")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 10,
        *,
        init_std: float = 0.001,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        self.alpha, self.steps = alpha, check_steps("MARTAttack", steps)
        self.init_std = check_std("MARTAttack", init_std)

    @property
    def randomized(self) -> bool:
        """True with a Gaussian start (``init_std > 0``) or random targets."""
        return self.init_std > 0 or self.target_fn == "random"

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """PGD steps from the Gaussian start."""
        return x + mart_attack(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                               init_std=self.init_std, loss_fn=self.objective, generator=self.rng.get(x.device),
                               grad_fn=self.grad_fn(x, y, ctx))  # fmt: skip


@register_loss("mart")
class MARTLoss(BetaLoss):
    r"""MART's training loss: BCE on ``x_adv`` + β · mean[KL(p(x) ‖ p(x_adv)) · (1 − p_y(x))], as the official code.

    * BCE: ``CE(f(x_adv), y) − mean_i log(1.0001 − p'_{i,ŷ_i} + 1e-12)`` with ``ŷ_i`` the most likely wrong class
      of the adversarial prediction ``p'_i``;
    * the KL per example is ``Σ_c p_c (log p_c − log(p'_c + 1e-12))``, weighted by ``1.0000001 − p_y(x)`` and
      averaged over the batch (the official ``(1/B)·Σ``).

    Nothing is detached. Needs the clean logits (reused from the attack when it computed them with their graph in
    the model's current mode; else one forward) and the training forward at ``x_adv``. Works after any attack.
    ``ctx.extras["mart_weighted_kl"]`` holds the β-free robust term (detached).

    Strengthening after catastrophic overfitting: β doubles, at most twice (4× its start).

    Args:
        beta: weight β of the misclassification-aware KL (default 6: the official WRN-34-10 script; the
            ResNet-18 script uses 5).
    """

    requests = frozenset({"clean_logits"})

    def forward(self, ctx: StepContext) -> Tensor:
        """The MART loss on the record (clean logits and the training forward at ``x_adv``)."""
        ctx.forget_stale(ctx.net())
        clean, adv = ctx.clean_logits_graph(), ctx.adv_logits_graph()
        if adv.shape[1] < 2:
            raise RobustfastError(f"MARTLoss needs at least 2 classes, got logits of shape {tuple(adv.shape)}")
        bce, weighted_kl = _mart_terms(adv, clean, ctx.y)
        ctx.extras["mart_weighted_kl"] = weighted_kl.detach()
        return bce + self.beta * weighted_kl
