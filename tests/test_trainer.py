"""AdversarialTrainer: robustness gain, exact resume, atomic checkpoints, hooks, schedules, averaging, errors."""

from __future__ import annotations

import errno
import itertools
import math
from pathlib import Path

import pytest
import torch
from conftest import TinyCNN
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
from robustfast.context import StepContext
from robustfast.data import load_digits_tensors
from robustfast.errors import RobustfastError
from robustfast.regularizers.base import Regularizer
from robustfast.training import (
    EMA,
    SWA,
    AdversarialTrainer,
    COCheck,
    COGuard,
    Constant,
    Cyclic,
    LinearWarmup,
    OneCycle,
    Piecewise,
    load_checkpoint,
    recompute_bn,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, ...]:
    return load_digits_tensors(seed=0)


def loader(x: torch.Tensor, y: torch.Tensor, bs: int = 64, seed: int = 0, shuffle: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=shuffle, generator=g)


def digits_cnn(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyCNN(in_ch=1, width=16, dropout=dropout)


class L2Penalty(Regularizer):
    """Dummy regularizer: ``lam * mean(logits(x_adv)^2)`` (reuses the training forward)."""

    def penalty(self, model: nn.Module, ctx: StepContext) -> torch.Tensor:
        assert ctx.adv_logits is not None
        return ctx.adv_logits.pow(2).mean()


def pgd_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    model.eval()
    xa = rf.PGD(model, eps, steps=10, seed=0)(x, y)
    with torch.no_grad():
        return (model(xa).argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------------------------------------- training works
def test_adversarial_training_raises_pgd_accuracy(digits):
    xtr, ytr, xte, yte = digits
    eps, accs = 0.1, {}
    for name in ("standard", "rs"):
        model = digits_cnn()
        atk = rf.RS(model, eps, seed=0) if name == "rs" else None
        tr = AdversarialTrainer(model, atk, lr=0.1, val_attack=None, progress=False, seed=0)
        hist = tr.fit(loader(xtr, ytr), epochs=4, val_loader=loader(xte, yte, 256, shuffle=False))
        assert hist["val_acc"][-1] > 0.85  # both learn the task
        accs[name] = pgd_acc(model, xte, yte, eps)
    assert accs["rs"] > accs["standard"] + 0.1, accs


def test_history_hooks_penalties_and_logs(digits, tmp_path: Path):
    xtr, ytr, xte, yte = digits
    model = digits_cnn()
    calls: list[str] = []

    class Recorder:  # duck-typed: only the kwargs it names are passed
        def on_fit_start(self, epochs):
            calls.append(f"fit_start:{epochs}")

        def on_epoch_start(self, epoch):
            calls.append(f"epoch_start:{epoch}")

        def on_before_backward(self, loss):
            assert loss.requires_grad

        def on_batch_end(self, step, lr):
            calls.append("batch")
            assert 0 <= lr <= 0.2  # default cyclic schedule

        def on_epoch_end(self, trainer, record):
            assert trainer.history[-1] is record
            calls.append(f"epoch_end:{record['epoch']}")

        def on_fit_end(self, history):
            calls.append(f"fit_end:{len(history)}")

    tr = AdversarialTrainer(
        model,
        rf.FGSM(model, 0.05),
        [L2Penalty(0.01)],
        callbacks=[Recorder()],
        log_dir=tmp_path,
        progress=True,
        label_smoothing=0.1,
        grad_clip=1.0,
    )
    small = loader(xtr[:256], ytr[:256])
    hist = tr.fit(small, 2, val_loader=loader(xte[:128], yte[:128], 128))
    assert calls[0] == "fit_start:2" and calls[-1] == "fit_end:2"
    assert calls.count("batch") == 2 * len(small) and "epoch_end:1" in calls
    for key in ("train_loss", "train_acc", "train_l2penalty", "time", "ips", "lr", "val_acc", "val_robust_acc"):
        assert all(v is not None and math.isfinite(v) for v in hist[key]), key
    assert hist["train_l2penalty"][0] > 0
    assert (tmp_path / "history.json").is_file() and len((tmp_path / "history.csv").read_text().splitlines()) == 3


def test_attack_bn_policy_and_eps_warmup(digits):
    xtr, ytr, *_ = digits
    model = digits_cnn()
    seen: list[tuple[float, str]] = []

    class Probe(rf.FGSM):
        def perturb(self, x, y, ctx):
            seen.append((self.eps, self.bn_mode))
            return super().perturb(x, y, ctx)

    atk = Probe(model, 0.1)  # attack default bn_mode is "eval"
    tr = AdversarialTrainer(model, atk, eps_warmup=2, val_attack=None, progress=False)
    data = loader(xtr[:256], ytr[:256])  # 4 batches per epoch
    tr.fit(data, 3)
    eps = [e for e, _ in seen]
    assert eps[:4] == pytest.approx([0.1 * (i + 1) / 8 for i in range(4)])  # per-iteration linear ramp
    assert eps[7:] == pytest.approx([0.1] * 5)
    assert {m for _, m in seen} == {"train"}  # the papers' policy during training
    assert atk.bn_mode == "eval" and atk.eps == 0.1  # restored afterwards


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_torch_scheduler(digits, amp):
    xtr, ytr, *_ = digits
    model = digits_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    tr = AdversarialTrainer(model, rf.FGSM(model, 0.05), optimizer=opt, lr_schedule=sched, amp=amp,
                            channels_last=True, val_attack=None, progress=False)  # fmt: skip
    hist = tr.fit(loader(xtr[:256], ytr[:256]), 2)
    assert all(math.isfinite(v) for v in hist["train_loss"])
    assert hist["lr"] == pytest.approx([0.025, 0.0125])  # stepped once per iteration (4 per epoch)
    assert tr.scaler.is_enabled() == (amp == "fp16")


# ---------------------------------------------------------------------------------------------- resume & checkpoints
class Interrupt(Exception):
    pass


def _resume_run(digits, ckpt: Path, interrupt_at: int | None, resume: bool = False) -> AdversarialTrainer:
    xtr, ytr, xte, yte = digits
    model = digits_cnn(dropout=0.2)
    atk = rf.RS(model, 0.1, seed=3)

    class Crash:
        def on_batch_end(self, step):
            if interrupt_at is not None and step == interrupt_at:
                raise Interrupt

    tr = AdversarialTrainer(model, atk, averaging=EMA(0.9), lr=0.05, checkpoint_dir=ckpt, callbacks=[Crash()],
                            progress=False, seed=0)  # fmt: skip
    tr.fit(loader(xtr[:320], ytr[:320], seed=1), 3, val_loader=loader(xte[:64], yte[:64], 64), resume=resume)
    return tr


def test_resume_is_bit_identical(digits, tmp_path: Path):
    ref = _resume_run(digits, tmp_path / "a", None)
    with pytest.raises(Interrupt):
        _resume_run(digits, tmp_path / "b", interrupt_at=13)  # mid epoch 3 (5 batches per epoch)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    res = _resume_run(digits, tmp_path / "b", None, resume=True)
    for (k, a), b in zip(ref.model.state_dict().items(), res.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(ref.averagers[0].model.state_dict().values(), res.averagers[0].model.state_dict().values()):
        assert torch.equal(a, b)
    drop = ("time", "ips")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in ref.history]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in res.history]


def test_checkpoint_save_is_atomic(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.arange(3.0), "epoch": 1}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RobustfastError, match=r"could not write checkpoint .*last\.pt.*disk is full.*not touched"):
        save_checkpoint({"w": torch.zeros(3), "epoch": 2}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)  # weights_only=True
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_load_checkpoint_refuses_arbitrary_objects(tmp_path: Path):
    torch.save({"obj": Interrupt()}, tmp_path / "evil.pt")
    with pytest.raises(RobustfastError, match=r"never unpickles arbitrary code") as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(err.value)


