"""NuAT (val-iisc/NuAT ``CIFAR10/NuAT_cifar10.py``): the attack and the training loss against float64 references
written from the official code (nuclear norm of the batch's logit difference, divided by the batch size), the λ
ramp through the trainer's hooks, pass counts, and the shared method checks (robustness on digits, resume,
rollback, bf16)."""

from __future__ import annotations

import methodcheck as mc
import pytest
import torch
import torch.nn.functional as F
from conftest import SmoothCNN, TinyCNN
from counting import PassCounter

import robustfast as rf
from robustfast.context import StepContext
from robustfast.methods.nuat import nuat as nuat_kernel
from robustfast.training import adversarial_step

EPS = 8 / 255


def spec(model):
    # the official set-up: the attack's forward in eval mode (the trainer would otherwise force "train")
    return {"attack": rf.NuATAttack(model, mc.EPS, seed=0), "criterion": rf.NuATLoss(), "attack_bn_mode": None}


def _data(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def _smooth():
    torch.manual_seed(0)
    return SmoothCNN().double().eval()


def reference_attack(model, x, y, eps, lam, u):
    """The official ``NucAttack`` step (float64) from the uniform draw ``u`` of the Bernoulli start:
    CE + λ‖out − rout‖_* / B, one sign step of ε, then the ε clip and the box."""
    x0 = (x + eps / 2 * torch.where(u < 0.5, -torch.ones_like(u), torch.ones_like(u))).clamp(0, 1)
    out = model(x).detach()
    img = x0.clone().requires_grad_(True)
    rout = model(img)
    cost = F.cross_entropy(rout, y) + lam * torch.linalg.matrix_norm(out - rout, ord="nuc") / x.shape[0]
    cost.backward()
    x1 = (img.detach() + eps * img.grad.sign()).clamp(0, 1)
    return (x + (x1 - x).clamp(-eps, eps)).clamp(0, 1)


def _u(x, seed):
    return torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def test_attack_matches_the_official_step_in_float64():
    model, (x, y) = _smooth(), _data()
    for lam in (0.0, 4.5, 50.0):
        got = rf.NuATAttack(model, EPS, lam=lam, alternate=False, seed=3)(x, y)
        torch.testing.assert_close(got, reference_attack(model, x, y, EPS, lam, _u(x, 3)), atol=1e-12, rtol=0)
    a, b = (reference_attack(model, x, y, EPS, lam, _u(x, 3)) for lam in (0.0, 50.0))
    assert not torch.equal(a, b)  # the nuclear-norm term changes the step
    delta = nuat_kernel(model, x, y, eps=EPS, lam=50.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x + delta, b, atol=1e-12, rtol=0)


def test_lambda_term_on_odd_iterations():
    model, (x, y) = _smooth(), _data()
    atk = rf.NuATAttack(model, EPS, lam=50.0, seed=3)
    gen = torch.Generator().manual_seed(3)
    for lam in (0.0, 50.0, 0.0):
        u = torch.rand(x.shape, generator=gen, dtype=x.dtype)
        torch.testing.assert_close(atk(x, y), reference_attack(model, x, y, EPS, lam, u), atol=1e-12, rtol=0)


def test_loss_matches_the_official_loss_in_float64_with_its_gradients():
    model, (x, y) = _smooth(), _data()
    x_adv = rf.FGSM(model, EPS)(x, y)
    ctx = StepContext(x=x, y=y, x_adv=x_adv, model=model)
    loss = rf.NuATLoss(lam=4.5)(ctx)
    got = torch.autograd.grad(loss, list(model.parameters()))
    adv_out, out = model(x_adv), model(x)
    ref = F.cross_entropy(out, y) + 4.5 * torch.linalg.matrix_norm(out - adv_out, ord="nuc") / x.shape[0]
    want = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_the_term_couples_the_batch():
    """The nuclear norm of the whole B×C matrix is not a sum of per-example terms."""
    model, (x, y) = _smooth(), _data()
    x_adv = rf.FGSM(model, EPS)(x, y)
    whole = rf.NuATLoss(lam=1.0)(StepContext(x=x, y=y, x_adv=x_adv, model=model))
    halves = [rf.NuATLoss(lam=1.0)(StepContext(x=x[s], y=y[s], x_adv=x_adv[s], model=model))
              for s in (slice(0, 6), slice(6, 12))]  # fmt: skip
    assert abs(whole.item() - (halves[0] + halves[1]).item() / 2) > 1e-4


def test_ramp_follows_the_official_schedule():
    loss = rf.NuATLoss(4.5)
    assert loss.current_lam == 4.5  # no hooks (a plain loop): the full λ
    loss.on_fit_start(100)
    lams = []
    for e in (0, 1, 45, 89, 90, 99):
        loss.on_epoch_start(e)
        lams.append(loss.current_lam)
    # the code: λ = 0 at epoch 0, += 4.5/90 after each epoch < 90
    assert lams == pytest.approx([0.0, 0.05, 2.25, 4.45, 4.5, 4.5])
    fixed = rf.NuATAttack(TinyCNN(), lam=2.0, ramp_epochs=4)
    fixed.on_fit_start(100)
    fixed.on_epoch_start(1)
    assert fixed.current_lam == pytest.approx(0.5)
    no_ramp = rf.NuATLoss(3.0, ramp_epochs=0)
    no_ramp.on_epoch_start(0)
    assert no_ramp.current_lam == 3.0


def test_trainer_drives_the_ramp():
    tr = mc.train(spec, epochs=2, n=128)
    assert tr.criterion._ramp == pytest.approx(1.8) and tr.criterion.current_lam == pytest.approx(4.5 / 1.8)
    assert tr.attack.current_lam == tr.criterion.current_lam and tr.attack._iter == 2


@pytest.mark.parametrize(
    ("attack", "criterion", "counts"),
    [
        ("nuat", "nuat", (3, 3, 0)),  # guide F (reused by the loss) + attack F + B + training F + B through both
        ("nuat_eval", "nuat", (3, 3, 0)),
        ("fgsm", "nuat", (2, 3, 0)),
        ("nuat", "ce", (2, 2, 0)),  # minibatch 0 without a clean-input loss: no guide forward
    ],
)
def test_pass_counts(attack, criterion, counts):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = PassCounter(TinyCNN()).train()
    mode = "eval" if attack.endswith("_eval") else "train"
    atk = (rf.NuATAttack if attack.startswith("nuat") else rf.FGSM)(model, EPS, seed=0, bn_mode=mode)
    out = adversarial_step(model, atk, [], x, y, criterion=rf.NuATLoss() if criterion == "nuat" else None)
    out.loss.backward()
    assert model.counts() == counts


def test_gains_robustness_over_standard_training():
    out = mc.check_gains_robustness(spec, epochs=6)
    print(out)


def test_resume_is_bit_identical(tmp_path):
    mc.check_resume_bit_identical(spec, tmp_path)


def test_rollback_restores_and_strengthens():
    tr = mc.check_rollback(spec)
    assert tr.attack.lam == 9.0 and tr.criterion.lam == 9.0


def test_bf16():
    mc.check_bf16(spec)


def test_preset_loads():
    from robustfast.config import RunConfig, load_preset

    cfg = RunConfig.from_dict(load_preset("nuat-cifar10"))
    assert cfg.attack == {"name": "nuat", "lam": 4.5} and cfg.loss == {"name": "nuat", "lam": 4.5}
    loss = rf.create_loss(**cfg.loss)
    loss.on_fit_start(cfg.epochs)
    loss.on_epoch_start(90)
    assert loss.current_lam == 4.5


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m: rf.NuATAttack(m, lam=-1.0), "lam must be a finite number >= 0"),
        (lambda m: rf.NuATAttack(m, ramp_epochs=-2), "ramp_epochs"),
        (lambda m: rf.NuATAttack(m, alternate=1), "alternate"),
        (lambda m: rf.NuATAttack(m, init=4.0), "did you mean init=4/255"),
        (lambda m: rf.NuATLoss(lam="big"), "lam must be a finite number"),
        (lambda m: rf.NuATLoss(ramp_epochs=float("inf")), "ramp_epochs"),
    ],
)
def test_argument_validation(make, match):
    with pytest.raises(rf.RobustfastError, match=match):
        make(TinyCNN())
