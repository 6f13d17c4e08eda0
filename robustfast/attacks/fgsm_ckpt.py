r"""FGSM-CKPT (Kim, Lee & Lee, "Understanding Catastrophic Overfitting in Single-step Adversarial Training", AAAI 2021,
arXiv:2010.01799; official code ``Harry24k/catastrophic-overfitting``, ``COAdvTrainer`` and ``CustomFFGSM``).

After an FGSM-RS step :math:`\delta` (random start included), the points :math:`x + \tfrac{k}{c}\delta`,
:math:`k = 1, \dots, c-1`, are checked without gradients, and training uses the first one the model misclassifies:

.. math:: \eta \sim U([-\epsilon,\epsilon]^d),\quad
   \delta = \Pi\big(\eta + \alpha\,\mathrm{sign}\,\nabla_x\ell(x+\eta, y)\big),\quad
   x_{tr} = \begin{cases} x & f(x+\eta) \ne y \\
   x + \tfrac{k^*}{c}\delta,\ k^* = \min\{k < c : f(x + \tfrac{k}{c}\delta) \ne y\} & \text{if one exists} \\
   x + \delta & \text{otherwise.} \end{cases}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy
from ..modes import model_mode
from ..ops import bcast, clip_delta, input_grad, uniform_start
from .base import Attack, LossFn, Magnitude, kernel, register_attack

__all__ = ["FGSMCKPT", "fgsm_ckpt"]


def _misclassified(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y


@kernel
def fgsm_ckpt(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    c: int = 3,
    loss_fn: LossFn | None = None,
    generator: Any = None,
    predict: Callable[[Tensor], Tensor] | None = None,
    targeted: bool = False,
) -> Tensor:
    """FGSM-CKPT training perturbation (``alpha`` defaults to ``1.25 * eps``, i.e. 10/255 at 8/255); see
    :class:`FGSMCKPT`.

    ``loss_fn`` is the per-sample objective ascended (default cross-entropy). ``predict`` runs the checkpoint
    forward (default: ``model``); it is called once, under ``torch.no_grad()``, on the ``(c−1)·n`` candidates of the
    ``n`` examples still correctly classified at ``x + η`` (not at all when there are none). ``targeted``: an
    example counts as "misclassified" when it reaches its target ``y``.
    """
    fn = loss_fn or cross_entropy
    alpha = 1.25 * eps if alpha is None else alpha
    eta = uniform_start(x, eps, generator)
    point = (x + eta).detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(point)
        g = input_grad(fn(logits, y), point)
    delta = clip_delta(eta + alpha * g.sign(), x, eps)
    wrong = _misclassified(logits.detach(), y, targeted)  # judged at the noisy start x + η (official code)
    out = torch.where(bcast(wrong, x), torch.zeros_like(delta), delta)
    keep = (~wrong).nonzero().squeeze(1)
    if c > 1 and keep.numel():
        d, xs, ys, n = delta[keep], x[keep], y[keep], keep.numel()
        steps = [k * (d / c) for k in range(1, c)]  # official order of operations
        with torch.no_grad():
            preds = (predict or model)(torch.cat([xs + s for s in steps]))
        hit = _misclassified(preds, ys.repeat(c - 1), targeted).view(c - 1, n)
        found = hit.any(0)
        first = hit.float().argmax(0)  # index of the first misclassified checkpoint (0 when none)
        chosen = torch.stack(steps)[first, torch.arange(n, device=x.device)]
        out[keep] = torch.where(bcast(found, d), chosen, d)
    return out


@register_attack("fgsm_ckpt", "fgsmckpt", "ckpt", "ssat")
class FGSMCKPT(Attack):
    r"""FGSM-RS, then train on the first misclassified checkpoint ``x + k·δ/c`` (k = 1…c−1), else on ``x + δ``.

    Follows the official code (``Harry24k/catastrophic-overfitting``): the FGSM-RS step (uniform start clamped to the
    image box, step ``alpha``, projected) gives ``δ`` (random start included). An example already misclassified at
    the noisy start ``x + η`` is trained on the **clean** ``x``. For the others, the ``c − 1`` checkpoints
    ``x + k·δ/c`` are classified without gradients in **one** batched forward, and the example is trained on the
    first misclassified one, or on ``x + δ`` when none is. The checkpoints are convex combinations of ``x`` and
    ``x + δ``, so they stay inside the ε-ball and the image box.

    Modes: the official attack runs entirely in **eval** mode (torchattacks 2.12 switches the model). Here the
    checkpoint forward runs in ``checkpoint_bn_mode`` (default ``"eval"``, as the official code and FastAT_Benchmark)
    and the gradient forward in the attack's ``bn_mode``. The trainer forces ``attack_bn_mode="train"``; pass
    ``attack_bn_mode=None`` to ``AdversarialTrainer`` to keep this attack's default ``bn_mode="eval"`` (the official
    setting; FastAT_Benchmark's ``ssat`` runs the gradient forward in train mode).

    Cost: 1 forward + 1 backward (FGSM-RS) + 1 no-grad forward over at most ``(c − 1)·B`` images (skipped when no
    example is correctly classified at ``x + η``): a training step is 3F + 2B, the third forward being gradient-free
    and ``c − 1`` batches wide.

    Strengthening after catastrophic overfitting: ``c`` doubles (3 → 6 → 12, at most 16; cap: 3 steps). Finer
    checkpoints find the smallest misclassifying perturbation more precisely, which is the method's defence against
    the distorted decision boundary the paper links to catastrophic overfitting.

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``).
        alpha: FGSM-RS step; ``None`` (default) means ``1.25 * eps`` (10/255 at 8/255, the official default).
        c: number of checkpoints (default 3, official); ``c = 1`` keeps only the "misclassified at ``x + η`` →
            clean" rule.
        checkpoint_bn_mode: mode of the checkpoint forward: ``"eval"`` (default, official) or ``"inherit"`` (the
            attack's own ``bn_mode``).
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``,
            ``target_fn`` (see :class:`Attack`).
    """

    alpha = Magnitude(1.25)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "c")
    state_attrs: ClassVar[tuple[str, ...]] = ("c",)
    max_strength: ClassVar[int] = 3
    max_c: ClassVar[int] = 16

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        c: int = 3,
        *,
        checkpoint_bn_mode: str = "eval",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise RobustfastError(f"FGSMCKPT(c={c!r}): c is the number of checkpoints, an integer >= 1 (official: 3)")
        if checkpoint_bn_mode not in ("eval", "inherit"):
            raise RobustfastError(f"FGSMCKPT(checkpoint_bn_mode={checkpoint_bn_mode!r}): choose 'eval' (official) or "
                                  "'inherit' (the attack's bn_mode)")  # fmt: skip
        self.alpha, self.c, self.checkpoint_bn_mode = alpha, c, checkpoint_bn_mode

    def _predict(self, x: Tensor) -> Tensor:
        if self.checkpoint_bn_mode == "inherit":
            return self.get_logits(x)
        with model_mode(self.model, "eval"):
            return self.get_logits(x)

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """FGSM-RS, then the first misclassified checkpoint (clean ``x`` if misclassified at ``x + η``)."""
        return x + fgsm_ckpt(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, c=self.c, loss_fn=self.objective,
                             generator=self.rng.get(x.device), predict=self._predict,
                             targeted=self.targeted)  # fmt: skip

    def _strengthen(self) -> str | None:
        if self.c >= self.max_c:
            return None
        old, self.c = self.c, min(2 * self.c, self.max_c)
        return f"c {old} -> {self.c}"
