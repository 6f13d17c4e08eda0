"""Learning-rate and ε schedules. Learning rates run on ``torch.optim.lr_scheduler``, stepped every optimizer step.

A schedule spec (:class:`Cyclic`, :class:`OneCycle`, :class:`Piecewise`, :class:`Constant`) describes the shape; the
trainer turns it into a torch ``LRScheduler`` once it knows the number of optimizer steps (:meth:`Schedule.build`):

* :class:`OneCycle` → ``torch.optim.lr_scheduler.OneCycleLR`` (cosine, and momentum cycled 0.95 → 0.85 → 0.95 as
  SEAT's code relies on).
* :class:`Piecewise` → ``MultiStepLR`` with the epoch milestones converted to optimizer steps.
* :class:`Cyclic` → ``LambdaLR``. Torch lacks it: ``CyclicLR`` evaluates the rate *before* each step (rate 0 at the
  first step), while the fast-AT papers' code (Wong et al., GradAlign) sets ``lr(t)`` with ``t = epoch + (i+1)/n``,
  the progress *after* the step; ours does exactly that.
* Any callable ``f(t, total) -> lr`` (``t`` the fractional epoch after the step) → ``LambdaLR`` the same way.

ε warm-up factors (:class:`LinearWarmup`) have no torch counterpart: they are plain callables ``f(t, total)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR, OneCycleLR

from .._checks import check_number
from ..errors import RobustfastError

__all__ = ["Constant", "Cyclic", "LinearWarmup", "OneCycle", "Piecewise", "Schedule", "build_scheduler"]


def _check_positive(owner: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    check_number(owner, name, value, 0.0, lo_open=not allow_zero)


def _check_fraction(owner: str, name: str, value: float) -> None:
    check_number(owner, name, value, 0.0, 1.0, lo_open=True, hi_open=True, hint=f"{name} is a fraction of training")


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group.pop("initial_lr", None)


def _progress_scheduler(
    optimizer: torch.optim.Optimizer, fn: Callable[[float, float], float], steps_per_epoch: int, epochs: int
) -> LRScheduler:
    """``LambdaLR`` giving step ``k`` the rate ``fn((k + 1) / steps_per_epoch, epochs)`` (absolute values)."""
    base = max(float(optimizer.param_groups[0]["lr"]), 1e-12)

    def factor(k: int) -> float:
        lr = float(fn((k + 1) / steps_per_epoch, epochs))
        if not math.isfinite(lr) or lr < 0:
            raise RobustfastError(f"lr schedule returned {lr!r} at epoch {(k + 1) / steps_per_epoch:.3f}; need >= 0")
        return lr / base

    return LambdaLR(optimizer, factor)


class Schedule:
    """Base of the built-in schedules: ``schedule(t, total) -> value`` and :meth:`build` for a torch scheduler."""

    def __call__(self, t: float, total: float) -> float:
        raise NotImplementedError

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> LRScheduler | None:
        """A torch scheduler for this shape, stepped after every optimizer step (``None``: constant rate)."""
        _set_lr(optimizer, self(1.0 / steps_per_epoch, epochs) or 1e-12)
        return _progress_scheduler(optimizer, self, steps_per_epoch, epochs)


@dataclass(frozen=True)
class Constant(Schedule):
    """A constant learning rate."""

    value: float

    def __post_init__(self) -> None:
        _check_positive("Constant", "value", self.value, allow_zero=True)

    def __call__(self, t: float, total: float) -> float:
        return float(self.value)

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> LRScheduler | None:
        """No scheduler: the optimizer's rate is set to ``value``."""
        _set_lr(optimizer, float(self.value))
        return None


@dataclass(frozen=True)
class Cyclic(Schedule):
    """Triangular cyclic schedule: ``0 → lr_max at peak·total → 0 at total``, linear in between, per iteration.

    Defaults follow the fast-AT papers' code: ``lr_max=0.2`` (GradAlign's code default for FGSM/RS/PGD, ZeroGrad
    CIFAR) and ``peak=0.4`` (GradAlign's code, ZeroGrad's SVHN script; ZeroGrad's CIFAR scripts use 0.5).
    """

    lr_max: float = 0.2
    peak: float = 0.4

    def __post_init__(self) -> None:
        _check_positive("Cyclic", "lr_max", self.lr_max)
        _check_fraction("Cyclic", "peak", self.peak)

    def __call__(self, t: float, total: float) -> float:
        p = min(max(t / total, 0.0), 1.0)
        if p <= self.peak:
            return self.lr_max * p / self.peak
        return self.lr_max * (1.0 - p) / (1.0 - self.peak)


