"""Regularizers: exact formulas, protocol properties, shared-context equality, ViT double backprop, AMP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SmoothCNN, TinyCNN

import robustfast as rf
from robustfast import CURE, FGSM, RS, SEAT, AdvLC, GradAlign, GradNorm
from robustfast.modes import math_attention
from robustfast.modes import policy_matches as attack_mode_matches
from robustfast.regularizers.gradalign import grad_align_cos
from robustfast.training import adversarial_step

EPS = 8 / 255
NAMES = ["advlc", "cure", "gradalign", "gradnorm", "seat"]


def make(name: str, **kw) -> rf.Regularizer:
    if name == "gradalign":
        kw.setdefault("seed", 0)
    return rf.create_regularizer(name, **kw)


def fgsm_adv(model, x, y):
    return FGSM(model, eps=EPS)(x, y)


def per_sample_grads(model, x, y, create_graph=False):
    """Reference: each example's ∇x CE on its own (an independent, per-example loop)."""
    rows = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i : i + 1]), xi, create_graph=create_graph)
        rows.append(g)
    return torch.cat(rows)


# ---------------------------------------------------------------------------- registry and protocol
def test_registry_and_top_level_exports() -> None:
    assert set(NAMES) <= set(rf.list_regularizers())
    assert type(rf.create_regularizer("igr")) is GradNorm and type(rf.create_regularizer("seat-fl")) is SEAT
    for cls in (GradAlign, AdvLC, SEAT, CURE, GradNorm):
        assert isinstance(cls(), rf.Regularizer)


@pytest.mark.parametrize("name", NAMES)
def test_scalar_finite_and_reaches_the_weights(name, batch) -> None:
    x, y = batch
    model = TinyCNN().train()
    x_adv = fgsm_adv(model, x, y)
    value = make(name)(model, x, y, x_adv)
    assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    assert all(p.grad is None for p in model.parameters())  # the call itself writes no .grad
    value.backward()
    # torchdefenses' GradAlign builds its penalty from detached gradients and sends nothing to the weights
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_linear_in_lam(name, batch) -> None:
    x, y = batch
    model = TinyCNN().eval()
    x_adv = fgsm_adv(model, x, y)
    one = make(name, lam=1.0)(model, x, y, x_adv)
    three = make(name, lam=3.0)(model, x, y, x_adv)
    zero = make(name, lam=0.0)(model, x, y, x_adv)
    assert torch.allclose(three, 3 * one, rtol=1e-5) and zero.item() == 0.0


@pytest.mark.parametrize(("name", "kw"), [("advlc", {}), ("seat", {}), ("cure", {}), ("gradalign", {"eps": 0.0})])
def test_zero_at_trivial_point(name, kw, batch) -> None:
    x, y = batch
    model = TinyCNN().eval()
    x_adv = x.clone() if name != "gradalign" else fgsm_adv(model, x, y)  # GradAlign: η = 0 (eps=0)
    assert make(name, **kw)(model, x, y, x_adv).abs().item() < 1e-7


def test_gradnorm_zero_for_input_independent_model(batch) -> None:
    x, y = batch
    model = SmoothCNN()
    with torch.no_grad():
        model.conv.weight.zero_()
    assert GradNorm(lam=1.0)(model, x, y).item() == 0.0


# ---------------------------------------------------------------------------- exact formulas (float64)
@pytest.fixture
def dbatch(batch):
    x, y = batch
    return x.double(), y


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradalign_matches_reference(symmetric, smooth_model, dbatch) -> None:
    x, y = dbatch
    m = smooth_model
    ours = GradAlign(eps=EPS, lam=0.7, seed=3, symmetric=symmetric)(m, x, y)
    gen = torch.Generator().manual_seed(3)
    eta = (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype) - 1) * EPS  # x + η not clamped
    g1 = per_sample_grads(m, x, y, create_graph=symmetric)
    g1 = g1 if symmetric else g1.detach()
    g2 = per_sample_grads(m, x + eta, y, create_graph=True)
    ref = 0.7 * (1 - F.cosine_similarity(g1.flatten(1), g2.flatten(1), dim=1).mean())
    assert abs(ours.item() - ref.item()) < 1e-6
    # same parameter gradient: only g2 is differentiated unless symmetric
    p_ours = torch.autograd.grad(ours, m.conv.weight)[0]
    p_ref = torch.autograd.grad(ref, m.conv.weight)[0]
    assert torch.allclose(p_ours, p_ref, atol=1e-6)


