r"""N-FGSM (de Jorge et al., NeurIPS 2022): stronger noise and no projection onto the ε-ball.

.. math:: \eta \sim U([-k,k]^d),\ k = 2\epsilon,\quad
   \delta = \eta + \alpha\,\mathrm{sign}\,\nabla_x \ell(x+\eta, y),\ \alpha=\epsilon
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from ..context import StepContext
from ..ops import clip_delta, uniform_start
from .base import Attack, GradFn, LossFn, Magnitude, kernel, loss_grad_fn, register_attack

__all__ = ["NFGSM", "nfgsm", "noisy_step"]


def noisy_step(
    grad: GradFn, x: Tensor, *, noise: float, alpha: float, step_clip: float | None, clip: float | None,
    generator: Any = None,
) -> Tensor:  # fmt: skip
    """One signed step from uniform noise, the kernel N-FGSM and AdvLC's FGSM-N share:
    ``η ~ U[-noise, noise]`` (``x + η`` kept in ``[0, 1]``), ``s = alpha·sign ∇ℓ(x + η)`` clipped to ``step_clip``
    when given (FGSM-N's projection around ``x + η``), ``δ = η + s`` projected onto ``clip`` when given and the image
    box."""
    eta = uniform_start(x, noise, generator)
    step = alpha * grad(eta).sign()
    if step_clip is not None:
        step = step.clamp(-step_clip, step_clip)
    return clip_delta(eta + step, x, clip)


@kernel
def nfgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    noise: float | None = None,
    clip: float | None = None,
    loss_fn: LossFn | None = None,
    generator: Any = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """N-FGSM perturbation ``δ = η + α·sign ∇ℓ(x+η)`` (``noise`` default ``2*eps``, ``alpha`` default ``eps``,
    projected onto ``clip`` only when given); see :class:`NFGSM`."""
    grad = grad_fn or loss_grad_fn(model, x, y, loss_fn)
    return noisy_step(grad, x, noise=2.0 * eps if noise is None else noise, alpha=eps if alpha is None else alpha,
                      step_clip=None, clip=clip, generator=generator)  # fmt: skip


@register_attack("nfgsm", "n_fgsm")
class NFGSM(Attack):
    r"""Noise-augmented FGSM: ``δ = η + α·sign(∇ℓ(x+η))`` with ``η ~ U[-2ε, 2ε]``, **not** projected to ε.

    By design ``‖δ‖∞`` can reach ``noise + alpha`` (3ε with the defaults); only the image box ``[0, 1]`` is
    enforced. Cost: 1 forward + 1 backward, like FGSM-RS. Not to be confused with AdvLC's "FGSM-N".
    Strengthening after catastrophic overfitting: the noise grows by ε per rollback, up to 4ε (the paper's
    remedy at larger ε is more noise); cap: 2 steps (4ε from the default 2ε).

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: the threat-model radius ε (default ``8/255``); sets the defaults below.
        alpha: step size; ``None`` (default) means ``eps`` (every script of the official code).
        noise: half-width ``k`` of the uniform noise; ``None`` (default) means ``2 * eps`` (paper's k=2ε).
        clip: optional projection radius; ``None`` (default) = no projection, as in the paper.
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``,
            ``target_fn`` (see :class:`Attack`).
    """

    bounded: ClassVar[bool] = False
    alpha = Magnitude(1.0)
    noise = Magnitude(2.0)
    clip = Magnitude(optional=True)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "noise", "alpha", "clip")
    state_attrs: ClassVar[tuple[str, ...]] = ("noise",)

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        *,
        noise: float | None = None,
        clip: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        self.noise, self.alpha, self.clip = noise, alpha, clip

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """Noise ``U[-noise, noise]``, one signed step of ``alpha`` at ``x + η``; only [0, 1] is enforced."""
        return x + nfgsm(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, noise=self.noise, clip=self.clip,
                         generator=self.rng.get(x.device), grad_fn=self.grad_fn(x, y, ctx))  # fmt: skip

    def _strengthen(self) -> str | None:
        if self.noise < 4 * self.eps - 1e-12:
            old, self.noise = self.noise, min(self.noise + self.eps, 4 * self.eps)
            return f"noise {old:.4g} -> {self.noise:.4g}"
        return None