@dataclass(frozen=True)
class OneCycle(Schedule):
    """``torch.optim.lr_scheduler.OneCycleLR`` (SEAT's code: ``max_lr=0.3``), with torch's parameters.

    Rises from ``lr_max / div`` to ``lr_max`` over the first ``peak`` of training, then anneals (cosine) to
    ``lr_max / (div · final_div)``; with a momentum optimizer, momentum cycles inversely between
    ``base_momentum`` and ``max_momentum`` (torch's defaults, 0.85 and 0.95).
    """

    lr_max: float = 0.2
    peak: float = 0.3
    div: float = 25.0
    final_div: float = 1e4
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    def __post_init__(self) -> None:
        _check_positive("OneCycle", "lr_max", self.lr_max)
        _check_fraction("OneCycle", "peak", self.peak)
        _check_positive("OneCycle", "div", self.div)
        _check_positive("OneCycle", "final_div", self.final_div)

    def __call__(self, t: float, total: float) -> float:
        p = min(max(t / total, 0.0), 1.0)
        lo, hi = self.lr_max / self.div, self.lr_max
        end = lo / self.final_div
        a, b, s = (lo, hi, p / self.peak) if p <= self.peak else (hi, end, (p - self.peak) / (1.0 - self.peak))
        return b + (a - b) * (1.0 + math.cos(math.pi * s)) / 2.0

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> LRScheduler | None:
        """``OneCycleLR`` over ``steps_per_epoch · epochs`` steps (momentum cycled when the optimizer has one)."""
        for g in optimizer.param_groups:
            g.pop("initial_lr", None)
        has_momentum = "momentum" in optimizer.defaults or "betas" in optimizer.defaults
        return OneCycleLR(optimizer, max_lr=self.lr_max, total_steps=steps_per_epoch * epochs, pct_start=self.peak,
                          anneal_strategy="cos", div_factor=self.div, final_div_factor=self.final_div,
                          cycle_momentum=self.cycle_momentum and has_momentum, base_momentum=self.base_momentum,
                          max_momentum=self.max_momentum)  # fmt: skip


@dataclass(frozen=True)
class Piecewise(Schedule):
    """Piecewise-constant: ``lr`` multiplied by ``gamma`` at each epoch in ``milestones`` (``MultiStepLR``).

    AdvLC: ``Piecewise(0.1, (100, 150))`` over 200 epochs; ZeroGrad's long runs: ``Piecewise(0.1, (50,))``;
    TRADES: ``Piecewise(0.1, (74,))`` over 76 epochs (its code counts epochs from 1 and drops at epoch 75).
    """

    lr: float = 0.1
    milestones: Sequence[float] = (100, 150)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _check_positive("Piecewise", "lr", self.lr)
        _check_positive("Piecewise", "gamma", self.gamma)
        ms = list(self.milestones)
        if any(isinstance(m, bool) or not isinstance(m, (int, float)) or m < 0 for m in ms) or ms != sorted(ms):
            raise RobustfastError(f"Piecewise(milestones={self.milestones!r}): must be increasing epochs >= 0")

    def __call__(self, t: float, total: float) -> float:
        epoch = t - 1e-9  # t is the progress *after* the step; the step belongs to epoch floor(t - tiny)
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> LRScheduler | None:
        """``MultiStepLR`` with milestones at ``epoch · steps_per_epoch`` optimizer steps."""
        _set_lr(optimizer, self.lr)
        steps = [round(m * steps_per_epoch) for m in self.milestones]
        return MultiStepLR(optimizer, milestones=steps, gamma=self.gamma)


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    """Factor rising linearly from 0 to 1 over the first ``epochs`` (per iteration), then 1.

    Used for the ε warm-up (GradAlign's SVHN recipe: 5 epochs, for every method) and λ warm-ups.
    """

    epochs: float = 5.0

    def __post_init__(self) -> None:
        _check_positive("LinearWarmup", "epochs", self.epochs)

    def __call__(self, t: float, total: float) -> float:
        return min(1.0, max(t, 0.0) / self.epochs)


def build_scheduler(
    spec: Schedule | Callable[[float, float], float] | LRScheduler | None,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    epochs: int,
) -> LRScheduler | None:
    """The torch scheduler for a trainer's ``lr_schedule`` (a spec, a callable, a scheduler, or ``None``)."""
    if spec is None or isinstance(spec, LRScheduler):
        return spec
    if isinstance(spec, Schedule):
        return spec.build(optimizer, steps_per_epoch, epochs)
    if callable(spec):
        _set_lr(optimizer, max(float(spec(1.0 / steps_per_epoch, epochs)), 1e-12))
        return _progress_scheduler(optimizer, spec, steps_per_epoch, epochs)
    raise RobustfastError(f"lr_schedule={spec!r}: pass a Schedule, f(t, epochs) -> lr or a torch LRScheduler")
