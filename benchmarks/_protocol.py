"""The benchmark protocol shared by ``quality.py`` and ``co_guard.py`` (public, offline data).

* **Data**: Fashion-MNIST (Debian's ``dataset-fashion-mnist``), scikit-learn's digits (8×8) or ``digits16`` (the
  same digits upsampled bilinearly to 16×16: four times the pixels, the same 1,797 images). A fixed random training
  subset; a held-out batch taken from the *training* split for the CO guard (disjoint from the test points we
  report); the first test points for evaluation. ``downsample=2`` average-pools Fashion-MNIST to 14×14.
* **Model**: a 2-conv CNN (16/32 channels, 3×3, each followed by ReLU and 2×2 max-pool) and a 100-unit hidden
  layer, no BatchNorm.
* **Optimizer**: Adam with a one-cycle learning rate peaking at 3e-3 at 40% of training (``OneCycle``, torch's
  ``OneCycleLR``), batch 128, attacks crafted in train mode (the trainer's default).
* **Length**: 10 epochs on Fashion-MNIST (12,000 images: 94 steps per epoch); ``DIGITS_EPOCHS`` = 100 on digits and
  digits16 (9 steps per epoch). At 20–30 digits epochs (180–270 steps) PGD-10 training at ε = 0.3 had not left chance
  level (7.6% clean); at 100 epochs it converges (PGD-20 ≈ 35–45%, plateauing after about 75 epochs).
* **ε warm-up at the largest ε** (``eps_warmup``): at ε ≥ 0.3 the attack's ε (and step) ramps linearly over the
  first 10% of the epochs, for every method, as GradAlign's code does on SVHN, where training otherwise stays at
  a constant classifier. Without it, on Fashion-MNIST at ε = 0.3 PGD-10 stayed at chance level in 2 of 3 seeds, and
  on digits at ε = 0.3 GradAlign, LLR and PGD-10+AWP did in every seed. On digits the ramp does not cure it
  (GradAlign with λ = 0.5 still ends at a constant classifier in 3 of 3 seeds, and no single-step method passes
  12% PGD-20), so the digits tables use ε = 0.1 and 0.2. The guard waits for the ramp.
* **Evaluation** (fp32, eval mode): clean accuracy; PGD-K-R with step ε/4, uniform random starts, the per-example
  worst case over restarts; AutoAttack through ``robustfast.evaluate``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
from robustfast.data import load_digits_tensors, load_fashion_mnist_tensors
from robustfast.training import OneCycle

BATCH = 128
DIGITS_EPOCHS = 100
#: The digits datasets (100 epochs, all their 450 test points).
DIGITS = ("digits", "digits16")
PEAK_LR = 3e-3


def cnn(side: int, widths: tuple[int, int, int] = (16, 32, 100)) -> nn.Module:
    """The benchmark CNN for ``side × side`` grey images (28, 14 or 8): two 3×3 conv layers (``widths[:2]``
    channels, each followed by ReLU and 2×2 max-pool) and a hidden layer of ``widths[2]`` units."""
    c1, c2, hidden = widths
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * (side // 4) ** 2, hidden), nn.ReLU(), nn.Linear(hidden, 10),
    )  # fmt: skip


@functools.cache
def load(dataset: str, n_train: int, n_test: int, n_guard: int = 256, downsample: int = 1) -> dict[str, torch.Tensor]:
    """``{"x", "y"}`` training subset, ``{"xg", "yg"}`` guard batch (held out of the training split) and
    ``{"xt", "yt"}`` test points, all fixed by seed 0."""
    if dataset in DIGITS:
        xtr, ytr, xte, yte = load_digits_tensors(seed=0)
        if dataset == "digits16":
            xtr, xte = (F.interpolate(t, size=16, mode="bilinear", align_corners=False).clamp(0, 1) for t in (xtr, xte))
    elif dataset == "fashion_mnist":
        xtr, ytr, xte, yte = load_fashion_mnist_tensors(n_train=n_train + n_guard, n_test=n_test, seed=0)
        if downsample > 1:
            xtr, xte = F.avg_pool2d(xtr, downsample), F.avg_pool2d(xte, downsample)
    else:
        raise ValueError(dataset)
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))
    guard, train = perm[:n_guard], perm[n_guard : n_guard + n_train]
    return {
        "x": xtr[train],
        "y": ytr[train],
        "xg": xtr[guard],
        "yg": ytr[guard],
        "xt": xte[:n_test],
        "yt": yte[:n_test],
    }


def loader(data: dict[str, torch.Tensor], seed: int) -> DataLoader:
    """Shuffled training batches with dataset indices (``IndexedDataset``), seeded."""
    ds = rf.data.IndexedDataset(TensorDataset(data["x"], data["y"]))
    return DataLoader(ds, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed))


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=PEAK_LR)


def schedule() -> OneCycle:
    return OneCycle(lr_max=PEAK_LR, peak=0.4)


def eps_warmup(eps: float, epochs: int) -> int:
    """Epochs of the linear ε warm-up of a run: 10% of them at ε ≥ 0.3 (at least 1), else 0 (none)."""
    return max(1, round(0.1 * epochs)) if eps >= 0.3 else 0


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with rf.model_mode(model, "eval"):
        return (model(x).argmax(1) == y).float().mean().item()


def pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20, restarts: int = 1,
                 seed: int = 0) -> float:  # fmt: skip
    """PGD-``steps``-``restarts`` accuracy (step ε/4, uniform start, worst restart per example), eval mode."""
    rep = rf.evaluate(model, (x, y), eps, [f"pgd-{steps}-{restarts}"], seed=seed, progress=False)
    return rep.worst_case_accuracy


MethodParts = Callable[[nn.Module, float, int], dict[str, Any]]


def collapsed(curve: list[float], floor: float = 0.15) -> bool:
    """Catastrophic overfitting of a run: its per-epoch PGD accuracy fell below half of its best earlier epoch's,
    that best being at least ``floor`` (1.5× the 10-class chance level: early-training jitter between 0 and
    ~12% on a few hundred points is not a collapse)."""
    best = 0.0
    for v in curve:
        if best >= floor and v < 0.5 * best:
            return True
        best = max(best, v)
    return False


Line = tuple[list[float], str, float]  # (per-epoch accuracies, colour, alpha)


def curve_grid(panels: list[tuple[str, list[Line]]], ylabel: str, xlabel: str, path: Path, cols: int = 4) -> Path:
    """Per-epoch accuracy curves, one panel per ``(title, lines)``, in a grid sharing the y axis; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(1, min(cols, len(panels)))
    nrow = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrow, cols, figsize=(3.7 * cols, 2.7 * nrow), squeeze=False, sharey=True)
    for ax, (title, lines) in zip(axes.flat, panels, strict=False):
        for curve, color, alpha in lines:
            ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], marker=".", color=color, alpha=alpha)
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
