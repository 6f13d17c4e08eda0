"""The ``Regularizer`` protocol: a weighted, differentiable penalty that reuses the step context.

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
modules; otherwise they are recomputed in the current mode, so the shared-context path gives the same
values as standalone use.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._registry import Registry
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy
from ..modes import POLICIES, _dropout_types
from ..ops import input_grad
from .attention import math_attention

__all__ = [
    "REGULARIZERS",
    "Regularizer",
    "adv_ce_grad",
    "adv_logits",
    "attack_mode_matches",
    "clean_ce_grad",
    "clean_logits",
    "create_regularizer",
    "list_regularizers",
    "register_regularizer",
]

REGULARIZERS = Registry("regularizer")
register_regularizer = REGULARIZERS.register

#: ``ctx.extras`` key of the leaf tensor the training forward at ``x_adv`` was run on (``requires_grad``),
#: set by :func:`~robustfast.training.adversarial_step` when a regularizer requests ``"adv_grad_graph"``.
ADV_POINT = "adv_point"
_CHECKED = "rf_attack_values_checked"


def list_regularizers(pattern: str = "*") -> list[str]:
    """Names of the registered regularizers matching an fnmatch ``pattern``."""
    return REGULARIZERS.list(pattern)


def create_regularizer(name: str, **kwargs: Any) -> Regularizer:
    """Build a registered regularizer by name, e.g. ``create_regularizer("gradalign", lam=0.2)``."""
    return REGULARIZERS.get(name)(**kwargs)


def attack_mode_matches(model: nn.Module, attack_mode: str | None) -> bool:
    """Whether forward passes under the attack's mode policy equal forward passes in the model's current mode.

    Only BatchNorm and dropout/stochastic-depth modules are compared (the modules whose output depends on
    ``training``). Custom :class:`~robustfast.modes.ModePolicy` objects are not recognised: ``False``.
    """
    if attack_mode is None or attack_mode == "inherit" or not isinstance(model, nn.Module):
        return True
    policy = POLICIES.get(attack_mode)
    if policy is None:
        return False
    drop_types = _dropout_types()
    for m in model.modules():
        is_bn, is_drop = isinstance(m, _BatchNorm), isinstance(m, drop_types)
        if not (is_bn or is_drop):
            continue
        flag = m.training if policy.model_training is None else policy.model_training
        if is_bn and policy.batchnorm_training is not None:
            flag = policy.batchnorm_training
        elif is_drop and policy.dropout_training is not None:
            flag = policy.dropout_training
        if flag != m.training:
            return False
    return True


def _drop_stale_attack_values(model: nn.Module, ctx: StepContext) -> None:
    """Forget the attack's clean gradient/logits once per step if they were computed in another mode."""
    if ctx.extras.get(_CHECKED):
        return
    ctx.extras[_CHECKED] = True
    if not attack_mode_matches(model, ctx.attack_mode):
        ctx.clean_grad, ctx.clean_logits = None, None


def clean_logits(model: nn.Module, ctx: StepContext) -> Tensor:
    """Logits at the clean ``x`` *with* their graph: reused from the context when attached, else one forward."""
    if ctx.clean_logits is None or not ctx.clean_logits.requires_grad:
        ctx.clean_logits = model(ctx.x)
    return ctx.clean_logits


def adv_logits(model: nn.Module, ctx: StepContext) -> Tensor:
    """Logits at ``x_adv`` with their graph: the training forward's when available, else one forward."""
    if ctx.x_adv is None:
        raise RobustfastError("this regularizer needs x_adv; pass it (reg(model, x, y, x_adv))")
    if ctx.adv_logits is None:
        ctx.adv_logits = model(ctx.x_adv)
    return ctx.adv_logits


def clean_ce_grad(model: nn.Module, ctx: StepContext, *, create_graph: bool, keep_logits: bool = False) -> Tensor:
    """Per-example ``∇x CE(f(x), y)`` at the clean point, reused from the attack when possible.

    With ``create_graph=False`` a detached gradient published by the attack is reused as is (e.g. FGSM's);
    with ``create_graph=True`` it is reused only if the attack kept its graph (``"clean_grad_graph"``).
    Computed here, it costs one forward and one backward; with ``keep_logits`` the forward's logits are kept
    attached in ``ctx.clean_logits`` for another consumer (SEAT, AdvLC), at no extra pass.
    """
    g = ctx.clean_grad
    if g is not None and (not create_graph or g.requires_grad):
        return g
    point = ctx.x.detach().requires_grad_(True)
    logits = model(point)
    keep = keep_logits or create_graph or ctx.wants("clean_logits")  # another consumer wants them attached
    g = input_grad(cross_entropy(logits, ctx.y), point, create_graph=create_graph, retain_graph=keep)
    ctx.clean_grad = g if create_graph else g.detach()
    if ctx.clean_logits is None or (keep and not ctx.clean_logits.requires_grad):
        ctx.clean_logits = logits if keep else logits.detach()
    return ctx.clean_grad


