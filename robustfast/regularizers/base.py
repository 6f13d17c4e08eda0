"""The ``Regularizer`` protocol: a weighted, differentiable penalty that reuses the step record.

Standalone use, in any training loop::

    loss = F.cross_entropy(model(x_adv), y) + reg(model, x, y, x_adv)

Inside :func:`robustfast.training.adversarial_step` (and so the trainer) the same object reads the shared
:class:`~robustfast.context.StepContext`, reusing the attack's clean gradient and logits, the adversarial
logits of the training forward and (when requested) its input gradient, instead of recomputing them.

Gradient scale convention (all regularizers): input gradients are **per-example** gradients of the
per-sample cross-entropy, ``g_i = ∇_{x_i} CE(f(x_i), y_i)`` (the gradient of the *sum* of per-sample
losses, :func:`robustfast.ops.input_grad`), and penalties are averaged over the batch. This makes a
penalty independent of the batch size. The papers' code differentiates the batch-*mean* CE instead, whose
per-example rows are ``g_i / B``; direction-only penalties (GradAlign) do not care, norm penalties (CURE,
GradNorm) offer ``grad_scale="batch_mean"`` for that convention.

Reuse and model modes: values the attack computed (``ctx.clean_grad``, ``ctx.clean_logits``) are reused
only when the attack's forward passes ran in the mode the model is in now (attack ``bn_mode="train"`` or
``"inherit"`` during training, ``"eval"`` on a model in eval mode), judged on BatchNorm and dropout
modules; otherwise they are recomputed in the current mode, so the shared-record path gives the same
values as standalone use.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._checks import (
    check_batch,
    check_kwargs,
    check_labels_in_range,
    check_logits,
    check_model_dtype,
    input_bounds,
    range_problem,
)
from .._registry import Registry
from ..component import Component
from ..context import StepContext
from ..errors import RobustfastError
from ..modes import math_attention

__all__ = [
    "REGULARIZERS",
    "Regularizer",
    "create_regularizer",
    "list_regularizers",
    "register_regularizer",
]

REGULARIZERS = Registry("regularizer")
register_regularizer = REGULARIZERS.register


def list_regularizers(pattern: str = "*") -> list[str]:
    """Names of the registered regularizers matching an fnmatch ``pattern``."""
    return REGULARIZERS.list(pattern)


def create_regularizer(name: str, **kwargs: Any) -> Regularizer:
    """Build a registered regularizer by name, e.g. ``create_regularizer("gradalign", lam=0.2)``.

    Unknown keyword arguments raise a :class:`RobustfastError` that lists the accepted ones.
    """
    cls = REGULARIZERS.get(name)
    check_kwargs(cls, kwargs, f"regularizer {name!r} ({cls.__name__})")
    return cls(**kwargs)


def check_lam(owner: str, lam: Any) -> float:
    """A penalty weight: a finite number >= 0."""
    if isinstance(lam, Tensor) and lam.numel() == 1:
        lam = lam.item()
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise RobustfastError(f"{owner}(lam={lam!r}): lam must be a finite number >= 0")
    return float(lam)


class _CheckedNet(nn.Module):
    """The model, whose first output of a standalone call is checked: ``(N, C)`` logits and labels in ``[0, C)``."""

    def __init__(self, owner: str, model: nn.Module, y_bounds: tuple[int, int]) -> None:
        super().__init__()
        self.inner, self.owner, self.y_bounds = model, owner, y_bounds
        self.checked = False
        self.training = model.training  # the wrapper reports the model's mode (not its own default)

    def forward(self, x: Tensor) -> Tensor:
        out = self.inner(x)
        if not self.checked:
            out = check_logits(self.owner, out, x.shape[0])
            check_labels_in_range(self.owner, *self.y_bounds, out.shape[1])
            self.checked = True
        return out


def _check_standalone(owner: str, model: Any, x: Tensor, y: Tensor, x_adv: Tensor | None) -> tuple[int, int]:
    """Inputs of a standalone call: shapes, dtypes, [0, 1] range, no NaN (one device sync); the label bounds."""
    check_batch(owner, x, y)
    if x_adv is not None and (not isinstance(x_adv, Tensor) or x_adv.shape != x.shape):
        shape = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
        raise RobustfastError(f"{owner}: x_adv must have the shape of x {tuple(x.shape)}, got {shape}")
    both = x if x_adv is None else torch.stack([x.detach(), x_adv.detach().to(x.dtype)])
    lo, hi, ylo, yhi = input_bounds(both, y)
    problem = range_problem(lo, hi)
    if problem is not None:
        raise RobustfastError(f"{owner}: {problem.replace('set_normalization_used(mean, std)', 'pass [0, 1] images')}")
    check_model_dtype(owner, model, x)
    return ylo, yhi


class Regularizer(Component):
    """Base class: ``reg(model, x, y, x_adv, context=None)`` returns ``lam * penalty`` as a scalar tensor.

    Subclasses implement :meth:`penalty` on the step record and declare what they need:

    Strengthening after catastrophic overfitting (unless a subclass says otherwise): λ doubles, at most twice (4× its
    start; a penalty at 0 starts at 0.1).

    Attributes:
        lam: the weight λ the penalty is multiplied by (part of the state: strengthening doubles it).
        requests: names from :data:`robustfast.context.REQUESTS` the attack / training step should keep
            attached to the graph (``"clean_logits"``, ``"clean_grad_graph"``, ``"adv_grad_graph"``).
        needs_double_backward: the penalty differentiates through an input gradient (GradAlign, CURE,
            GradNorm); the penalty (and, in :func:`~robustfast.training.adversarial_step`, the whole step)
            then runs under :func:`~robustfast.modes.math_attention`.
        needs_x_adv: the penalty uses ``x_adv``.
    """

    requests: frozenset[str] = frozenset()
    needs_double_backward: bool = False
    needs_x_adv: ClassVar[bool] = True
    _repr_params: ClassVar[tuple[str, ...]] = ("lam",)
    state_attrs: ClassVar[tuple[str, ...]] = ("lam",)

    def __init__(self, lam: float) -> None:
        self.lam = check_lam(type(self).__name__, lam)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None = None, *, context: StepContext | None = None
    ) -> Tensor:
        """Weighted penalty ``lam * penalty``: a differentiable scalar; writes no parameter ``.grad``.

        Standalone (no ``context``), the inputs are checked: ``[0, 1]`` images without NaN, integer labels,
        ``x_adv`` shaped like ``x``. In a step the attack has checked them already.
        """
        owner = type(self).__name__
        net: Any = model
        if context is None:
            bounds = _check_standalone(owner, model, x, y, x_adv)
            net = _CheckedNet(owner, model, bounds) if isinstance(model, nn.Module) else model
            ctx = StepContext(x=x, y=y.long(), x_adv=x_adv, model=net)
        else:
            ctx = context
            if ctx.x_adv is None:
                ctx.x_adv = x_adv
        if self.needs_x_adv and ctx.x_adv is None:
            raise RobustfastError(f"{owner} needs x_adv: call reg(model, x, y, x_adv)")
        ctx.forget_stale(model)
        with math_attention(model) if self.needs_double_backward else nullcontext(), torch.enable_grad():
            return self.weighted(net, ctx)

    def weighted(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """``lam * penalty`` (subclasses may add unweighted terms, e.g. SEAT's flooding correction)."""
        return self.lam * self.penalty(model, ctx)

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """The unweighted penalty (scalar tensor)."""
        raise NotImplementedError

    def log_values(self) -> dict[str, float]:
        """λ (adaptive for ELLE-A, raised by strengthening), logged per epoch as ``lam_<name>``."""
        return {"lam": self.lam}

    def _strengthen(self) -> str | None:
        """After catastrophic overfitting: double λ (a penalty at 0 starts at 0.1)."""
        old = self.lam
        self.lam = old * 2.0 if old > 0 else 0.1
        return f"{self.name}.lam {old:g} -> {self.lam:g}"
