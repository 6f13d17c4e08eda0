"""Losses: per-sample functions ``(logits, labels) -> (N,)`` and the training losses of the method protocol.

A :class:`TrainingLoss` is the step's criterion. It reads the step record (:class:`~robustfast.context.StepContext`)
rather than one logits tensor, so it can take its loss at the adversarial point (the default
:class:`CrossEntropy`), at the clean point, or both (TRADES, MART, GAT), reusing the passes the attack already ran.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor

from ._checks import check_kwargs
from ._registry import Registry
from .component import Component
from .errors import RobustfastError

if TYPE_CHECKING:
    from .context import StepContext

__all__ = [
    "LOSSES",
    "CleanCrossEntropy",
    "CrossEntropy",
    "FunctionLoss",
    "TrainingLoss",
    "as_training_loss",
    "at_least_fp32",
    "create_loss",
    "cross_entropy",
    "linearity_error",
    "list_losses",
    "margin_loss",
    "register_loss",
]

LOSSES = Registry("loss")
register_loss = LOSSES.register


def at_least_fp32(t: Tensor) -> Tensor:
    """Upcast half-precision (fp16/bf16) tensors to fp32; fp32 and fp64 pass through unchanged."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy ``-log softmax(z)_y``, computed in fp32 at least (fp64 stays fp64)."""
    return F.cross_entropy(at_least_fp32(logits), labels, reduction="none")


def margin_loss(logits: Tensor, labels: Tensor, on: Literal["softmax", "logits"] = "softmax") -> Tensor:
    """Per-sample maximum-margin loss ``max_{j≠y} s_j − s_y`` (positive = misclassified).

    ``on="softmax"`` uses probabilities (SEAT's official code), ``"logits"`` the raw scores (SEAT's prose,
    CW-style).
    """
    s = at_least_fp32(logits)
    s = s.softmax(dim=1) if on == "softmax" else s
    true = s.gather(1, labels[:, None]).squeeze(1)
    other = s.masked_fill(F.one_hot(labels, s.shape[1]).bool(), float("-inf")).amax(dim=1)
    return other - true


def linearity_error(
    ce_adv: Tensor, ce_clean: Tensor, delta: Tensor, clean_grad: Tensor, reduction: str = "per_sample"
) -> Tensor:
    """SEAT's γ: ``|ℓ(x+δ) − ℓ(x) − ⟨δ, ∇x ℓ(x)⟩|`` from per-sample losses and per-example gradients.

    ``reduction="per_sample"`` (default, the paper's per-point γ) returns ``(N,)``; ``"batch"`` returns
    the official code's scalar ``|mean_i(...)|`` (errors of opposite sign cancel).
    """
    lin = (delta.detach() * clean_grad).flatten(1).sum(1)
    err = ce_adv - ce_clean - lin
    return err.abs() if reduction == "per_sample" else err.mean().abs()


def _mean_ce(logits: Tensor, y: Tensor, label_smoothing: float) -> Tensor:
    """Mean cross-entropy; labels outside the model's outputs get a clear error instead of torch's IndexError."""
    try:
        return F.cross_entropy(at_least_fp32(logits), y, label_smoothing=label_smoothing)
    except IndexError:
        raise RobustfastError(
            f"labels must be class indices in [0, {logits.shape[-1]}) for a model with {logits.shape[-1]} outputs, "
            f"got labels in [{int(y.min())}, {int(y.max())}]"
        ) from None


def list_losses(pattern: str = "*") -> list[str]:
    """Names of the registered training losses matching an fnmatch ``pattern``."""
    return LOSSES.list(pattern)


def create_loss(name: str, **kwargs: Any) -> TrainingLoss:
    """Build a registered training loss by name, e.g. ``create_loss("trades", beta=6)``."""
    cls = LOSSES.get(name)
    check_kwargs(cls, kwargs, f"loss {name!r} ({cls.__name__})")
    return cls(**kwargs)


