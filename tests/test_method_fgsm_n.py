"""FGSM-N (``robustfast.attacks.fgsm_n``): the official step in float64, the equivalence with N-FGSM at noise ε, the
published noisy "clean" point, AdvLC's FGSM-N rows through the AdvLC change this method needs (written here as a
subclass, since AdvLC is core code), pass counts, the shared method checks and the presets."""

from __future__ import annotations

from pathlib import Path

import methodcheck as mc
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN
from counting import PassCounter

import robustfast as rf
from robustfast import FGSMN
from robustfast.config import RunConfig, load_preset
from robustfast.training import adversarial_step

EPS = 0.1


NoisyCleanAdvLC = rf.AdvLC  # AdvLC honours FGSM-N's published clean point (the official FGSM-N rows)


def _batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def _official(model, x, y, eps, alpha, seed):
    """``src/utils/train.py`` (intended step): noise, one forward at x̃, one step projected around x̃."""
    u = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype) - 1) * eps
    cle = (x + u).clamp(0, 1).requires_grad_(True)
    lgt_cle = model(cle)
    (ig,) = torch.autograd.grad(F.cross_entropy(lgt_cle, y), cle, retain_graph=True)
    adv = (cle + (alpha * ig.sign()).clamp(-eps, eps)).clamp(0, 1).detach()
    return cle.detach(), lgt_cle, adv


def test_matches_the_official_step_in_float64(smooth_model) -> None:
    x, y = _batch()
    cle, _, adv = _official(smooth_model, x, y, EPS, EPS, seed=0)
    ctx = FGSMN(smooth_model, EPS, seed=0).craft(x, y)
    torch.testing.assert_close(ctx.x_adv, adv, atol=1e-12, rtol=0)
    torch.testing.assert_close(ctx.extras["clean_point"], cle, atol=1e-12, rtol=0)
    assert "clean_point_logits" not in ctx.extras  # nobody asked for them
    assert (ctx.x_adv - x).abs().max() > EPS + 1e-3 and (ctx.x_adv - x).abs().max() <= 2 * EPS + 1e-12
    # a larger step is projected around x̃: the same as alpha = eps
    assert torch.equal(FGSMN(smooth_model, EPS, alpha=1.5 * EPS, seed=0)(x, y), ctx.x_adv)
    # with alpha <= eps, FGSM-N is N-FGSM with noise eps (same random draw)
    assert torch.equal(rf.NFGSM(smooth_model, EPS, noise=EPS, alpha=EPS, seed=0)(x, y), ctx.x_adv)
    d = rf.functional.fgsm_n(smooth_model, x, y, eps=EPS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x + d, ctx.x_adv)


def test_advlc_fgsm_n_rows_through_the_clean_point(smooth_model) -> None:
    """Loss and weight gradient of the official FGSM-N + AdvLC step (λ = 0.55), in float64."""
    x, y = _batch(10)
    _, lgt_cle, adv = _official(smooth_model, x, y, EPS, EPS, seed=0)
    lgt_adv = smooth_model(adv)
    diff = (lgt_cle - lgt_adv).abs().view(-1)
    ref = F.cross_entropy(lgt_adv, y) + 0.55 * diff.topk(int(diff.numel() * 0.1)).values.sum() / len(x)
    ref_grads = torch.autograd.grad(ref, list(smooth_model.parameters()))
    out = adversarial_step(smooth_model, FGSMN(smooth_model, EPS, seed=0), [NoisyCleanAdvLC(lam=0.55)], x, y)
    torch.testing.assert_close(out.loss, ref, atol=1e-12, rtol=0)
    grads = torch.autograd.grad(out.loss, list(smooth_model.parameters()))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # comparing with the clean x instead (what AdvLC does after attacks without a clean point) differs
    ctx = FGSMN(smooth_model, EPS, seed=0).craft(x, y)
    ctx.extras.pop("clean_point")
    plain = rf.AdvLC(lam=0.55)(smooth_model, x, y, ctx.x_adv)
    assert not torch.allclose(F.cross_entropy(lgt_adv, y) + plain, ref)


def _counts(regs) -> tuple[int, int, int]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = PassCounter(TinyCNN()).train()
    out = adversarial_step(model, FGSMN(model, 8 / 255, seed=0, bn_mode="train"), regs, x, y)
    out.loss.backward()
    return model.counts()


def test_pass_counts() -> None:
    assert _counts([]) == (2, 2, 0)  # as FGSM-RS
    # the official cost: AdvLC reuses the attack's forward at x̃; the final backward runs through both forwards
    assert _counts([NoisyCleanAdvLC()]) == (2, 3, 0)
    # after an attack that publishes no clean point, AdvLC compares with x: one more forward there
    model = PassCounter(TinyCNN()).train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    adversarial_step(model, rf.RS(model, 8 / 255, seed=0, bn_mode="train"), [rf.AdvLC()], x, y).loss.backward()
    assert model.counts() == (3, 3, 0)


def fgsmn_spec(model):
    return {"attack": FGSMN(model, EPS, seed=0)}


def fgsmn_advlc_spec(model):
    return {"attack": FGSMN(model, EPS, seed=0), "regularizers": [NoisyCleanAdvLC(lam=0.55)]}


def test_gains_robustness() -> None:
    out = mc.check_gains_robustness(fgsmn_spec)
    print("fgsm_n digits:", out)


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    mc.check_resume_bit_identical(fgsmn_advlc_spec, tmp_path)


def test_rollback_widens_the_noise() -> None:
    tr = mc.check_rollback(fgsmn_advlc_spec)
    assert tr.attack.noise == pytest.approx(1.5 * EPS) and tr.regularizers[0].lam == pytest.approx(1.1)


def test_bf16() -> None:
    mc.check_bf16(fgsmn_advlc_spec)


def test_strengthening_stops_at_twice_eps(model) -> None:
    atk = FGSMN(model, EPS)
    assert [atk.strengthen() for _ in range(3)] == ["noise 0.1 -> 0.15", "noise 0.15 -> 0.2", None]


def test_argument_validation(model) -> None:
    with pytest.raises(rf.RobustfastError, match="8/255"):
        FGSMN(model, alpha=8)
    with pytest.raises(rf.RobustfastError, match="noise"):
        FGSMN(model, noise=-0.1)
    assert not FGSMN.bounded and type(rf.create_attack("fgsmn", model)) is FGSMN


def test_presets_load() -> None:
    base = RunConfig.from_dict(load_preset("fgsm-n-cifar10"))
    assert base.attack == {"name": "fgsm_n"} and base.batch_size == 100 and base.weight_decay == 1e-4
    assert base.epochs == 200 and base.milestones == [100, 150] and not base.regularizers
    advlc = RunConfig.from_dict(load_preset("fgsm-n-advlc-cifar10"))
    assert advlc.regularizers == [{"name": "advlc", "lam": 0.55}] and advlc.attack == {"name": "fgsm_n"}
