"""MART: the attack and the loss against float64 references written from the official ``mart.py``; pass counts;
robustness on digits, resume, rollback, bf16; argument checks."""

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
from robustfast.methods.mart import mart_attack, mart_loss
from robustfast.training import adversarial_step

EPS = 8 / 255


def _data(n: int = 12):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def _smooth() -> torch.nn.Module:
    torch.manual_seed(0)
    return SmoothCNN().double()


# ------------------------------------------------------------------ official formulas, written out plainly
def official_attack(model, x, y, noise, eps, step, steps):
    """mart.py: x' = x + 0.001·N; K sign steps on the batch-mean CE; min/max projection; clamp."""
    x_adv = x.detach() + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_()
        loss_ce = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss_ce, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return torch.clamp(x_adv, 0.0, 1.0)


def official_loss(model, x, x_adv, y, beta):
    """mart.py: BCE (CE + hardest-wrong-class margin) on x' + β/B Σ KL(p(x) ‖ p(x'))·(1.0000001 − p_y(x))."""
    kl = torch.nn.KLDivLoss(reduction="none")
    logits = model(x)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / len(x)) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs)
    )
    return loss_adv + float(beta) * loss_robust


def test_attack_matches_the_official_update_in_float64() -> None:
    model, (x, y) = _smooth(), _data()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    ref = official_attack(model, x, y, noise, 0.031, 0.007, 5)
    ours = rf.MARTAttack(model, 0.031, 0.007, 5, generator=torch.Generator().manual_seed(3))(x, y)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    delta = mart_attack(model, x, y, eps=0.031, alpha=0.007, steps=5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x + delta, ref, atol=1e-6, rtol=0)
    assert KERNELS["mart_attack"] is mart_attack


def test_attack_without_noise_is_pgd_from_the_clean_point() -> None:
    model, (x, y) = _smooth(), _data()
    a = rf.MARTAttack(model, EPS, steps=4, init_std=0.0)(x, y)
    b = rf.PGD(model, EPS, alpha=EPS * 0.007 / 0.031, steps=4, random_start=False)(x, y)
    assert torch.equal(a, b)
    atk = rf.MARTAttack(model, eps=0.031)
    assert atk.alpha == pytest.approx(0.007) and atk.steps == 10 and atk.bn_mode == "eval" and atk.randomized


@pytest.mark.parametrize("beta", [6.0, 5.0, 0.0])
def test_loss_matches_the_official_loss_and_gradients_in_float64(beta: float) -> None:
    model, (x, y) = _smooth(), _data()
    x_adv = rf.MARTAttack(model, EPS, steps=3, seed=0)(x, y)
    ref = official_loss(model, x, x_adv, y, beta)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    ctx = StepContext(x=x, y=y, x_adv=x_adv, model=model)
    ours = rf.MARTLoss(beta=beta)(ctx)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    for a, b in zip(torch.autograd.grad(ours, list(model.parameters())), ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)  # the weight (1 − p_y(x)) also has gradient
    torch.testing.assert_close(mart_loss(model(x_adv), model(x), y, beta), ref, atol=1e-6, rtol=0)


def test_hardest_wrong_class_when_the_prediction_is_right_or_wrong() -> None:
    # example 0 predicts its label (hardest wrong = the runner-up), example 1 predicts class 2 (hardest wrong = 2)
    adv = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    clean = torch.zeros_like(adv)
    y = torch.tensor([0, 1])
    p = adv.softmax(1)
    bce = F.cross_entropy(adv, y) - (torch.log(1.0001 - p[0, 2] + 1e-12) + torch.log(1.0001 - p[1, 2] + 1e-12)) / 2
    torch.testing.assert_close(mart_loss(adv, clean, y, beta=0.0), bce)


# ------------------------------------------------------------------ pass counts
def _count(attack_kw: dict, steps: int = 2) -> tuple[int, int, int]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = PassCounter(TinyCNN()).train()
    atk = rf.MARTAttack(model, EPS, steps=steps, seed=0, **attack_kw)
    adversarial_step(model, atk, [], x, y, criterion=rf.MARTLoss()).loss.backward()
    return model.counts()


@pytest.mark.parametrize("steps", [1, 3])
def test_pass_counts(steps: int) -> None:
    # K × (F + B) for the attack, then the clean and adversarial training forwards and one backward through both:
    # (K+2, K+2), as the official code; the attack's mode does not matter (it computes nothing at the clean point)
    assert _count({"bn_mode": "train"}, steps) == (steps + 2, steps + 2, 0)
    assert _count({"bn_mode": "eval"}, steps) == (steps + 2, steps + 2, 0)
    # without the Gaussian start the first gradient is taken at x and its forward is the loss's clean forward
    assert _count({"bn_mode": "train", "init_std": 0.0}, steps) == (steps + 1, steps + 2, 0)


def test_loss_works_after_any_attack() -> None:
    torch.manual_seed(0)
    model = TinyCNN().train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    for atk in (rf.FGSM(model, EPS, bn_mode="train"), rf.TRADESAttack(model, EPS, steps=1, seed=0), None):
        out = adversarial_step(model, atk, [], x, y, criterion=rf.MARTLoss())
        assert torch.isfinite(out.loss)
        out.loss.backward()


# ------------------------------------------------------------------ training checks
def spec(model):
    atk = rf.MARTAttack(model, mc.EPS, alpha=mc.EPS / 2, steps=2, seed=0)
    return {"attack": atk, "criterion": rf.MARTLoss(beta=6.0), "attack_bn_mode": None}


def test_gains_robustness() -> None:
    print(mc.check_gains_robustness(spec))


def test_resume_bit_identical(tmp_path: Path) -> None:
    mc.check_resume_bit_identical(spec, tmp_path)


def test_rollback_doubles_beta() -> None:
    tr = mc.check_rollback(spec)
    assert tr.criterion.beta == 12.0 and tr.criterion.strength == 1 and tr.attack.strength == 0


def test_bf16() -> None:
    mc.check_bf16(spec)


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"steps": 0}, "steps"), ({"alpha": 7}, "did you mean alpha=7/255"), ({"init_std": 2}, "init_std")],
)
def test_bad_attack_arguments(kwargs, match) -> None:
    with pytest.raises(rf.RobustfastError, match=match):
        rf.MARTAttack(SmoothCNN(), **kwargs)


@pytest.mark.parametrize("beta", [-1, float("inf"), None])
def test_bad_beta(beta) -> None:
    with pytest.raises(rf.RobustfastError, match="beta"):
        rf.MARTLoss(beta=beta)


def test_one_class_is_refused() -> None:
    x = torch.rand(4, 3, 8, 8)
    ctx = StepContext(x=x, y=torch.zeros(4, dtype=torch.long), x_adv=x, model=lambda t: t.flatten(1)[:, :1])
    with pytest.raises(rf.RobustfastError, match="at least 2 classes"):
        rf.MARTLoss()(ctx)
