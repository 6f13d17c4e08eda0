"""Free-AT (``robustfast.methods.free_at``): the trainer run against a float64 hand-written official loop, one
forward/backward per replay, the persistent δ buffer, standalone use, the shared method checks and the preset."""

from __future__ import annotations

from pathlib import Path

import methodcheck as mc
import pytest
import torch
import torch.nn.functional as F
from conftest import SmoothCNN, TinyCNN
from counting import PassCounter
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
from robustfast.config import RunConfig, load_preset
from robustfast.methods.free_at import FreeAT, free_at
from robustfast.training import AdversarialTrainer, adversarial_step

EPS = 0.1


def _data(n: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 10, (n,), generator=g)


def _official_free(model, batches, m: int, eps: float, lr: float) -> torch.Tensor:
    """locuslab ``train_free.py`` in float64 (input clamped as the TF code; SGD momentum 0.9, no weight decay)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    delta = torch.zeros_like(batches[0][0])  # shaped like the first (full) batch, never reset
    for x, y in batches:
        n = x.shape[0]
        for _ in range(m):
            point = (x + delta[:n]).clamp(0, 1).requires_grad_(True)
            loss = F.cross_entropy(model(point), y)
            opt.zero_grad()
            loss.backward()
            new = (delta[:n] + eps * point.grad.sign()).clamp(-eps, eps)
            delta[:n] = torch.max(torch.min(new, 1 - x), -x)  # image box around the current x
            opt.step()
    return delta


def test_trainer_matches_the_official_loop_in_float64() -> None:
    """Weights and δ after two minibatches (the second smaller) × m = 3 replays equal the official loop's."""
    x, y = _data(10)
    torch.manual_seed(0)
    ref = SmoothCNN().double()
    ours = SmoothCNN().double()
    ours.load_state_dict(ref.state_dict())
    delta_ref = _official_free(ref, [(x[:6], y[:6]), (x[6:], y[6:])], m=3, eps=EPS, lr=0.05)

    atk = FreeAT(ours, EPS, m=3)
    opt = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    tr = AdversarialTrainer(ours, atk, optimizer=opt, val_attack=None, progress=False, verbose=False)
    tr.fit(DataLoader(TensorDataset(x, y), batch_size=6), 1)
    assert tr.step == 6  # 2 minibatches × 3 replays
    for a, b in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    torch.testing.assert_close(atk.delta, delta_ref, atol=1e-12, rtol=0)
    assert atk.delta.shape[0] == 6  # rows 4 and 5 kept from the first minibatch


