"""Catastrophic-overfitting diagnostics of the seed papers, as plain functions (methods spec §2.5, §5.4).

All run the model in eval mode (flags restored) without autocast, and never write parameter ``.grad``. Losses
are per-example cross-entropy (computed in fp32) and gradients are per-example input gradients.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import FGSM, PGD
from ..errors import RobustfastError
from ..losses import cross_entropy, linearity_error
from ..modes import model_mode
from ..ops import input_grad, uniform_like

__all__ = ["fgsm_pgd_cosine", "fgsm_pgd_gap", "gradient_alignment", "linearization_error"]

Reduction = Literal["mean", "none"]


def _reduce(v: Tensor, reduction: Reduction) -> Tensor:
    if reduction not in ("mean", "none"):
        raise RobustfastError(f"reduction={reduction!r}: choose 'mean' or 'none'")
    return v.mean() if reduction == "mean" else v


def _check(x: Tensor, y: Tensor, eps: float | None = None) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[0] != y.shape[0] or x.dim() < 2:
        raise RobustfastError("diagnostics: x must be a batch (N, ...) and y integer labels (N,)")
    if eps is not None and (isinstance(eps, bool) or not 0 < eps <= 1):
        raise RobustfastError(f"eps={eps!r}: must be in (0, 1] pixel units, e.g. 8/255")


def _loss_grad(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example CE loss and input gradient at ``x`` (detached)."""
    point = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = cross_entropy(model(point), y)
        g = input_grad(loss, point)
    return loss.detach(), g.detach()


def gradient_alignment(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""GradAlign's Eq. (5): :math:`\cos(\nabla_x \ell(x, y), \nabla_x \ell(x + \eta, y))`, η ~ U[-ε, ε]^d.

    ``x + η`` is clamped to ``[0, 1]``; an undefined cosine (a zero gradient) counts as 1, as in the official
    code. Values near 1 before catastrophic overfitting, near 0 after (ResNet-18: 0.95 → 0.05 at CO).

    Args:
        model: classifier; runs in eval mode.
        x: clean inputs in ``[0, 1]``. y: labels.
        eps: radius of the uniform noise (the training ε).
        generator: for the noise (default: the global RNG).
        reduction: ``"mean"`` (default, over examples) or ``"none"`` (per example).
    """
    _check(x, y, eps)
    with model_mode(model, "eval"), torch.autocast(x.device.type, enabled=False):
        _, g1 = _loss_grad(model, x, y)
        _, g2 = _loss_grad(model, (x + uniform_like(x, eps, generator)).clamp(0, 1), y)
    g1, g2 = g1.flatten(1), g2.flatten(1)
    cos = (g1 * g2).sum(1) / (g1.norm(dim=1) * g2.norm(dim=1))
    return _reduce(cos.nan_to_num(1.0, posinf=1.0, neginf=1.0), reduction)


def linearization_error(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    delta: Tensor | None = None,
    *,
    eps: float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""First-order Taylor error :math:`|\ell(x+\delta) - \ell(x) - \langle \delta, \nabla_x \ell(x) \rangle|`.

    GradAlign App. C.1 (as a function of ``‖δ‖₂`` at fixed ``‖δ‖∞ = ε``) and SEAT's linearity error (Eq. C.1).

    Args:
        model: classifier; runs in eval mode.
        x: clean inputs. y: labels.
        delta: the perturbation; ``None`` uses the FGSM direction ``eps * sign(∇x ℓ(x))`` (needs ``eps``).
            ``x + delta`` is evaluated as given (no clamping), so the Taylor expansion is exact in its terms.
        eps: radius for the default FGSM ``delta``.
        reduction: ``"mean"`` (default) or ``"none"`` (per example).
    """
    _check(x, y, eps)
    if delta is None and eps is None:
        raise RobustfastError("linearization_error: pass delta, or eps for the FGSM direction")
    if delta is not None and delta.shape != x.shape:
        raise RobustfastError(f"delta has shape {tuple(delta.shape)} but x has {tuple(x.shape)}")
    with model_mode(model, "eval"), torch.autocast(x.device.type, enabled=False):
        loss, g = _loss_grad(model, x, y)
        d = eps * g.sign() if delta is None else delta.detach().to(g.dtype)
        with torch.no_grad():
            loss_adv = cross_entropy(model(x + d), y)
    return _reduce(linearity_error(loss_adv, loss, d, g), reduction)


def _pgd(model: nn.Module, eps: float, steps: int, alpha: float | None, seed: int | None) -> PGD:
    return PGD(model, eps, alpha=alpha, steps=steps, random_start=True, seed=seed)


def fgsm_pgd_cosine(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 10,
    alpha: float | None = None,
    seed: int | None = 0,
    reduction: Reduction = "mean",
) -> Tensor:
    r""":math:`\cos(\delta_{FGSM}, \delta_{PGD})` per example (GradAlign §2.5 (b); Fig. 2).

    FGSM from the clean point with step ε; PGD-``steps`` (default 10, GradAlign's monitoring) with step
    ``alpha`` (default ε/4) from a uniform random start (``seed``). Both perturbations are clamped to ``[0, 1]``.
    """
    _check(x, y, eps)
    d_fgsm = (FGSM(model, eps)(x, y) - x).flatten(1)
    d_pgd = (_pgd(model, eps, steps, alpha, seed)(x, y) - x).flatten(1)
    return _reduce(F.cosine_similarity(d_fgsm, d_pgd, dim=1), reduction)


@torch.no_grad()
def _acc_loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    with model_mode(model, "eval"):
        logits = model(x).float()
    return (logits.argmax(1) == y).float().mean().item(), cross_entropy(logits, y).mean().item()


def fgsm_pgd_gap(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 10,
    alpha: float | None = None,
    seed: int | None = 0,
) -> dict[str, float]:
    """FGSM vs PGD accuracy and loss (GradAlign §2.5 (c)): the signature of catastrophic overfitting.

    At CO, FGSM accuracy jumps (43.5% → 86.7%) while PGD accuracy collapses (40.1% → 0%), so ``gap`` =
    FGSM accuracy − PGD accuracy turns large and positive; before CO the PGD/FGSM loss ratio stays below ~1.05.

    Returns:
        ``{"fgsm_acc", "pgd_acc", "gap", "fgsm_loss", "pgd_loss", "loss_ratio"}`` (accuracies in [0, 1]).
    """
    _check(x, y, eps)
    fgsm_acc, fgsm_loss = _acc_loss(model, FGSM(model, eps)(x, y), y)
    pgd_acc, pgd_loss = _acc_loss(model, _pgd(model, eps, steps, alpha, seed)(x, y), y)
    ratio = pgd_loss / fgsm_loss if fgsm_loss > 0 else float("inf")
    return {
        "fgsm_acc": fgsm_acc,
        "pgd_acc": pgd_acc,
        "gap": fgsm_acc - pgd_acc,
        "fgsm_loss": fgsm_loss,
        "pgd_loss": pgd_loss,
        "loss_ratio": ratio,
    }