# ---------------------------------------------------------------------------------------------- schedules
def test_schedule_shapes():
    cyc = Cyclic(lr_max=0.2, peak=0.4)
    assert cyc(0, 10) == 0 and cyc(4, 10) == pytest.approx(0.2) and cyc(10, 10) == pytest.approx(0)
    assert cyc(2, 10) == pytest.approx(0.1) and cyc(7, 10) == pytest.approx(0.1)
    oc = OneCycle(lr_max=0.3, peak=0.3)
    vals = [oc(t / 10, 10) for t in range(101)]
    top = max(range(101), key=lambda i: vals[i])
    assert top == 30 and vals[top] == pytest.approx(0.3) and vals[0] == pytest.approx(0.3 / 25)
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(vals[:31]))
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(vals[30:]))
    pw = Piecewise(0.1, (100, 150))
    assert pw(50, 200) == 0.1 and pw(100, 200) == 0.1 and pw(100.01, 200) == pytest.approx(0.01)
    assert pw(160, 200) == pytest.approx(0.001)
    assert LinearWarmup(5)(2.5, 15) == 0.5 and LinearWarmup(5)(7, 15) == 1.0 and Constant(0.3)(9, 10) == 0.3
    for bad in (lambda: Cyclic(peak=1.2), lambda: OneCycle(lr_max=-1), lambda: Piecewise(milestones=(5, 2))):
        with pytest.raises(RobustfastError):
            bad()


