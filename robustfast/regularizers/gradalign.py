r"""GradAlign (Andriushchenko & Flammarion, NeurIPS 2020, "Understanding and Improving Fast Adversarial
Training", arXiv:2007.02617; reference code ``tml-epfl/understanding-fast-adv-training``).

.. math:: \Omega = \mathbb{E}_{\eta\sim U([-\epsilon,\epsilon]^d)}
   \big[1 - \cos(\nabla_x \ell(x, y), \nabla_x \ell(x + \eta, y))\big]

added as ``λ·Ω`` to the CE at ``x + δ_FGSM``. Needs double backpropagation through ``∇x ℓ(x + η)``, or,
with ``estimator="fd"``, one more forward and first-order passes only (:mod:`robustfast.regularizers._fd`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import as_magnitude, check_number
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy
from ..ops import input_grad, uniform_like
from ..rng import SeededRNG
from ._fd import fd_grad_vjp, probe
from .base import Regularizer, register_regularizer

__all__ = ["GradAlign", "GradAlignFD", "grad_align_cos"]


def grad_align_cos(g1: Tensor, g2: Tensor) -> Tensor:
    """``1 − mean_i cos(g1_i, g2_i)`` over the rows where both gradients are non-zero (the reference code's
    rule); a graph-connected zero when no row qualifies."""
    a, b = g1.flatten(1), g2.flatten(1)
    keep = (a.norm(dim=1) > 0) & (b.norm(dim=1) > 0)
    if not bool(keep.any()):
        return (a.sum() + b.sum()) * 0.0
    cos = (F.normalize(a[keep], dim=1) * F.normalize(b[keep], dim=1)).sum(1)
    return 1.0 - cos.mean()


@register_regularizer("gradalign", "grad_align")
class GradAlign(Regularizer):
    r"""Gradient alignment: ``λ·(1 − cos(∇x ℓ(x), ∇x ℓ(x+η)))``, ``η ~ U[-ε, ε]``, averaged over the batch.

    Follows the reference code behind the paper's numbers (spec §2.2): the clean gradient ``g1`` is
    **detached** (only ``g2 = ∇x ℓ(x+η)`` is differentiated); ``x + η`` is **not** clamped to ``[0, 1]``;
    examples where either gradient is exactly zero are skipped. Cosines are per example over all ``C·H·W``
    coordinates (per-example gradients; the scale is irrelevant to a cosine).

    Cost: in the shared-record path after an attack whose gradient is taken at the clean point with CE
    (FGSM, PGD without random start), ``g1`` is that gradient: one extra forward at ``x + η``, one backward
    with ``create_graph`` and a second-order pass in the final backward. Otherwise one more forward and
    backward compute ``g1``.

    Finite differences (``estimator="fd"``): the value is the same; its parameter gradient
    ``(∂g2/∂θ)ᵀ ∂Ω/∂g2`` comes from a forward difference of the loss at ``x + η`` along ``∂Ω/∂g2`` (no example
    moved farther than ``fd_step`` in L2) instead of a second-order backward; the backward that computes ``g2``
    also gives the difference's base term, so the cost is one forward more than FGSM + one forward and two
    first-order backwards. No double backward is needed anywhere (fused attention kernels, ``torch.compile``,
    custom autograd functions all work). For ReLU networks the difference also counts activation flips within
    the step, which double backprop ignores. On our Fashion-MNIST runs (``benchmarks/gradalign_fd.py``) it
    matched the exact estimator's robustness on a smooth (softplus) CNN and prevented catastrophic overfitting on
    a ReLU CNN, but with lower PGD accuracy there. With ``symmetric=True`` both points are probed afresh (the
    attack's clean pass is not reused).

    Args:
        eps: radius of the uniform noise ``η`` in pixel units (default ``8/255``; use the training ε).
        lam: weight λ (default 0.2, the paper's value at ε = 8/255 on CIFAR-10; see :meth:`paper_lambda`).
        symmetric: differentiate through ``g1`` too (the paper's Eq. 7 and the code's PGD-2 + GradAlign);
            then the attack is asked to keep its clean gradient's graph (``"clean_grad_graph"``).
        clamp_eta: clamp ``x + η`` to ``[0, 1]`` (default False, code parity).
        seed: seeds a private generator for ``η`` (``None``: the global RNG).
        estimator: ``"exact"`` (double backpropagation, the paper's) or ``"fd"`` (finite differences).
        fd_step: L2 length of the largest example's finite-difference step, in pixel units (``None``: ``eps``).

    Example:
        >>> reg = GradAlign(eps=8/255, lam=GradAlign.paper_lambda(8/255))
        >>> loss = F.cross_entropy(model(x_adv), y) + reg(model, x, y, x_adv)
    """

    needs_x_adv = False
    _repr_params = ("eps", "lam", "symmetric", "clamp_eta", "estimator")
    state_attrs = ("rng",)

    def __init__(
        self,
        eps: float = 8 / 255,
        lam: float = 0.2,
        *,
        symmetric: bool = False,
        clamp_eta: bool = False,
        seed: int | None = None,
        estimator: Literal["exact", "fd"] = "exact",
        fd_step: float | None = None,
    ) -> None:
        super().__init__(lam)
        eps = as_magnitude("GradAlign", "eps", eps, allow_none=False)
        if estimator not in ("exact", "fd"):
            raise RobustfastError(f"GradAlign(estimator={estimator!r}): choose 'exact' or 'fd'")
        check_number("GradAlign", "fd_step", fd_step, 0.0, lo_open=True, allow_none=True)
        self.eps, self.symmetric, self.clamp_eta = float(eps), bool(symmetric), bool(clamp_eta)
        self.estimator = estimator
        self.fd_step = float(fd_step) if fd_step is not None else float(eps)
        self.needs_double_backward = estimator == "exact"
        exact_sym = symmetric and estimator == "exact"
        self.requests = frozenset({"clean_grad_graph"}) if exact_sym else frozenset()
        self.rng = SeededRNG(seed, owner="GradAlign")

    @property
    def seed(self) -> int | None:
        """Seed of the private generator for ``η`` (``None``: the global RNG)."""
        return self.rng.seed

    @staticmethod
    def paper_lambda(eps: float, dataset: Literal["cifar10", "svhn"] = "cifar10") -> float:
        """λ of the paper's Table 2 from its closed forms, for ``eps`` in pixel units (``8/255``).

        CIFAR-10: ``0.02·10^(ε/8)``; SVHN: ``1.5625·1.6^(ε/8)``, with ε in /255 units (``eps * 255``).
        Tuned at ε = 8 and 16 and interpolated log-linearly; values below ε = 8 are extrapolations.
        """
        e = float(as_magnitude("GradAlign.paper_lambda", "eps", eps, allow_none=False)) * 255.0
        if dataset == "cifar10":
            return 0.02 * 10.0 ** (e / 8.0)
        if dataset == "svhn":
            return 1.5625 * 1.6 ** (e / 8.0)
        raise RobustfastError(f"GradAlign.paper_lambda(dataset={dataset!r}): choose 'cifar10' or 'svhn'")

    def _noisy_point(self, x: Tensor) -> Tensor:
        point = x + uniform_like(x, self.eps, self.rng.get(x.device))
        return point.clamp(0.0, 1.0) if self.clamp_eta else point

    def penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """Mean over examples of ``1 − cos(∇ℓ(x), ∇ℓ(x + η))`` (zero-norm rows skipped)."""
        if self.estimator == "fd":
            return self._fd_penalty(model, ctx)
        g1 = ctx.clean_ce_grad(model, create_graph=self.symmetric)
        if not self.symmetric:
            g1 = g1.detach()
        point = self._noisy_point(ctx.x.detach()).requires_grad_(True)
        g2 = input_grad(cross_entropy(model(point), ctx.y), point, create_graph=True)
        return grad_align_cos(g1, g2)

    def _fd_penalty(self, model: nn.Module, ctx: StepContext) -> Tensor:
        """The same value; its parameter gradient by finite differences (see the class docstring)."""
        x = ctx.x.detach()
        clean = probe(model, x, ctx.y) if self.symmetric else None
        g1 = clean.grad if clean is not None else ctx.clean_ce_grad(model).detach()
        noisy = probe(model, self._noisy_point(x), ctx.y)
        a, b = g1.detach().requires_grad_(True), noisy.grad.detach().requires_grad_(True)  # new leaves, no copy
        omega = grad_align_cos(a, b)
        da, db = torch.autograd.grad(omega, (a, b))  # ∂Ω/∂g: zero on skipped rows
        out = omega.detach() + fd_grad_vjp(model, noisy, ctx.y, db, self.fd_step)
        if clean is not None:
            out = out + fd_grad_vjp(model, clean, ctx.y, da, self.fd_step)
        return out


@register_regularizer("gradalign_fd", "grad_align_fd")
class GradAlignFD(GradAlign):
    r"""GradAlign's penalty with a finite-difference parameter gradient: a regularizer of its own on ReLU networks.

    The value is GradAlign's; the parameter gradient ``(∂g2/∂θ)ᵀ ∂Ω/∂g2`` is a forward difference of the loss at
    ``x + η`` along ``∂Ω/∂g2`` with step ``fd_step`` (see :class:`GradAlign`'s ``estimator="fd"``): no double
    backward, so fused attention kernels, ``torch.compile`` and custom autograd functions work.

    It equals exact GradAlign only in the limit of a tiny step, which float32 cannot reach: a large step measures
    the change of the gradient over the step (for ReLU networks including the activation patterns that flip inside
    it: a curvature averaged over a region), a small one drowns in rounding. Measured on Fashion-MNIST's CNN at
    initialization (``benchmarks/gradalign_fd.py --step-sweep``, ``docs/benchmarks/gradalign_fd_steps.md``): in
    float32 the cosine with the exact parameter gradient is 0.01–0.14 on the ReLU CNN for every step from ε down to
    1e-6·ε, and 0.64 at ε (falling with the step) on a softplus(β = 10) CNN; in float64 it reaches 1.00 below
    1e-4·ε. So this is a regularizer of its own (the default ``fd_step = ε`` is the float32 step closest to exact);
    on our Fashion-MNIST runs it prevents catastrophic overfitting with lower robust accuracy than exact GradAlign
    on a ReLU CNN and the same on a softplus CNN (``docs/benchmarks/gradalign_fd.md``).

    Args:
        eps: radius of the uniform noise ``η`` (default ``8/255``; use the training ε).
        lam: weight λ (default 0.2).
        symmetric: also probe the clean point afresh (default False).
        clamp_eta: clamp ``x + η`` to ``[0, 1]`` (default False).
        seed: seeds a private generator for ``η``.
        fd_step: L2 length of the largest example's difference step (default ``None``: ``eps``).
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        lam: float = 0.2,
        *,
        symmetric: bool = False,
        clamp_eta: bool = False,
        seed: int | None = None,
        fd_step: float | None = None,
    ) -> None:
        super().__init__(eps, lam, symmetric=symmetric, clamp_eta=clamp_eta, seed=seed, estimator="fd",
                         fd_step=fd_step)  # fmt: skip
