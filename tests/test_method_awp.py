"""AWP: the weight perturbation and whole training steps (AT-AWP and TRADES-AWP) against float64 references written
from the official ``utils_awp.py`` and training loops; restoration, warm-up, BatchNorm statistics, pass counts;
robustness on digits, resume, rollback, bf16; argument checks."""

from __future__ import annotations

import copy
from pathlib import Path

import methodcheck as mc
import pytest
import torch
import torch.nn.functional as F
from conftest import SmoothCNN, TinyCNN
from counting import PassCounter
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
from robustfast.context import StepContext
from robustfast.training import AdversarialTrainer

EPS = 8 / 255


def _data(n: int = 12, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


def _smooth(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmoothCNN().double()


# ------------------------------------------------------------------ official formulas, written out plainly
def official_diff(model, proxy, proxy_lr, proxy_loss):
    """utils_awp.py: load the model's state into the proxy, one SGD step on −loss, then per state-dict entry with
    ndim > 1 and 'weight' in its name: ‖w‖ / (‖w_proxy − w‖ + 1e-20) · (w_proxy − w)."""
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    opt = torch.optim.SGD(proxy.parameters(), lr=proxy_lr)
    loss = -proxy_loss(proxy)
    opt.zero_grad()
    loss.backward()
    opt.step()
    diff = {}
    for (k, old), (_, new) in zip(model.state_dict().items(), proxy.state_dict().items()):
        if old.dim() <= 1 or "weight" not in k:
            continue
        d = new - old
        diff[k] = old.norm() / (d.norm() + 1e-20) * d
    return diff


def add_into(model, diff, coeff):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in diff:
                p.add_(coeff * diff[name])


def at_proxy_loss(x_adv, y):
    return lambda net: F.cross_entropy(net(x_adv), y)


def trades_proxy_loss(x, x_adv, y, beta):
    def loss(net):
        natural = F.cross_entropy(net(x), y)
        robust = F.kl_div(F.log_softmax(net(x_adv), dim=1), F.softmax(net(x), dim=1), reduction="batchmean")
        return natural + beta * robust

    return loss


@pytest.mark.parametrize("gamma", [0.01, 0.005])
def test_at_perturbation_matches_the_official_proxy_step_in_float64(gamma: float) -> None:
    model, (x, y) = _smooth(), _data()
    x_adv = rf.PGD(model, EPS, steps=2, seed=0)(x, y)
    ref = official_diff(model, copy.deepcopy(model), 0.01, at_proxy_loss(x_adv, y))
    assert set(ref) == {"conv.weight", "fc.weight"}  # no biases
    awp = rf.AWP(model, gamma=gamma)
    before = [p.detach().clone() for p in model.parameters()]
    diff = awp.perturbation(StepContext(x=x, y=y, x_adv=x_adv, model=model))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # computing applies nothing
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p, _ in diff} == set(ref)
    for p, v in diff:
        torch.testing.assert_close(v, gamma * ref[names[id(p)]], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(v.norm(), gamma * p.norm(), atol=1e-9, rtol=1e-9)  # ‖v_l‖ = γ‖w_l‖


def test_trades_perturbation_matches_the_official_proxy_step_in_float64() -> None:
    model, (x, y) = _smooth(), _data()
    x_adv = rf.TRADESAttack(model, EPS, steps=2, seed=0)(x, y)
    ref = official_diff(model, copy.deepcopy(model), 0.1, trades_proxy_loss(x, x_adv, y, 6.0))
    names = {id(p): n for n, p in model.named_parameters()}
    for loss in ("trades", rf.TRADESLoss(6.0)):
        diff = rf.AWP(model, gamma=0.005, loss=loss).perturbation(StepContext(x=x, y=y, x_adv=x_adv, model=model))
        for p, v in diff:
            torch.testing.assert_close(v, 0.005 * ref[names[id(p)]], atol=1e-6, rtol=1e-6)
    # "training" (the default) uses the trainer's criterion, passed here
    diff = rf.AWP(model, gamma=0.005).perturbation(StepContext(x=x, y=y, x_adv=x_adv, model=model), rf.TRADESLoss())
    for p, v in diff:
        torch.testing.assert_close(v, 0.005 * ref[names[id(p)]], atol=1e-6, rtol=1e-6)


def _loader(x, y, bs: int = 6) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=False)


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def test_at_awp_training_steps_match_the_official_loop_in_float64() -> None:
    """train_cifar10.py: attack, calc_awp, perturb, CE at x_adv, zero_grad/backward/step, restore; two batches."""
    x, y = _data()
    ref_model = _smooth()
    proxy, opt = copy.deepcopy(ref_model), _sgd(ref_model)
    ref_atk = rf.PGD(ref_model, EPS, alpha=2 / 255, steps=2, random_start=False)
    for xb, yb in _loader(x, y):
        x_adv = ref_atk(xb, yb)
        diff = official_diff(ref_model, proxy, 0.01, at_proxy_loss(x_adv, yb))
        add_into(ref_model, diff, 0.01)
        loss = F.cross_entropy(ref_model(x_adv), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        add_into(ref_model, diff, -0.01)

    model = _smooth()
    atk = rf.PGD(model, EPS, alpha=2 / 255, steps=2, random_start=False)
    tr = AdversarialTrainer(model, atk, optimizer=_sgd(model), plugins=[rf.AWP(model, gamma=0.01)], val_attack=None,
                            progress=False, verbose=False)  # fmt: skip
    tr.fit(_loader(x, y), 1)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(model.fc.weight, _smooth().fc.weight)


def test_trades_awp_training_steps_match_the_official_loop_in_float64() -> None:
    """train_trades_cifar.py: TRADES attack, TradesAWP.calc_awp (proxy lr 0.1), perturb, TRADES loss, step, restore.
    TRADES + AWP compose: the proxy objective is the trainer's own TRADES loss."""
    x, y = _data()
    ref_model = _smooth()
    proxy, opt = copy.deepcopy(ref_model), _sgd(ref_model)
    ref_atk = rf.TRADESAttack(ref_model, EPS, alpha=2 / 255, steps=2, seed=0)  # its update is tested against trades.py
    kl = torch.nn.KLDivLoss(reduction="sum")
    for xb, yb in _loader(x, y):
        x_adv = ref_atk(xb, yb)
        diff = official_diff(ref_model, proxy, 0.1, trades_proxy_loss(xb, x_adv, yb, 6.0))
        add_into(ref_model, diff, 0.005)
        loss = F.cross_entropy(ref_model(xb), yb) + 6.0 * kl(
            F.log_softmax(ref_model(x_adv), dim=1), F.softmax(ref_model(xb), dim=1)
        ) / len(xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        add_into(ref_model, diff, -0.005)

    model = _smooth()
    atk = rf.TRADESAttack(model, EPS, alpha=2 / 255, steps=2, seed=0)
    tr = AdversarialTrainer(model, atk, criterion=rf.TRADESLoss(6.0), optimizer=_sgd(model), attack_bn_mode=None,
                            plugins=[rf.AWP(model, gamma=0.005)], val_attack=None, progress=False,
                            verbose=False)  # fmt: skip
    tr.fit(_loader(x, y), 1)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def _fit(model, plugins, epochs: int, **kw) -> AdversarialTrainer:
    x, y = _data()
    tr = AdversarialTrainer(model, rf.PGD(model, EPS, steps=2, random_start=False), optimizer=_sgd(model),
                            plugins=plugins, val_attack=None, progress=False, verbose=False, **kw)  # fmt: skip
    tr.fit(_loader(x, y), epochs)
    return tr


def test_warmup_epochs_train_without_awp() -> None:
    plain, warm, on = _smooth(), _smooth(), _smooth()
    _fit(plain, [], 1)
    _fit(warm, [rf.AWP(warm, warmup_epochs=1)], 1)
    _fit(on, [rf.AWP(on)], 1)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), warm.parameters()))
    assert not torch.equal(plain.fc.weight, on.fc.weight)
    plain2, warm2 = _smooth(), _smooth()
    _fit(plain2, [], 2)
    _fit(warm2, [rf.AWP(warm2, warmup_epochs=1)], 2)
    assert not torch.equal(plain2.fc.weight, warm2.fc.weight)  # on from the second epoch