def test_default_recipe_is_sgd_cyclic(digits):
    model = digits_cnn()
    tr = AdversarialTrainer(model, rf.FGSM(model, 0.1), progress=False, val_attack=None)
    g = tr.optimizer.param_groups[0]
    assert isinstance(tr.optimizer, torch.optim.SGD) and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4
    assert tr.lr_schedule == Cyclic(0.2, 0.4)


# ---------------------------------------------------------------------------------------------- averaging
def test_ema_matches_closed_form():
    model = nn.Linear(2, 1)
    ema = EMA(decay=0.5)
    ws = [1.0, 3.0, 5.0]
    for step, w in enumerate(ws, start=1):
        with torch.no_grad():
            model.weight.fill_(w)
        ema.update(model, step)
    # avg_1 = w1 (copy), avg_2 = .5*1+.5*3 = 2, avg_3 = .5*2+.5*5 = 3.5
    assert ema.model.weight.detach().unique().item() == pytest.approx(3.5)


def test_swa_equal_weights_and_bn_recompute():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    swa = SWA(start_epoch=0, every_steps=1, bn_update=None)
    snaps = []
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        snaps.append([p.detach().clone() for p in model.parameters()])
        swa.update(model)
    for i, a in enumerate(swa.model.parameters()):
        assert torch.allclose(a, torch.stack([s[i] for s in snaps]).mean(0), atol=1e-6)
    x = torch.randn(64, 3) * 3 + 1
    recompute_bn(swa.model, [(x[:32], None), (x[32:], None)])
    h = swa.model[0](x)
    bn = swa.model[1]
    assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, (h[:32].var(0) + h[32:].var(0)) / 2, rtol=1e-4)  # mean of batch vars
    assert not swa.model.training


def test_swa_in_trainer_starts_late(digits):
    xtr, ytr, *_ = digits
    model = digits_cnn()
    swa = SWA(start_epoch=1, every_steps=2)
    AdversarialTrainer(model, rf.FGSM(model, 0.05), averaging=swa, val_attack=None, progress=False).fit(
        loader(xtr[:256], ytr[:256]), 2
    )
    assert swa.n_averaged == 2  # steps 6 and 8 of epoch 1 (4 steps per epoch)


