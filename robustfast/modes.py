"""Model modes set temporarily and restored exactly: train/eval policies for attacks, and the attention path.

The seed papers craft training perturbations with the model in ``train()`` mode (BatchNorm uses batch
statistics and updates its running statistics); torchattacks attacks in ``eval()`` mode. The difference
changes results, so robustfast makes it an explicit, named policy (:class:`ModePolicy`, :func:`model_mode`).

:func:`math_attention` makes double backpropagation work through attention. ``F.scaled_dot_product_attention``
dispatches to fused kernels (flash / memory-efficient; on CPU ``_scaled_dot_product_flash_attention_for_cpu``) whose
backward has no derivative, so differentiating an input gradient (GradAlign, CURE, GradNorm) through a timm ViT
fails with "derivative for ... is not implemented". timm's ``Attention`` modules carry a ``fused_attn`` flag
choosing between the fused call and the explicit ``softmax(q kᵀ / √d) v`` math path, which is twice
differentiable; :func:`math_attention` turns the flag off while a graph that will be differentiated twice is built,
restricts ``F.scaled_dot_product_attention`` to its math backend (``nn.MultiheadAttention``, non-timm models) and
restores every module's own value afterwards. The graph only records which ops ran, so backward passes run later
(outside the ``with``) stay valid.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache
from typing import Literal

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from .errors import RobustfastError

__all__ = ["BNMode", "ModePolicy", "math_attention", "model_mode", "policy_matches", "resolve_policy"]

BNMode = Literal["eval", "train", "train_no_stats", "inherit"]


@dataclass(frozen=True)
class ModePolicy:
    """Which modules run in training mode during an attack (``None`` = leave as found).

    Attributes:
        model_training: flag applied to the whole model first (``model.train(flag)``).
        batchnorm_training: then applied to every ``_BatchNorm`` (batch statistics when True).
        dropout_training: then applied to every dropout / stochastic-depth module.
        restore_bn_stats: snapshot and restore BatchNorm running statistics (batch stats are used
            but the running averages are left untouched).
    """

    model_training: bool | None = False
    batchnorm_training: bool | None = None
    dropout_training: bool | None = None
    restore_bn_stats: bool = False


POLICIES: dict[str, ModePolicy] = {
    "eval": ModePolicy(False, False, False),
    "train": ModePolicy(True, True, True),
    "train_no_stats": ModePolicy(True, True, True, restore_bn_stats=True),
    "inherit": ModePolicy(None, None, None),
}


def resolve_policy(mode: str | ModePolicy) -> ModePolicy:
    """Turn a policy name (``"eval"``, ``"train"``, ``"train_no_stats"``, ``"inherit"``) into a policy."""
    if isinstance(mode, ModePolicy):
        return mode
    if mode not in POLICIES:
        raise RobustfastError(f"bn_mode={mode!r} is not a policy; choose one of {sorted(POLICIES)}")
    return POLICIES[mode]


@cache
def _dropout_types() -> tuple[type, ...]:
    types: list[type] = [_DropoutNd]
    try:  # timm's stochastic depth; imported lazily so timm stays optional here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # timm 1.0.9 trips a torch.jit deprecation
            from timm.layers import DropPath

        types.append(DropPath)
    except Exception:  # pragma: no cover - timm missing or very old
        pass
    return tuple(types)


@contextmanager
def model_mode(model: nn.Module, mode: str | ModePolicy) -> Iterator[nn.Module]:
    """Apply a mode policy to ``model`` and restore every module's ``training`` flag on exit.

    Restoration is per module (not ``model.train()``), so mixed states such as frozen BatchNorm survive.
    """
    policy = resolve_policy(mode)
    if not isinstance(model, nn.Module):  # a plain callable has no modes to manage
        yield model
        return
    modules = list(model.modules())
    flags = [m.training for m in modules]
    bn_stats = []
    if policy.restore_bn_stats:
        for m in modules:
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None:
                bn_stats.append((m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()))
    try:
        if policy.model_training is not None:
            model.train(policy.model_training)
        if policy.batchnorm_training is not None or policy.dropout_training is not None:
            drop_types = _dropout_types()
            for m in modules:
                if isinstance(m, _BatchNorm) and policy.batchnorm_training is not None:
                    m.training = policy.batchnorm_training
                elif isinstance(m, drop_types) and policy.dropout_training is not None:
                    m.training = policy.dropout_training
        yield model
    finally:
        for m, f in zip(modules, flags):
            m.training = f
        for m, mean, var, n in bn_stats:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)


def policy_matches(model: nn.Module, mode: str | None) -> bool:
    """Whether forward passes under the policy named ``mode`` equal forward passes in the model's current mode.

    Only BatchNorm and dropout/stochastic-depth modules are compared (the modules whose output depends on
    ``training``). ``None`` and ``"inherit"`` always match; custom :class:`ModePolicy` objects never do.
    """
    if mode is None or mode == "inherit" or not isinstance(model, nn.Module):
        return True
    policy = POLICIES.get(mode)
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


_FLAG = "fused_attn"


def _sdpa_math_only() -> AbstractContextManager:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3: only the timm flags are switched
        return nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


@contextmanager
def math_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every submodule with a boolean ``fused_attn`` attribute (timm) uses the math path,
    and ``F.scaled_dot_product_attention`` runs on its math backend.

    Modules without the attribute are untouched; each flag is restored exactly on exit, also on error.

    Example:
        >>> with math_attention(vit):
        ...     g = torch.autograd.grad(loss_fn(vit(x)), x, create_graph=True)[0]
    """
    modules = model.modules() if isinstance(model, nn.Module) else ()
    saved = [(m, m.fused_attn) for m in modules if isinstance(getattr(m, _FLAG, None), bool)]
    try:
        for m, _ in saved:
            m.fused_attn = False
        with _sdpa_math_only():
            yield model
    finally:
        for m, flag in saved:
            m.fused_attn = flag
