"""The L2 threat model: ``PGDL2`` against a float64 reference and torchattacks' ``PGDL2`` (v3.5.1), its projection,
L2 sizes above 1, restarts and early stop, pass counts, L2 robustness gained by training on digits, and AutoAttack
in the L2 norm through the adapter."""

from __future__ import annotations

import methodcheck as mc
import pytest
import torch
import torch.nn.functional as F
import torchattacks
from conftest import SmoothCNN, TinyCNN
from counting import PassCounter
from evalutils import Linear, labelled
from torch import nn

import robustfast as rf
from robustfast.attacks.pgd_l2 import L2Magnitude, l2_project
from robustfast.evaluation import AutoAttackAdapter
from robustfast.training import adversarial_step

L2_EPS = 1.0  # digits: 8×8 images (the L∞ ball of radius 0.1 reaches L2 0.8)


def _batch(n=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=dtype)
    x[0, :, :3] = 1.0  # saturated pixels: the box clamp binds
    return x, torch.randint(0, 10, (n,), generator=g)


def _l2(t):
    return t.flatten(1).norm(dim=1)


def reference_step(model, x, y, x_adv, eps, alpha):
    """One torchattacks step in float64: batch-mean CE, gradient / (‖g‖₂ + 1e-10), step, L2 rescale, box."""
    adv = x_adv.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
    g = g / (_l2(g) + 1e-10).view(-1, 1, 1, 1)
    delta = adv.detach() + alpha * g - x
    factor = torch.minimum(eps / _l2(delta), torch.ones(len(x), dtype=x.dtype))
    return (x + delta * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def test_steps_match_a_float64_reference():
    torch.manual_seed(0)
    model = SmoothCNN().double().eval()
    x, y = _batch(dtype=torch.float64)
    for eps, alpha in ((0.5, 0.2), (2.0, 1.5)):  # alpha 1.5: the projection binds
        ref = reference_step(model, x, y, x, eps, alpha)
        torch.testing.assert_close(rf.PGDL2(model, eps, alpha, 1, False)(x, y), ref, atol=1e-12, rtol=0)
        ref2 = reference_step(model, x, y, ref, eps, alpha)
        torch.testing.assert_close(rf.PGDL2(model, eps, alpha, 2, False)(x, y), ref2, atol=1e-12, rtol=0)
    # the random start: Gaussian direction, radius U[0, 1]·eps per example (drawn in that order), then the box
    gen = torch.Generator().manual_seed(5)
    d = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    r = torch.rand(len(x), generator=gen, dtype=x.dtype)
    start = (x + d * (r / _l2(d) * 0.5).view(-1, 1, 1, 1)).clamp(0, 1)
    got = rf.PGDL2(model, 0.5, 0.2, 1, True, seed=5)(x, y)
    torch.testing.assert_close(got, reference_step(model, x, y, start, 0.5, 0.2), atol=1e-12, rtol=0)


@pytest.mark.parametrize("eps", [0.05, 0.5, 1.0, 4.0])
def test_perturbation_in_the_l2_ball_and_the_box(eps):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, y = _batch(16)
    for random_start in (True, False):
        x_adv = rf.PGDL2(model, eps, eps / 2, 5, random_start, seed=0)(x, y)
        assert (_l2(x_adv - x) <= eps + 1e-6).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    if eps >= 1.0:  # a large ball: most examples reach its surface
        assert _l2(x_adv - x).max() > 0.9 * eps


def test_projection_helper():
    x = torch.full((3, 1, 4, 4), 0.5)
    delta = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(l2_project(delta, x, 0.0), torch.zeros_like(delta))  # no 0/0
    small = 0.01 * delta
    assert torch.allclose(l2_project(small, x, 10.0), small, atol=1e-6)  # inside the ball and the box: unchanged
    assert torch.allclose(_l2(l2_project(delta, x, 0.1)), torch.full((3,), 0.1))


@pytest.mark.parametrize(("eps", "alpha", "steps"), [(0.5, 0.1, 10), (1.0, 0.2, 10), (3.0, 0.8, 5)])
@pytest.mark.parametrize("targeted", [False, True])
def test_parity_with_torchattacks_pgdl2(eps, alpha, steps, targeted):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, y = _batch(16)
    labels = (y + 1) % 10 if targeted else y
    ours = rf.PGDL2(model, eps, alpha, steps, False)
    theirs = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    if targeted:
        ours.set_mode_targeted_by_label()
        theirs.set_mode_targeted_by_label(quiet=True)
    torch.testing.assert_close(ours(x, labels), theirs(x, labels), atol=1e-6, rtol=0)


def test_zero_gradient_gives_no_nan():
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(10))

        def forward(self, x):
            return self.w.expand(x.shape[0], 10) + 0 * x.flatten(1)[:, :1]

    x, y = _batch()
    x_adv = rf.PGDL2(Constant(), 0.5, 0.1, 3, False)(x, y)
    assert torch.equal(x_adv, x)