class TrainingLoss(Component):
    """Base of training criteria: ``loss(ctx) -> scalar`` on the step record.

    Subclasses implement :meth:`forward` and declare what they need from the attack:

    Attributes:
        requests: names from :data:`robustfast.context.REQUESTS` (e.g. ``{"clean_logits"}`` to reuse the attack's
            clean forward with its graph).
        needs_double_backward: the loss differentiates through an input gradient.
        uses_adv_logits: the loss runs the training forward at ``x_adv`` (its logits give the training accuracy).
    """

    requests: frozenset[str] = frozenset()
    needs_double_backward: bool = False
    uses_adv_logits: ClassVar[bool] = True

    def __call__(self, ctx: StepContext) -> Tensor:
        """The scalar training loss of this step."""
        return self.forward(ctx)

    def forward(self, ctx: StepContext) -> Tensor:
        """Compute the loss from the step record (``ctx.adv_logits_graph()``, ``ctx.clean_logits_graph()``...)."""
        raise NotImplementedError


@register_loss("ce", "cross_entropy", "adv_ce")
class CrossEntropy(TrainingLoss):
    """Mean cross-entropy at the adversarial point (the fast-AT papers' training loss).

    Args:
        label_smoothing: label smoothing (default 0.0; FGSM-PGI uses 0.6, FastAT_Benchmark 0.4).
    """

    _repr_params: ClassVar[tuple[str, ...]] = ("label_smoothing",)

    def __init__(self, label_smoothing: float = 0.0) -> None:
        ok = isinstance(label_smoothing, (int, float)) and not isinstance(label_smoothing, bool)
        if not ok or not 0.0 <= label_smoothing < 1.0:
            raise RobustfastError(f"CrossEntropy(label_smoothing={label_smoothing!r}): must be in [0, 1)")
        self.label_smoothing = float(label_smoothing)

    def forward(self, ctx: StepContext) -> Tensor:
        """``mean_i CE(f(x_adv_i), y_i)`` with label smoothing."""
        return _mean_ce(ctx.adv_logits_graph(), ctx.y, self.label_smoothing)


@register_loss("clean_ce", "standard")
class CleanCrossEntropy(TrainingLoss):
    """Mean cross-entropy at the clean point (reuses the attack's clean forward when it kept its graph).

    Args:
        label_smoothing: label smoothing (default 0.0).
    """

    requests = frozenset({"clean_logits"})
    uses_adv_logits: ClassVar[bool] = False
    _repr_params: ClassVar[tuple[str, ...]] = ("label_smoothing",)

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise RobustfastError(f"CleanCrossEntropy(label_smoothing={label_smoothing!r}): must be in [0, 1)")
        self.label_smoothing = float(label_smoothing)

    def forward(self, ctx: StepContext) -> Tensor:
        """``mean_i CE(f(x_i), y_i)``."""
        ctx.forget_stale(ctx.net())  # the attack's clean forward counts only if it ran in the model's mode
        return _mean_ce(ctx.clean_logits_graph(), ctx.y, self.label_smoothing)


class FunctionLoss(TrainingLoss):
    """A plain ``criterion(logits, y) -> scalar`` applied to the adversarial logits (the trainer's ``criterion=``).

    Args:
        fn: the criterion, e.g. ``torch.nn.CrossEntropyLoss(label_smoothing=0.1)``.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        if not callable(fn):
            raise RobustfastError("FunctionLoss(fn): pass a callable (logits, y) -> scalar loss")
        self.fn = fn

    @property
    def name(self) -> str:
        """The wrapped function's name."""
        return getattr(self.fn, "__name__", type(self.fn).__name__).lower()

    def forward(self, ctx: StepContext) -> Tensor:
        """``fn(logits at x_adv, y)``."""
        out = self.fn(ctx.adv_logits_graph(), ctx.y)
        if not isinstance(out, Tensor) or out.numel() != 1:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise RobustfastError(f"criterion must return a scalar loss, got {shape}; reduce it (e.g. .mean())")
        return out.reshape(())

    def __repr__(self) -> str:
        return f"FunctionLoss({self.fn!r})"


def as_training_loss(criterion: TrainingLoss | Callable[[Tensor, Tensor], Tensor] | None) -> TrainingLoss:
    """``None`` → :class:`CrossEntropy`; a plain callable → :class:`FunctionLoss`; a training loss as is."""
    if criterion is None:
        return CrossEntropy()
    if isinstance(criterion, TrainingLoss):
        return criterion
    if callable(criterion):
        return FunctionLoss(criterion)
    raise RobustfastError(f"criterion must be a TrainingLoss or a callable (logits, y) -> loss, got {criterion!r}")
