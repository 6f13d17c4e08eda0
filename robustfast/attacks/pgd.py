r"""PGD (Madry et al., ICLR 2018) for training and evaluation, with restarts keeping the worst case.

.. math:: \delta_{t+1} = \Pi_{[-\epsilon,\epsilon]\cap[-x,1-x]}\big(\delta_t + \alpha\,\mathrm{sign}\,
   \nabla_x \ell(x+\delta_t, y)\big),\quad \delta_0 \in \{0,\ U([-\epsilon,\epsilon]^d)\}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy
from ..ops import bcast, clip_delta, input_grad, uniform_start
from .base import Attack, GradFn, LossFn, Magnitude, kernel, loss_grad_fn, register_attack

__all__ = ["PGD", "check_pgd_args", "iterate", "pgd", "projected_ascent", "worst_restart"]


Update = Callable[[Tensor, Tensor, Tensor], Tensor]


def iterate(
    model: Any, x: Tensor, y: Tensor, start: Tensor | None, update: Update, *, steps: int, early_stop: bool,
    loss_fn: LossFn, targeted: bool, grad: GradFn,
) -> Tensor:  # fmt: skip
    """``steps`` iterations ``δ ← update(δ, g, x)`` from ``start`` (``None``: zero, gradient at the clean point).

    With ``early_stop``, an example stops once it is misclassified (hits the target when ``targeted``) and only the
    others are computed; the shared iteration of :func:`pgd` and :func:`~robustfast.attacks.pgd_l2.pgd_l2`.
    """
    delta = start
    if not early_stop:
        for _ in range(steps):
            d = torch.zeros_like(x) if delta is None else delta
            delta = update(d, grad(delta), x)
        return torch.zeros_like(x) if delta is None else delta
    delta = torch.zeros_like(x) if delta is None else delta.clone()
    active = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        xa, da = x[active], delta[active]
        point = (xa + da).detach().requires_grad_(True)
        logits = model(point)
        g = input_grad(loss_fn(logits, y[active]), point).detach()
        pred = logits.detach().argmax(1)
        keep = (pred != y[active]) if targeted else (pred == y[active])
        if not keep.any():
            break
        active, xa, da, g = active[keep], xa[keep], da[keep], g[keep]
        delta[active] = update(da, g, xa)
    return delta


def worst_restart(
    model: Any, x: Tensor, y: Tensor, run: Callable[[bool], Tensor], restarts: int, *, keep: str, loss_fn: LossFn,
    targeted: bool,
) -> Tensor:  # fmt: skip
    """Per example the worst of ``restarts`` runs (``run(first)``): with ``keep="success"`` a run that succeeds
    wins, then the highest final loss; with ``"loss"`` the highest final loss only (GradAlign's code)."""
    best = run(True)
    if restarts == 1:
        return best

    @torch.no_grad()
    def score(delta: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x + delta)
        pred = logits.argmax(1)
        return (pred == y) if targeted else (pred != y), loss_fn(logits, y).float()

    best_succ, best_loss = score(best)
    for _ in range(restarts - 1):
        cand = run(False)
        succ, loss = score(cand)
        better = loss > best_loss
        if keep == "success":
            better = (succ & ~best_succ) | ((succ == best_succ) & better)
        best = torch.where(bcast(better, x), cand, best)
        best_succ, best_loss = best_succ | (succ & better), torch.where(better, loss, best_loss)
    return best


def projected_ascent(
    model: Any, x: Tensor, y: Tensor, *, start: Callable[[], Tensor] | None, update: Update, steps: int, restarts: int,
    keep: Literal["success", "loss"], early_stop: bool, loss_fn: LossFn | None, targeted: bool,
    grad_fn: GradFn | None,
) -> Tensor:  # fmt: skip
    """The projected ascent shared by :func:`pgd` (L∞) and :func:`~robustfast.attacks.pgd_l2.pgd_l2` (L2):
    ``restarts`` runs of ``steps`` updates from ``start()`` (``None``: the clean point), the worst run per example.

    Only the first run may use ``grad_fn`` (possibly the step record's shared clean gradient): later runs start
    elsewhere anyway.
    """
    fn = loss_fn or cross_entropy
    grad = grad_fn or loss_grad_fn(model, x, y, fn)

    def run(first: bool) -> Tensor:
        oracle = grad if first else loss_grad_fn(model, x, y, fn)
        return iterate(model, x, y, None if start is None else start(), update, steps=steps, early_stop=early_stop,
                       loss_fn=fn, targeted=targeted, grad=oracle)  # fmt: skip

    return worst_restart(model, x, y, run, restarts, keep=keep, loss_fn=fn, targeted=targeted)


def check_pgd_args(owner: str, steps: Any, restarts: Any, random_start: Any, early_stop: Any) -> None:
    """The arguments PGD and PGD-L2 share: integers ``>= 1`` and booleans."""
    for name, v in (("steps", steps), ("restarts", restarts)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise RobustfastError(f"{owner}({name}={v!r}): must be an integer >= 1")
    for name, v in (("random_start", random_start), ("early_stop", early_stop)):
        if not isinstance(v, bool):
            raise RobustfastError(f"{owner}({name}={v!r}): True or False")


@kernel
def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    restarts: int = 1,
    keep: Literal["success", "loss"] = "success",
    early_stop: bool = False,
    loss_fn: LossFn | None = None,
    targeted: bool = False,
    generator: Any = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """PGD perturbation ``δ`` (``alpha`` defaults to ``eps / 4``), worst restart per example; see :class:`PGD`.

    ``loss_fn`` is the per-sample objective to *ascend* (for a targeted attack: minus the loss to the targets,
    with ``targeted=True`` so that success means hitting the target).
    """
    step = eps / 4 if alpha is None else alpha

    def update(d: Tensor, g: Tensor, xs: Tensor) -> Tensor:
        return clip_delta(d + step * g.sign(), xs, eps)

    start = (lambda: uniform_start(x, eps, generator)) if random_start else None
    return projected_ascent(model, x, y, start=start, update=update, steps=steps, restarts=restarts, keep=keep,
                            early_stop=early_stop, loss_fn=loss_fn, targeted=targeted, grad_fn=grad_fn)  # fmt: skip


@register_attack("pgd")
class PGD(Attack):
    r"""Projected gradient descent in the L∞ ball, with random restarts.

    Training presets of the papers: PGD-2 with ``alpha=eps/2`` and PGD-10 with ``alpha=2*eps/10``, both
    with ``random_start=False`` (GradAlign; AdvLC's PGD10 uses ``alpha=eps/4``). Evaluation: PGD-50-10 with
    ``alpha=eps/4`` (GradAlign, AdvLC) or ``2/255`` (ZeroGrad, SEAT), ``random_start=True``.

    Cost: ``steps`` forward + backward per restart. Positional order follows torchattacks:
    ``PGD(model, eps, alpha, steps, random_start)``.

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``).
        alpha: step size; ``None`` (default) means ``eps / 4`` (= torchattacks' 2/255 at ε = 8/255).
        steps: iterations per restart (default 10).
        random_start: start from ``U([-eps, eps])`` (default True, Madry) or from 0.
        restarts: number of restarts (default 1); per example the worst case is kept.
        keep: how the worst restart is chosen per example: ``"success"`` (default: a restart that
            misclassifies — hits the target when targeted — wins, then the highest loss) or ``"loss"``
            (highest final loss only, GradAlign's code).
        early_stop: stop updating examples that are already misclassified (ZeroGrad's evaluation).
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``,
            ``target_fn`` (see :class:`Attack`).
    """

    alpha = Magnitude(0.25)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "steps", "random_start", "restarts")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 10,
        random_start: bool = True,
        *,
        restarts: int = 1,
        keep: Literal["success", "loss"] = "success",
        early_stop: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        check_pgd_args("PGD", steps, restarts, random_start, early_stop)
        if keep not in ("success", "loss"):
            raise RobustfastError(f"PGD(keep={keep!r}): choose 'success' or 'loss'")
        self.alpha, self.steps, self.random_start = alpha, steps, random_start
        self.restarts, self.keep, self.early_stop = restarts, keep, early_stop

    @property
    def randomized(self) -> bool:
        """Only with a random start (or random targets)."""
        return self.random_start or self.target_fn == "random"

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """PGD with ``restarts``, keeping each example's worst restart."""
        return x + pgd(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                       random_start=self.random_start, restarts=self.restarts, keep=self.keep,
                       early_stop=self.early_stop, loss_fn=self.objective, targeted=self.targeted,
                       generator=self.rng.get(x.device), grad_fn=self.grad_fn(x, y, ctx))  # fmt: skip