def test_restarts_keep_the_worst_run_and_early_stop_freezes_fooled_points():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, y = _batch(32)
    one = rf.PGDL2(model, 0.3, 0.1, 5, seed=0)
    many = rf.PGDL2(model, 0.3, 0.1, 5, restarts=4, seed=0)
    with torch.no_grad():
        fooled_one = (model(one(x, y)).argmax(1) != y).sum()
        fooled_many = (model(many(x, y)).argmax(1) != y).sum()
    assert fooled_many >= fooled_one
    # early stop: examples misclassified at the start are not moved
    wrong = model(x).argmax(1) != y
    x_adv = rf.PGDL2(model, 0.3, 0.1, 5, False, early_stop=True)(x, y)
    assert wrong.any() and torch.equal(x_adv[wrong], x[wrong])
    assert (_l2(x_adv - x) <= 0.3 + 1e-6).all()


def test_declares_the_l2_threat_model_and_registry_names():
    atk = rf.create_attack("pgd-l2", TinyCNN())
    assert type(atk) is rf.PGDL2 and type(rf.create_attack("pgdl2", TinyCNN())) is rf.PGDL2
    assert atk.norm == "L2" and atk.bounded
    assert (atk.eps, atk.alpha, atk.steps, atk.random_start) == (1.0, 0.2, 10, True)  # torchattacks' defaults
    assert "PGDL2(eps=1, alpha=0.2, steps=10" in repr(atk)
    assert rf.functional.pgd_l2 is rf.attacks.pgd_l2.pgd_l2
    assert isinstance(type(atk).__dict__["eps"], L2Magnitude)


def test_sizes_above_one_and_scaling():
    atk = rf.PGDL2(TinyCNN(), eps=torch.tensor(3.0), alpha=None)
    assert atk.eps == 3.0 and atk.alpha == pytest.approx(0.6)  # alpha=None: eps / 5
    with atk.scaled(0.5):  # ε warm-up
        assert atk.eps == 1.5 and atk.alpha == pytest.approx(0.3)
    assert atk.eps == 3.0
    atk2 = rf.PGDL2(TinyCNN(), 2.0, 1.5)
    with atk2.scaled(0.5):
        assert (atk2.eps, atk2.alpha) == (1.0, 0.75)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -0.5}, "eps must be >= 0"),
        ({"eps": float("inf")}, "eps must be a finite L2 length"),
        ({"eps": torch.ones(2)}, "eps must be a scalar"),
        ({"alpha": float("nan")}, "alpha must be a finite L2 length"),
        ({"steps": 0}, "steps"),
        ({"restarts": 1.5}, "restarts"),
        ({"random_start": 1}, "random_start"),
        ({"early_stop": "no"}, "early_stop"),
        ({"eps_for_division": 0.0}, "eps_for_division"),
    ],
)
def test_argument_validation(kwargs, match):
    with pytest.raises(rf.RobustfastError, match=match):
        rf.PGDL2(TinyCNN(), **kwargs)


def test_pass_counts_and_shared_clean_gradient():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = PassCounter(TinyCNN()).train()
    atk = rf.PGDL2(model, 0.5, 0.25, 2, False, bn_mode="train")
    out = adversarial_step(model, atk, [], x, y)
    out.loss.backward()
    assert model.counts() == (3, 3, 0)  # 2 steps + the training forward/backward
    assert out.context.clean_grad is not None  # the first step is at the clean point: published


def _l2_accuracy(model, eps=L2_EPS, n=300):
    *_, xte, yte = mc.digits()
    x, y = xte[:n], yte[:n]
    with rf.model_mode(model, "eval"):
        x_adv = rf.PGDL2(model, eps, alpha=eps / 4, steps=10, seed=0)(x, y)
        assert (_l2(x_adv - x) <= eps + 1e-5).all()
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y).float().mean().item()


def l2_spec(model):
    return {"attack": rf.PGDL2(model, L2_EPS, L2_EPS / 2, 3, seed=0)}


def test_training_gains_l2_robustness_over_standard_training():
    std = _l2_accuracy(mc.train(None).model)
    trained = mc.train(l2_spec).model
    out = {"standard_l2": std, "pgdl2_l2": _l2_accuracy(trained), "pgdl2_clean": mc.clean_accuracy(trained)}
    print(out)
    assert out["pgdl2_l2"] > std + 0.1 and out["pgdl2_clean"] > 0.6, out


def test_resume_is_bit_identical(tmp_path):
    mc.check_resume_bit_identical(l2_spec, tmp_path)


def test_autoattack_in_the_l2_norm():
    model = Linear(scale=0.1).eval()
    x, y = labelled(model, n=12)
    eps = 0.5
    adapter = AutoAttackAdapter(model, eps, norm="L2", version="custom", attacks=["apgd-ce"], n_iter=5)
    res = adapter.run(x, y, batch_size=8)
    assert res.protocol["norm"] == "L2" and res.protocol["eps"] == eps and res.protocol["components"] == ["apgd-ce"]
    assert (_l2(res.x_adv - x) <= eps + 1e-4).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    moved = _l2(res.x_adv - x) > 0
    assert moved.any() and res.accuracy < 10 / 12  # it broke some correctly classified points
    with torch.no_grad():
        assert res.robust.tolist() == (model(res.x_adv).argmax(1) == y).tolist()