def test_gradalign_skips_zero_gradient_rows() -> None:
    g1, g2 = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    g1[1] = 0
    cos = F.cosine_similarity(g1.flatten(1), g2.flatten(1), dim=1)
    assert torch.allclose(grad_align_cos(g1, g2), 1 - cos[[0, 2, 3]].mean())
    assert grad_align_cos(torch.zeros_like(g1), g2).item() == 0.0


def test_gradalign_clamp_eta_keeps_point_in_image(smooth_model, dbatch) -> None:
    x, y = dbatch
    a = GradAlign(eps=EPS, seed=1, clamp_eta=True)(smooth_model, x, y)
    b = GradAlign(eps=EPS, seed=1)(smooth_model, x, y)
    assert torch.isfinite(a) and a.item() != b.item()  # some of x + η left [0, 1] and was clamped


def test_gradalign_paper_lambda_table() -> None:
    c10 = [0.03, 0.04, 0.05, 0.06, 0.08, 0.11, 0.15, 0.20, 0.27, 0.36, 0.47, 0.63, 0.84, 1.12, 1.50, 2.00]
    svhn = [1.66, 1.76, 1.86, 1.98, 2.10, 2.22, 2.36, 2.50, 2.65, 2.81, 2.98, 3.16, 3.35, 3.56, 3.77, 4.00]
    for e, (lc, ls) in enumerate(zip(c10, svhn), start=1):
        assert round(GradAlign.paper_lambda(e / 255), 2) == pytest.approx(lc, abs=0.011)
        assert round(GradAlign.paper_lambda(e / 255, "svhn"), 2) == pytest.approx(ls, abs=1e-9)
    assert GradAlign.paper_lambda(8 / 255) == pytest.approx(0.2)
    assert GradAlign.paper_lambda(12 / 255, dataset="svhn") == pytest.approx(3.1623, abs=1e-4)


@pytest.mark.parametrize(("top_frac", "top_n"), [(0.1, None), (0.25, None), (0.1, 7), (0.1, 10_000)])
def test_advlc_matches_reference(top_frac, top_n, smooth_model, dbatch) -> None:
    x, y = dbatch
    m = smooth_model
    x_adv = fgsm_adv(m, x, y)
    ours = AdvLC(lam=0.55, top_frac=top_frac, top_n=top_n)(m, x, y, x_adv)
    o = (m(x_adv) - m(x)).abs().flatten().sort(descending=True).values
    k = min(top_n, o.numel()) if top_n else round(top_frac * o.numel())
    ref = 0.55 * o[:k].sum() / x.shape[0]
    assert abs(ours.item() - ref.item()) < 1e-6
    assert torch.allclose(torch.autograd.grad(ours, m.fc.weight)[0], torch.autograd.grad(ref, m.fc.weight)[0])


@pytest.mark.parametrize("reduction", ["per_sample", "batch"])
def test_seat_matches_reference(reduction, smooth_model, dbatch) -> None:
    x, y = dbatch
    m = smooth_model
    x_adv = fgsm_adv(m, x, y)
    ours = SEAT(lam=0.6, reduction=reduction)(m, x, y, x_adv)
    g = per_sample_grads(m, x, y).detach()
    err = (
        F.cross_entropy(m(x_adv), y, reduction="none")
        - F.cross_entropy(m(x), y, reduction="none")
        - ((x_adv - x) * g).flatten(1).sum(1)
    )
    ref = 0.6 * (err.abs().mean() if reduction == "per_sample" else err.mean().abs())
    assert abs(ours.item() - ref.item()) < 1e-6
    assert torch.allclose(torch.autograd.grad(ours, m.fc.weight)[0], torch.autograd.grad(ref, m.fc.weight)[0])


