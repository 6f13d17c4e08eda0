"""GAT (val-iisc/GAMA-GAT ``CIFAR10/GAT_cifar10.py``): the attack and the training loss against float64 references
written from the official code, the alternate-iteration counter, the λ schedule through the trainer's hooks, the
guide's mode, pass counts, and the shared method checks (robustness on digits, resume, rollback, bf16)."""

from __future__ import annotations

import methodcheck as mc
import pytest
import torch
import torch.nn.functional as F
from conftest import SmoothCNN, TinyCNN
from counting import PassCounter

import robustfast as rf
from robustfast.context import StepContext
from robustfast.methods.gat import gat as gat_kernel
from robustfast.training import adversarial_step

EPS = 8 / 255


def spec(model):
    # the official set-up: the attack's forward in eval mode (the trainer would otherwise force "train")
    return {"attack": rf.GATAttack(model, mc.EPS, seed=0), "criterion": rf.GATLoss(), "attack_bn_mode": None}


def _data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64)
    x[0, 0, :2] = 0.0  # pixels on the box boundary
    x[1, 1, :2] = 1.0
    return x, torch.randint(0, 10, (n,), generator=g)


def _smooth():
    torch.manual_seed(0)
    return SmoothCNN().double().eval()


def reference_attack(model, x, y, eps, lam, u):
    """The official ``Guided_Attack`` step (float64) from the uniform draw ``u`` of the Bernoulli start: batch-mean
    CE + λ·mean_i Σ_c (p − q)², one sign step of ε, then the ε clip and the box."""
    x0 = (x + eps / 2 * torch.where(u < 0.5, -torch.ones_like(u), torch.ones_like(u))).clamp(0, 1)
    p = F.softmax(model(x), dim=1).detach()
    img = x0.clone().requires_grad_(True)
    out = model(img)
    cost = F.cross_entropy(out, y) + lam * ((p - F.softmax(out, dim=1)) ** 2).sum(1).mean(0)
    cost.backward()
    x1 = (img.detach() + eps * img.grad.sign()).clamp(0, 1)
    delta = (x1 - x).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)


def _u(x, seed):
    return torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def test_attack_matches_the_official_step_in_float64():
    model, (x, y) = _smooth(), _data()
    for lam in (0.0, 10.0, 40.0):
        got = rf.GATAttack(model, EPS, lam=lam, alternate=False, seed=3)(x, y)
        torch.testing.assert_close(got, reference_attack(model, x, y, EPS, lam, _u(x, 3)), atol=1e-12, rtol=0)
    # the guide term changes the step (else the test would not see it)
    a, b = (reference_attack(model, x, y, EPS, lam, _u(x, 3)) for lam in (0.0, 40.0))
    assert not torch.equal(a, b)
    # the functional kernel is the same step
    delta = gat_kernel(model, x, y, eps=EPS, lam=40.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x + delta, b, atol=1e-12, rtol=0)


def test_lambda_term_on_odd_iterations_and_counter_reset_each_epoch():
    model, (x, y) = _smooth(), _data()
    atk = rf.GATAttack(model, EPS, lam=40.0, seed=3)
    gen = torch.Generator().manual_seed(3)  # the attack's stream: one uniform draw of x.shape per call
    for lam in (0.0, 40.0, 0.0):  # minibatches 0, 1, 2: the λ term on odd ones only
        u = torch.rand(x.shape, generator=gen, dtype=x.dtype)
        torch.testing.assert_close(atk(x, y), reference_attack(model, x, y, EPS, lam, u), atol=1e-12, rtol=0)
    assert atk._iter == 3
    atk.on_epoch_start(1)
    assert atk._iter == 0


def test_loss_matches_the_official_loss_in_float64_with_its_gradients():
    model, (x, y) = _smooth(), _data()
    x_adv = rf.FGSM(model, EPS)(x, y)
    ctx = StepContext(x=x, y=y, x_adv=x_adv, model=model)
    loss = rf.GATLoss(lam=10.0)(ctx)
    got = torch.autograd.grad(loss, list(model.parameters()))
    # official: adv_out = f(x_adv); out = f(x); CE(out) + λ·mean_i Σ_c (softmax(out) − softmax(adv_out))²
    adv_out, out = model(x_adv), model(x)
    ref = F.cross_entropy(out, y) + 10.0 * ((F.softmax(out, 1) - F.softmax(adv_out, 1)) ** 2).sum(1).mean(0)
    want = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=0)
    for a, b in zip(got, want):  # nothing detached: both outputs carry gradient
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_lambda_milestones_follow_the_epoch_hook():
    loss = rf.GATLoss(10.0, lam_milestones=(2, 4), lam_factor=4.0)
    assert loss.current_lam == 10.0  # no hook yet: the base λ
    lams = []
    for e in range(6):
        loss.on_epoch_start(e)
        lams.append(loss.current_lam)
    assert lams == [10, 10, 40, 40, 160, 160]
    loss.strengthen()  # doubles the base
    assert loss.lam == 20 and loss.current_lam == 320


