"""Properties every attack must satisfy, parametrized over the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SmoothCNN, TinyCNN

import robustfast as rf
from robustfast import FGSM, NFGSM, PGD, RS, MultiGrad, SEATAttack, ZeroGrad
from robustfast.attacks import zerograd_mask
from robustfast.losses import margin_loss
from robustfast.ops import uniform_start

EPS = 8 / 255
ALL = rf.list_attacks()
# properties the attacks declare themselves: a new attack is tested as soon as it is registered
BOUNDED = [a for a in ALL if rf.attacks.ATTACKS.get(a).bounded and rf.attacks.ATTACKS.get(a).norm == "Linf"]


def make(name: str, model: torch.nn.Module, **kw) -> rf.Attack:
    return rf.create_attack(name, model, eps=EPS, seed=0, **kw)


def test_registry_lists_the_seed_attacks() -> None:
    assert {"fgsm", "multigrad", "nfgsm", "pgd", "rs", "seat", "zerograd"} <= set(ALL)
    assert type(rf.create_attack("fgsm-rs", TinyCNN())) is RS


def test_unknown_attack_suggests_close_match() -> None:
    with pytest.raises(rf.RobustfastError, match="Did you mean 'zerograd'"):
        rf.create_attack("zerogard", TinyCNN())


@pytest.mark.parametrize("name", ALL)
def test_output_is_detached_image_of_same_shape_dtype_device(name, model, batch) -> None:
    x, y = batch
    x_adv = make(name, model)(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0  # it did perturb


@pytest.mark.parametrize("name", BOUNDED)
def test_perturbation_inside_eps_ball(name, model, batch) -> None:
    x, y = batch
    x_adv = make(name, model)(x, y)
    assert (x_adv - x).abs().max() <= EPS + 1e-6


@pytest.mark.parametrize("name", [a for a in ALL if rf.attacks.ATTACKS.get(a).norm == "L2"])
def test_perturbation_inside_l2_ball(name, model, batch) -> None:
    x, y = batch
    atk = make(name, model)
    x_adv = atk(x, y)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= atk.eps + 1e-5


@pytest.mark.parametrize("name", ALL)
def test_works_under_no_grad(name, model, batch) -> None:
    x, y = batch
    with torch.no_grad():
        x_adv = make(name, model)(x, y)
    assert torch.equal(x_adv, make(name, model)(x, y))


@pytest.mark.parametrize("name", ALL)
def test_parameter_grads_untouched(name, model, batch) -> None:
    x, y = batch
    make(name, model)(x, y)
    assert all(p.grad is None for p in model.parameters())
    # existing gradients are left exactly as they were
    F.cross_entropy(model(x), y).backward()
    before = [p.grad.clone() for p in model.parameters()]
    make(name, model)(x, y)
    assert all(torch.equal(b, p.grad) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bn_mode", ["eval", "train", "train_no_stats", "inherit"])
def test_mode_flags_restored_exactly(name, bn_mode, batch) -> None:
    x, y = batch
    m = TinyCNN(dropout=0.5)
    m.train()
    m.bn.eval()  # a mixed state: model.train() would not restore it
    flags = {n: mod.training for n, mod in m.named_modules()}
    make(name, m, bn_mode=bn_mode)(x, y)
    assert {n: mod.training for n, mod in m.named_modules()} == flags


@pytest.mark.parametrize("name", ALL)
def test_bn_running_stats_follow_the_policy(name, batch) -> None:
    x, y = batch
    m = TinyCNN().eval()
    stats0 = m.bn.running_mean.clone()
    make(name, m, bn_mode="eval")(x, y)
    assert torch.equal(m.bn.running_mean, stats0)
    make(name, m, bn_mode="train_no_stats")(x, y)
    assert torch.equal(m.bn.running_mean, stats0)
    make(name, m, bn_mode="train")(x, y)  # the seed papers' code: batch statistics, running stats updated
    assert not torch.equal(m.bn.running_mean, stats0)


def test_train_mode_uses_batch_statistics(batch) -> None:
    x, y = batch
    m = TinyCNN().eval()
    assert not torch.equal(FGSM(m, bn_mode="eval")(x, y), FGSM(m, bn_mode="train_no_stats")(x, y))


def test_dropout_active_only_when_asked(batch) -> None:
    x, y = batch
    m = TinyCNN(dropout=0.9).eval()
    a = FGSM(m, bn_mode="eval")
    assert torch.equal(a(x, y), a(x, y))  # deterministic: dropout off
    b = FGSM(m)
    b.set_model_training_mode(model_training=True, batchnorm_training=False, dropout_training=False)
    assert torch.equal(b(x, y), b(x, y))  # torchattacks semantics: train mode but BN/dropout frozen
    assert m.training is False


@pytest.mark.parametrize("name", ALL)
def test_seed_makes_random_start_reproducible(name, model, batch) -> None:
    x, y = batch
    if not make(name, model).randomized:
        pytest.skip(f"{name} uses no randomness by default")
    assert torch.equal(make(name, model)(x, y), make(name, model)(x, y))
    other = rf.create_attack(name, model, eps=EPS, seed=1)(x, y)
    assert not torch.equal(make(name, model)(x, y), other)


def test_seed_does_not_touch_global_rng(model, batch) -> None:
    x, y = batch
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    RS(model, seed=0)(x, y)
    assert torch.equal(torch.rand(3), expected)


def test_generator_argument(model, batch) -> None:
    x, y = batch
    a = RS(model, generator=torch.Generator().manual_seed(5))(x, y)
    b = RS(model, generator=torch.Generator().manual_seed(5))(x, y)
    assert torch.equal(a, b)


def test_fgsm_matches_hand_computation(smooth_model) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 0.8 + 0.1
    y = torch.tensor([0, 3, 5, 9])
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(smooth_model(xr), y).backward()
    expected = (x + EPS * xr.grad.sign()).clamp(0, 1)
    assert torch.equal(FGSM(smooth_model, eps=EPS)(x, y), expected)
    # with a smaller step (GradAlign's Table 1 "FGSM alpha=7/255")
    assert torch.allclose(FGSM(smooth_model, eps=EPS, alpha=7 / 255)(x, y), (x + 7 / 255 * xr.grad.sign()).clamp(0, 1))


def test_equivalences(model, batch) -> None:
    x, y = batch
    fgsm = FGSM(model)(x, y)
    assert torch.equal(fgsm, PGD(model, steps=1, alpha=EPS, random_start=False)(x, y))
    assert torch.equal(fgsm, NFGSM(model, noise=0.0, clip=EPS)(x, y))
    # ZeroGrad with q=0 zeroes nothing: it is FGSM-RS with the same random start
    assert torch.equal(ZeroGrad(model, q=0.0, alpha=1.25 * EPS, seed=3)(x, y), RS(model, seed=3)(x, y))


def test_pgd_raises_the_loss_over_fgsm_and_clean(batch) -> None:
    x, y = batch
    torch.manual_seed(0)
    m = SmoothCNN().eval()
    ce = lambda z: F.cross_entropy(m(z), y).item()  # noqa: E731
    clean, fgsm = ce(x), ce(FGSM(m)(x, y))
    pgd = ce(PGD(m, steps=10, random_start=False)(x, y))
    assert clean < fgsm < pgd


def test_pgd_restarts_keep_the_worst_case_per_example(batch) -> None:
    x, y = batch
    m = SmoothCNN().eval()
    one = PGD(m, steps=3, restarts=1, keep="loss", seed=0)
    many = PGD(m, steps=3, restarts=4, keep="loss", seed=0)
    per = lambda z: F.cross_entropy(m(z), y, reduction="none")  # noqa: E731
    l1, l4 = per(one(x, y)), per(many(x, y))
    assert (l4 >= l1 - 1e-6).all() and (l4 > l1 + 1e-6).any()


def test_pgd_early_stop_freezes_misclassified_examples(batch) -> None:
    x, y = batch
    m = SmoothCNN().eval()
    x_adv = PGD(m, steps=5, early_stop=True, random_start=False)(x, y)
    with torch.no_grad():
        wrong_clean = m(x).argmax(1) != y
    assert torch.equal(x_adv[wrong_clean], x[wrong_clean])


def _fixed_grad(x: torch.Tensor) -> torch.Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(7))


def test_zerograd_zeroes_the_intended_fraction(model, batch) -> None:
    x, y = batch
    x = x * 0.5 + 0.25  # keep away from the image box so no clamping interferes
    g = _fixed_grad(x)
    for q in (0.2, 0.35, 0.7):
        delta = rf.functional.zerograd(model, x, y, eps=EPS, q=q, generator=torch.Generator().manual_seed(0),
                                       grad_fn=lambda d: g)  # fmt: skip
        eta = uniform_start(x, EPS, torch.Generator().manual_seed(0))
        keep = zerograd_mask(g, q)
        assert abs(1 - keep.float().mean().item() - q) < 0.01
        # zeroed coordinates keep their random start (Algorithm 1 / code); kept ones end at ±eps
        assert torch.allclose(delta[~keep], eta[~keep], atol=1e-6)
        assert torch.allclose(delta[keep].abs(), torch.full_like(delta[keep], EPS), atol=1e-6)


def test_zerograd_perturbation_mode_sets_zeroed_coordinates_to_zero(model, batch) -> None:
    x, y = batch
    g = _fixed_grad(x)
    delta = rf.functional.zerograd(model, x, y, eps=EPS, q=0.5, zero_mode="perturbation", grad_fn=lambda d: g)
    assert (delta[~zerograd_mask(g, 0.5)] == 0).all()


@pytest.mark.parametrize("batched", [False, True])
def test_multigrad_values_are_minus_eps_zero_or_eps(model, batch, batched) -> None:
    x, y = batch
    x = x * 0.5 + 0.25
    d = MultiGrad(model, seed=0, batched=batched)(x, y) - x
    on_grid = torch.isclose(d.abs(), torch.tensor(EPS), atol=1e-6) | (d == 0)
    assert on_grid.all()
    assert (d == 0).any() and (d != 0).any()


def test_multigrad_agreement_threshold(model, batch) -> None:
    x, y = batch
    nz = lambda atk: ((atk(x, y) - x) != 0).float().mean().item()  # noqa: E731
    assert nz(MultiGrad(model, n_samples=3, agree=2, seed=0)) > nz(MultiGrad(model, n_samples=3, seed=0))


def test_nfgsm_exceeds_eps_by_design(model, batch) -> None:
    x, y = batch
    d = (NFGSM(model, seed=0)(x, y) - x).abs()
    assert d.max() > EPS * 1.5 and d.max() <= 3 * EPS + 1e-6
    assert (NFGSM(model, seed=0, clip=EPS)(x, y) - x).abs().max() <= EPS + 1e-6


def test_seat_attack_raises_the_margin(batch) -> None:
    x, y = batch
    m = SmoothCNN().eval()
    x_adv = SEATAttack(m, seed=0)(x, y)
    with torch.no_grad():
        assert margin_loss(m(x_adv), y).mean() > margin_loss(m(x), y).mean()
        corner = (x + EPS * torch.ones_like(x)).clamp(0, 1)
        assert margin_loss(m(x_adv), y).mean() > margin_loss(m(corner), y).mean()


def test_seat_attack_starts_from_a_corner_and_publishes_clean_quantities(model, batch) -> None:
    x, y = batch
    x = x * 0.5 + 0.25
    # with a zero gradient the step is empty: the perturbation is the random corner itself
    delta = rf.functional.seat_attack(lambda z: torch.zeros(len(z), 10, requires_grad=True) + 0 * z.sum(), x, y,
                                      eps=EPS, lam=0.0, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.allclose(delta.abs(), torch.full_like(x, EPS), atol=1e-6)
    ctx = SEATAttack(model, seed=0).craft(x, y)
    assert ctx.clean_grad is not None and ctx.clean_logits is not None


@pytest.mark.parametrize("name", ["fgsm", "pgd", "rs"])
def test_targeted_attack_moves_towards_target(name, batch) -> None:
    x, y = batch
    m = SmoothCNN().eval()
    target = (y + 1) % 10
    atk = make(name, m)
    atk.set_mode_targeted_by_label()
    ce_t = lambda z: F.cross_entropy(m(z), target).item()  # noqa: E731
    assert ce_t(atk(x, target)) < ce_t(x)
    assert atk.get_mode() == "by_label"


def test_targeted_random_and_least_likely(batch) -> None:
    x, y = batch
    m = SmoothCNN().eval()
    atk = PGD(m, seed=0)
    atk.set_mode_targeted_random()
    assert (atk._attack_labels(x, y) != y).all()
    atk.set_mode_targeted_least_likely()
    assert torch.equal(atk._attack_labels(x, y), m(x).argmin(1))
    atk.set_mode_targeted_by_function(lambda xx, yy: (yy + 2) % 10)
    assert torch.equal(atk._attack_labels(x, y), (y + 2) % 10)
    atk.set_mode_default()
    assert not atk.targeted


def test_custom_loss_fn_is_used(batch) -> None:
    x, y = batch
    m = SmoothCNN().eval()
    calls = []

    def loss_fn(logits, labels):
        calls.append(1)
        return margin_loss(logits, labels, on="logits")

    x_adv = PGD(m, loss_fn=loss_fn, steps=3, random_start=False)(x, y)
    assert len(calls) >= 3
    assert margin_loss(m(x_adv), y, on="logits").mean() > margin_loss(m(x), y, on="logits").mean()


def test_set_normalization_used_matches_normalize_inside_model(batch) -> None:
    x, y = batch
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    base = SmoothCNN().eval()
    inside = torch.nn.Sequential(rf.models.Normalize(mean, std), base)
    ref = FGSM(inside)(x, y)
    atk = FGSM(base)
    atk.set_normalization_used(mean, std)
    xn = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    out = atk(xn, y)  # torchattacks semantics: normalized in, normalized out
    assert torch.allclose(out * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1), ref, atol=1e-5)


def test_scaled_multiplies_eps_and_steps_temporarily(model, batch) -> None:
    atk = ZeroGrad(model, eps=EPS, alpha=2 * EPS)
    with atk.scaled(0.5):
        assert atk.eps == EPS / 2 and atk.alpha == EPS
    assert atk.eps == EPS and atk.alpha == 2 * EPS


def test_fgsm_publishes_clean_gradient_for_reuse(model, batch) -> None:
    x, y = batch
    ctx = FGSM(model).craft(x, y, requests={"clean_logits"})
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y, reduction="sum").backward()
    assert torch.allclose(ctx.clean_grad, xr.grad, atol=1e-6)
    assert ctx.clean_logits.requires_grad  # kept on the graph as requested
    # targeted or custom-loss attacks do not publish a CE gradient
    ctx2 = FGSM(model, loss_fn=lambda z, t: margin_loss(z, t)).craft(x, y)
    assert ctx2.clean_grad is None


def test_repr_shows_effective_hyperparameters(model) -> None:
    r = repr(ZeroGrad(model, eps=EPS, q=0.35))
    assert "ZeroGrad(eps=0.03137, alpha=0.06275, q=0.35" in r


# ---------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -0.1}, "must be >= 0"),
        ({"eps": 8}, "did you mean eps=8/255"),
        ({"eps": float("nan")}, "finite"),
        ({"alpha": -1.0}, "alpha"),
        ({"bn_mode": "training"}, "bn_mode"),
        ({"check_range": "maybe"}, "check_range"),
    ],
)
def test_bad_hyperparameters(model, kwargs, match) -> None:
    with pytest.raises(rf.RobustfastError, match=match):
        FGSM(model, **kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (ZeroGrad, {"q": 1.0}, r"\[0, 1\)"),
        (ZeroGrad, {"zero_mode": "x"}, "zero_mode"),
        (PGD, {"steps": 0}, "steps"),
        (PGD, {"restarts": 0}, "restarts"),
        (MultiGrad, {"n_samples": 0}, "n_samples"),
        (MultiGrad, {"n_samples": 3, "agree": 1}, "agree"),
        (SEATAttack, {"margin": "probs"}, "margin"),
        (NFGSM, {"noise": 3.0}, "noise"),
    ],
)
def test_bad_method_arguments(model, cls, kwargs, match) -> None:
    with pytest.raises(rf.RobustfastError, match=match):
        cls(model, **kwargs)


def test_bad_inputs(model, batch) -> None:
    x, y = batch
    atk = FGSM(model)
    with pytest.raises(rf.RobustfastError, match="labels must have shape"):
        atk(x, y[:-1])
    with pytest.raises(rf.RobustfastError, match="floating-point"):
        atk((x * 255).to(torch.uint8), y)
    with pytest.raises(rf.RobustfastError, match="integer class indices"):
        atk(x, y.float())
    with pytest.raises(rf.RobustfastError, match=r"\[0, 1\]"):
        atk(x * 255, y)
    with pytest.raises(rf.RobustfastError, match="batched"):
        atk(x[0, 0, 0], y[:1])
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        FGSM(model, check_range="warn")(x + 0.5, y)


def test_model_output_must_be_n_by_c(batch) -> None:
    x, y = batch
    with pytest.raises(rf.RobustfastError, match=r"logits of shape \(N, C\)"):
        FGSM(torch.nn.Conv2d(3, 4, 3))(x, y)
    with pytest.raises(rf.RobustfastError, match="logits"):
        FGSM(lambda z: (z.flatten(1), None))(x, y)


# ---------------------------------------------------------------------------- torchattacks parity
import torchattacks  # noqa: E402  (installed with --no-deps by scripts/ensure_env.sh)


def test_parity_with_torchattacks_fgsm(model, batch) -> None:
    x, y = batch
    assert torch.allclose(FGSM(model)(x, y), torchattacks.FGSM(model, eps=EPS)(x, y), atol=1e-6)


def test_parity_with_torchattacks_pgd_without_random_start(model, batch) -> None:
    x, y = batch
    ours = PGD(model, alpha=2 / 255, steps=10, random_start=False)(x, y)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=10, random_start=False)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("name", rf.list_attacks())
def test_every_attack_strengthens_to_its_cap_at_a_large_eps(model, batch, name) -> None:
    """At ε = 0.3 a noise or step size of k·ε exceeds 1 (N-FGSM's capped noise is 4ε = 1.2): a legitimate size."""
    atk = rf.create_attack(name, model, eps=0.3)
    changes = [atk.strengthen() for _ in range(atk.max_strength + 1)]
    assert changes[-1] is None  # the cap is reached without an error
    x, y = batch
    x_adv = atk(x, y)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all() and 0 <= x_adv.min() and x_adv.max() <= 1


def test_a_size_far_beyond_eps_is_still_read_as_a_0_255_value(model) -> None:
    assert NFGSM(model, 0.3, noise=1.2).noise == pytest.approx(1.2)  # 4ε
    with pytest.raises(rf.RobustfastError, match=r"did you mean noise=8/255"):
        NFGSM(model, 0.3, noise=8)