def test_seat_can_hold_the_clean_loss_constant(smooth_model, dbatch) -> None:
    # detach_clean: the same value, but the parameter gradient has no -lam * grad l(x) term (which rewards a larger
    # clean loss); float64 reference of both gradients
    x, y = dbatch
    m = smooth_model
    x_adv = fgsm_adv(m, x, y)
    g = per_sample_grads(m, x, y).detach()
    lin = ((x_adv - x) * g).flatten(1).sum(1)
    ce_adv, ce_clean = F.cross_entropy(m(x_adv), y, reduction="none"), F.cross_entropy(m(x), y, reduction="none")
    ref = 0.6 * (ce_adv - ce_clean.detach() - lin).abs().mean()
    full = 0.6 * (ce_adv - ce_clean - lin).abs().mean()
    ours = SEAT(lam=0.6, detach_clean=True)(m, x, y, x_adv)
    assert abs(ours.item() - ref.item()) < 1e-9 and abs(ours.item() - full.item()) < 1e-9
    w = m.fc.weight
    g_ours, g_ref, g_full = (torch.autograd.grad(v, w, retain_graph=True)[0] for v in (ours, ref, full))
    assert torch.allclose(g_ours, g_ref) and not torch.allclose(g_ours, g_full)
    with pytest.raises(rf.RobustfastError, match="detach_clean"):
        SEAT(detach_clean="yes")


def test_seat_flooding_is_an_additive_correction(smooth_model, dbatch) -> None:
    x, y = dbatch
    m = smooth_model
    x_adv = fgsm_adv(m, x, y)
    ce = F.cross_entropy(m(x_adv), y)
    for b in (0.0, ce.item() / 2, ce.item() + 1.0):  # below (no-op) and above the training loss
        flooded = ce + SEAT(lam=0.6, flood=b)(m, x, y, x_adv)
        ref = (ce - b).abs() + b + SEAT(lam=0.6)(m, x, y, x_adv)
        assert abs(flooded.item() - ref.item()) < 1e-9


@pytest.mark.parametrize("neighbour", ["x_adv", "sign"])
def test_cure_matches_reference(neighbour, smooth_model, dbatch) -> None:
    x, y = dbatch
    m = smooth_model
    x_adv = fgsm_adv(m, x, y)
    ours = CURE(lam=2.0, neighbour=neighbour, h=4 / 255)(m, x, y, x_adv)
    g = per_sample_grads(m, x, y, create_graph=True)
    near = x_adv if neighbour == "x_adv" else x + 4 / 255 * g.detach().sign()
    ref = 2.0 * (per_sample_grads(m, near, y, create_graph=True) - g).flatten(1).pow(2).sum(1).mean()
    assert abs(ours.item() - ref.item()) < 1e-6
    p_ours, p_ref = (torch.autograd.grad(v, m.conv.weight)[0] for v in (ours, ref))
    assert torch.allclose(p_ours, p_ref, atol=1e-6)


def test_gradnorm_matches_reference_in_both_scales(smooth_model, dbatch) -> None:
    x, y = dbatch
    m = smooth_model
    ours = GradNorm(lam=5.0)(m, x, y)
    ref = 5.0 * per_sample_grads(m, x, y, create_graph=True).flatten(1).pow(2).sum(1).mean()
    assert abs(ours.item() - ref.item()) < 1e-6
    # "batch_mean": rows of the gradient of the batch-mean CE (the papers' code convention)
    xr = x.clone().requires_grad_(True)
    (gm,) = torch.autograd.grad(F.cross_entropy(m(xr), y), xr, create_graph=True)
    ref_mean = 5.0 * gm.flatten(1).pow(2).sum(1).mean()
    assert abs(GradNorm(lam=5.0, grad_scale="batch_mean")(m, x, y).item() - ref_mean.item()) < 1e-9
    ref_cure = 5.0 * (0 * gm).flatten(1).pow(2).sum(1).mean()
    assert CURE(lam=5.0, grad_scale="batch_mean")(m, x, y, x).item() == pytest.approx(ref_cure.item())


