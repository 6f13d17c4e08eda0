"""Pure tensor helpers shared by attacks, regularizers and diagnostics.

Everything here follows ``x.device``/``x.dtype`` and never changes a model's mode.
Conventions: images are NCHW (any shape ``(N, ...)`` works) in ``[0, 1]``; ``eps`` is in pixel units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "bcast",
    "clip_delta",
    "grads",
    "input_grad",
    "per_sample_quantile",
    "random_sign_like",
    "uniform_like",
    "uniform_start",
]


def bcast(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector ``(N,)`` so it broadcasts against ``like`` ``(N, ...)``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def uniform_like(x: Tensor, radius: float, generator: torch.Generator | None = None) -> Tensor:
    """``U([-radius, radius])`` noise with the shape, dtype and device of ``x``."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (2.0 * u - 1.0) * radius


def uniform_start(x: Tensor, radius: float, generator: torch.Generator | None = None) -> Tensor:
    """A random start ``η ~ U([-radius, radius])`` clipped so that ``x + η ∈ [0, 1]`` (Wong et al.'s code)."""
    return clip_delta(uniform_like(x, radius, generator), x, None)


def random_sign_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random ``±1`` tensor (Bernoulli(1/2) signs) like ``x``: the corners of the unit box."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(u < 0.5, -torch.ones_like(x), torch.ones_like(x))


def clip_delta(delta: Tensor, x: Tensor, eps: float | None) -> Tensor:
    """Project ``delta`` onto the ε-box (skipped when ``eps`` is None), then so that ``x + delta ∈ [0, 1]``.

    Both sets are coordinate-wise intervals containing 0, so clamping to one after the other is the exact
    Euclidean projection onto their intersection.
    """
    if eps is not None:
        delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0.0, 1.0) - x


def _fp16_autocast(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - very old torch
        return False


# Loss scale used for input gradients under fp16 autocast, so that small gradients do not flush to zero.
_FP16_INPUT_GRAD_SCALE = 2.0**10


def input_grad(
    objective: Tensor,
    point: Tensor,
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Tensor:
    """Gradient of ``objective.sum()`` w.r.t. ``point`` (never touches parameter ``.grad``).

    With per-sample objectives this is the per-example input gradient. Under fp16 autocast the objective
    is scaled before differentiation and the gradient unscaled afterwards, in fp32 — except with
    ``create_graph=True``: a gradient that is differentiated again would carry the scale into the
    second-order terms, which then overflow fp16 (seen in BatchNorm's double backward); there the caller's
    ``GradScaler`` scales the whole second-order pass instead.
    """
    (g,) = grads(objective, [point], create_graph=create_graph, retain_graph=retain_graph, allow_unused=False)
    return g  # type: ignore[return-value]  # never None with allow_unused=False


def grads(
    objective: Tensor,
    inputs: Sequence[Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
    allow_unused: bool = True,
) -> list[Tensor | None]:
    """Gradients of ``objective.sum()`` w.r.t. several tensors at once (inputs and/or parameters), with the
    fp16 scaling of :func:`input_grad`; ``None`` for a tensor the objective does not depend on (an error with
    ``allow_unused=False``)."""
    total = objective.sum() if objective.dim() > 0 else objective
    scale = _FP16_INPUT_GRAD_SCALE if _fp16_autocast(total.device.type) and not create_graph else 1.0
    out = torch.autograd.grad(
        total * scale if scale != 1.0 else total,
        list(inputs),
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=allow_unused,
    )
    return [None if g is None else (g / scale if scale != 1.0 else g) for g in out]


def per_sample_quantile(t: Tensor, q: float) -> Tensor:
    """Per-sample ``q``-quantile over all non-batch entries, linear interpolation (as ``torch.quantile``).

    Uses ``kthvalue``, so it also works above ``torch.quantile``'s 2**24-element limit (ImageNet batches).
    """
    flat = t.reshape(t.shape[0], -1)
    n = flat.shape[1]
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    v_lo = flat.kthvalue(lo + 1, dim=1).values
    if hi == lo or pos == lo:
        return v_lo
    v_hi = flat.kthvalue(hi + 1, dim=1).values
    return v_lo + (pos - lo) * (v_hi - v_lo)


LossFn = Callable[[Tensor, Tensor], Tensor]
