r"""AdvLC, adversarial logit consistency (Li & Spratling, Pattern Recognition 2023, "Understanding and
combating robust overfitting via input loss landscape analysis and regularization"; reference code
``TreeLLi/Combating-RO-AdvLC``).

.. math:: L_{reg} = \frac{1}{B}\sum_{(i,j)\in \mathrm{top}_N} |f_j(x_i+\delta) - f_j(x_i)|

over the ``B·C`` absolute logit differences of the mini-batch (Eqs. 13–15; Algorithm 1 divides by B).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..context import CLEAN_POINT, CLEAN_POINT_LOGITS, CLEAN_POINT_NET, StepContext
from ..errors import RobustfastError
from ..losses import at_least_fp32
from ..modes import policy_matches
from .base import Regularizer, register_regularizer

__all__ = ["AdvLC", "advlc_topk"]


def advlc_topk(logits_adv: Tensor, logits_clean: Tensor, k: int) -> Tensor:
    """Sum of the ``k`` largest ``|logits_adv − logits_clean|`` over the whole batch, divided by the batch size."""
    diff = (at_least_fp32(logits_adv) - at_least_fp32(logits_clean)).abs().flatten()
    return diff.topk(min(k, diff.numel())).values.sum() / logits_adv.shape[0]


@register_regularizer("advlc", "adv_lc")
class AdvLC(Regularizer):
    r"""Penalise the largest adversarial-vs-clean logit differences of the batch: ``λ·Σ_topN |Δz| / B``.

    Neither logit pass is detached (as in the reference code). In the shared-context path the adversarial
    logits are those of the training forward, and the clean logits those of the attack when it computed
    them at the clean point with graph (FGSM, PGD without random start, SEATAttack): no extra pass.
    Otherwise one forward at the clean ``x``. No double backprop.

    Args:
        lam: weight λ (default 0.4, the paper's value for PGD10 AT without SWA; the paper uses 0.55 for
            FGSM-N, 0.5 for FGSM-N + SWA and 0.3 for PGD10 + SWA).
        top_frac: fraction of the ``B·C`` entries penalised (default 0.1: the paper's N = 100 at B = 100,
            C = 10, generalised by the code as a fraction); ``N = max(1, floor(top_frac·B·C))``.
        top_n: absolute N instead of a fraction (capped at ``B·C``).

    Note:
        The reference code's FGSM-N base attack feeds a noise-augmented ``x̃`` as the "clean" input; with
        :class:`~robustfast.FGSMN`, which publishes ``x̃`` as ``ctx.extras["clean_point"]``, so does this
        regularizer (the paper's FGSM-N rows); after any other attack the clean input is ``x``.
    """

    requests = frozenset({"clean_logits"})
    _repr_params = ("lam", "top_frac", "top_n")

    def __init__(self, lam: float = 0.4, *, top_frac: float = 0.1, top_n: int | None = None) -> None:
        super().__init__(lam)
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise RobustfastError(f"AdvLC(top_n={top_n!r}): top_n must be an integer >= 1")
        if not isinstance(top_frac, (int, float)) or not 0.0 < top_frac <= 1.0:
            raise RobustfastError(f"AdvLC(top_frac={top_frac!r}): top_frac must be in (0, 1]")
        self.top_frac, self.top_n = float(top_frac), top_n

    def k(self, n_entries: int) -> int:
        """Number of penalised entries ``N`` for a batch with ``n_entries = B·C`` logits."""
        if self.top_n is not None:
            return min(self.top_n, n_entries)
        return max(1, min(n_entries, math.floor(self.top_frac * n_entries + 1e-9)))

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """Sum of the top-N ``|z(x_adv) − z(x)|`` over the batch's logits, divided by the batch size.

        When the attack publishes another "clean" point in ``ctx.extras["clean_point"]`` (FGSM-N's noise-augmented
        ``x̃``, which the official code compares with), the logits there are used: the attack's own
        (``"clean_point_logits"``) when they were computed by the step's network in the model's current mode, else
        one forward here.
        """
        za = ctx.adv_logits_graph(model)
        point = ctx.extras.get(CLEAN_POINT)
        if point is None:
            return advlc_topk(za, ctx.clean_logits_graph(model), self.k(za.numel()))
        net = ctx.net(model)
        zc = ctx.extras.get(CLEAN_POINT_LOGITS)
        if zc is None or ctx.extras.get(CLEAN_POINT_NET) is not net or not policy_matches(net, ctx.attack_mode):
            zc = net(point)
        return advlc_topk(za, zc, self.k(za.numel()))