# ---------------------------------------------------------------------------- standalone == shared context
ATTACKS = {
    "fgsm": lambda m, mode: FGSM(m, eps=EPS, bn_mode=mode),
    "rs": lambda m, mode: RS(m, eps=EPS, bn_mode=mode, seed=0),
    "seat": lambda m, mode: rf.SEATAttack(m, eps=EPS, bn_mode=mode, seed=0),
}
VARIANTS = {
    "gradalign": lambda: GradAlign(eps=EPS, seed=0),
    "gradalign_sym": lambda: GradAlign(eps=EPS, seed=0, symmetric=True),
    "advlc": lambda: AdvLC(),
    "seat": lambda: SEAT(),
    "seat_fl": lambda: SEAT(flood=5.0),
    "cure": lambda: CURE(lam=1.0),
    "cure_sign": lambda: CURE(lam=1.0, neighbour="sign"),
    "gradnorm": lambda: GradNorm(lam=1.0),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("reg", sorted(VARIANTS))
@pytest.mark.parametrize("attack_mode", ["train", "eval"])
def test_shared_context_equals_standalone(attack, reg, attack_mode, batch) -> None:
    x, y = batch

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return TinyCNN().train()  # BatchNorm in batch-statistics mode, as in training

    m1 = fresh()
    out = adversarial_step(m1, ATTACKS[attack](m1, attack_mode), [VARIANTS[reg]()], x, y)
    out.loss.backward()
    m2 = fresh()
    x_adv = ATTACKS[attack](m2, attack_mode)(x, y)
    r = VARIANTS[reg]()
    value = r(m2, x, y, x_adv)
    (F.cross_entropy(m2(x_adv), y) + value).backward()
    assert torch.allclose(out.penalties[r.name], value.detach(), rtol=1e-5, atol=1e-7)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p1.grad, p2.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attack", ["fgsm", "rs"])
def test_several_regularizers_share_one_context(attack, batch) -> None:
    x, y = batch
    factories = [VARIANTS["gradalign"], VARIANTS["advlc"], VARIANTS["seat"], VARIANTS["gradnorm"]]
    torch.manual_seed(0)
    m = TinyCNN().train()
    out = adversarial_step(m, ATTACKS[attack](m, "train"), [f() for f in factories], x, y)
    x_adv = out.context.x_adv
    for f in factories:
        r = f()
        assert torch.allclose(out.penalties[r.name], r(m, x, y, x_adv).detach(), rtol=1e-5, atol=1e-7)


def test_attack_mode_matches() -> None:
    m = TinyCNN().train()
    assert attack_mode_matches(m, "train") and attack_mode_matches(m, "inherit") and attack_mode_matches(m, None)
    assert not attack_mode_matches(m, "eval") and not attack_mode_matches(m, "ModePolicy(...)")
    m.eval()
    assert attack_mode_matches(m, "eval") and not attack_mode_matches(m, "train")
    assert attack_mode_matches(SmoothCNN().train(), "eval")  # no BatchNorm/dropout: modes are irrelevant


def test_context_reuse_of_fgsm_gradient(batch) -> None:
    x, y = batch
    m = TinyCNN().train()
    ctx = FGSM(m, bn_mode="train").craft(x, y)
    g = ctx.clean_grad
    GradAlign(seed=0)(m, x, y, context=ctx)
    assert ctx.clean_grad is g  # FGSM's gradient was used as g1, not recomputed


# ---------------------------------------------------------------------------- GradAlign, finite differences
def _param_grad(value, model):
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, list(model.parameters()))])


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradalign_fd_matches_exact_on_a_smooth_model(symmetric, smooth_model, dbatch) -> None:
    """Same value; the parameter gradient agrees with double backprop to O(fd_step) on a smooth model."""
    x, y = dbatch
    m = smooth_model
    kw = {"eps": EPS, "lam": 0.7, "seed": 3, "symmetric": symmetric}
    exact = GradAlign(**kw)(m, x, y)
    fd = GradAlign(**kw, estimator="fd", fd_step=1e-6)(m, x, y)
    assert abs(fd.item() - exact.item()) < 1e-12
    ge, gf = _param_grad(exact, m), _param_grad(fd, m)
    assert (gf - ge).norm() / ge.norm() < 1e-4


