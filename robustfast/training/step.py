"""One adversarial training step, in named phases, shared by the trainer, the tests and users' own loops.

Phases: **craft** (the attack returns the step record, :class:`~robustfast.context.StepContext`) → **training
loss** (a :class:`~robustfast.losses.TrainingLoss` on the record: at ``x_adv`` by default, on the clean input for
TRADES/MART/GAT) → **penalties** (regularizers on the record) → backward → optimizer step (the last two are the
caller's). Everything computed once (the attack's clean gradient and logits, the training forward) is reused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .._checks import check_batch
from ..attacks.base import Attack
from ..context import StepContext, check_requests
from ..errors import RobustfastError
from ..losses import TrainingLoss, as_training_loss
from ..modes import math_attention
from ..regularizers.base import Regularizer

__all__ = ["StepOutput", "adversarial_step", "craft", "step_losses", "step_requests"]


@dataclass
class StepOutput:
    """What :func:`adversarial_step` returns.

    Attributes:
        loss: the total differentiable loss (training loss + weighted penalties).
        criterion: the training loss's value (detached).
        logits: logits of the training forward at ``x_adv`` (detached; ``None`` when the training loss did not
            run one).
        context: the step record (attack intermediates and logits).
        penalties: each regularizer's weighted value (detached), keyed by its name.
    """

    loss: Tensor
    criterion: Tensor
    logits: Tensor | None
    context: StepContext
    penalties: dict[str, Tensor] = field(default_factory=dict)


def step_requests(parts: Iterable[Any]) -> frozenset[str]:
    """The union of the ``requests`` the training loss and the regularizers declare (each checked against
    :data:`~robustfast.context.REQUESTS`: a misspelt request is an error, not a silent recomputation)."""
    out: set[str] = set()
    for p in parts:
        out |= check_requests(type(p).__name__, getattr(p, "requests", ()))
    return frozenset(out)


def needs_double_backward(parts: Iterable[Any]) -> bool:
    """Whether any part differentiates through an input gradient (then fused attention is switched off)."""
    return any(getattr(p, "needs_double_backward", False) for p in parts)


def craft(
    model: nn.Module,
    attack: Attack | None,
    x: Tensor,
    y: Tensor,
    *,
    index: Tensor | None = None,
    requests: Iterable[str] = (),
) -> StepContext:
    """Phase 1: run the attack and return the step record (``attack=None``: standard training, ``x_adv = x``)."""
    if attack is None:
        check_batch("adversarial_step", x, y)
        return StepContext(x=x.detach(), y=y.long(), index=index, model=model, x_adv=x.detach(),
                           requests=frozenset(requests))  # fmt: skip
    if not isinstance(attack, Attack):
        raise RobustfastError(f"adversarial_step: attack must be an Attack or None, got {type(attack).__name__}")
    return attack.craft(x, y, index=index, requests=requests)


def step_losses(ctx: StepContext, criterion: TrainingLoss, regularizers: Sequence[Regularizer]) -> StepOutput:
    """Phases 2-3: the training loss on the record, then each regularizer's weighted penalty."""
    crit = criterion(ctx)
    if not isinstance(crit, Tensor) or crit.numel() != 1:
        raise RobustfastError(f"{criterion!r} must return a scalar loss")
    ctx.loss = crit
    loss, penalties = crit, {}
    seen: dict[str, int] = {}
    for r in regularizers:
        term = r(ctx.net(), ctx.x, ctx.y, ctx.x_adv, context=ctx)
        seen[r.name] = seen.get(r.name, 0) + 1
        penalties[r.name if seen[r.name] == 1 else f"{r.name}#{seen[r.name]}"] = term.detach()
        loss = loss + term
    logits = ctx.adv_logits.detach() if ctx.adv_logits is not None else None
    return StepOutput(loss=loss, criterion=crit.detach(), logits=logits, context=ctx, penalties=penalties)


def adversarial_step(
    model: nn.Module,
    attack: Attack | None,
    regularizers: Sequence[Regularizer],
    x: Tensor,
    y: Tensor,
    *,
    criterion: TrainingLoss | Callable[[Tensor, Tensor], Tensor] | None = None,
    index: Tensor | None = None,
) -> StepOutput:
    """Craft, training loss and penalties, with intermediates shared (call ``out.loss.backward()`` after).

    The attack fills the step record (clean logits/gradient when it computed them); the training loss runs the
    training forward (its logits become ``context.adv_logits``); each regularizer then reads what it needs and
    computes only the rest. Every pass uses the record's pixel-space network, so with an attack fed normalized
    images (``set_normalization_used``) the penalties and ε are in pixel units like the attack's. The model's
    mode is the caller's (the trainer: ``train()``). When a part needs double backprop, the whole step runs
    under :func:`~robustfast.modes.math_attention` (timm ViTs: no fused attention).

    Args:
        model: the network being trained.
        attack: the training attack (``None``: standard training on clean ``x``).
        regularizers: penalties added to the loss.
        x: clean inputs (``[0, 1]`` images, or normalized ones if the attack was told so).
        y: labels.
        criterion: a :class:`~robustfast.losses.TrainingLoss` or ``(logits, y) -> scalar`` applied at ``x_adv``
            (default: mean cross-entropy at ``x_adv``).
        index: dataset indices of the batch (for attacks with per-example memory).

    Returns:
        A :class:`StepOutput`.
    """
    loss_fn = as_training_loss(criterion)
    regs = list(regularizers)
    if not all(isinstance(r, Regularizer) for r in regs):
        raise RobustfastError("adversarial_step(regularizers=...): pass a sequence of Regularizer objects (or ())")
    parts = [loss_fn, *regs]
    with math_attention(model) if needs_double_backward(parts) else nullcontext():
        ctx = craft(model, attack, x, y, index=index, requests=step_requests(parts))
        return step_losses(ctx, loss_fn, regs)
