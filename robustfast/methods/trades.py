r"""TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019).

arXiv: https://arxiv.org/abs/1901.08573 · official code: https://github.com/yaodongyu/TRADES (``trades.py``,
``train_trades_cifar10.py``; read at commit 6e8e11b).

The attack ascends the KL divergence between the clean and the adversarial predictions from a Gaussian start,
and the training loss trades clean accuracy for smoothness:

.. math::
   x'_0 = x + 0.001\,\xi,\ \xi\sim\mathcal N(0, I),\qquad
   x'_{k+1} = \Pi_{[x-\epsilon,x+\epsilon]\cap[0,1]}\big(x'_k + \alpha\,\mathrm{sign}\,
   \nabla_{x'} \textstyle\sum_i \mathrm{KL}(p(x_i)\,\|\,p(x'_{k,i}))\big)

.. math::
   \mathcal L = \mathrm{CE}(f(x), y) + \beta\,\frac1B\sum_i \mathrm{KL}\big(p(x_i)\,\|\,p(x'_i)\big),
   \qquad p = \mathrm{softmax}\circ f

Nothing is detached in the loss: the gradient flows through both the clean and the adversarial predictions.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks.base import Attack, Magnitude, kernel, register_attack
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import at_least_fp32, register_loss
from ..ops import input_grad
from ._gaussian_pgd import ALPHA_REL, BetaLoss, check_std, check_steps, gaussian_pgd

__all__ = ["TRADESAttack", "TRADESLoss", "trades_attack", "trades_kl"]


def trades_kl(adv_logits: Tensor, clean_logits: Tensor, reduction: str = "batchmean") -> Tensor:
    """``KL(softmax(clean) ‖ softmax(adv))`` as ``nn.KLDivLoss(log_softmax(adv), softmax(clean))`` (fp32 at least).

    ``reduction``: ``"sum"`` (the attack's objective), ``"batchmean"`` (the training loss: the sum divided by the
    batch size) or ``"none"`` (per example, summed over classes).
    """
    logp_adv = F.log_softmax(at_least_fp32(adv_logits), dim=1)
    p_clean = F.softmax(at_least_fp32(clean_logits), dim=1)
    if reduction == "none":
        return F.kl_div(logp_adv, p_clean, reduction="none").sum(dim=1)
    return F.kl_div(logp_adv, p_clean, reduction=reduction)


@kernel
def trades_attack(
    model: Any,
    x: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    init_std: float = 0.001,
    generator: torch.Generator | None = None,
    clean_logits: Tensor | None = None,
) -> Tensor:
    """TRADES's KL attack: the perturbation ``δ`` (``‖δ‖∞ ≤ eps``, ``x + δ ∈ [0, 1]``); see :class:`TRADESAttack`.

    Args:
        model: the network (run in whatever mode the caller left it in).
        x: clean inputs in ``[0, 1]``.
        eps: L∞ radius.
        alpha: step size (default ``eps · 0.007/0.031``, the official ratio).
        steps: number of signed steps (default 10).
        init_std: standard deviation of the Gaussian start (default 0.001, pixel units; not clamped to the image
            box before the first forward, as in the official code).
        generator: generator of the Gaussian start (``None``: the global RNG).
        clean_logits: the logits at ``x`` if already computed (the KL target; one forward otherwise).
    """
    if clean_logits is None:
        with torch.no_grad():
            clean_logits = model(x)
    target = F.softmax(at_least_fp32(clean_logits.detach()), dim=1)

    def kl_grad(delta: Tensor | None) -> Tensor:
        point = (x if delta is None else x + delta).detach().requires_grad_(True)
        logp = F.log_softmax(at_least_fp32(model(point)), dim=1)
        return input_grad(F.kl_div(logp, target, reduction="sum"), point)

    return gaussian_pgd(kl_grad, x, eps=eps, alpha=eps * ALPHA_REL if alpha is None else alpha, steps=steps,
                        init_std=init_std, generator=generator)  # fmt: skip


@register_attack("trades", "tpgd", "trades_kl")
class TRADESAttack(Attack):
    r"""TRADES's training attack: ``steps`` signed steps ascending ``Σ_i KL(p(x_i) ‖ p(x'_i))`` (torchattacks' TPGD).

    Follows the official ``trades_loss``: the start ``x + 0.001·N(0, I)`` is not clamped to ``[0, 1]`` before the
    first forward; each step moves by ``alpha·sign(∇)`` and projects onto the ε-box and the image box; the
    objective is the KL summed over the batch and the classes. The labels are not used.

    **Model mode.** The official attack runs in **eval** mode (``model.eval()`` inside ``trades_loss``), which is
    this class's default ``bn_mode``. :class:`~robustfast.training.AdversarialTrainer` forces
    ``attack_bn_mode="train"`` unless told otherwise: pass ``attack_bn_mode=None`` (keep the attack's own eval
    mode) to reproduce the official code.

    **Cost.** One forward at ``x`` for the KL target (under ``no_grad`` unless the training loss asked for the
    clean logits, which it then reuses when the attack ran in the model's mode), then ``steps`` × (1 forward +
    1 backward). The official code recomputes ``f(x)`` at every step (``steps`` extra forwards, same values).

    Strengthening after catastrophic overfitting: none (a multi-step attack; strengthen :class:`TRADESLoss`'s β).

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``; the official CIFAR-10 script uses 0.031 ≈ 7.9/255).
        alpha: step size; ``None`` (default) means ``eps · 0.007/0.031`` (official: 0.007 at ε = 0.031, i.e.
            ≈ 0.0071 = 1.81/255 at ε = 8/255; TRADES-AWP's script uses 2/255 at 8/255).
        steps: number of steps (default 10, official).
        init_std: standard deviation of the Gaussian start in pixel units (default 0.001, official; not scaled
            with ``eps``; 0 starts at ``x``).
        **kwargs: ``bn_mode`` (default ``"eval"``, official), ``seed``, ``generator``, ``check_range`` (see
            :class:`Attack`). ``loss_fn``, ``targeted`` and ``target_fn`` are refused: the objective is the KL
            to the clean prediction.
    """

    alpha = Magnitude(ALPHA_REL)
    default_loss_is_ce: ClassVar[bool] = False
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
        for bad in ("loss_fn", "targeted", "target_fn"):
            if kwargs.get(bad) not in (None, False):
                raise RobustfastError(
                    f"TRADESAttack({bad}=...): the TRADES attack ascends KL(p(x) ‖ p(x')) and takes no {bad}; "
                    "use PGD(model, eps, loss_fn=...) for another objective"
                )
        super().__init__(model, eps, **kwargs)
        self.alpha, self.steps = alpha, check_steps("TRADESAttack", steps)
        self.init_std = check_std("TRADESAttack", init_std)

    @property
    def randomized(self) -> bool:
        """True unless ``init_std=0``."""
        return self.init_std > 0

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """The clean forward (kept for the training loss when it asked), then the KL steps."""
        if ctx.wants("clean_logits"):
            clean = self.get_logits(x)
        else:
            with torch.no_grad():
                clean = self.get_logits(x)
        ctx.clean_logits = clean
        return x + trades_attack(self.get_logits, x, eps=self.eps, alpha=self.alpha, steps=self.steps,
                                 init_std=self.init_std, generator=self.rng.get(x.device),
                                 clean_logits=clean)  # fmt: skip


@register_loss("trades")
class TRADESLoss(BetaLoss):
    r"""TRADES's training loss ``CE(f(x), y) + β · KL_batchmean(p(x) ‖ p(x_adv))``, nothing detached.

    As the official ``trades_loss``: the cross-entropy on the **clean** logits plus β times the KL divergence
    summed over the batch and the classes and divided by the batch size; the target ``p(x)`` keeps its graph.
    The official code forwards ``x`` twice in train mode (once for the CE, once for the KL target); here one
    forward serves both (same values and gradients; BatchNorm's running statistics see ``x`` once instead of
    twice), and it is the attack's own clean forward when the attack ran in the model's current mode.

    Works after any attack (it needs only ``x`` and ``x_adv``). ``ctx.extras["trades_kl"]`` holds the KL term
    (detached). Cost over the attack: the forward at ``x_adv`` (+ the clean forward unless reused) and the
    backward through both.

    Strengthening after catastrophic overfitting: β doubles (more weight on the smoothness term; multi-step
    TRADES rarely overfits catastrophically, short-step variants may), at most twice (4× its start).

    Args:
        beta: weight β of the KL term (default 6, the official CIFAR-10 value; the flag's help calls it 1/λ).
    """

    requests = frozenset({"clean_logits"})

    def forward(self, ctx: StepContext) -> Tensor:
        """``CE(f(x), y) + β · KL_batchmean(p(x) ‖ p(x_adv))``."""
        ctx.forget_stale(ctx.net())
        clean = ctx.clean_logits_graph()
        adv = ctx.adv_logits_graph()
        kl = trades_kl(adv, clean, "batchmean")
        ctx.extras["trades_kl"] = kl.detach()
        return F.cross_entropy(at_least_fp32(clean), ctx.y) + self.beta * kl
