r"""FGSM-N, the noise-augmented FGSM behind AdvLC's single-step results (Li & Spratling, Pattern Recognition 2023,
"Understanding and combating robust overfitting via input loss landscape analysis and regularization",
arXiv:2212.04985; official code ``TreeLLi/Combating-RO-AdvLC``, ``src/utils/train.py``, flags ``-ri --eps_step 8``).

The official code adds uniform noise to the image, treats the noisy image :math:`\tilde x` as the "clean" input
(AdvLC's regularizer compares the logits at :math:`\tilde x` and at the adversarial point) and takes one signed
step projected around :math:`\tilde x`, not around :math:`x`:

.. math:: \tilde x = \mathrm{clip}_{[0,1]}(x + \eta),\ \eta \sim U([-\epsilon,\epsilon]^d),\qquad
   x' = \mathrm{clip}_{[0,1]}\big(\tilde x + \Pi_{[-\epsilon,\epsilon]}(\alpha\,\mathrm{sign}\,
   \nabla_{\tilde x}\ell(\tilde x, y))\big),\ \alpha = \epsilon

so :math:`\lVert x' - x\rVert_\infty \le 2\epsilon`. With :math:`\alpha \le \epsilon` the projection does nothing and
FGSM-N equals N-FGSM with noise ε and step ε (``NFGSM(noise=eps, alpha=eps)``, the same random draw).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from ..context import CLEAN_POINT, CLEAN_POINT_LOGITS, CLEAN_POINT_NET, StepContext
from ..ops import input_grad
from .base import Attack, GradFn, LossFn, Magnitude, kernel, loss_grad_fn, register_attack
from .nfgsm import noisy_step

__all__ = ["FGSMN", "fgsm_n"]


@kernel
def fgsm_n(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    noise: float | None = None,
    loss_fn: LossFn | None = None,
    generator: Any = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """FGSM-N perturbation ``δ = x' − x`` (``noise`` and ``alpha`` default to ``eps``); see :class:`FGSMN`.

    ``x̃ = x + η`` with ``η ~ U[-noise, noise]`` clamped to the image box, then one signed step of ``alpha`` at ``x̃``
    projected onto the ε-box **around x̃** and the image box. ``‖δ‖∞ ≤ noise + eps``.
    """
    return noisy_step(grad_fn or loss_grad_fn(model, x, y, loss_fn), x, noise=eps if noise is None else noise,
                      alpha=eps if alpha is None else alpha, step_clip=eps, clip=None, generator=generator)  # fmt: skip


@register_attack("fgsm_n", "fgsmn", "fgsm_noise")
class FGSMN(Attack):
    r"""AdvLC's FGSM-N: one signed step of ε from a uniformly noised image ``x̃``, projected around ``x̃``.

    Follows the official code (``TreeLLi/Combating-RO-AdvLC``, ``-ri --eps_step 8``): ``x̃ = clamp01(x + U(ε))``;
    the gradient of the cross-entropy at ``x̃``; ``x' = clamp01(x̃ + clip_ε(α·sign g))``. The whole update runs in
    train mode there (the trainer's default ``attack_bn_mode="train"``). Because the ε-projection is around ``x̃``,
    ``‖x' − x‖∞`` reaches 2ε: ``bounded = False``. Cost: 1 forward + 1 backward, like FGSM-RS; the official code
    reuses that forward's logits as AdvLC's "clean" logits, so FGSM-N + AdvLC costs 2F + 2B (one backward
    traverses both forwards).

    **What it publishes** in ``ctx.extras`` (the cross-method keys of :mod:`robustfast.context`):

    * ``CLEAN_POINT``: ``x̃`` (detached), the input the official AdvLC code treats as clean;
    * ``CLEAN_POINT_LOGITS``: the logits at ``x̃`` **with their graph**, when a consumer requested
      ``"clean_logits"`` (AdvLC does), so that a regularizer honouring ``CLEAN_POINT`` needs no extra pass;
      ``CLEAN_POINT_NET``: the network that computed them. Reuse them only when the step's network is that
      network (not under DDP or ``compile``) and the model's mode matches ``ctx.attack_mode``, as for
      ``ctx.clean_logits``; otherwise run one forward at ``x̃``.

    :class:`~robustfast.AdvLC` reads ``CLEAN_POINT``: after FGSM-N it compares the logits at ``x̃`` (not at the clean
    ``x``) with those at ``x'``, as the official code does (see docs/methods/fgsm_n.md).

    Deviation: the official ``train.py`` (commit "fgsm N") passes the precomputed gradient ``ig`` positionally into
    the ``pert`` slot of ``pgd(...)``, so its step starts from ``x̃ + ig`` (``ig`` = the batch-mean gradient, about
    1/B of a per-example gradient: a fraction of a percent of ε), takes a fresh gradient there (one more forward
    and backward, in train mode) and adds ``ig`` to the perturbation. We implement the evident intent: the step at
    ``x̃`` with the gradient of the forward whose logits AdvLC reuses (the cost the paper's Table 1 suggests).

    Strengthening after catastrophic overfitting: the noise grows by ε/2 per rollback, up to 2ε (towards N-FGSM's
    k = 2ε, whose paper finds stronger noise is what prevents catastrophic overfitting); cap: 2 steps. AdvLC's own
    strengthening doubles its λ.

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius ε (default ``8/255``); the projection radius around ``x̃``.
        alpha: step size; ``None`` (default) means ``eps`` (the official ``--eps_step 8`` at ε = 8).
        noise: half-width of the uniform noise; ``None`` (default) means ``eps`` (the official ``-ri``).
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``,
            ``target_fn`` (see :class:`Attack`).
    """

    bounded: ClassVar[bool] = False
    alpha = Magnitude(1.0)
    noise = Magnitude(1.0)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "noise", "alpha")
    state_attrs: ClassVar[tuple[str, ...]] = ("noise",)

    def __init__(
        self, model: nn.Module, eps: float = 8 / 255, alpha: float | None = None, *, noise: float | None = None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(model, eps, **kwargs)
        self.alpha, self.noise = alpha, noise

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """Noise, one signed step at ``x̃`` projected around it; publishes ``x̃`` (and its logits when asked)."""
        keep = ctx.wants("clean_logits")

        def grad(eta: Tensor | None) -> Tensor:
            assert eta is not None
            point = (x + eta).detach().requires_grad_(True)
            logits = self.get_logits(point)
            g = input_grad(self.objective(logits, y), point, retain_graph=keep)
            ctx.extras[CLEAN_POINT] = point.detach()
            if keep:
                ctx.extras[CLEAN_POINT_LOGITS], ctx.extras[CLEAN_POINT_NET] = logits, ctx.model
            return g.detach()

        return x + fgsm_n(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, noise=self.noise,
                          generator=self.rng.get(x.device), grad_fn=grad)  # fmt: skip

    def _strengthen(self) -> str | None:
        if self.noise < 2 * self.eps - 1e-12:
            old, self.noise = self.noise, min(self.noise + self.eps / 2, 2 * self.eps)
            return f"noise {old:.4g} -> {self.noise:.4g}"
        return None
