"""FGSM-CKPT (``robustfast.attacks.fgsm_ckpt``): the official selection rule written plainly in float64 (per example,
one checkpoint at a time), the eval-mode checkpoint forward, pass counts, the shared method checks and the presets."""

from __future__ import annotations

import copy
from pathlib import Path

import methodcheck as mc
import pytest
import torch
import torch.nn.functional as F
from conftest import SmoothCNN, TinyCNN
from counting import PassCounter

import robustfast as rf
from robustfast import FGSMCKPT
from robustfast.config import RunConfig, load_preset
from robustfast.training import adversarial_step


def _official_ckpt(model, x, y, eps, alpha, c, seed, grad_mode="eval"):
    """``COAdvTrainer._do_iter`` + ``CustomFFGSM``: the training images, in float64, one checkpoint at a time."""
    u = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype) - 1) * eps
    x0 = (x + u).clamp(0, 1).requires_grad_(True)
    model.train(grad_mode == "train")
    out = model(x0)
    (g,) = torch.autograd.grad(F.cross_entropy(out, y), x0)
    x_adv = (x + (x0 + alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1).detach()
    pert = x_adv - x
    x_tr = x_adv.clone()
    kinds = []
    model.eval()
    for i in range(len(x)):
        if out[i].argmax() != y[i]:  # misclassified at the noisy start: train on the clean image
            x_tr[i] = x[i]
            kinds.append("clean")
            continue
        kinds.append("full")
        for k in range(1, c):
            cand = x[i] + k * (pert[i] / c)
            with torch.no_grad():
                if model(cand[None]).argmax() != y[i]:
                    x_tr[i] = cand
                    kinds[-1] = f"k={k}"
                    break
    return x_tr, kinds


def test_matches_the_official_selection_in_float64() -> None:
    torch.manual_seed(0)
    model = SmoothCNN().double().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(32, 3, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps, c = 0.1, 4
    expected, kinds = _official_ckpt(model, x, y, eps, 1.25 * eps, c, seed=0)
    assert {"clean", "full", "k=1", "k=2", "k=3"} <= set(kinds)  # every branch of the rule is exercised
    ours = FGSMCKPT(model, eps, c=c, seed=0)(x, y)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)
    # the functional kernel gives the same perturbation
    with rf.model_mode(model, "eval"):
        d = rf.functional.fgsm_ckpt(model, x, y, eps=eps, c=c, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x + d, expected, atol=1e-12, rtol=0)


def test_checkpoints_run_in_eval_mode_after_a_train_mode_gradient() -> None:
    """The trainer's default (attack in train mode): gradient with batch statistics, checkpoints in eval mode."""
    torch.manual_seed(0)
    model = TinyCNN().double().train()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(16, 3, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    ref = copy.deepcopy(model)
    expected, _ = _official_ckpt(ref, x, y, 8 / 255, 10 / 255, 3, seed=1, grad_mode="train")
    ours = FGSMCKPT(model, 8 / 255, seed=1, bn_mode="train")(x, y)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)
    assert model.training and torch.equal(model.bn.running_mean, ref.bn.running_mean)


def test_pass_counts() -> None:
    """FGSM-RS (1F + 1B), one batched no-grad forward over the (c−1)·n candidates, the training F + B."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 8, 8, generator=g)
    torch.manual_seed(0)
    model = PassCounter(TinyCNN()).train()
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified: the checkpoints are needed
    model.reset()
    out = adversarial_step(model, FGSMCKPT(model, 8 / 255, c=5, seed=0, bn_mode="train"), [], x, y)
    out.loss.backward()
    assert model.counts() == (3, 2, 0)
    # nothing correctly classified at x + η: no checkpoint forward, training on the clean images
    inner = TinyCNN()
    with torch.no_grad():
        inner.fc.bias[0] = 1e3  # always predicts class 0
    model = PassCounter(inner).train()
    labels = torch.ones(8, dtype=torch.long)
    out = adversarial_step(model, FGSMCKPT(model, 8 / 255, seed=0, bn_mode="train"), [], x, labels)
    out.loss.backward()
    assert model.counts() == (2, 2, 0) and torch.equal(out.context.x_adv, x)


def ckpt_spec(model):
    # the official attack runs in eval mode: keep the attack's own bn_mode in the trainer
    return {"attack": FGSMCKPT(model, mc.EPS, seed=0), "attack_bn_mode": None}


def test_gains_robustness() -> None:
    # trained on the smallest misclassified checkpoint, CKPT is less robust than FGSM-RS by design (digits: PGD
    # 0.63 vs RS's 0.68 and standard training's 0.54), hence the smaller margin
    out = mc.check_gains_robustness(ckpt_spec, margin=0.05)
    print("fgsm_ckpt digits:", out)


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    mc.check_resume_bit_identical(ckpt_spec, tmp_path)


def test_rollback_doubles_the_checkpoints() -> None:
    tr = mc.check_rollback(ckpt_spec)
    assert tr.attack.c == 6


def test_bf16() -> None:
    mc.check_bf16(ckpt_spec)


def test_strengthening_stops_at_16(model) -> None:
    atk = FGSMCKPT(model)
    assert [atk.strengthen() for _ in range(4)] == ["c 3 -> 6", "c 6 -> 12", "c 12 -> 16", None]


def test_argument_validation(model) -> None:
    for bad in (0, 2.5, True):
        with pytest.raises(rf.RobustfastError, match="number of checkpoints"):
            FGSMCKPT(model, c=bad)
    with pytest.raises(rf.RobustfastError, match="checkpoint_bn_mode"):
        FGSMCKPT(model, checkpoint_bn_mode="train")
    with pytest.raises(rf.RobustfastError, match="10/255"):
        FGSMCKPT(model, alpha=10)
    assert FGSMCKPT(model).alpha == pytest.approx(10 / 255) and type(rf.create_attack("ssat", model)) is FGSMCKPT


def test_presets_load() -> None:
    step = RunConfig.from_dict(load_preset("fgsm-ckpt-cifar10"))
    assert step.attack == {"name": "fgsm_ckpt", "alpha": pytest.approx(10 / 255), "c": 3}
    assert step.epochs == 200 and step.lr == 0.01 and step.milestones == [60, 120, 160]
    cyc = RunConfig.from_dict(load_preset("fgsm-ckpt-cifar10-cyclic"))
    assert cyc.epochs == 30 and cyc.lr == pytest.approx(0.3) and cyc.schedule == "cyclic"