def test_weights_are_restored_before_averaging_and_callbacks() -> None:
    model = _smooth()
    awp = rf.AWP(model)
    seen = []

    class Probe:
        def on_before_optimizer_step(self) -> None:
            seen.append(("before", awp._pending is not None))

        def on_after_optimizer_step(self) -> None:
            seen.append(("after", awp._pending is None))

    _fit(model, [awp], 1, callbacks=[Probe()])
    assert seen == [("before", True), ("after", True)] * 2


def test_weights_are_restored_when_the_step_raises() -> None:
    model = _smooth()
    x, y = _data()

    class Boom(rf.losses.CrossEntropy):
        def forward(self, ctx):
            raise RuntimeError("boom")

    awp = rf.AWP(model, loss="ce")  # the proxy loss is not the raising one
    before = [p.detach().clone() for p in model.parameters()]
    tr = AdversarialTrainer(model, rf.FGSM(model, EPS), criterion=Boom(), plugins=[awp], val_attack=None,
                            progress=False, verbose=False)  # fmt: skip
    with pytest.raises(RuntimeError, match="boom"):
        tr.fit(_loader(x, y), 1)
    assert awp._pending is None
    for a, b in zip(before, model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-15, rtol=0)  # w + v − v


def test_own_loop_context_manager_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = TinyCNN().train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    ctx = rf.FGSM(model, EPS).craft(x, y)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    awp = rf.AWP(model)
    with awp.perturbed(ctx, rf.losses.CrossEntropy()):
        assert not torch.equal(model.conv.weight, stats["conv.weight"])
        assert torch.equal(model.conv.bias, stats["conv.bias"]) and torch.equal(model.bn.weight, stats["bn.weight"])
        # the proxy pass ran on copies of the buffers: the running statistics are untouched
        assert torch.equal(model.bn.running_mean, stats["bn.running_mean"])
        assert int(model.bn.num_batches_tracked) == int(stats["bn.num_batches_tracked"])
        with pytest.raises(rf.RobustfastError, match="already perturbed"):
            awp.perturb([])
    torch.testing.assert_close(model.conv.weight, stats["conv.weight"], atol=1e-7, rtol=0)


