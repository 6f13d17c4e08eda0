"""Forward passes of evaluation: batched arg-max predictions and the check that a model returns logits.

Shared by :func:`~robustfast.evaluation.evaluate`, :class:`~robustfast.evaluation.AutoAttackAdapter` and the
RobustBench helpers, so each reads a model's output the same way and fails with the same message.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import RobustfastError

__all__ = ["check_logits", "output_width", "predict"]


def check_logits(out: object, n: int, where: str = "evaluate") -> Tensor:
    """Return ``out`` when it is an ``(n, C)`` logits tensor; otherwise raise a :class:`RobustfastError`.

    Args:
        out: what ``model(x)`` returned for a batch of ``n`` inputs.
        n: the batch size.
        where: the operation named in the message (default ``"evaluate"``).
    """
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == n:
        return out
    if isinstance(out, dict):
        got = f"a dict with keys {sorted(map(str, out))}"
        fix = "e.g. return out['logits']"
    elif isinstance(out, (tuple, list)):
        got = f"a {type(out).__name__} of {len(out)} items"
        fix = "e.g. return out[0]"
    elif isinstance(out, Tensor):
        got = f"a tensor of shape {tuple(out.shape)}"
        fix = "flatten or pool it to (N, C)"
    else:
        got = f"a {type(out).__name__}"
        fix = "return the logits tensor"
    raise RobustfastError(
        f"{where}: model(x) returned {got} for {n} input(s); it needs logits of shape (N, C) = ({n}, n_classes). "
        f"Wrap the model in a module whose forward returns the logits ({fix})."
    )


@torch.no_grad()
def output_width(model: nn.Module, x: Tensor, where: str = "evaluate") -> int:
    """Number of classes ``C``, read from one forward pass on ``x`` (checked with :func:`check_logits`)."""
    return int(check_logits(model(x), x.shape[0], where).shape[1])


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
        preds.append(check_logits(model(xb), xb.shape[0]).argmax(1).to(x.device))
    return torch.cat(preds)
