"""FGSM-PGI (``robustfast.methods.fgsm_pgi``, the released MEP variant): a float64 hand-written copy of the official
loop (memory arrays permuted with the data every epoch) against the index-keyed attack and loss, the soft labels,
the loss after another attack, pass counts, the reset, DDP memory sync, the shared method checks and the preset."""

from __future__ import annotations

import warnings
from pathlib import Path

import methodcheck as mc
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import SmoothCNN, TinyCNN
from counting import PassCounter
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import robustfast as rf
from robustfast.config import RunConfig, load_preset
from robustfast.data import IndexedDataset
from robustfast.methods.fgsm_pgi import FGSMPGI, PGILoss, pgi_smoothed_ce
from robustfast.training import AdversarialTrainer, adversarial_step

EPS = 0.1


def _soft_ce_official(z: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
    """``LabelSmoothLoss(z, _label_smoothing(y, factor))``: batch mean of Σ_c −t_c log softmax(z)_c."""
    one_hot = torch.eye(z.shape[1], dtype=z.dtype)[y]
    t = one_hot * factor + (one_hot - 1.0) * ((factor - 1) / float(z.shape[1] - 1))
    return (-t * F.log_softmax(z, dim=-1)).sum(dim=-1).mean()


def test_soft_labels_put_factor_on_the_true_class() -> None:
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randint(0, 10, (6,), generator=g)
    torch.testing.assert_close(pgi_smoothed_ce(z, y, 0.6).mean(), _soft_ce_official(z, y, 0.6), atol=1e-12, rtol=0)
    # = PyTorch's label smoothing 0.4·C/(C−1), not 0.4 (FastAT_Benchmark's choice)
    torch.testing.assert_close(pgi_smoothed_ce(z, y, 0.6), F.cross_entropy(z, y, reduction="none",
                               label_smoothing=0.4 * 10 / 9), atol=1e-12, rtol=0)  # fmt: skip
    torch.testing.assert_close(pgi_smoothed_ce(z, y, 1.0), F.cross_entropy(z, y, reduction="none"))


def _official_mep(model, x_all, y_all, epochs, bs, eps, lam, factor, decay, reset, seed):
    """``FGSM_MEP.py`` in float64 (no augmentation, no normalization, α = ε): returns the ids, prior and momentum
    arrays in the official (permuted) order, the batches' example ids and the corners drawn at each reset."""
    n = x_all.shape[0]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ids = torch.arange(n)
    plan, corners = [], {}
    for epoch in range(epochs):
        if epoch % reset == 0:
            u = torch.rand(x_all.shape, generator=g, dtype=torch.float64) * 2 * eps - eps
            big_d = (eps * torch.sign(u)).clamp(-eps, eps)
            big_m = torch.zeros_like(big_d)
            corners[epoch] = (ids.clone(), big_d.clone())
        p = torch.randperm(n, generator=g)
        x_all, y_all, big_d, big_m, ids = x_all[p], y_all[p], big_d[p], big_m[p], ids[p]
        order = torch.randperm(n, generator=g)
        for start in range(0, n, bs):
            sel = order[start : start + bs]
            x, y, d0, m0 = x_all[sel], y_all[sel], big_d[sel].clone(), big_m[sel]
            plan.append((epoch, ids[sel].clone()))
            d0.requires_grad_(True)
            z0 = model(x + d0)
            (g0,) = torch.autograd.grad(_soft_ce_official(z0, y, factor), d0, retain_graph=True)
            m1 = g0 / torch.norm(g0, p=1) + m0 * decay
            d1 = torch.max(torch.min((d0 + eps * m1.sign()).clamp(-eps, eps), 1 - x), -x)
            delta = torch.max(torch.min((d0 + eps * g0.sign()).clamp(-eps, eps), 1 - x), -x).detach()
            z = model(x + delta)
            loss = _soft_ce_official(z, y, factor) + lam * F.mse_loss(z, z0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            big_m[sel], big_d[sel] = m1, d1.detach()
    return ids, big_d, big_m, plan, corners


def test_index_keyed_memory_reproduces_the_official_permuted_arrays_in_float64() -> None:
    """3 epochs (reset every 2), 12 examples in batches of 5, 5, 2: weights and memory equal the official loop's."""
    gen = torch.Generator().manual_seed(0)
    x_all = torch.rand(12, 3, 8, 8, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    y_all = torch.randint(0, 10, (12,), generator=gen)
    torch.manual_seed(0)
    ref, ours = SmoothCNN().double(), SmoothCNN().double()
    ours.load_state_dict(ref.state_dict())
    ids, big_d, big_m, plan, corners = _official_mep(ref, x_all, y_all, 3, 5, EPS, 10.0, 0.6, 0.3, 2, seed=3)

    atk = FGSMPGI(ours, EPS, reset_every=2)
    crit = PGILoss(lam=10.0, factor=0.6)
    opt = torch.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9)
    current = -1
    for epoch, idx in plan:
        if epoch != current:
            current = epoch
            atk.on_epoch_start(epoch)
            if epoch in corners:  # the official corners, drawn for the whole data set at the reset
                cid, cd = corners[epoch]
                atk.prior.set(cid, cd)
                atk.momentum.set(cid, torch.zeros_like(cd))
        out = adversarial_step(ours, atk, [], x_all[idx], y_all[idx], criterion=crit, index=idx)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    for a, b in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    torch.testing.assert_close(atk.prior.get(ids, big_d)[0], big_d, atol=1e-12, rtol=0)
    torch.testing.assert_close(atk.momentum.get(ids, big_m)[0], big_m, atol=1e-12, rtol=0)


def test_the_loss_after_another_attack_uses_the_clean_point(smooth_model) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (6,), generator=g)
    out = adversarial_step(smooth_model, rf.FGSM(smooth_model, EPS), [], x, y, criterion=PGILoss())
    z, z0 = smooth_model(out.context.x_adv), smooth_model(x)
    expected = _soft_ce_official(z, y, 0.6) + 10 * F.mse_loss(z, z0)
    torch.testing.assert_close(out.loss, expected, atol=1e-12, rtol=0)


def _counts(attack: str, criterion, **kw) -> tuple[int, int, int]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = PassCounter(TinyCNN()).train()
    atk = rf.create_attack(attack, model, eps=8 / 255, seed=0, **{"bn_mode": "train", **kw})
    out = adversarial_step(model, atk, [], x, y, criterion=criterion, index=torch.arange(8))
    out.loss.backward()
    return model.counts()


def test_pass_counts() -> None:
    # attack F+B at the prior; training forward; the final backward runs through both forwards (official 2F + 3B)
    assert _counts("fgsm_pgi", PGILoss()) == (2, 3, 0)
    assert _counts("fgsm_pgi", None) == (2, 2, 0)  # plain CE: as FGSM-RS
    assert _counts("fgsm_pgi", PGILoss(), bn_mode="eval") == (3, 3, 0)  # other mode: the prior forward is redone
    assert _counts("fgsm", PGILoss()) == (3, 3, 0)  # after FGSM: one clean forward with its graph


def test_memory_reset_and_fallback_without_indices(model, batch) -> None:
    x, y = batch
    atk = FGSMPGI(model, 8 / 255, seed=0, reset_every=2)
    plain = atk(x, y)  # no indices: random corner start, nothing stored
    assert len(atk.prior) == 0 and (plain - x).abs().max() <= 8 / 255 + 1e-6
    atk(x, y, torch.arange(16))
    assert bool(atk.prior.written[:16].all()) and bool(atk.momentum.written[:16].all())
    atk.on_epoch_start(1)
    assert len(atk.prior) == 16
    atk.on_epoch_start(2)
    assert len(atk.prior) == 0 and len(atk.momentum) == 0
    # through the trainer, a loader without indices is reported once per epoch
    model = TinyCNN(in_ch=1)
    xtr, ytr, *_ = mc.digits()
    tr = AdversarialTrainer(model, FGSMPGI(model, EPS), criterion=PGILoss(), val_attack=None, progress=False,
                            verbose=False)  # fmt: skip
    with pytest.warns(UserWarning, match="without dataset indices"):
        tr.fit(DataLoader(TensorDataset(xtr[:64], ytr[:64]), batch_size=32), 1)


def pgi_spec(model):
    return {"attack": FGSMPGI(model, EPS, seed=0), "criterion": PGILoss()}


def test_gains_robustness() -> None:
    out = mc.check_gains_robustness(pgi_spec)
    print("fgsm_pgi digits:", out)


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    mc.check_resume_bit_identical(pgi_spec, tmp_path)


def test_rollback_restores_the_memory_and_doubles_lambda() -> None:
    tr = mc.check_rollback(pgi_spec)
    assert tr.criterion.lam == 20.0 and tr.attack.strength == 0 and len(tr.attack.prior) > 0


def test_bf16() -> None:
    mc.check_bf16(pgi_spec)


# ------------------------------------------------------------------------------------------ DDP: one memory
def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
        ds = IndexedDataset(TensorDataset(x, y))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Softplus(), nn.Linear(32, 10))
        atk = FGSMPGI(model, EPS, seed=rank)
        loader = DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds, shuffle=True, seed=0))
        AdversarialTrainer(model, atk, criterion=PGILoss(), lr=0.05, val_attack=None, progress=False,
                           verbose=False).fit(loader, 2)  # fmt: skip
        torch.save({"model": model.state_dict(), "prior": atk.prior.data, "written": atk.prior.written,
                    "momentum": atk.momentum.data}, f"{out}.{rank}")  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_share_one_memory(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "s")), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{tmp_path / 's'}.{r}", weights_only=True) for r in (0, 1))
    assert bool(r0["written"][:40].all())  # every example's prior, wherever it was trained
    for k in ("prior", "momentum", "written"):
        assert torch.equal(r0[k], r1[k]), k
    for k in r0["model"]:
        torch.testing.assert_close(r0["model"][k], r1["model"][k], atol=1e-6, rtol=1e-5)


