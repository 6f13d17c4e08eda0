"""The catastrophic-overfitting guard: its three rules on scripted measurements, rollback to the best state (not the
last unflagged one), mid-epoch checks, and the raw model (not the weight average) being the one checked."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyCNN
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
import robustfast.evaluation.diagnostics as diag
from robustfast.training import EMA, AdversarialTrainer, COGuard


class Script:
    """Replaces fgsm_pgd_gap: returns the next (fgsm, pgd) pair and records which model it was given."""

    def __init__(self, pairs):
        self.pairs, self.models = list(pairs), []

    def __call__(self, model, x, y, eps, **kw):
        self.models.append(model)
        f, p = self.pairs.pop(0) if self.pairs else (0.4, 0.4)
        return {"fgsm_acc": f, "pgd_acc": p, "gap": f - p}


def guard(**kw) -> COGuard:
    return COGuard(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), **kw)


def run_checks(monkeypatch, pairs, **kw) -> list:
    monkeypatch.setattr(diag, "fgsm_pgd_gap", Script(pairs))
    g = guard(**kw)
    return [g.check(TinyCNN(), 0.1) for _ in pairs]


def test_sudden_drop_and_large_gap(monkeypatch):
    drop = run_checks(monkeypatch, [(0.5, 0.45), (0.3, 0.2)])
    assert [c.co for c in drop] == [False, True] and "fell more than 0.2" in drop[1].reason
    gap = run_checks(monkeypatch, [(0.5, 0.45), (0.8, 0.3)])
    assert gap[1].co and "exceeds PGD accuracy" in gap[1].reason


def test_a_large_gap_while_pgd_accuracy_rises_is_not_co(monkeypatch):
    # RS on Fashion-MNIST at eps = 0.3, seed 0 (benchmarks/co_guard.py): the gap exceeds 0.3 from the third epoch
    # while PGD accuracy keeps rising; the old gap-only rule flagged it at 8 of 10 checks
    pairs = [(0.18, 0.06), (0.36, 0.12), (0.5, 0.17), (0.57, 0.23), (0.62, 0.22), (0.62, 0.25), (0.66, 0.27),
             (0.7, 0.3), (0.67, 0.3), (0.71, 0.28)]  # fmt: skip
    assert not any(c.co for c in run_checks(monkeypatch, pairs))
    # the same gap with PGD accuracy falling more than the tolerance below its best is CO
    checks = run_checks(monkeypatch, [*pairs[:8], (0.72, 0.22)])
    assert checks[-1].co and "exceeds PGD accuracy" in checks[-1].reason


def test_judge_replays_recorded_checks(monkeypatch):
    pairs = [(0.45, 0.41), (0.45, 0.40), (0.47, 0.34), (0.49, 0.31), (0.8, 0.1)]
    live = run_checks(monkeypatch, pairs)
    g = guard()
    replayed = [g.judge(f, p) for f, p in pairs]
    assert [(c.co, c.reason, c.best_pgd_acc) for c in live] == [(c.co, c.reason, c.best_pgd_acc) for c in replayed]
    assert g.checks == replayed


def test_gradual_collapse_is_caught_after_patience_checks(monkeypatch):
    # the trace: PGD peaked at 41% and slid 40 -> 34 -> 31 -> 25 -> 22 while FGSM held up
    pairs = [(0.45, 0.41), (0.45, 0.40), (0.47, 0.34), (0.49, 0.31), (0.52, 0.25), (0.55, 0.22)]
    checks = run_checks(monkeypatch, pairs)
    assert [c.co for c in checks][:5] == [False, False, False, False, True]  # the third declining check (patience 3)
    assert "for 3 checks" in checks[4].reason
    assert checks[0].improved and not checks[1].improved
    g = guard(patience=2)  # the previous default flags one check earlier
    assert [g.judge(f, p).co for f, p in pairs][:4] == [False, False, False, True]


def test_two_noisy_checks_below_a_lucky_best_are_not_flagged():
    # the guard benchmark's digits16 PGD-10 run (seed 0), epochs 26-33 of 100, as the guard measured them on its 256
    # held-out points: the best (0.293) was a lucky check; two checks sat 5-9 points below it with the gap up by more
    # than 5 points. Healthy: its test PGD-20 ended at 41%. Patience 2 flagged it (epoch 31); 3 does not.
    pairs = [(0.340, 0.199), (0.367, 0.293), (0.352, 0.246), (0.375, 0.258), (0.332, 0.207), (0.387, 0.234),
             (0.414, 0.273), (0.363, 0.285)]  # fmt: skip
    assert not any(guard().judge(f, p).co for f, p in pairs)
    g2 = guard(patience=2)
    assert [g2.judge(f, p).co for f, p in pairs] == [False] * 5 + [True] + [False] * 2


def test_an_ordinary_dip_is_not_flagged(monkeypatch):
    # a high learning rate lowers FGSM and PGD together: the gap does not widen
    pairs = [(0.5, 0.41), (0.43, 0.34), (0.40, 0.31), (0.42, 0.33), (0.5, 0.42)]
    assert not any(c.co for c in run_checks(monkeypatch, pairs))


def _loader():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 3, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_rollback_goes_to_the_best_state_and_checks_the_raw_model(monkeypatch):
    # best PGD at the end of epoch 1; epoch 2 unflagged but worse; epoch 3 collapses
    script = Script([(0.45, 0.45), (0.46, 0.38), (0.9, 0.05), (0.45, 0.45), (0.45, 0.45)])
    monkeypatch.setattr(diag, "fgsm_pgd_gap", script)
    torch.manual_seed(0)
    model = TinyCNN()
    states = {}

    class Keep:
        def on_epoch_end(self, trainer, epoch):
            states[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    restored = {}

    class OnRollback:
        def on_rollback(self, trainer, epoch):
            restored["epoch"] = epoch
            restored["state"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    ema = EMA(0.5)
    tr = AdversarialTrainer(model, rf.RS(model, 0.1, seed=0), co_guard=guard(on_co="rollback"), averaging=ema,
                            callbacks=[Keep(), OnRollback()], val_attack=None, progress=False,
                            verbose=False)  # fmt: skip
    hist = tr.fit(_loader(), 4)
    assert hist["co"] == [False, False, True, False, False, False] and hist[2]["rolled_back_to"] == 1
    assert hist["epoch"] == [1, 2, 3, 2, 3, 4]
    assert restored["epoch"] == 1  # the best state (end of epoch 1), not the last unflagged one (end of epoch 2)
    assert all(torch.equal(restored["state"][k], v) for k, v in states[0].items())
    assert all(m is model for m in script.models)  # the raw model, never the EMA copy


def test_mid_epoch_checks_abort_the_epoch_and_roll_back(monkeypatch):
    # 4 batches per epoch, a check every 2: epoch 1 at batch 2 and at its end; epoch 2 collapses at its batch 2
    script = Script([(0.45, 0.45), (0.45, 0.45), (0.9, 0.05)] + [(0.45, 0.45)] * 20)
    monkeypatch.setattr(diag, "fgsm_pgd_gap", script)
    torch.manual_seed(0)
    model = TinyCNN()
    tr = AdversarialTrainer(model, rf.ZeroGrad(model, 0.1, seed=0), co_guard=guard(on_co="rollback", every_steps=2),
                            val_attack=None, progress=False, verbose=False)  # fmt: skip
    hist = tr.fit(_loader(), 2)
    assert hist["co"] == [False, True, False] and hist[1]["co_reason"] == "flagged mid-epoch"
    assert hist[1]["step"] == 6 and tr.attack.q == pytest.approx(0.45) and tr.epoch == 2  # aborted after 2 batches


def test_the_guard_waits_for_the_eps_warm_up(monkeypatch):
    # a warm-up of 2 epochs: the model is not yet trained at the full ε the guard probes, so no check until its end
    script = Script([(0.9, 0.05)] + [(0.45, 0.45)] * 20)  # a first check would flag CO
    monkeypatch.setattr(diag, "fgsm_pgd_gap", script)
    torch.manual_seed(0)
    model = TinyCNN()
    tr = AdversarialTrainer(model, rf.FGSM(model, 0.1), co_guard=guard(on_co="rollback", every_steps=2),
                            eps_warmup=2, val_attack=None, progress=False, verbose=False)  # fmt: skip
    hist = tr.fit(_loader(), 3)
    # epoch 1 is not checked, and neither are the mid-epoch points of epoch 2 (the ramp ends with it); the first
    # check, at the end of epoch 2, flags CO and rolls back to the start (no checked state yet), the rerun waits
    assert [h.get("co_skipped") for h in hist] == ["eps warm-up", None, "eps warm-up", None, None]
    assert hist["co"] == [None, True, None, False, False] and [h["epoch"] for h in hist] == [1, 2, 1, 2, 3]
    assert len(script.models) == 4  # ends of epoch 2 (twice), then mid + end of epoch 3: none during the ramp


def test_the_guard_refuses_l2_attacks():
    model = TinyCNN()
    with pytest.raises(rf.RobustfastError, match="L∞"):
        AdversarialTrainer(model, rf.PGDL2(model, 0.5), co_guard=guard(), progress=False)


def _declining_run(monkeypatch, tmp_path, pgd, **guard_kw):
    """Checks with PGD accuracy ``pgd`` per epoch end and FGSM = PGD (no CO signature); weights kept per epoch."""
    monkeypatch.setattr(diag, "fgsm_pgd_gap", Script([(p, p) for p in pgd]))
    torch.manual_seed(0)
    model = TinyCNN()
    states = {}

    class Keep:
        def on_epoch_end(self, trainer, epoch):
            states[epoch + 1] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    ema = EMA(0.5)
    tr = AdversarialTrainer(model, rf.RS(model, 0.1, seed=0), co_guard=guard(**guard_kw), averaging=ema,
                            callbacks=[Keep()], checkpoint_dir=tmp_path / "ckpt", val_attack=None, progress=False,
                            verbose=True)  # fmt: skip
    hist = tr.fit(_loader(), len(pgd))
    return tr, hist, states


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_declining_without_co_ends_on_its_best_checked_state(monkeypatch, tmp_path, capsys):
    # best after epoch 2 (0.50); the run then declines to 0.30 with FGSM = PGD: never flagged, but 0.2 below its best
    tr, hist, states = _declining_run(monkeypatch, tmp_path, [0.40, 0.50, 0.45, 0.30], on_co="rollback")
    assert not any(hist["co"]) and hist[-1]["restored_best_epoch"] == 2
    assert _same(tr.model.state_dict(), states[2]) and not _same(states[2], states[4])
    assert "restored the weights of epoch 2" in capsys.readouterr().out
    last = rf.training.load_checkpoint(tmp_path / "ckpt" / "last.pt")  # last.pt holds what the run returns
    assert _same(last["model"], states[2]) and last["history"][-1]["restored_best_epoch"] == 2
    averaged = {
        k[len("module.") :]: v for k, v in last["averagers"][0]["state"]["averaged"].items() if k != "n_averaged"
    }
    assert _same(averaged, tr.averagers[0].model.state_dict())
    best = rf.training.load_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert best["epoch"] == 2 and _same(best["model"], states[2])


@pytest.mark.parametrize(
    ("pgd", "kw"),
    [
        ([0.40, 0.50, 0.45, 0.48], {"on_co": "rollback", "restore_tolerance": 0.03}),  # 0.02 below: within it
        ([0.40, 0.50, 0.45, 0.50], {"on_co": "rollback"}),  # level with the best: the last state stands
        ([0.40, 0.50, 0.45, 0.30], {"on_co": "flag"}),  # off by default when only flagging
        ([0.40, 0.50, 0.45, 0.30], {"on_co": "rollback", "restore_best": False}),
    ],
)
def test_no_restore_within_tolerance_or_when_off(monkeypatch, tmp_path, pgd, kw):
    tr, hist, states = _declining_run(monkeypatch, tmp_path, pgd, **kw)
    assert "restored_best_epoch" not in hist[-1] and _same(tr.model.state_dict(), states[4])


def test_restore_best_can_be_asked_for_in_flag_mode(monkeypatch, tmp_path):
    tr, hist, states = _declining_run(monkeypatch, tmp_path, [0.40, 0.50, 0.45, 0.30], on_co="flag",
                                      restore_best=True)  # fmt: skip
    assert hist[-1]["restored_best_epoch"] == 2 and _same(tr.model.state_dict(), states[2])


def test_guard_arguments_are_checked_up_front():
    for kw, msg in [
        ({"eps": 8}, "did you mean eps=8/255"),
        ({"eps": 0}, "radius > 0"),
        ({"drop": 2}, r"drop=2\): must"),
        ({"patience": 0}, "integer >= 1"),
        ({"on_co": "roll"}, "choose one of"),
        ({"restore_tolerance": -1}, "restore_tolerance"),
        ({"restore_best": 1}, "True, False or None"),
    ]:
        with pytest.raises(rf.RobustfastError, match=msg):
            guard(**kw)
    with pytest.raises(rf.RobustfastError, match="integer class indices"):
        COGuard(torch.zeros(4, 3, 8, 8), torch.zeros(4))
