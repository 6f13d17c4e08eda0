"""What GAT and NuAT share (Sriramanan, Addepalli, Baburaj & Babu, NeurIPS 2020 / 2021; official code
``val-iisc/GAMA-GAT``, ``val-iisc/NuAT``): one signed step from a ``±init`` Bernoulli start on the cross-entropy plus
λ times a distance between the clean output (the *guide*) and the output at the start, the λ term on odd minibatches
of each epoch, the guide's forward in the caller's mode, and λ driven by the trainer's epoch hooks. Each method
supplies its distance (GAT: squared L2 between softmax outputs; NuAT: nuclear norm of the batch's logit difference)
and its λ schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..attacks.base import Attack, LossFn, Magnitude
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy
from ..ops import clip_delta, input_grad, random_sign_like
from ..regularizers.base import check_lam

__all__ = ["CALLER_MODE_LOGITS", "EpochLam", "GuidedAttack", "caller_mode_clean_logits", "guided_step"]

#: ``ctx.extras`` key: the clean logits the attack computed in the caller's mode (reusable by the training loss).
CALLER_MODE_LOGITS = "clean_logits_in_caller_mode"


def guided_step(
    model: Any,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None,
    init: float | None,
    lam: float,
    guide: Tensor | None,
    guide_of: Callable[[Tensor], Tensor],
    distance: Callable[[Tensor, Tensor], Tensor],
    loss_fn: LossFn | None,
    generator: Any,
) -> Tensor:
    """The guided single step ``δ`` of GAT and NuAT.

    ``x_0 = clip(x ± init)``; ``J = Σ_i loss(f(x_0)_i, y_i) + λ·distance(guide, f(x_0))``;
    ``δ = Π_ε(clip(x_0 + alpha·sign ∇J) − x)``. ``guide`` (detached) defaults to ``guide_of(f(x))`` when ``lam > 0``;
    ``alpha`` defaults to ``eps`` and ``init`` to ``eps / 2``. The sum over the batch stands for the codes' batch
    mean (the sign of the gradient is the same).
    """
    alpha = eps if alpha is None else alpha
    init = eps / 2 if init is None else init
    if lam > 0 and guide is None:
        with torch.no_grad():
            guide = guide_of(model(x))
    x0 = (x + init * random_sign_like(x, generator)).clamp(0.0, 1.0)
    point = x0.detach().requires_grad_(True)
    logits = model(point)
    obj = (loss_fn or cross_entropy)(logits, y)
    if lam > 0:
        assert guide is not None
        obj = obj.sum() + lam * distance(guide.detach(), logits)
    g = input_grad(obj, point)
    x1 = (x0 + alpha * g.sign()).clamp(0.0, 1.0)
    return clip_delta(x1 - x, x, eps)


def _flags(model: Any) -> list[bool] | None:
    return [m.training for m in model.modules()] if isinstance(model, nn.Module) else None


@contextmanager
def _as_flags(model: Any, flags: list[bool] | None) -> Iterator[None]:
    """Run with every module's ``training`` flag set to ``flags`` (the caller's), restored on exit."""
    if flags is None or not isinstance(model, nn.Module):
        yield
        return
    modules = list(model.modules())
    saved = [m.training for m in modules]
    try:
        for m, f in zip(modules, flags):
            m.training = f
        yield
    finally:
        for m, f in zip(modules, saved):
            m.training = f


def caller_mode_clean_logits(ctx: StepContext) -> Tensor:
    """Clean logits with their graph for a training loss: the attack's when they ran in the mode the model is in
    now (a guided attack marks its caller-mode forward), else recomputed in the current mode."""
    if ctx.clean_logits is None or ctx.extras.get(CALLER_MODE_LOGITS) is not ctx.clean_logits:
        ctx.forget_stale(ctx.net())  # e.g. an eval-mode FGSM's clean logits during train-mode training
    return ctx.clean_logits_graph()


class EpochLam:
    """λ driven by the trainer's epoch hooks: ``lam`` is the base weight (raised by strengthening), ``current_lam``
    the weight of the current epoch. Without the hooks (a plain loop) ``current_lam`` is ``lam``."""

    lam: float
    _epoch: int | None

    @property
    def current_lam(self) -> float:
        """λ of the current epoch (``lam`` until a trainer hook has set the epoch)."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Trainer hook: the epoch (0-indexed) sets λ."""
        self._epoch = int(epoch)

    def log_values(self) -> dict[str, float]:
        """λ of the current epoch, logged per epoch by the trainer."""
        return {"lam": self.current_lam}

    def _strengthen(self) -> str | None:
        """Catastrophic overfitting: double λ (a stronger pull towards the clean prediction)."""
        if self.lam <= 0:
            return None
        old, self.lam = self.lam, 2 * self.lam
        return f"lam {old:g} -> {self.lam:g}"


