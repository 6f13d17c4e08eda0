"""ELLE, ELLE-A and LLR: float64 references of the official formulas, ELLE-A's on/off rule against a list-based
transcription of the official code, pass counts, and training through the trainer."""

from __future__ import annotations

from pathlib import Path

import methodcheck as mc
import numpy as np
import pytest
import torch
from conftest import SmoothCNN, TinyCNN
from counting import PassCounter

import robustfast as rf
from robustfast.regularizers._adaptive import AdaptiveWeight
from robustfast.training import adversarial_step

EPS = 8 / 255


@pytest.fixture
def data64():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 8, 8, generator=g).double(), torch.randint(0, 10, (6,), generator=g)


def _ce(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y, reduction="none")


def test_elle_matches_a_float64_reference(data64):
    x, y = data64
    torch.manual_seed(0)
    m = SmoothCNN().double()
    value = rf.ELLE(eps=EPS, lam=1000, seed=3)(m, x, y)
    g = torch.Generator().manual_seed(3)  # the same draws, in the official order: x_a, x_b, then α
    xa = x + (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1) * EPS
    xb = x + (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1) * EPS
    a = torch.rand(6, generator=g, dtype=x.dtype)
    xc = (1 - a.view(-1, 1, 1, 1)) * xa + a.view(-1, 1, 1, 1) * xb
    ref = ((_ce(m, xc, y) - (1 - a) * _ce(m, xa, y) - a * _ce(m, xb, y)) ** 2).mean()
    assert abs(value.item() - 1000 * ref.item()) < 1e-6 * max(1.0, 1000 * ref.item())


def test_elle_default_lambda_follows_the_official_scripts():
    assert rf.ELLE(eps=8 / 255).lam == 1000 and rf.ELLE(eps=16 / 255).lam == 5000 and rf.ELLE(eps=24 / 255).lam == 10000
    assert rf.ELLEA().lam == 0 and rf.ELLEA().lam_max is None and rf.ELLEA().grad_ratio == 1.0  # scaled from the data
    assert rf.ELLEA(lam_max=4000).lam_max == 4000  # the official constant, as the ellea-cifar10-eps8 preset sets


def _grad_norm(loss, params):
    return float(torch.sqrt(sum(g.pow(2).sum() for g in torch.autograd.grad(loss, params, retain_graph=True))))


def test_ellea_scaled_jump_matches_a_float64_reference(data64):
    """At an outlier, λ = grad_ratio · ‖∇θ L‖ / ‖∇θ lin_err‖, with L the step's training loss (CE at x_adv here)."""
    x, y = data64
    torch.manual_seed(0)
    m = SmoothCNN().double().train()
    x_adv = (x + 0.01).clamp(0, 1)
    reg = rf.ELLEA(eps=EPS, grad_ratio=0.5, seed=3)
    reg.adaptive.count, reg.adaptive.mean, reg.adaptive.m2 = 10, 0.0, 0.0  # history at 0: any error is an outlier
    value = reg(m, x, y, x_adv)
    assert value.item() == 0.0  # this step used λ = 0; the jump applies from the next step
    g = torch.Generator().manual_seed(3)  # the same draws as the regularizer
    xa = x + (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1) * EPS
    xb = x + (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1) * EPS
    a = torch.rand(6, generator=g, dtype=x.dtype)
    xc = (1 - a.view(-1, 1, 1, 1)) * xa + a.view(-1, 1, 1, 1) * xb
    err = ((_ce(m, xc, y) - (1 - a) * _ce(m, xa, y) - a * _ce(m, xb, y)) ** 2).mean()
    params = list(m.parameters())
    ref = 0.5 * _grad_norm(_ce(m, x_adv, y).mean(), params) / _grad_norm(err, params)
    assert reg.lam == pytest.approx(ref, rel=1e-9) and reg.last_jump == pytest.approx(ref, rel=1e-9)


