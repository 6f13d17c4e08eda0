"""The CO guard fires on an FGSM run that overfits catastrophically and stays quiet on N-FGSM.

Fashion-MNIST (Debian package dataset-fashion-mnist), ε = 0.2, a small CNN, Adam(1e-2), 3,000 training images,
3 epochs, seed 0. Measured: FGSM from the clean point collapses (held-out PGD-10 accuracy 15.6% → 9.4% → 10.5%
while FGSM accuracy rises 29% → 44% → 49%: flagged at epochs 1 and 2), N-FGSM keeps PGD accuracy at 28-31%
with an FGSM-PGD gap below 0.08 (never flagged).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
from robustfast.data import load_fashion_mnist_tensors
from robustfast.training import AdversarialTrainer, COGuard


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 49, 100), nn.ReLU(), nn.Linear(100, 10),
    )  # fmt: skip


def _run(method: str, epochs: int = 3) -> list[dict]:
    xtr, ytr, xte, yte = load_fashion_mnist_tensors(n_train=3000, n_test=256, seed=0)
    torch.manual_seed(0)
    model = _cnn()
    atk = rf.FGSM(model, 0.2) if method == "fgsm" else rf.NFGSM(model, 0.2, seed=0)
    guard = COGuard(xte, yte)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = DataLoader(TensorDataset(xtr, ytr), batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
    tr = AdversarialTrainer(model, atk, optimizer=opt, co_guard=guard, val_attack=None, progress=False)
    return tr.fit(data, epochs)


def test_co_guard_fires_on_fgsm_not_on_nfgsm(fashion_mnist):
    fgsm, nfgsm = _run("fgsm"), _run("nfgsm")
    assert fgsm["co"][-1] and sum(fgsm["co"]) >= 1, fgsm
    assert fgsm["co_pgd_acc"][-1] < 0.15 and fgsm["co_fgsm_acc"][-1] - fgsm["co_pgd_acc"][-1] > 0.3
    assert not any(nfgsm["co"]), nfgsm
    assert min(nfgsm["co_pgd_acc"]) > 0.2
    assert max(f - p for f, p in zip(nfgsm["co_fgsm_acc"], nfgsm["co_pgd_acc"])) < 0.15
