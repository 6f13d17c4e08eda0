r"""Finite-difference second-order terms: ``∇θ ⟨c, ∇x ℓ(q)⟩`` without double backpropagation.

A penalty ``Ω(g)`` of an input gradient ``g = ∇x Σ_i ℓ_i(q; θ)`` has the parameter gradient
``∇θ Ω = (∂g/∂θ)ᵀ c`` with ``c = ∂Ω/∂g``. Per example this is the parameter gradient of the directional
derivative of the loss along ``c_i``, approximated by a forward difference along the unit direction
``ĉ_i = c_i / ‖c_i‖`` (L2 over all of an example's coordinates) with step ``r``:

.. math:: (∂g_i/∂θ)ᵀ c_i ≈ ∇θ \frac{‖c_i‖}{r}\big[ℓ_i(q_i + r ĉ_i) − ℓ_i(q_i)\big]

One more forward at ``q + r ĉ`` and ordinary first-order backward passes replace the second-order pass, so
the term also works where double backward is missing (fused attention, ``torch.compile``, custom autograd
functions). The second forward replays the first one's random numbers (same dropout masks) and leaves
BatchNorm running statistics as the first forward left them.

Exact as ``r → 0`` for twice-differentiable models; for ReLU networks the difference also sees activation
patterns that flip within ``r`` (curvature that double backprop, being an almost-everywhere derivative,
ignores), so the two estimates differ there: a smoothed, not a noisy, version of the same quantity.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..losses import cross_entropy
from ..ops import bcast, input_grad

__all__ = ["Probe", "fd_grad_vjp", "probe"]

_STATS = ("running_mean", "running_var", "num_batches_tracked")


@contextmanager
def _running_stats_untouched(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode use batch statistics without updating their running averages.

    The buffers are detached from the modules for the duration rather than restored afterwards: an earlier
    forward's graph has saved them, and an in-place restore would invalidate that graph.
    """
    held = []
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats and m.running_mean is not None:
            held.append((m, [getattr(m, n) for n in _STATS]))
            for n in _STATS:
                setattr(m, n, None)
    try:
        yield
    finally:
        for m, bufs in held:
            for n, b in zip(_STATS, bufs):
                setattr(m, n, b)


@dataclass
class Probe:
    """A forward at ``point`` kept for a later finite difference.

    Attributes:
        point: the detached input the forward ran on.
        losses: per-sample cross-entropy at ``point``, attached to the parameters' graph.
        grad: detached per-example input gradient ``∇x Σ_i ℓ_i`` at ``point``.
        rng: random-number-generator states before the forward (replayed by :func:`fd_grad_vjp`).
    """

    point: Tensor
    losses: Tensor
    grad: Tensor
    rng: tuple[Tensor, Tensor | None]


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def probe(model: nn.Module, point: Tensor, y: Tensor) -> Probe:
    """One forward at ``point`` and a first-order backward for its input gradient; the graph is retained."""
    rng = _rng_state(point.device)
    leaf = point.detach().requires_grad_(True)
    losses = cross_entropy(model(leaf), y)
    grad = input_grad(losses, leaf, retain_graph=True)
    return Probe(point=leaf.detach(), losses=losses, grad=grad.detach(), rng=rng)


def fd_grad_vjp(model: nn.Module, p: Probe, y: Tensor, cotangent: Tensor, step: float) -> Tensor:
    """A scalar of value 0 whose parameter gradient approximates ``∇θ ⟨cotangent, ∇x Σ_i ℓ_i(p.point)⟩``.

    Args:
        model: the network (its modes are left as they are).
        p: the :class:`Probe` at the expansion point.
        y: labels.
        cotangent: ``∂Ω/∂g`` for the probe's gradient, shape of ``p.point`` (detached).
        step: L2 length ``r`` of each example's difference step, in input units.
    """
    c = cotangent.detach()
    norms = c.flatten(1).norm(dim=1)
    direction = c / bcast(norms.clamp_min(torch.finfo(c.dtype).tiny), c)
    after = _rng_state(p.point.device)
    _set_rng_state(p.rng, p.point.device)
    try:
        with _running_stats_untouched(model):
            shifted = cross_entropy(model(p.point + step * direction), y)
    finally:
        _set_rng_state(after, p.point.device)
    term = (norms / step * (shifted - p.losses)).sum()
    return term - term.detach()
