"""TRADES: the KL attack and the loss against float64 references written from the official ``trades.py``; pass
counts; robustness on digits, resume, rollback, bf16; argument checks."""

from __future__ import annotations

from pathlib import Path

import methodcheck as mc
import pytest
import torch
import torch.nn.functional as F
from conftest import SmoothCNN, TinyCNN
from counting import PassCounter

import robustfast as rf
from robustfast.attacks import KERNELS
from robustfast.context import StepContext
from robustfast.methods.trades import trades_attack
from robustfast.training import adversarial_step

EPS = 8 / 255


def _data(n: int = 12, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _smooth() -> torch.nn.Module:
    torch.manual_seed(0)
    return SmoothCNN().double()


# ------------------------------------------------------------------ official formulas, written out plainly
def official_attack(model, x, noise, eps, step, steps):
    """trades.py, L∞ branch: x' = x + 0.001·N; K sign steps on KLDivLoss(sum); min/max projection; clamp."""
    kl = torch.nn.KLDivLoss(reduction="sum")
    x_adv = x.detach() + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_()
        loss_kl = kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return torch.clamp(x_adv, 0.0, 1.0)


def official_loss(model, x, x_adv, y, beta):
    """trades.py: CE on a clean forward + β/B · KLDivLoss(sum)(log_softmax f(x'), softmax f(x)) on a second one."""
    kl = torch.nn.KLDivLoss(reduction="sum")
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / len(x)) * kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
    return loss_natural + beta * loss_robust


def test_attack_matches_the_official_update_in_float64() -> None:
    model, (x, y) = _smooth(), _data()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    ref = official_attack(model, x, noise, 0.031, 0.007, 5)
    atk = rf.TRADESAttack(model, 0.031, 0.007, 5, generator=torch.Generator().manual_seed(3))
    ours = atk(x, y)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    assert (ours - x).abs().max() <= 0.031 + 1e-12
    # the functional kernel: same δ from the same generator, listed among the kernels
    delta = trades_attack(model, x, eps=0.031, alpha=0.007, steps=5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x + delta, ref, atol=1e-6, rtol=0)
    assert KERNELS["trades_attack"] is trades_attack


def test_attack_defaults_are_the_official_ratio_and_eval_mode() -> None:
    atk = rf.TRADESAttack(SmoothCNN(), eps=0.031)
    assert atk.alpha == pytest.approx(0.007) and atk.steps == 10 and atk.init_std == 0.001
    assert atk.bn_mode == "eval" and atk.randomized and not atk.shares_clean_grad
    assert rf.TRADESAttack(SmoothCNN(), eps=8 / 255).alpha == pytest.approx(8 / 255 * 0.007 / 0.031)
    assert not rf.TRADESAttack(SmoothCNN(), init_std=0.0).randomized
    assert type(rf.create_attack("tpgd", SmoothCNN())) is rf.TRADESAttack


def test_attack_raises_the_kl() -> None:
    model, (x, y) = _smooth(), _data()
    x_adv = rf.TRADESAttack(model, EPS, seed=0)(x, y)
    noise = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl = lambda z: F.kl_div(F.log_softmax(model(z), 1), p, reduction="sum")  # noqa: E731
        assert kl(x_adv) > 10 * kl(noise.clamp(0, 1))


def test_loss_matches_the_official_loss_and_gradients_in_float64() -> None:
    model, (x, y) = _smooth(), _data()
    x_adv = rf.TRADESAttack(model, EPS, steps=3, seed=0)(x, y)
    ref = official_loss(model, x, x_adv, y, 6.0)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    ctx = StepContext(x=x, y=y, x_adv=x_adv, model=model)
    ours = rf.TRADESLoss(beta=6)(ctx)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    for a, b in zip(torch.autograd.grad(ours, list(model.parameters())), ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)  # nothing detached: the target p(x) has gradient
    assert ctx.extras["trades_kl"] > 0