# ---------------------------------------------------------------------------------------------- CO guard policy
class ScriptedGuard(COGuard):
    """Reports CO at the listed check indices (to test the policy without a real collapse)."""

    def __init__(self, co_at: set[int], **kw):
        super().__init__(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), **kw)
        self.co_at = co_at

    def check(self, model, eps, device=None, update=True):
        co = len(self.checks) in self.co_at
        r = COCheck(0.5, 0.1 if co else 0.4, 0.4, co, "scripted" if co else None, improved=not co)
        self.checks.append(r)
        return r


def test_co_rollback_restores_and_raises_q(digits):
    xtr, ytr, *_ = digits
    model = digits_cnn()
    atk = rf.ZeroGrad(model, 0.1, q=0.2, seed=0)
    guard = ScriptedGuard({1}, on_co="rollback")
    tr = AdversarialTrainer(model, atk, co_guard=guard, val_attack=None, progress=False)
    hist = tr.fit(loader(xtr[:128], ytr[:128]), 3)
    assert hist["epoch"] == [1, 2, 2, 3]  # epoch 2 hit CO, was rolled back to its start and redone
    assert hist["co"] == [False, True, False, False]
    assert hist[1]["rolled_back_to"] == 1 and hist[1]["strengthened"] == "ZeroGrad: q 0.2 -> 0.3"
    assert atk.q == pytest.approx(0.3) and guard.n_rollbacks == 1 and tr.step == 3 * 2


def test_co_flag_only_and_lam_strengthening(digits):
    xtr, ytr, *_ = digits
    model = digits_cnn()
    reg = L2Penalty(0.5)
    tr = AdversarialTrainer(model, rf.FGSM(model, 0.1), [reg], co_guard=ScriptedGuard({0}, on_co="rollback"),
                            val_attack=None, progress=False)  # fmt: skip
    hist = tr.fit(loader(xtr[:128], ytr[:128]), 2)
    assert hist["co"] == [True, False, False] and reg.lam == 1.0 and hist["epoch"] == [1, 1, 2]
    model2 = digits_cnn()
    tr2 = AdversarialTrainer(model2, rf.FGSM(model2, 0.1), co_guard=ScriptedGuard({0}), val_attack=None,
                             progress=False)  # fmt: skip
    assert tr2.fit(loader(xtr[:128], ytr[:128]), 2)["co"] == [True, False]  # "flag": recorded, no rollback


# ---------------------------------------------------------------------------------------------- argument checks
def test_bad_arguments_fail_in_init(digits):
    model, other = digits_cnn(), digits_cnn(1)
    atk = rf.FGSM(model, 0.1)
    cases = [
        dict(attack=rf.FGSM(other, 0.1)),
        dict(regularizers=[object()]),
        dict(optimizer=torch.optim.SGD(other.parameters(), lr=0.1)),
        dict(amp="fp8"),
        dict(label_smoothing=1.5),
        dict(grad_clip=0),
        dict(eps_warmup=-1),
        dict(attack_bn_mode="sometimes"),
        dict(callbacks=[object()]),
        dict(averaging=[object()]),
        dict(lr=0),
        dict(val_attack=rf.PGD(other, 0.1)),
        dict(lr_schedule=torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters(), lr=1), 1)),
    ]
    for kw in cases:
        args = {"attack": atk, **kw}
        with pytest.raises(RobustfastError):
            AdversarialTrainer(model, **args)
    tr = AdversarialTrainer(model, atk, progress=False)
    with pytest.raises(RobustfastError, match="epochs"):
        tr.fit(loader(*digits[:2]), 0)
    with pytest.raises(RobustfastError, match="checkpoint_dir"):
        tr.fit(loader(*digits[:2]), 1, resume=True)