def test_ellea_bounds_the_weight_it_applies_at_every_step(data64):
    """Once λ > 0, every training step applies min(λ, grad_ratio · ‖∇θ L‖ / ‖∇θ lin_err‖) of this step (float64
    reference); the on/off rule itself goes on with the unbounded λ (it decays by 0.99)."""
    x, y = data64
    torch.manual_seed(0)
    m = SmoothCNN().double().train()
    x_adv = (x + 0.01).clamp(0, 1)
    params = list(m.parameters())
    for lam in (1e12, 1e-6):  # far above the bound, then far below it
        reg = rf.ELLEA(eps=EPS, grad_ratio=0.5, seed=3)
        reg.lam = lam
        reg.adaptive.count, reg.adaptive.mean, reg.adaptive.m2 = 10, 1.0, 0.0  # no outlier: λ only decays
        value = reg(m, x, y, x_adv)
        g = torch.Generator().manual_seed(3)
        xa = x + (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1) * EPS
        xb = x + (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1) * EPS
        a = torch.rand(6, generator=g, dtype=x.dtype)
        xc = (1 - a.view(-1, 1, 1, 1)) * xa + a.view(-1, 1, 1, 1) * xb
        err = ((_ce(m, xc, y) - (1 - a) * _ce(m, xa, y) - a * _ce(m, xb, y)) ** 2).mean()
        bound = 0.5 * _grad_norm(_ce(m, x_adv, y).mean(), params) / _grad_norm(err, params)
        applied = min(lam, bound)
        assert reg.last_applied == pytest.approx(applied, rel=1e-9)
        assert value.item() == pytest.approx(applied * err.item(), rel=1e-9)
        # the parameter gradient is applied·∇θ lin_err (handed over from the bound's backward, not recomputed)
        for got, ref in zip(torch.autograd.grad(value, params), torch.autograd.grad(err, params), strict=True):
            assert torch.allclose(got, applied * ref, rtol=1e-9, atol=1e-12 * applied)
        assert reg.lam == pytest.approx(0.99 * lam, rel=1e-12)
    assert bound < 1e12 and bound > 1e-6  # both branches were taken
    official = rf.ELLEA(eps=EPS, lam_max=4000, seed=3)  # the official constant applies λ unbounded
    official.lam = 1e12
    official.adaptive.count, official.adaptive.mean = 10, 1.0
    assert official(m, x, y, x_adv).item() == pytest.approx(1e12 * err.item(), rel=1e-9)