def test_trainer_drives_the_schedule_and_the_counter():
    def sched(model):
        return {"attack": rf.GATAttack(model, mc.EPS, seed=0, lam_milestones=(1,)),
                "criterion": rf.GATLoss(lam_milestones=(1,)), "attack_bn_mode": None}  # fmt: skip

    tr = mc.train(sched, epochs=2, n=128)
    assert tr.criterion.current_lam == 40 and tr.attack.current_lam == 40
    assert tr.attack._iter == 2  # 128 / 64 minibatches in the last epoch


def test_guide_runs_in_the_callers_mode_and_is_reused_by_the_loss():
    """The official guide is the train-mode clean forward; the attack's own forward is in eval mode."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = TinyCNN().train()
    stats = model.bn.running_mean.clone()
    ctx = rf.GATAttack(model, EPS, seed=0, bn_mode="eval").craft(x, y, requests={"clean_logits"})
    assert ctx.clean_logits.requires_grad
    with torch.no_grad():
        ref = TinyCNN().train()
        ref.load_state_dict(model.state_dict())
        ref.bn.running_mean.copy_(stats)
        torch.testing.assert_close(ctx.clean_logits, ref(x))  # batch statistics
    # one BN running-stat update (the guide); the eval-mode attack forward updates nothing
    assert not torch.equal(model.bn.running_mean, stats) and model.bn.num_batches_tracked.item() == 1
    assert model.training


@pytest.mark.parametrize(
    ("attack", "criterion", "counts"),
    [
        # guide F (kept) + attack F + B, then the adversarial training forward, backward through both graphs
        ("gat", "gat", (3, 3, 0)),
        ("gat_eval", "gat", (3, 3, 0)),  # the train-mode guide is still reused
        ("fgsm", "gat", (2, 3, 0)),  # FGSM's clean forward reused
        ("fgsm_eval", "gat", (3, 3, 0)),  # an eval-mode clean forward is not: one more F
        ("gat", "ce", (2, 2, 0)),  # minibatch 0, no λ term and no clean-input loss: no guide
    ],
)
def test_pass_counts(attack, criterion, counts):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = PassCounter(TinyCNN()).train()
    mode = "eval" if attack.endswith("_eval") else "train"
    atk = (rf.GATAttack if attack.startswith("gat") else rf.FGSM)(model, EPS, seed=0, bn_mode=mode)
    out = adversarial_step(model, atk, [], x, y, criterion=rf.GATLoss() if criterion == "gat" else None)
    out.loss.backward()
    assert model.counts() == counts


def test_guide_forward_without_clean_loss_on_odd_iterations():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    model = PassCounter(TinyCNN()).train()
    atk = rf.GATAttack(model, EPS, seed=0, bn_mode="train")
    atk(x, y)
    assert model.counts() == (1, 1, 0)
    model.reset()
    atk(x, y)  # odd minibatch: the guide's forward (no graph) + the attack's
    assert model.counts() == (2, 1, 0)


def test_gains_robustness_over_standard_training():
    out = mc.check_gains_robustness(spec, epochs=6)
    print(out)


def test_resume_is_bit_identical(tmp_path):
    mc.check_resume_bit_identical(spec, tmp_path)


def test_rollback_restores_and_strengthens():
    tr = mc.check_rollback(spec)
    assert tr.attack.lam == 20 and tr.criterion.lam == 20 and tr.criterion.strength == 1


def test_bf16():
    mc.check_bf16(spec)


def test_preset_loads():
    from robustfast.config import RunConfig, load_preset

    cfg = RunConfig.from_dict(load_preset("gat-cifar10"))
    assert cfg.attack["name"] == "gat" and cfg.loss["name"] == "gat"
    assert cfg.attack["lam_milestones"] == cfg.loss["lam_milestones"] == [86]
    model = TinyCNN()
    atk = rf.create_attack(cfg.attack["name"], model, eps=cfg.eps, **{k: v for k, v in cfg.attack.items()
                                                                       if k != "name"})  # fmt: skip
    loss = rf.create_loss(**cfg.loss)
    loss.on_epoch_start(86)
    assert atk.lam == 10 and loss.current_lam == 40


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m: rf.GATAttack(m, lam=-1.0), "lam must be a finite number >= 0"),
        (lambda m: rf.GATAttack(m, lam_milestones=(5, 3)), "increasing epoch indices"),
        (lambda m: rf.GATAttack(m, lam_milestones=86), "increasing epoch indices"),
        (lambda m: rf.GATAttack(m, lam_factor=0.0), r"lam_factor=0.0\): must be a number in \(0, inf\)"),
        (lambda m: rf.GATAttack(m, alternate="yes"), "alternate"),
        (lambda m: rf.GATAttack(m, init=8.0), "did you mean init=8/255"),
        (lambda m: rf.GATAttack(m, alpha=-0.1), "alpha"),
        (lambda m: rf.GATLoss(lam=float("nan")), "lam must be a finite number"),
        (lambda m: rf.GATLoss(lam_milestones=("a",)), "increasing epoch indices"),
    ],
)
def test_argument_validation(make, match):
    with pytest.raises(rf.RobustfastError, match=match):
        make(TinyCNN())
