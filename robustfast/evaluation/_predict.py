"""Forward passes of evaluation: batched arg-max predictions and the number of classes a model outputs.

Shared by :func:`~robustfast.evaluation.evaluate`, :class:`~robustfast.evaluation.AutoAttackAdapter` and the
RobustBench helpers, so each reads a model's output the same way and fails with the same message
(:func:`robustfast._checks.check_logits`, the one check of every part of the library).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_logits

__all__ = ["output_width", "predict"]


@torch.no_grad()
def output_width(model: nn.Module, x: Tensor, where: str = "evaluate") -> int:
    """Number of classes ``C``, read from one forward pass on ``x`` (checked with :func:`check_logits`)."""
    return int(check_logits(where, model(x), x.shape[0]).shape[1])


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Arg-max predictions of ``model`` on ``x``, in batches of ``batch_size`` on ``device`` (returned on ``x.device``).

    Args:
        model: classifier returning ``(N, C)`` logits (anything else raises a :class:`RobustfastError`).
        x: inputs.
        batch_size: points per forward pass.
        device: where the forward passes run.
    """
    preds = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(device)
        preds.append(check_logits("evaluate", model(xb), xb.shape[0]).argmax(1).to(x.device))
    return torch.cat(preds)
