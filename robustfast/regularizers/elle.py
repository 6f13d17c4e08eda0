r"""ELLE and ELLE-A (Abad Rocamora, Liu, Chrysos, Olmos & Cevher, ICLR 2024, "Efficient local linearity
regularization to overcome catastrophic overfitting"; official code ``LIONS-EPFL/ELLE`` ``core/utils/train.py``).

.. math:: x_a, x_b = x + \epsilon\,U(-1, 1)^d,\quad \alpha_i \sim U(0, 1),\quad x_c = (1-\alpha)x_a + \alpha x_b

.. math:: \mathrm{lin\_err} = \frac1B \sum_i \big(\ell(x_{c,i}) - (1-\alpha_i)\,\ell(x_{a,i})
   - \alpha_i\,\ell(x_{b,i})\big)^2

added as ``λ·lin_err`` to the training loss: the loss must be linear along random segments of the ε-ball. One
forward over the ``3B`` concatenated points, no double backpropagation.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._checks import as_magnitude
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy
from ..ops import uniform_like
from ..rng import SeededRNG
from ._adaptive import AdaptiveWeight
from .base import Regularizer, check_lam, register_regularizer

__all__ = ["ELLE", "ELLEA", "elle_lin_err"]


def elle_lin_err(model: Any, x: Tensor, y: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """ELLE's linearity error on one random triplet per example (one forward over the ``3B`` points).

    ``x_a``, ``x_b`` are uniform in the ε-box around ``x`` (not clamped to ``[0, 1]``, as the official code), and
    ``α`` is drawn per example. Returns the scalar mean of the squared errors (``MSELoss``).
    """
    xa = x + uniform_like(x, eps, generator)
    xb = x + uniform_like(x, eps, generator)
    a = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    ab = a.view(-1, *([1] * (x.dim() - 1)))
    xc = (1 - ab) * xa + ab * xb
    losses = cross_entropy(model(torch.cat([xa, xb, xc])), y.repeat(3))
    la, lb, lc = losses.chunk(3)
    return (lc - (1 - a) * la - a * lb).pow(2).mean()


@register_regularizer("elle")
class ELLE(Regularizer):
    r"""Efficient local linearity regularization: ``λ·mean_i (ℓ(x_c) − (1−α)ℓ(x_a) − αℓ(x_b))²``.

    Follows the official code: two independent uniform points of the ε-box (not clamped to ``[0, 1]``), α per
    example, one forward over the ``3B`` batch (BatchNorm statistics over the three points together), the mean
    squared error over the batch; nothing detached. The paper pairs it with FGSM from the clean point, α = ε
    (``FGSM(model, eps)``). Cost: one forward over ``3B`` and its backward, no double backprop (compare exact
    GradAlign's double backward in ``benchmarks/step_cost.py``).

    Not FastAT_Benchmark's version, which uses λ = 1 (about 1000 times too small) and FGSM-RS at 1.25ε without
    projection as the base attack; one of its three seeds overfits catastrophically (AutoAttack 3.3%).

    Strengthening after catastrophic overfitting: λ doubles, at most twice (4× its start).

    Args:
        eps: radius of the uniform points in pixel units (default ``8/255``; use the training ε).
        lam: weight λ; ``None`` (default) uses the official scripts' value for ``eps`` (:meth:`paper_lambda`:
            1000 for ε ≤ 8/255, 5000 up to 20/255, 10000 above).
        seed: seeds a private generator for the points and α (``None``: the global RNG).
    """

    needs_x_adv: ClassVar[bool] = False
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "lam")
    state_attrs: ClassVar[tuple[str, ...]] = ("rng",)

    def __init__(self, eps: float = 8 / 255, lam: float | None = None, *, seed: int | None = None) -> None:
        self.eps = float(as_magnitude(type(self).__name__, "eps", eps, allow_none=False))  # type: ignore[arg-type]
        super().__init__(self.paper_lambda(self.eps) if lam is None else lam)
        self.rng = SeededRNG(seed, owner=type(self).__name__)
        self.last_lin_err: float | None = None

    @staticmethod
    def paper_lambda(eps: float) -> float:
        """λ of the official ELLE scripts for ``eps`` in pixel units: 1000 (ε ≤ 8/255), 5000 (≤ 20/255), 10000."""
        e = float(as_magnitude("ELLE.paper_lambda", "eps", eps, allow_none=False)) * 255  # type: ignore[arg-type]
        return 1000.0 if e <= 8 + 1e-6 else 5000.0 if e <= 20 + 1e-6 else 10000.0

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """The linearity error on one random triplet per example."""
        err = elle_lin_err(model, ctx.x.detach(), ctx.y, self.eps, self.rng.get(ctx.x.device))
        self.last_lin_err = float(err.detach())
        return err


@register_regularizer("elle_a", "ellea")
class ELLEA(ELLE):
    r"""ELLE-A: ELLE with λ adapted online, so that no λ needs tuning.

    λ starts at 0. After every training step (model in ``train()`` mode) with linearity error ``e``: if at least
    three earlier values exist and ``e > mean + 2·std`` of all earlier values, λ jumps to its maximum; otherwise
    ``λ ← 0.99·λ``. The value is appended after the comparison and the new λ applies from the next step
    (``LIONS-EPFL/ELLE``'s on/off schedule; FastAT_Benchmark appends before comparing). The history is kept as
    running moments in the regularizer's state, so a resumed run continues it exactly. The current λ is logged as
    ``lam_ellea`` in the trainer's history, the weight the last step applied as ``lam_applied_ellea``.

    **The weight, bounded from the data.** The official code jumps to the constant ``lam_max = 4000`` at every ε, a
    value set for PreAct ResNet-18 on CIFAR-10. The size of the linearity error's gradient is not a property of the
    method but of the model and the data: the λ at which the penalty pushes the weights as hard as the training loss
    was 42 to 15,000 on the small CNNs of our tests (digits and Fashion-MNIST at ε = 0.1-0.2), so 4000 is 15× the
    training loss's push on one and a quarter of it on another; on the first, SGD at lr 0.2 diverged within two
    epochs. By default (``lam_max=None``) the weight is therefore **bounded at every step** by
    ``b = grad_ratio · ‖∇θ L‖ / ‖∇θ e‖`` of that step (``L`` the step's training loss): the step applies
    ``min(λ, b)``, so the penalty's gradient never exceeds ``grad_ratio`` times the loss's, whatever the scale, and
    an outlier sets λ to ``b``. The on/off rule itself runs unchanged on the unbounded λ. Bounding only the switch-on
    was not enough: the penalty's gradient grew up to 5× within a step of it, and 2 of 8 loader shuffles on the
    8×8-digit CNN at lr 0.2 failed; with the bound at every step 8 of 8 train (docs/methods/elle.md). Cost: two
    extra backward passes (through the training forward and the 3B forward) on every step once λ > 0. Pass
    ``lam_max=4000`` (the ``ellea-cifar10-eps8`` preset does) for the official constant, unbounded.

    Strengthening after catastrophic overfitting: ``grad_ratio`` doubles (``lam_max`` with a constant maximum), at
    most twice (4× its start).

    Args:
        eps: radius of the uniform points (default ``8/255``).
        lam_max: a constant weight set on an outlier (the official code: 4000 for every ε); ``None`` (default):
            the weight is bounded from the data at every step (see above).
        grad_ratio: with ``lam_max=None``, the largest norm of the penalty's gradient, as a multiple of the training
            loss's (default 1).
        decay: decay per step otherwise (default 0.99).
        sensitivity: ``s`` in ``mean + s·std`` (default 2).
        seed: seeds a private generator for the points and α.
    """

    state_attrs: ClassVar[tuple[str, ...]] = ("adaptive", "grad_ratio")
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "lam", "lam_max", "grad_ratio")

    def __init__(
        self,
        eps: float = 8 / 255,
        lam_max: float | None = None,
        *,
        grad_ratio: float = 1.0,
        decay: float = 0.99,
        sensitivity: float = 2.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps, 0.0, seed=seed)
        name = type(self).__name__
        self.scaled = lam_max is None
        self.grad_ratio = check_lam(name, grad_ratio) if self.scaled else None
        if self.scaled and not self.grad_ratio:
            raise RobustfastError(f"{name}(grad_ratio={grad_ratio!r}): must be > 0 (or pass a constant lam_max)")
        self.adaptive = AdaptiveWeight(0.0 if lam_max is None else check_lam(name, lam_max), decay, sensitivity)
        self.last_jump: float | None = None
        self.last_applied: float | None = None

    @property
    def lam_max(self) -> float | None:
        """The constant weight set on an outlier (``None``: bounded from the data at every step)."""
        return None if self.scaled else self.adaptive.lam_max

    def weighted(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """``λ·lin_err``; in training mode the weight applied is at most the step's bound, then λ is updated."""
        err = self.penalty(model, ctx)
        if not (getattr(model, "training", True) and torch.is_grad_enabled()):
            return self.lam * err
        value = float(err.detach())
        outlier = self.adaptive.is_outlier(value)
        lam, bound = self.lam, None
        if self.scaled and (lam > 0 or outlier):
            bound = self._bound(model, ctx, err)
        if bound is not None:
            lam = min(lam, bound[0])
        self.last_applied = lam
        jump = None  # None: the adaptive rule's constant lam_max
        if self.scaled and outlier:
            jump = self.last_jump = self.lam if bound is None else bound[0]
        self.lam = self.adaptive.next_lam(self.lam, value, jump)
        if bound is None:
            return lam * err
        return lam * _linear_stand_in(err, *bound[1:])

    def _bound(self, model: Any, ctx: StepContext, err: Tensor) -> tuple[float, list[Tensor], list[Tensor]] | None:
        """``grad_ratio · ‖∇θ L‖ / ‖∇θ e‖`` at this step (``L``: the training loss, else CE at ``x_adv`` or ``x``),
        with the parameters and ``∇θ e``; ``None`` when the bound is not a finite positive number."""
        params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
        if not params:
            raise RobustfastError(
                f"{type(self).__name__}(lam_max=None) scales its weight from the model's parameter gradients, but the "
                "model has no trainable parameters here; pass an nn.Module, or a constant lam_max (e.g. 4000)"
            )
        loss = ctx.loss
        if loss is None or not loss.requires_grad:
            point = ctx.x_adv if ctx.x_adv is not None else ctx.x
            loss = cross_entropy(model(point.detach()), ctx.y).mean()
        g_loss = _norm(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
        grads = torch.autograd.grad(err, params, allow_unused=True)
        g_err = _norm(grads)
        if not (math.isfinite(g_loss) and math.isfinite(g_err)) or g_err <= 0:
            return None
        assert self.grad_ratio is not None
        kept = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        return self.grad_ratio * g_loss / g_err, [p for p, _ in kept], [g for _, g in kept]

    def log_values(self) -> dict[str, float]:
        """λ; with the data-scaled rule also the weight the last step applied (``lam_applied_ellea``) and the last
        maximum an outlier set (``lam_max_ellea``)."""
        out = super().log_values()
        if self.scaled and self.last_applied is not None:
            out["lam_applied"] = self.last_applied
        if self.scaled and self.last_jump is not None:
            out["lam_max"] = self.last_jump
        return out

    def _strengthen(self) -> str | None:
        if self.scaled:
            assert self.grad_ratio is not None
            old, self.grad_ratio = self.grad_ratio, 2 * self.grad_ratio
            return f"grad_ratio {old:g} -> {self.grad_ratio:g}"
        old = self.adaptive.lam_max
        self.adaptive.lam_max = 2 * old if old > 0 else 1000.0
        return f"lam_max {old:g} -> {self.adaptive.lam_max:g}"


def _linear_stand_in(err: Tensor, params: list[Tensor], grads: list[Tensor]) -> Tensor:
    """A scalar with the value of ``err`` and the parameter gradient ``grads`` (already computed), so the step's
    backward does not traverse the ``3B`` forward a second time: ``err + Σ⟨θ, g⟩ − Σ⟨θ, g⟩.detach()``."""
    lin = sum((p * g.detach()).sum() for p, g in zip(params, grads, strict=True))
    return err.detach() + (lin - lin.detach())


def _norm(grads: tuple[Tensor | None, ...]) -> float:
    """The global L2 norm of a tuple of gradients (``None`` entries count as zero)."""
    sq = [g.detach().pow(2).sum().double() for g in grads if g is not None]
    return math.sqrt(float(torch.stack(sq).sum())) if sq else 0.0