class _BNDropNet(torch.nn.Module):
    """Smooth CNN with BatchNorm and dropout: batch coupling, running statistics and random masks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6)
        self.drop, self.fc = torch.nn.Dropout(0.3), torch.nn.Linear(6 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(F.softplus(self.bn(self.conv(x)))).flatten(1))


def test_gradalign_fd_with_batchnorm_and_dropout_in_train_mode(dbatch) -> None:
    """The shifted forward replays the dropout masks and leaves the running statistics as one forward left
    them: gradient, running statistics and the RNG stream all match the exact estimator's."""
    x, y = dbatch
    results = {}
    for est in ("exact", "fd"):
        torch.manual_seed(0)
        m = _BNDropNet().double().train()
        torch.manual_seed(1)
        value = GradAlign(eps=EPS, seed=3, estimator=est, fd_step=1e-6)(m, x, y)
        results[est] = (_param_grad(value, m), m.bn.running_mean.clone(), m.bn.num_batches_tracked.item(),
                        torch.rand(1).item())  # fmt: skip
    (ge, me, ne, re), (gf, mf, nf, rf_) = results["exact"], results["fd"]
    # one step along the whole batch's direction: batch-statistics coupling included, exact to O(fd_step)
    assert (gf - ge).norm() / ge.norm() < 1e-4
    assert torch.equal(me, mf) and ne == nf == 2  # the clean pass and the x + η pass, not the shifted one
    assert re == rf_


class _NoDoubleBackward(torch.autograd.Function):
    """softplus whose backward is not differentiable (like a fused kernel without a double-backward)."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return F.softplus(t)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled() and grad.requires_grad:
            raise RuntimeError("derivative of this backward is not implemented")
        (t,) = ctx.saved_tensors
        return grad * torch.sigmoid(t)


class _FusedNet(SmoothCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_NoDoubleBackward.apply(self.conv(x)).flatten(1))


def test_gradalign_fd_needs_no_double_backward(batch) -> None:
    x, y = batch
    torch.manual_seed(0)
    m = _FusedNet()
    assert GradAlign(estimator="exact").needs_double_backward
    assert not GradAlign(estimator="fd").needs_double_backward  # fused attention stays on, compile allowed
    with pytest.raises(RuntimeError, match="derivative of this backward is not implemented"):
        torch.autograd.grad(GradAlign(eps=EPS, seed=0)(m, x, y), m.conv.weight)
    out = adversarial_step(m, FGSM(m, eps=EPS), [GradAlign(eps=EPS, seed=0, estimator="fd")], x, y)
    out.loss.backward()
    assert m.conv.weight.grad.abs().sum() > 0 and torch.isfinite(m.conv.weight.grad).all()


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: GradAlign(lam=-1), "lam must be"),
        (lambda: GradAlign(lam=float("nan")), "lam must be"),
        (lambda: GradAlign(eps=8), "did you mean eps=8/255"),
        (lambda: GradAlign.paper_lambda(8 / 255, dataset="cifar100"), "dataset"),
        (lambda: GradAlign(estimator="forward"), "estimator"),
        (lambda: GradAlign(estimator="fd", fd_step=0.0), "fd_step"),
        (lambda: GradAlign(estimator="fd", fd_step=float("inf")), "fd_step"),
        (lambda: GradAlign.paper_lambda(8), "eps=8/255"),
        (lambda: AdvLC(top_frac=0), "top_frac"),
        (lambda: AdvLC(top_n=0), "top_n"),
        (lambda: SEAT(reduction="mean"), "reduction"),
        (lambda: SEAT(flood=-0.1), "flood"),
        (lambda: CURE(neighbour="random"), "neighbour"),
        (lambda: CURE(h=2.0), "h"),
        (lambda: GradNorm(grad_scale="sum"), "grad_scale"),
    ],
)
def test_bad_arguments(build, match) -> None:
    with pytest.raises(rf.RobustfastError, match=match):
        build()


def test_bad_inputs(model, batch) -> None:
    x, y = batch
    with pytest.raises(rf.RobustfastError, match="needs x_adv"):
        AdvLC()(model, x, y)
    with pytest.raises(rf.RobustfastError, match="x_adv must have the shape"):
        SEAT()(model, x, y, x[:2])
    with pytest.raises(rf.RobustfastError, match="integer class indices"):
        GradNorm()(model, x, y.float())


# ---------------------------------------------------------------------------- ViT double backprop
@pytest.fixture(scope="module")
def vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=8,
        depth=1,
        embed_dim=48,
        num_heads=2,
        num_classes=10,
    ).train()


def _fused_flags(model) -> list[bool]:
    return [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]


@pytest.mark.parametrize("name", ["gradalign", "cure", "gradnorm"])
def test_double_backprop_through_timm_vit(name, vit) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
    assert _fused_flags(vit) == [True]  # the fused kernel, whose backward is not differentiable on CPU
    reg = make(name)
    out = adversarial_step(vit, FGSM(vit, bn_mode="train"), [reg], x, y)
    out.loss.backward()
    x_adv = out.context.x_adv
    (F.cross_entropy(vit(x_adv), y) + reg(vit, x, y, x_adv)).backward()  # standalone too
    assert _fused_flags(vit) == [True]  # restored
    assert all(torch.isfinite(p.grad).all() for p in vit.parameters() if p.grad is not None)
    vit.zero_grad()


class _MHANet(torch.nn.Module):
    """Patches -> nn.MultiheadAttention (SDPA fast path) -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(12, 2, batch_first=True)
        self.fc = torch.nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # (N, 16, 12)
        return self.fc(self.attn(t, t, t, need_weights=False)[0].mean(1))


