"""Shared checks for method tests: each method's own test file calls these on a *spec*.

A spec is ``spec(model) -> dict`` of :class:`~robustfast.training.AdversarialTrainer` keyword arguments for the
method's parts (``attack``, ``regularizers``, ``criterion``, ``plugins``), e.g.::

    def trades(model):
        return {"attack": rf.TRADESAttack(model, EPS, steps=3, seed=0), "criterion": rf.TRADESLoss(beta=6)}

The checks train a small CNN on scikit-learn's digits (offline, seconds on a CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from conftest import TinyCNN
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
from robustfast.data import IndexedDataset, load_digits_tensors
from robustfast.training import AdversarialTrainer, COCheck, COGuard, load_checkpoint

Spec = Callable[[nn.Module], dict[str, Any]]
EPS = 0.1


@functools.cache
def switched_on(reg: rf.ELLEA) -> rf.ELLEA:
    """ELLE-A switched on (λ = 1) with a history in which no step is an outlier, so λ only decays."""
    reg.lam = 1.0
    reg.adaptive.count, reg.adaptive.mean, reg.adaptive.m2 = 10, 1e9, 0.0
    return reg


def digits() -> tuple[torch.Tensor, ...]:
    """scikit-learn's digits as (x_train, y_train, x_test, y_test), 8x8 images in [0, 1]."""
    return load_digits_tensors(seed=0)


def cnn(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyCNN(in_ch=1, width=16, dropout=dropout)


def loader(n: int = 512, bs: int = 64, seed: int = 1, indexed: bool = True) -> DataLoader:
    xtr, ytr, *_ = digits()
    ds = TensorDataset(xtr[:n], ytr[:n])
    return DataLoader(IndexedDataset(ds) if indexed else ds, batch_size=bs, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip


def pgd_accuracy(model: nn.Module, eps: float = EPS, n: int = 300) -> float:
    """PGD-10 accuracy (α = ε/4, seeded random start) on the first ``n`` digits test points."""
    *_, xte, yte = digits()
    x, y = xte[:n], yte[:n]
    with rf.model_mode(model, "eval"):
        xa = rf.PGD(model, eps, steps=10, seed=0)(x, y)
        with torch.no_grad():
            return (model(xa).argmax(1) == y).float().mean().item()


def clean_accuracy(model: nn.Module, n: int = 300) -> float:
    *_, xte, yte = digits()
    with rf.model_mode(model, "eval"), torch.no_grad():
        return (model(xte[:n]).argmax(1) == yte[:n]).float().mean().item()


def train(spec: Spec | None, *, epochs: int = 4, lr: float = 0.1, n: int = 512, **kw: Any) -> AdversarialTrainer:
    """Train ``cnn()`` with the method (``None``: standard training) and return the trainer."""
    model = cnn(dropout=kw.pop("dropout", 0.0))
    parts = spec(model) if spec is not None else {"attack": None}
    fit_kw = {k: kw.pop(k) for k in ("resume",) if k in kw}
    tr = AdversarialTrainer(model, lr=lr, val_attack=None, progress=False, verbose=False, seed=0, **parts, **kw)
    tr.fit(loader(n), epochs, **fit_kw)
    return tr


@functools.cache
def _standard_pgd(settings: tuple[tuple[str, Any], ...]) -> float:
    """Standard training's PGD accuracy, trained once per set of keyword settings (shared by the method tests)."""
    return pgd_accuracy(train(None, **dict(settings)).model)


def check_gains_robustness(spec: Spec, *, margin: float = 0.1, min_clean: float = 0.6, **kw: Any) -> dict:
    """The method's PGD accuracy beats standard training's by ``margin``, at a sane clean accuracy."""
    method = train(spec, **kw).model
    out = {
        "standard_pgd": _standard_pgd(tuple(sorted(kw.items()))),
        "method_pgd": pgd_accuracy(method),
        "method_clean": clean_accuracy(method),
    }
    assert out["method_pgd"] > out["standard_pgd"] + margin, out
    assert out["method_clean"] > min_clean, out
    return out


class _Crash(Exception):
    pass


def check_resume_bit_identical(spec: Spec, tmp_path: Path, *, epochs: int = 3, crash_at: int = 10) -> None:
    """An interrupted and resumed run equals an uninterrupted one (weights and every method part's state)."""

    class Crash:
        def on_batch_end(self, step: int) -> None:
            if step == crash_at:
                raise _Crash

    kw = {"epochs": epochs, "n": 256, "dropout": 0.1}
    ref = train(spec, checkpoint_dir=tmp_path / "a", **kw)
    try:
        train(spec, checkpoint_dir=tmp_path / "b", callbacks=[Crash()], **kw)
    except _Crash:
        pass
    else:  # pragma: no cover - the crash must happen
        raise AssertionError("the interrupted run did not stop")
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] < epochs
    res = train(spec, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    for (k, a), b in zip(ref.model.state_dict().items(), res.model.state_dict().values()):
        assert torch.equal(a, b), k
    for c_ref, c_res in zip(ref.components, res.components):
        _assert_same_state(c_ref.state_dict(), c_res.state_dict())


def _assert_same_state(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _assert_same_state(u, v)
    else:
        assert a == b or (a != a and b != b), (a, b)


class ScriptedGuard(COGuard):
    """Reports catastrophic overfitting at the listed check indices (policy tests without a real collapse)."""

    def __init__(self, co_at: set[int], **kw: Any) -> None:
        super().__init__(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), **kw)
        self.co_at = co_at

    def check(self, model: nn.Module, eps: float, device: Any = None, update: bool = True) -> COCheck:
        co = len(self.checks) in self.co_at
        r = COCheck(0.5, 0.1 if co else 0.4, 0.4, co, "scripted" if co else None, improved=not co)
        self.checks.append(r)
        return r


def check_rollback(spec: Spec) -> AdversarialTrainer:
    """A rollback restores the method's state and applies its strengthening; training then goes on."""
    tr = train(spec, epochs=3, n=128, co_guard=ScriptedGuard({1}, on_co="rollback", strengthen="all"))
    assert tr.history["co"] == [False, True, False, False] and tr.epoch == 3
    return tr


def check_bf16(spec: Spec) -> AdversarialTrainer:
    """Under bf16 autocast the method trains with a finite loss."""
    tr = train(spec, epochs=1, n=128, amp="bf16")
    assert all(torch.isfinite(torch.tensor(v)) for v in tr.history["train_loss"])
    return tr