def test_loss_after_a_train_mode_attack_reuses_its_clean_forward() -> None:
    """The attack's clean forward (train mode, with its graph) is the loss's: same value as a fresh forward."""
    torch.manual_seed(0)
    model = TinyCNN().train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    out = adversarial_step(model, rf.TRADESAttack(model, EPS, steps=2, bn_mode="train", seed=0), [], x, y,
                           criterion=rf.TRADESLoss())  # fmt: skip
    ctx = out.context
    assert ctx.clean_logits.requires_grad
    with torch.no_grad():
        fresh = F.cross_entropy(model(x), y) + 6 * F.kl_div(F.log_softmax(model(ctx.x_adv), 1),
                                                            F.softmax(model(x), 1), reduction="batchmean")  # fmt: skip
    # BatchNorm in train mode normalizes with batch statistics: the same logits whatever the running stats
    torch.testing.assert_close(out.criterion, fresh, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ pass counts
def _count(attack_kw: dict, loss: rf.TrainingLoss, steps: int = 2) -> tuple[int, int, int]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = PassCounter(TinyCNN()).train()
    atk = rf.TRADESAttack(model, EPS, steps=steps, seed=0, **attack_kw)
    adversarial_step(model, atk, [], x, y, criterion=loss).loss.backward()
    return model.counts()


@pytest.mark.parametrize("steps", [1, 3])
def test_pass_counts(steps: int) -> None:
    # train-mode attack (the trainer's default): clean forward kept and reused by the loss, K × (F + B) steps,
    # the training forward at x_adv, one backward through the clean and the adversarial graphs: (K+2, K+2)
    assert _count({"bn_mode": "train"}, rf.TRADESLoss(), steps) == (steps + 2, steps + 2, 0)
    # the official eval-mode attack: its clean logits are from another mode, so the loss forwards x again
    assert _count({"bn_mode": "eval"}, rf.TRADESLoss(), steps) == (steps + 3, steps + 2, 0)
    # the official code: (2K + 3, K + 3): it recomputes f(x) at every step and forwards x twice in the loss


def test_loss_works_after_any_attack() -> None:
    torch.manual_seed(0)
    model = TinyCNN().train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    for atk in (rf.FGSM(model, EPS, bn_mode="train"), rf.PGD(model, EPS, steps=2, seed=0), None):
        out = adversarial_step(model, atk, [], x, y, criterion=rf.TRADESLoss())
        assert torch.isfinite(out.loss)
        out.loss.backward()


# ------------------------------------------------------------------ training checks
def spec(model):
    # the official eval-mode attack (attack_bn_mode=None keeps the attack's own mode)
    atk = rf.TRADESAttack(model, mc.EPS, alpha=mc.EPS / 2, steps=2, seed=0)
    return {"attack": atk, "criterion": rf.TRADESLoss(beta=6.0), "attack_bn_mode": None}


def test_gains_robustness() -> None:
    out = mc.check_gains_robustness(spec)
    print(out)


def test_resume_bit_identical(tmp_path: Path) -> None:
    mc.check_resume_bit_identical(spec, tmp_path)


def test_rollback_doubles_beta() -> None:
    tr = mc.check_rollback(spec)
    assert tr.criterion.beta == 12.0 and tr.criterion.strength == 1
    assert tr.attack.strength == 0  # the multi-step attack declares no strengthening


def test_bf16() -> None:
    mc.check_bf16(spec)


def test_state_round_trip() -> None:
    loss = rf.TRADESLoss(beta=3)
    loss.strengthen()
    other = rf.create_loss("trades")
    other.load_state_dict(loss.state_dict())
    assert other.beta == 6.0 and other.strength == 1 and repr(other) == "TRADESLoss(beta=6)"


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"alpha": 2}, "did you mean alpha=2/255"),
        ({"init_std": -1}, "init_std"),
        ({"init_std": "0.001"}, "init_std"),
        ({"loss_fn": lambda z, y: z.sum(1)}, "takes no loss_fn"),
        ({"targeted": True}, "takes no targeted"),
        ({"target_fn": "random"}, "takes no target_fn"),
        ({"eps": 8}, "did you mean eps=8/255"),
    ],
)
def test_bad_attack_arguments(kwargs, match) -> None:
    with pytest.raises(rf.RobustfastError, match=match):
        rf.TRADESAttack(SmoothCNN(), **kwargs)


@pytest.mark.parametrize("beta", [-1, float("nan"), "6", True])
def test_bad_beta(beta) -> None:
    with pytest.raises(rf.RobustfastError, match="beta"):
        rf.TRADESLoss(beta=beta)