def test_double_backprop_through_sdpa_outside_timm(batch) -> None:
    x, y = batch
    torch.manual_seed(0)
    m = _MHANet()
    GradNorm()(m, x, y).backward()  # SDPA's fused CPU kernel has no double backward; the math backend does
    assert m.attn.in_proj_weight.grad.abs().sum() > 0


def test_math_attention_restores_flags_on_error(vit) -> None:
    with pytest.raises(RuntimeError, match="boom"), math_attention(vit):
        assert _fused_flags(vit) == [False]
        raise RuntimeError("boom")
    assert _fused_flags(vit) == [True]


# ---------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_finite(name, batch) -> None:
    x, y = batch
    torch.manual_seed(0)
    m = TinyCNN().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = adversarial_step(m, FGSM(m, bn_mode="train"), [make(name)], x, y)
    assert torch.isfinite(out.loss) and math.isfinite(out.penalties[name].item())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_gradalign_fd_bf16_autocast_finite(batch) -> None:
    x, y = batch
    torch.manual_seed(0)
    m = TinyCNN().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = adversarial_step(m, FGSM(m, bn_mode="train"), [GradAlign(seed=0, estimator="fd")], x, y)
    out.loss.backward()
    assert math.isfinite(out.penalties["gradalign"].item())
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_fp16_autocast_with_grad_scaler_trains(name, batch) -> None:
    """fp16 + GradScaler: double-backprop penalties may overflow at the initial scale 2**16 (the scaler then
    skips the step and backs off, as designed); within a few steps the scaler steps with finite weights."""
    x, y = batch
    torch.manual_seed(0)
    m = TinyCNN().train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    stepped = False
    for _ in range(12):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = adversarial_step(m, FGSM(m, bn_mode="train"), [make(name)], x, y)
        assert torch.isfinite(out.loss) and math.isfinite(out.penalties[name].item())
        scale = scaler.get_scale()
        scaler.scale(out.loss).backward()
        scaler.step(opt)
        scaler.update()
        if scaler.get_scale() >= scale:  # no overflow: the step was taken
            stepped = True
            break
    assert stepped
    assert all(torch.isfinite(p).all() for p in m.parameters())