def test_compile_refuses_double_backward_but_trains_finite_difference_gradalign(digits, monkeypatch):
    torch.manual_seed(0)
    model = rf.models.create("small_cnn", num_classes=10, in_chans=1)  # its compiled backward donates buffers
    atk = rf.FGSM(model, 0.1, bn_mode="train")
    with pytest.raises(RobustfastError, match="double backward"):
        AdversarialTrainer(model, atk, [rf.GradAlign(eps=0.1)], compile=True, progress=False)
    # AOTAutograd without a C++ toolchain: the same graph capture and donated-buffer rules as inductor
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compile_(m, backend="aot_eager", **kw))
    with pytest.raises(RobustfastError, match="AdvLC reuse"):  # BatchNorm model: compiled buffer updates
        AdversarialTrainer(model, atk, [rf.AdvLC()], compile=True, progress=False)
    # the fd probe's graph is retained for the final backward: needs graphs compiled without donated buffers
    tr = AdversarialTrainer(model, atk, [rf.GradAlign(eps=0.1, estimator="fd", seed=0)], compile=True,
                            progress=False, val_attack=None)  # fmt: skip
    x, y = digits[0][:64], digits[1][:64]
    before = [p.detach().clone() for p in model.parameters()]
    hist = tr.fit(loader(x, y, bs=32), 1)
    assert math.isfinite(hist[-1]["train_loss"]) and hist[-1]["train_gradalign"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_tensorboard_logger_writes_events(digits, tmp_path: Path):
    from robustfast.training import TensorBoardLogger

    xtr, ytr, *_ = digits
    model = digits_cnn()
    tb = TensorBoardLogger(tmp_path / "tb", every_steps=1)
    AdversarialTrainer(model, rf.FGSM(model, 0.05), callbacks=[tb], val_attack=None, progress=False).fit(
        loader(xtr[:128], ytr[:128]), 1
    )
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_co_rollback_without_knob_stops_on_last_good_state(digits):
    xtr, ytr, *_ = digits
    model = digits_cnn()
    atk = rf.PGD(model, 0.1, steps=1)  # PGD declares no strengthening
    tr = AdversarialTrainer(model, atk, co_guard=ScriptedGuard({1}, on_co="rollback"),
                            val_attack=None, progress=False)  # fmt: skip
    hist = tr.fit(loader(xtr[:128], ytr[:128]), 3)
    assert hist["co"] == [False, True] and hist[1]["strengthened"] is None
    assert tr.should_stop and tr.epoch == 1 and tr.step == 2  # state of the end of epoch 0


def test_co_rollbacks_are_capped(digits):
    xtr, ytr, *_ = digits
    model = digits_cnn()
    atk = rf.ZeroGrad(model, 0.1, q=0.2, seed=0)
    guard = ScriptedGuard({0, 1, 2}, on_co="rollback", max_rollbacks=2)
    hist = AdversarialTrainer(model, atk, co_guard=guard, val_attack=None, progress=False).fit(
        loader(xtr[:128], ytr[:128]), 2
    )
    assert hist["co"] == [True, True, True, False] and guard.n_rollbacks == 2 and atk.q == pytest.approx(0.4)
    assert hist["epoch"] == [1, 1, 1, 2]  # third CO only flagged, training went on


def test_co_after_the_last_rollback_ends_on_the_best_state(digits):
    xtr, ytr, *_ = digits
    model = digits_cnn()
    atk = rf.ZeroGrad(model, 0.1, q=0.2, seed=0)
    seen = []

    class KeepWeights:  # the weights at each epoch end that was kept
        def on_epoch_end(self, trainer):
            seen.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    guard = ScriptedGuard({1, 2, 3}, on_co="rollback", max_rollbacks=2)  # epoch 1 passes, epoch 2 keeps collapsing
    tr = AdversarialTrainer(model, atk, co_guard=guard, val_attack=None, callbacks=[KeepWeights()], progress=False)
    hist = tr.fit(loader(xtr[:128], ytr[:128]), 4)
    assert hist["co"] == [False, True, True, True] and guard.n_rollbacks == 2 and atk.q == pytest.approx(0.4)
    assert hist[3]["rolled_back_to"] == 1 and hist[3]["strengthened"] is None
    assert tr.should_stop and tr.epoch == 1 and tr.step == 2  # ended on the end of epoch 1, the best state
    assert len(seen) == 1 and all(torch.equal(seen[0][k], v) for k, v in model.state_dict().items())