# ------------------------------------------------------------------ pass counts (per training step, in the trainer)
def _count(attack: str, plugins: bool) -> tuple[int, int, int]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = PassCounter(TinyCNN())
    if attack == "pgd":
        parts = {"attack": rf.PGD(model, EPS, steps=2, random_start=False)}
    else:
        parts = {"attack": rf.TRADESAttack(model, EPS, steps=2, seed=0), "criterion": rf.TRADESLoss()}
    tr = AdversarialTrainer(model, plugins=[rf.AWP(model)] if plugins else [], val_attack=None, progress=False,
                            verbose=False, **parts)  # fmt: skip
    tr.fit(DataLoader(TensorDataset(x, y), batch_size=8), 1)
    return model.counts()


def test_pass_counts() -> None:
    # PGD-2 from x (its first gradient is the clean one), training forward and backward: (3, 3); AWP's proxy adds
    # one forward at x_adv and one backward (the official code: the same, plus a metrics-only forward at x)
    assert _count("pgd", False) == (3, 3, 0)
    assert _count("pgd", True) == (4, 4, 0)
    # TRADES (K = 2, train mode: clean forward shared) (4, 4); TRADES-AWP's proxy loss forwards x and x_adv: +(2, 2),
    # and the training loss forwards x again at the perturbed weights (the attack's clean forward is of w): +(1, 0)
    assert _count("trades", False) == (4, 4, 0)
    assert _count("trades", True) == (7, 6, 0)


# ------------------------------------------------------------------ training checks
def spec(model):
    return {"attack": rf.PGD(model, mc.EPS, alpha=mc.EPS / 2, steps=2, seed=0), "plugins": [rf.AWP(model, 0.01)]}


def trades_spec(model):
    atk = rf.TRADESAttack(model, mc.EPS, alpha=mc.EPS / 2, steps=2, seed=0)
    return {"attack": atk, "criterion": rf.TRADESLoss(), "plugins": [rf.AWP(model, 0.005)], "attack_bn_mode": None}


def test_gains_robustness() -> None:
    print(mc.check_gains_robustness(spec))


def test_resume_bit_identical(tmp_path: Path) -> None:
    mc.check_resume_bit_identical(spec, tmp_path)


def test_rollback_doubles_gamma() -> None:
    tr = mc.check_rollback(spec)
    (awp,) = tr.plugins
    assert awp.gamma == 0.02 and awp.strength == 1
    assert awp.strengthen() is None and awp.gamma == 0.02  # capped at max_gamma


@pytest.mark.parametrize("make", [spec, trades_spec])
def test_bf16(make) -> None:
    mc.check_bf16(make)


def test_create_plugin_and_state() -> None:
    model = TinyCNN()
    awp = rf.create_plugin("awp", model, gamma=0.005, warmup_epochs=9, loss="trades")
    assert isinstance(awp.loss, rf.TRADESLoss) and repr(awp).startswith("AWP(gamma=0.005, warmup_epochs=9")
    awp.strengthen()
    other = rf.AWP(model)
    other.load_state_dict(awp.state_dict())
    assert other.gamma == 0.01 and other.strength == 1
    zero = rf.AWP(model, gamma=0.0)
    assert zero.strengthen() == "gamma 0 -> 0.005"


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -0.01}, "gamma"),
        ({"gamma": "0.01"}, "gamma"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"warmup_epochs": 1.5}, "warmup_epochs"),
        ({"loss": 3}, "loss"),
        ({"loss": "tradez"}, "trades"),
        ({"max_gamma": float("nan")}, "max_gamma"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(rf.RobustfastError, match=match):
        rf.AWP(TinyCNN(), **kwargs)


def test_bad_models() -> None:
    with pytest.raises(rf.RobustfastError, match=r"nn\.Module"):
        rf.AWP(lambda x: x)
    with pytest.raises(rf.RobustfastError, match="no trainable weight"):
        rf.AWP(nn.Sequential(nn.Flatten()))
    model, other = _smooth(), _smooth()
    with pytest.raises(rf.RobustfastError, match="another model"):
        _fit(model, [rf.AWP(other)], 1)
    with pytest.raises(rf.RobustfastError, match="x_adv"):
        rf.AWP(model).perturbation(StepContext(x=_data()[0], y=_data()[1], model=model))