def test_argument_validation(model) -> None:
    for bad in (0, 1.5, "0.6"):
        with pytest.raises(rf.RobustfastError, match="probability put on the true class"):
            FGSMPGI(model, factor=bad)
        with pytest.raises(rf.RobustfastError, match="probability put on the true class"):
            PGILoss(factor=bad)
    with pytest.raises(rf.RobustfastError, match="momentum_decay"):
        FGSMPGI(model, momentum_decay=-0.1)
    for bad in (-1, 1.5, True):
        with pytest.raises(rf.RobustfastError, match="reset_every"):
            FGSMPGI(model, reset_every=bad)
    with pytest.raises(rf.RobustfastError, match="clamp_start"):
        FGSMPGI(model, clamp_start="yes")
    with pytest.raises(rf.RobustfastError, match="lam must be"):
        PGILoss(lam=-1)
    with pytest.raises(rf.RobustfastError, match="8/255"):
        FGSMPGI(model, alpha=8)
    assert type(rf.create_loss("pgi")) is PGILoss and type(rf.create_attack("fgsm_mep", model)) is FGSMPGI


def test_preset_loads() -> None:
    cfg = RunConfig.from_dict(load_preset("fgsm-pgi-cifar10"))
    assert cfg.attack == {"name": "fgsm_pgi"} and cfg.loss == {"name": "fgsm_pgi", "lam": 10, "factor": 0.6}
    assert cfg.epochs == 110 and cfg.milestones == [100, 105] and cfg.schedule == "piecewise" and cfg.lr == 0.1
