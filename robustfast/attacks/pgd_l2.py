r"""PGD in the L2 ball (Madry et al., ICLR 2018), following torchattacks' ``PGDL2`` (v3.5.1) step by step.

.. math:: \hat g = \frac{\nabla_x \ell(x+\delta_t, y)}{\lVert\nabla_x \ell(x+\delta_t, y)\rVert_2 + 10^{-10}},\quad
   \delta_{t+1} = \mathrm{clip}_{[0,1]-x}\Big(\Pi_{\lVert\cdot\rVert_2\le\epsilon}
   \big(\delta_t + \alpha\,\hat g\big)\Big)

Norms are per example over all non-batch dimensions. The projection rescales ``δ`` by ``min(1, ε/‖δ‖₂)``; the box
clamp that follows only shrinks ``‖δ‖₂``. The random start is torchattacks': a Gaussian direction scaled to a radius
``r·ε`` with ``r ~ U[0, 1]`` per example (uniform in the radius, not in the ball's volume), then clamped to the box.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..context import StepContext
from ..errors import RobustfastError
from ..ops import bcast
from .base import Attack, GradFn, LossFn, Magnitude, kernel, register_attack
from .pgd import check_pgd_args, projected_ascent

__all__ = ["PGDL2", "L2Magnitude", "l2_project", "pgd_l2"]


def _l2(t: Tensor) -> Tensor:
    return t.flatten(1).norm(p=2, dim=1)


def l2_project(delta: Tensor, x: Tensor, eps: float) -> Tensor:
    """Rescale each example's ``delta`` into the L2 ball of radius ``eps``, then clamp ``x + delta`` to ``[0, 1]``.

    torchattacks' projection (``δ · min(1, ε/‖δ‖₂)``, then the box), written so that ``eps = 0`` gives ``δ = 0``.
    """
    norms = _l2(delta)
    factor = torch.where(norms > eps, eps / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.ones_like(norms))
    return (x + delta * bcast(factor, delta)).clamp(0.0, 1.0) - x


def l2_start(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """torchattacks' random start: a Gaussian direction with radius ``r·eps``, ``r ~ U[0, 1]`` per example, clamped
    so that ``x + δ ∈ [0, 1]`` (draws: the Gaussian first, then the radii)."""
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    r = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
    d = d * bcast(r / _l2(d) * eps, d)
    return (x + d).clamp(0.0, 1.0) - x


def _normalized(g: Tensor, eps_for_division: float) -> Tensor:
    return g / bcast(_l2(g) + eps_for_division, g)


@kernel
def pgd_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    restarts: int = 1,
    early_stop: bool = False,
    eps_for_division: float = 1e-10,
    loss_fn: LossFn | None = None,
    targeted: bool = False,
    generator: Any = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """L2 PGD perturbation ``δ`` (``‖δ_i‖₂ ≤ eps``, ``x + δ ∈ [0, 1]``); see :class:`PGDL2`.

    Args:
        model: pixel-space classifier (its mode is the caller's).
        x: clean inputs in ``[0, 1]``. y: labels (the targets when ``targeted``).
        eps: L2 radius per example. alpha: step length (default ``eps / 5``, torchattacks' 0.2 at ε = 1).
        steps: iterations per restart. random_start: torchattacks' start (Gaussian direction, radius ``U[0, 1]·ε``).
        restarts: runs; per example a run that succeeds wins, then the highest final loss.
        early_stop: stop updating examples that are already misclassified (hit the target when targeted).
        eps_for_division: added to the norm of the batch-mean loss's gradient before dividing (torchattacks' 1e-10).
        loss_fn: per-sample objective to ascend (default cross-entropy; targeted: minus the loss to the targets).
        generator: for the random start. grad_fn: gradient oracle (default
            :func:`~robustfast.attacks.base.loss_grad_fn`).
    """
    step = eps / 5 if alpha is None else alpha
    # torchattacks normalizes the gradient of the batch-*mean* loss: g/B / (‖g/B‖ + e) = g / (‖g‖ + B·e)
    division = eps_for_division * x.shape[0]

    def update(d: Tensor, g: Tensor, xs: Tensor) -> Tensor:
        return l2_project(d + step * _normalized(g, division), xs, eps)

    start = (lambda: l2_start(x, eps, generator)) if random_start else None
    return projected_ascent(model, x, y, start=start, update=update, steps=steps, restarts=restarts, keep="success",
                            early_stop=early_stop, loss_fn=loss_fn, targeted=targeted, grad_fn=grad_fn)  # fmt: skip


def as_l2_magnitude(owner: str, name: str, value: Any, *, allow_none: bool = True) -> float | None:
    """An L2 size in pixel units (``eps``, ``alpha``): any finite number ``>= 0`` (a 0-d tensor is accepted).

    Unlike L∞ sizes it may exceed 1: an L2 ball of radius 3 on 224×224 images is a common ImageNet threat model.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise RobustfastError(f"{owner}({name}=tensor of shape {tuple(value.shape)}): {name} must be a scalar")
        value = value.item()
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok:
        raise RobustfastError(
            f"{owner}({name}={value!r}): {name} must be a finite L2 length in [0, 1] pixel units, e.g. 0.5"
        )
    if value < 0:
        raise RobustfastError(f"{owner}({name}={float(value):g}): {name} must be >= 0")
    return float(value)


class L2Magnitude(Magnitude):
    """An L2 size (``eps``, ``alpha`` of :class:`PGDL2`): any finite number ``>= 0``, values above 1 included.

    As :class:`~robustfast.attacks.base.Magnitude` otherwise: ``None`` means ``relative * eps`` and follows ``eps``
    (also under :meth:`~robustfast.Attack.scaled`).
    """

    def __set__(self, obj: Any, value: Any) -> None:
        allow_none = self.relative is not None or self.optional
        obj.__dict__[self.attr] = as_l2_magnitude(type(obj).__name__, self.name, value, allow_none=allow_none)


@register_attack("pgdl2", "pgd_l2")
class PGDL2(Attack):
    r"""Projected gradient ascent in the L2 ball, as torchattacks' ``PGDL2``, with optional restarts and early stop.

    Each step moves ``alpha`` along the per-example L2-normalized gradient (``eps_for_division=1e-10`` added to the
    norm), rescales ``δ`` into the ball, then clamps ``x + δ`` to ``[0, 1]``. torchattacks differentiates the batch
    mean of the cross-entropy; robustfast's oracle returns per-example gradients of the sum, so ``eps_for_division``
    is scaled by the batch size to give torchattacks' steps exactly (it only matters for gradients of norm ~1e-10).

    Cost: ``steps`` forward + backward per restart. Positional order and defaults follow torchattacks:
    ``PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=True)``. CIFAR-10 L2 benchmarks use ``eps=0.5``
    (AWP, RobustBench) with a step of about ε/4–ε/5.

    ``eps`` and ``alpha`` are L2 lengths in pixel units; unlike the L∞ attacks they may exceed 1 (ImageNet: ε = 3).
    ``norm = "L2"``; ``bounded`` means ``‖x_adv − x‖₂ ≤ eps`` per example.

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L2 radius per example (default 1.0, torchattacks').
        alpha: step length (default 0.2, torchattacks'); ``None`` means ``eps / 5``.
        steps: iterations per restart (default 10).
        random_start: torchattacks' random start (default True): Gaussian direction, radius ``U[0, 1]·eps``.
        restarts: number of runs (default 1, as torchattacks); per example a successful run wins, then the highest
            final loss.
        early_stop: stop updating examples once misclassified (default False; evaluations with restarts use it).
        eps_for_division: added to the gradient norm before dividing (default 1e-10, torchattacks').
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``, ``target_fn``
            (see :class:`~robustfast.Attack`).

    Example:
        >>> atk = PGDL2(model, eps=0.5, alpha=0.1, steps=10)
        >>> x_adv = atk(x, y)   # ‖x_adv − x‖₂ ≤ 0.5 per example
    """

    norm: ClassVar[str] = "L2"
    bounded: ClassVar[bool] = True
    eps = L2Magnitude()
    alpha = L2Magnitude(0.2)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "steps", "random_start", "restarts")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1.0,
        alpha: float | None = 0.2,
        steps: int = 10,
        random_start: bool = True,
        *,
        restarts: int = 1,
        early_stop: bool = False,
        eps_for_division: float = 1e-10,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        check_pgd_args("PGDL2", steps, restarts, random_start, early_stop)
        ok = isinstance(eps_for_division, (int, float)) and not isinstance(eps_for_division, bool)
        if not ok or not math.isfinite(eps_for_division) or eps_for_division <= 0:
            raise RobustfastError(f"PGDL2(eps_for_division={eps_for_division!r}): a small number > 0, e.g. 1e-10")
        self.alpha, self.steps, self.random_start = alpha, steps, random_start
        self.restarts, self.early_stop, self.eps_for_division = restarts, early_stop, float(eps_for_division)

    @property
    def randomized(self) -> bool:
        """Only with a random start (or random targets)."""
        return self.random_start or self.target_fn == "random"

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """L2 PGD with ``restarts``, keeping each example's worst run."""
        return x + pgd_l2(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                          random_start=self.random_start, restarts=self.restarts, early_stop=self.early_stop,
                          eps_for_division=self.eps_for_division, loss_fn=self.objective, targeted=self.targeted,
                          generator=self.rng.get(x.device), grad_fn=self.grad_fn(x, y, ctx))  # fmt: skip
