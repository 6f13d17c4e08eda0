r"""Finite-difference second-order terms: ``∇θ ⟨c, ∇x ℓ(q)⟩`` without double backpropagation.

A penalty ``Ω(g)`` of an input gradient ``g = ∇x L(q; θ)``, ``L = Σ_i ℓ_i``, has the parameter gradient
``∇θ Ω = (∂g/∂θ)ᵀ c`` with ``c = ∂Ω/∂g``: the parameter gradient of the directional derivative of ``L`` at ``q``
along ``c``, taken here by a forward difference with step ``t``:

.. math:: (∂g/∂θ)ᵀ c ≈ \frac{∇θ L(q + t\,c) − ∇θ L(q)}{t},\qquad t = r / \max_i ‖c_i‖

so that no example moves farther than ``r`` (L2 over its coordinates). ``∇θ L(q)`` comes from the same backward
pass that computes ``g`` (:func:`probe`: one forward, one backward, nothing retained); the difference costs one
more forward at ``q + t c`` and its first-order backward, which the training step's final backward performs.
It also works where double backward is missing (fused attention, ``torch.compile``, custom autograd functions).
The second forward replays the first one's random numbers (same dropout masks) and leaves BatchNorm running
statistics as the first forward left them; as one step along the whole batch's ``c`` it is the directional
derivative of the batch loss, coupling through batch statistics included.

Exact as ``r → 0`` for twice-differentiable models; for ReLU networks the difference also sees activation
patterns that flip within the step (curvature that double backprop, an almost-everywhere derivative, ignores),
so the two estimates differ there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..losses import cross_entropy
from ..ops import grads

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
    """A forward and backward at ``point`` kept for a later finite difference.

    Attributes:
        point: the detached input the forward ran on.
        grad: detached input gradient ``∇x Σ_i ℓ_i`` at ``point`` (per-example rows).
        params: the trainable parameters of the model.
        param_grads: detached ``∇θ Σ_i ℓ_i`` at ``point`` for each of ``params`` (``None`` where unused).
        rng: random-number-generator states before the forward (replayed by :func:`fd_grad_vjp`).
    """

    point: Tensor
    grad: Tensor
    params: list[Tensor]
    param_grads: list[Tensor | None]
    rng: tuple[Tensor, Tensor | None]


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def probe(model: nn.Module, point: Tensor, y: Tensor) -> Probe:
    """One forward at ``point`` and one backward for the input and the parameter gradients of ``Σ_i ℓ_i``."""
    rng = _rng_state(point.device)
    leaf = point.detach().requires_grad_(True)
    params = [q for q in model.parameters() if q.requires_grad]
    g, *pg = grads(cross_entropy(model(leaf), y), [leaf, *params])
    assert g is not None  # the input always reaches its own loss
    return Probe(point=leaf.detach(), grad=g, params=params, param_grads=pg, rng=rng)


def fd_grad_vjp(model: nn.Module, p: Probe, y: Tensor, cotangent: Tensor, step: float) -> Tensor:
    """A scalar of value 0 whose parameter gradient approximates ``∇θ ⟨cotangent, ∇x Σ_i ℓ_i(p.point)⟩``.

    Args:
        model: the network (its modes are left as they are).
        p: the :class:`Probe` at the expansion point.
        y: labels.
        cotangent: ``∂Ω/∂g`` for the probe's gradient, shape of ``p.point`` (detached).
        step: L2 length ``r`` of the largest example's difference step, in input units.
    """
    c = cotangent.detach()
    t = step / c.flatten(1).norm(dim=1).max().clamp_min(torch.finfo(c.dtype).tiny)
    after = _rng_state(p.point.device)
    _set_rng_state(p.rng, p.point.device)
    try:
        with _running_stats_untouched(model):
            shifted = cross_entropy(model(p.point + t * c), y).sum()
    finally:
        _set_rng_state(after, p.point.device)
    # ∇θ of the base term Σ_i ℓ_i(q) is known from the probe: a linear surrogate ⟨θ, G⟩ carries it
    base = sum(
        ((q * g).sum() for q, g in zip(p.params, p.param_grads) if g is not None), torch.zeros((), device=c.device)
    )
    term = (shifted - base) / t
    return term - term.detach()
