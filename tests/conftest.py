"""Shared fixtures: tiny deterministic CPU models and batches (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(2)


class TinyCNN(nn.Module):
    """Conv-BN-ReLU-Dropout-Linear: exercises BatchNorm and Dropout mode handling."""

    def __init__(self, in_ch: int = 3, n_classes: int = 10, width: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(width * 16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)
        return self.fc(self.drop(h))


class SmoothCNN(nn.Module):
    """BN-free, softplus CNN: smooth, so exact gradient references are well defined."""

    def __init__(self, in_ch: int = 3, n_classes: int = 10, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, width, 3, padding=1)
        self.fc = nn.Linear(width * 8 * 8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.softplus(self.conv(x)).flatten(1))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    return x, y


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def smooth_model() -> nn.Module:
    torch.manual_seed(0)
    return SmoothCNN().double().eval()


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """Folder of the real Fashion-MNIST files; skips the test, naming what is missing and the fix, when absent.

    The one skip rule for every Fashion-MNIST test: ``make test`` installs Debian's ``dataset-fashion-mnist`` where
    apt-get can run (root); elsewhere (macOS, no root) these tests skip with this reason.
    """
    from robustfast.data import FASHION_MNIST_DIR, missing_fashion_mnist_files

    missing = missing_fashion_mnist_files()
    if missing:
        pytest.skip(
            f"Fashion-MNIST not installed ({len(missing)} of 4 IDX files missing in {FASHION_MNIST_DIR}): "
            "run `make test` as root (it installs Debian's dataset-fashion-mnist), or `sudo apt-get install "
            "dataset-fashion-mnist`, or set ROBUSTFAST_FASHION_MNIST to a folder holding the files"
        )
    return FASHION_MNIST_DIR


@pytest.fixture
def digits_small() -> torch.utils.data.DataLoader:
    """scikit-learn's digits (the 1,347 training images), shuffled in batches of 64 with a seeded generator."""
    from torch.utils.data import DataLoader, TensorDataset

    from robustfast.data import load_digits_tensors

    xtr, ytr, _, _ = load_digits_tensors(seed=0)
    return DataLoader(TensorDataset(xtr, ytr), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