def test_one_forward_and_one_backward_per_replay() -> None:
    """The input gradient comes from the training backward: (F, B) = (1, 1) per optimizer step, half FGSM's."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    model = PassCounter(TinyCNN()).train()
    atk = FreeAT(model, 8 / 255, m=2, bn_mode="train")
    out = adversarial_step(model, atk, [], x, y)
    out.loss.backward()
    assert model.counts() == (1, 1, 0)
    assert "adv_grad_graph" in out.context.requests and out.context.adv_point.grad is not None
    before = atk.delta.clone()
    assert atk.update(out.context) and not torch.equal(before, atk.delta)
    assert model.counts() == (1, 1, 0)

    model.reset()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    tr = AdversarialTrainer(model, FreeAT(model, 8 / 255, m=3), val_attack=None, progress=False, verbose=False)
    tr.fit(loader, 1)
    assert model.counts() == (6, 6, 0)  # 2 minibatches × 3 replays × (1F + 1B)


def test_standalone_call_is_fgsm_then_pgd_without_random_start(smooth_model) -> None:
    x, y = _data(4, seed=1)
    atk = FreeAT(smooth_model, EPS)
    first = atk(x, y)
    assert torch.equal(first, rf.FGSM(smooth_model, EPS)(x, y))
    second = atk(x, y)  # a second replay on the same batch, without a weight update
    pgd2 = rf.PGD(smooth_model, EPS, alpha=EPS, steps=2, random_start=False)(x, y)
    torch.testing.assert_close(second, pgd2, atol=1e-12, rtol=0)
    # the kernel: one replay's δ update from a given δ
    d = free_at(smooth_model, x, y, eps=EPS, delta=first - x)
    torch.testing.assert_close(x + d, pgd2, atol=1e-12, rtol=0)


def test_buffer_follows_the_batch_shape(model, batch) -> None:
    x, y = batch
    atk = FreeAT(model, 8 / 255)
    atk(x[:4], y[:4])
    assert atk.delta.shape[0] == 4
    atk(x, y)  # a larger batch extends the buffer with zeros
    assert atk.delta.shape[0] == 16
    kept = atk.delta[8:].clone()
    atk(x[:8], y[:8])  # a smaller one leaves the other rows alone
    assert torch.equal(atk.delta[8:], kept)
    atk(x[:, :, :4, :4], y)  # another input shape resets the buffer
    assert atk.delta.shape == (16, 3, 4, 4)


def test_a_clean_input_criterion_leaves_delta_unchanged(batch) -> None:
    x, y = batch
    model = TinyCNN().train()
    atk = FreeAT(model, 8 / 255, bn_mode="train")
    out = adversarial_step(model, atk, [], x, y, criterion=rf.CleanCrossEntropy())
    out.loss.backward()
    assert not atk.update(out.context) and torch.equal(atk.delta, torch.zeros_like(x))


def free_spec(model):
    return {"attack": FreeAT(model, EPS, m=2)}


def test_gains_robustness() -> None:
    out = mc.check_gains_robustness(lambda model: {"attack": FreeAT(model, EPS, m=4)})
    print("free_at digits:", out)


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    mc.check_resume_bit_identical(free_spec, tmp_path)


def test_rollback_restores_delta_and_shrinks_the_step() -> None:
    tr = mc.check_rollback(free_spec)
    assert tr.attack.step == pytest.approx(0.8 * EPS) and tr.attack.delta is not None


def test_bf16() -> None:
    mc.check_bf16(free_spec)


def test_strengthening_is_capped(model) -> None:
    atk = FreeAT(model, 8 / 255)
    changes = [atk.strengthen() for _ in range(5)]
    assert changes[0] == "step 0.03137 -> 0.0251" and changes[3:] == [None, None]  # cap: 3 steps
    assert atk.step == pytest.approx(0.8**3 * 8 / 255) and atk.strength == 3
    small = FreeAT(model, 8 / 255, step=5 / 255)  # the ε/2 floor comes first
    assert [small.strengthen() for _ in range(3)][1:] == [None, None] and small.step == pytest.approx(4 / 255)


def test_argument_validation(model) -> None:
    for bad in (0, 1.5, True):
        with pytest.raises(rf.RobustfastError, match="m is the number of replays"):
            FreeAT(model, m=bad)
    with pytest.raises(rf.RobustfastError, match="8/255"):
        FreeAT(model, step=8)
    assert rf.create_attack("free", model, m=4).replays == 4 and not FreeAT(model).randomized


def test_preset_loads() -> None:
    cfg = RunConfig.from_dict(load_preset("free-at-cifar10"))
    assert cfg.attack == {"name": "free_at", "m": 8} and cfg.epochs == 10 and cfg.lr == pytest.approx(0.04)
    assert cfg.model == "preact_resnet18_wong" and cfg.schedule == "cyclic" and cfg.peak == pytest.approx(0.5)


def test_an_eps_warm_up_of_the_step_scales_free_at_step(model) -> None:
    """Free-AT's ``step`` is declared a step size (``Magnitude(step=True)``), so a warm-up that scales the steps
    (``eps_warmup_target="step"``, GradAlign's FGSM recipe) scales it, as it does every attack's ``alpha``."""
    atk = FreeAT(model, 8 / 255, step=6 / 255)
    with atk.scaled(0.5, "step"):
        assert atk.step == pytest.approx(3 / 255) and atk.eps == pytest.approx(8 / 255)
    with atk.scaled(0.5, "eps"):
        assert atk.step == pytest.approx(6 / 255) and atk.eps == pytest.approx(4 / 255)
    assert atk.step == pytest.approx(6 / 255)
    fgsm = rf.FGSM(model, 8 / 255)
    with fgsm.scaled(0.5, "step"):
        assert fgsm.alpha == pytest.approx(4 / 255) and fgsm.noise == 0