def test_ellea_official_constant_diverges_on_a_small_model():
    """The README's FGSM + ELLEA(eps) at SGD lr 0.2 on digits with the official constant λ_max = 4000 (15× the
    training loss's gradient there) gives a non-finite loss within three epochs, whatever the shuffle.

    The data-scaled default is not asserted to train here: on this 8×8-digit CNN it trains in most shuffles and
    not in all (docs/methods/elle.md, "Stability on a small model"), and which shuffles fail depends on the
    machine's float rounding, so an end-to-end claim about it would be a flaky test."""
    from torch.utils.data import DataLoader, TensorDataset

    from robustfast.data import load_digits_tensors
    from robustfast.training import AdversarialTrainer

    xtr, ytr, _, _ = load_digits_tensors(seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for shuffle in (0, 1, 2):
            torch.manual_seed(0)
            model = rf.models.create("small_cnn", num_classes=10, in_chans=1)
            loader = DataLoader(TensorDataset(xtr, ytr), batch_size=64, shuffle=True,
                                generator=torch.Generator().manual_seed(shuffle))  # fmt: skip
            reg = rf.ELLEA(eps=0.1, seed=0, lam_max=4000)
            tr = AdversarialTrainer(model, rf.FGSM(model, 0.1), [reg], lr=0.2, val_attack=None, progress=False,
                                    verbose=False, seed=0)  # fmt: skip
            with pytest.raises(rf.RobustfastError, match="non-finite training loss"):
                tr.fit(loader, 3)
    finally:
        torch.set_num_threads(threads)


def _official_onoff(values, lam_max=4000.0):
    """ELLE-A's rule as the official code runs it: compare with the history, then append."""
    history, lam, out = [], 0.0, []
    for v in values:
        if len(history) > 2 and v > np.mean(history) + 2 * np.std(history):
            lam = lam_max
        else:
            lam = 0.99 * lam
        history.append(v)
        out.append(lam)
    return out


def test_ellea_rule_matches_the_official_order():
    rng = np.random.default_rng(0)
    values = list(np.abs(rng.normal(1.0, 0.1, 200)))
    values[50] = values[120] = 5.0  # two outliers
    values[1] = 9.0  # an outlier too early to count (fewer than 3 earlier values)
    w, lam, ours = AdaptiveWeight(4000.0), 0.0, []
    for v in values:
        lam = w.next_lam(lam, v)
        ours.append(lam)
    assert np.allclose(ours, _official_onoff(values), rtol=1e-12, atol=1e-9)
    assert ours[1] == 0 and ours[50] == 4000 and ours[51] == pytest.approx(3960)


def test_ellea_updates_lambda_after_each_training_step_and_keeps_it_in_its_state(tmp_path: Path):
    torch.manual_seed(0)
    m = TinyCNN().train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    reg = rf.ELLEA(eps=EPS, lam_max=4000, seed=0)
    for _ in range(5):
        reg(m, x, y)
    assert reg.adaptive.count == 5 and 0 <= reg.lam <= 4000
    m.eval()
    reg(m, x, y)
    assert reg.adaptive.count == 5  # evaluation (eval mode) does not move the rule
    torch.save(reg.state_dict(), tmp_path / "s.pt")
    other = rf.ELLEA(eps=EPS)
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert other.adaptive.state_dict() == reg.adaptive.state_dict()


def test_llr_matches_a_float64_reference(data64):
    x, y = data64
    torch.manual_seed(0)
    m = SmoothCNN().double()
    reg = rf.LLR(eps=EPS, lam_max=200, adaptive=False, seed=4)
    value = reg(m, x, y)
    g = torch.Generator().manual_seed(4)
    x2 = (x + (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1) * EPS).requires_grad_(True)
    x3 = x + (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1) * EPS
    (grad,) = torch.autograd.grad(_ce(m, x2, y).sum(), x2)  # per-example gradients
    ref = ((_ce(m, x3, y) - _ce(m, x2, y) - ((x3 - x2) * grad).flatten(1).sum(1)) ** 2).mean()
    assert abs(value.item() - 200 * ref.item()) < 1e-6 * max(1.0, 200 * ref.item())
    batch_mean = rf.LLR(eps=EPS, lam_max=200, adaptive=False, grad_scale="batch_mean", seed=4)(m, x, y)
    ref_bm = ((_ce(m, x3, y) - _ce(m, x2, y) - ((x3 - x2) * grad / 6).flatten(1).sum(1)) ** 2).mean()
    assert abs(batch_mean.item() - 200 * ref_bm.item()) < 1e-6 * max(1.0, 200 * ref_bm.item())


@pytest.mark.parametrize(
    ("reg", "counts"),
    [
        # FGSM (1F, 1B) + training forward + final backward; ELLE: one forward over 3B, no second order
        (lambda: rf.ELLE(eps=EPS, seed=0), (3, 3, 0)),
        # ELLE-A with λ > 0 (bounded): backward passes for ‖∇θ L‖ and ∇θ lin_err; the final backward runs through
        # the training forward only (the penalty's gradient is handed over), so one backward more than ELLE
        (lambda: mc.switched_on(rf.ELLEA(eps=EPS, seed=0)), (3, 4, 0)),
        (lambda: mc.switched_on(rf.ELLEA(eps=EPS, lam_max=4000, seed=0)), (3, 3, 0)),  # the official constant: as ELLE
        # LLR: a forward at x2 with a create_graph backward, a forward over 2B; the final backward runs through
        # the 2B forward and, with a second-order pass, through x2's forward again
        (lambda: rf.LLR(eps=EPS, adaptive=False, seed=0), (4, 5, 1)),
    ],
)
def test_pass_counts(reg, counts):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    model = PassCounter(TinyCNN()).train()
    out = adversarial_step(model, rf.FGSM(model, EPS, bn_mode="train"), [reg()], x, y)
    out.loss.backward()
    assert model.counts() == counts


# λ defaults are the official CIFAR-10 values; on 8x8 digits at eps = 0.1 (25/255) they are too strong for a
# tiny CNN, so the constant-λ methods get a digits-sized λ here (ELLE-A keeps its defaults)
def elle(model):
    return {"attack": rf.FGSM(model, mc.EPS), "regularizers": [rf.ELLE(eps=mc.EPS, lam=1000, seed=0)]}


def ellea(model):
    return {"attack": rf.FGSM(model, mc.EPS), "regularizers": [rf.ELLEA(eps=mc.EPS, seed=0)]}


def llr(model):
    return {"attack": rf.FGSM(model, mc.EPS), "regularizers": [rf.LLR(eps=mc.EPS, lam_max=20, seed=0)]}


@pytest.mark.parametrize("spec", [elle, ellea, llr])
def test_trains_robust_models(spec):
    mc.check_gains_robustness(spec, margin=0.05)


@pytest.mark.parametrize("spec", [ellea, llr])
def test_resume_rollback_bf16(spec, tmp_path: Path):
    mc.check_resume_bit_identical(spec, tmp_path)
    tr = mc.check_rollback(spec)
    reg, fresh = tr.regularizers[0], spec(mc.cnn())["regularizers"][0]
    if isinstance(reg, rf.ELLEA):  # the data-scaled maximum: its gradient ratio doubles
        assert reg.grad_ratio == 2 * fresh.grad_ratio
    else:
        assert reg.lam_max == 2 * fresh.lam_max  # strengthened
    mc.check_bf16(spec)


def test_bad_arguments():
    with pytest.raises(rf.RobustfastError, match="did you mean eps=8/255"):
        rf.ELLE(eps=8)
    with pytest.raises(rf.RobustfastError, match="lam"):
        rf.ELLEA(lam_max=-1)
    with pytest.raises(rf.RobustfastError, match="grad_scale"):
        rf.LLR(grad_scale="mean")