class GuidedAttack(EpochLam, Attack):
    """Base of GAT's and NuAT's attacks: one signed step from a ``±init`` Bernoulli start on CE plus λ times a
    distance to the clean output, the λ term used on odd minibatches of each epoch (see :class:`GATAttack`)."""

    alpha = Magnitude(1.0)
    init = Magnitude(0.5)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "init", "lam")
    state_attrs: ClassVar[tuple[str, ...]] = ("lam", "_iter", "_epoch")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        *,
        init: float | None = None,
        lam: float = 10.0,
        alternate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        name = type(self).__name__
        self.alpha, self.init = alpha, init
        self.lam = check_lam(name, lam)
        if not isinstance(alternate, bool):
            raise RobustfastError(f"{name}(alternate={alternate!r}): True (the code: λ term on odd iterations) or "
                                  "False (every iteration)")  # fmt: skip
        self.alternate = alternate
        self._iter = 0
        self._epoch: int | None = None
        self._caller: list[bool] | None = None

    def on_epoch_start(self, epoch: int) -> None:
        """Trainer hook: the epoch sets λ, and the iteration counter restarts (the code resets it every epoch)."""
        super().on_epoch_start(epoch)
        self._iter = 0

    @property
    def randomized(self) -> bool:
        """The Bernoulli start draws random signs (unless ``init=0``)."""
        return self.init > 0 or self.target_fn == "random"

    def craft(self, x: Tensor, y: Tensor, *, index: Tensor | None = None, requests: Iterable[str] = ()) -> StepContext:
        """As :meth:`Attack.craft`; the caller's module modes are remembered for the guide's forward."""
        self._caller = _flags(self.model)
        try:
            return super().craft(x, y, index=index, requests=requests)
        finally:
            self._caller = None

    @staticmethod
    def guide_of(logits: Tensor) -> Tensor:
        """The guide the step compares to, from detached clean logits (each method's own)."""
        raise NotImplementedError

    @staticmethod
    def distance(guide: Tensor, logits: Tensor) -> Tensor:
        """The scalar distance between the guide and the logits at the start (each method's own)."""
        raise NotImplementedError

    def _kernel(self, x: Tensor, y: Tensor, lam: float, guide: Tensor | None) -> Tensor:
        return guided_step(self.get_logits, x, y, eps=self.eps, alpha=self.alpha, init=self.init, lam=lam,
                           guide=guide, guide_of=self.guide_of, distance=self.distance, loss_fn=self.objective,
                           generator=self.rng.get(x.device))  # fmt: skip

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """The guided step; the clean forward (the guide) runs in the caller's mode and is published in ``ctx``."""
        use = not self.alternate or self._iter % 2 == 1
        self._iter += 1
        lam = self.current_lam if use else 0.0
        keep = ctx.wants("clean_logits")  # a clean-input training loss will reuse this forward
        guide = None
        if lam > 0 or keep:
            with _as_flags(self.model, self._caller), torch.set_grad_enabled(keep):
                logits = self.get_logits(x)
            if keep:
                ctx.clean_logits = logits
                ctx.extras[CALLER_MODE_LOGITS] = logits
            guide = self.guide_of(logits.detach())
        return x + self._kernel(x, y, lam, guide)