def adv_ce_grad(model: nn.Module, ctx: StepContext, *, create_graph: bool) -> Tensor:
    """Per-example ``∇x CE(f(x_adv), y)``: from the training forward when it ran on a leaf that requires grad
    (``"adv_grad_graph"`` request), else from one forward here (whose logits become ``ctx.adv_logits``)."""
    if ctx.x_adv is None:
        raise RobustfastError("this regularizer needs x_adv; pass it (reg(model, x, y, x_adv))")
    point = ctx.extras.get(ADV_POINT)
    if point is None or ctx.adv_logits is None or not ctx.adv_logits.requires_grad:
        point = ctx.x_adv.detach().requires_grad_(True)
        ctx.adv_logits = model(point)
        ctx.extras[ADV_POINT] = point
    return input_grad(cross_entropy(ctx.adv_logits, ctx.y), point, create_graph=create_graph, retain_graph=True)


def check_reg_inputs(owner: str, x: Tensor, y: Tensor, x_adv: Tensor | None) -> None:
    """Validate ``(x, y, x_adv)`` for a regularizer call; raise :class:`RobustfastError` naming the problem."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise RobustfastError(f"{owner}: x and y must be tensors, got {type(x).__name__}, {type(y).__name__}")
    if not x.is_floating_point() or x.dim() < 2:
        raise RobustfastError(f"{owner}: x must be a batched floating-point tensor, got {x.dtype} {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise RobustfastError(
            f"{owner}: y must hold integer labels of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
        )
    if x_adv is not None and (not isinstance(x_adv, Tensor) or x_adv.shape != x.shape):
        shape = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
        raise RobustfastError(f"{owner}: x_adv must have the shape of x {tuple(x.shape)}, got {shape}")


class Regularizer:
    """Base class: ``reg(model, x, y, x_adv, context=None)`` returns ``lam * penalty`` as a scalar tensor.

    Subclasses implement :meth:`penalty` on the step context and declare what they need:

    Attributes:
        lam: the weight λ the penalty is multiplied by.
        requests: names from :data:`robustfast.context.REQUESTS` the attack / training step should keep
            attached to the graph (``"clean_logits"``, ``"clean_grad_graph"``, ``"adv_grad_graph"``).
        needs_double_backward: the penalty differentiates through an input gradient (GradAlign, CURE,
            GradNorm); the penalty (and, in :func:`~robustfast.training.adversarial_step`, the whole step)
            then runs under :func:`~robustfast.regularizers.attention.math_attention`.
        needs_x_adv: the penalty uses ``x_adv``.
    """

    requests: frozenset[str] = frozenset()
    needs_double_backward: bool = False
    needs_x_adv: ClassVar[bool] = True
    _repr_params: ClassVar[tuple[str, ...]] = ("lam",)

    def __init__(self, lam: float) -> None:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0 or lam == float("inf"):
            raise RobustfastError(f"{type(self).__name__}(lam={lam!r}): lam must be a finite number >= 0")
        self.lam = float(lam)

    @property
    def name(self) -> str:
        """Short name used in logs and histories."""
        return type(self).__name__.lower()

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None = None, *, context: StepContext | None = None
    ) -> Tensor:
        """Weighted penalty ``lam * penalty``: a differentiable scalar; writes no parameter ``.grad``."""
        owner = type(self).__name__
        check_reg_inputs(owner, x, y, x_adv)
        ctx = context if context is not None else StepContext(x=x, y=y.long(), x_adv=x_adv)
        if ctx.x_adv is None:
            ctx.x_adv = x_adv
        if self.needs_x_adv and ctx.x_adv is None:
            raise RobustfastError(f"{owner} needs x_adv: call reg(model, x, y, x_adv)")
        _drop_stale_attack_values(model, ctx)
        with math_attention(model) if self.needs_double_backward else nullcontext(), torch.enable_grad():
            return self.weighted(model, ctx)

    def weighted(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """``lam * penalty`` (subclasses may add unweighted terms, e.g. SEAT's flooding correction)."""
        return self.lam * self.penalty(model, ctx)

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """The unweighted penalty (scalar tensor)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        parts = []
        for n in self._repr_params:
            v = getattr(self, n)
            parts.append(f"{n}={v:.4g}" if isinstance(v, float) else f"{n}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"
