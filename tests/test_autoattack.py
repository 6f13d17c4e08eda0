"""The AutoAttack adapter: parity with pyautoattack, class-count handling, argument checks, the real ResNet-18."""

from __future__ import annotations

import pyautoattack
import pytest
import torch
from evalutils import Linear, labelled, resnet18

import robustfast as rf
from robustfast.evaluation import AutoAttackAdapter, autoattack_backend, evaluate
from robustfast.evaluation.autoattack import _set_apgd_iters

EPS = 8 / 255
SMALL = 2 / 255  # some points survive, so every component runs
ALL = ["apgd-ce", "apgd-t", "fab-t", "square"]


def direct(model, x, y, attacks, n_iter, n_queries, n_targets=9, seed=0, eps=SMALL):
    """The package called by hand, configured like the adapter."""
    aa = pyautoattack.AutoAttack(
        model, attacks=attacks, device="cpu", eps=eps, norm="Linf", seed=seed, version="custom"
    )
    for apgd in (aa.apgd, aa.apgd_targeted):
        _set_apgd_iters(apgd, n_iter)
    aa.fab.n_iter, aa.square.n_queries = n_iter, n_queries
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = n_targets
    return aa.run_standard_evaluation(x, y, batch_size=8)[0]


def test_backend_is_pyautoattack_here() -> None:
    _, name, version = autoattack_backend()
    assert name == "pyautoattack" and version == pyautoattack.__version__


def test_parity_with_the_package_called_directly() -> None:
    model = Linear(scale=0.1).eval()
    x, y = labelled(model, n=12)
    adapter = AutoAttackAdapter(
        model, SMALL, version="custom", attacks=ALL, n_iter=4, n_queries=30, n_target_classes=3, seed=0
    )
    res = adapter.run(x, y, batch_size=8)
    ref = direct(model, x, y, ALL, n_iter=4, n_queries=30, n_targets=3)
    assert torch.equal(res.x_adv, ref)
    ref_acc = (model(ref).argmax(1) == y).float().mean().item()
    assert res.accuracy == ref_acc and res.robust.tolist() == (model(ref).argmax(1) == y).tolist()
    assert 0 < res.accuracy < 10 / 12  # it broke some correctly classified points, not all
    assert (res.x_adv - x).abs().max() <= SMALL + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    p = res.protocol
    assert p["package"] == "pyautoattack" and p["components"] == ALL and p["n_iter"] == 4 and p["seed"] == 0
    assert p["n_queries"] == 30 and p["n_target_classes"] == 3 and p["n_classes"] == 10


def test_evaluate_autoattack_entry_matches_the_adapter() -> None:
    model = Linear(scale=0.1).eval()
    x, y = labelled(model, n=12)
    adapter = AutoAttackAdapter(model, SMALL, version="custom", attacks=["apgd-ce", "apgd-t"], n_iter=4)
    rep = evaluate(model, (x, y), SMALL, attacks=["clean", adapter], batch_size=8, progress=False)
    ref = model(direct(model, x, y, ["apgd-ce", "apgd-t"], n_iter=4, n_queries=5000)).argmax(1) == y
    assert rep.robust_mask("autoattack-custom").tolist() == ref.tolist()
    assert rep["autoattack-custom"].protocol["package_version"] == pyautoattack.__version__


def test_target_counts_follow_the_output_width() -> None:
    model = Linear(n_classes=5, scale=0.1).eval()
    x, y = labelled(model, n=6)
    res = AutoAttackAdapter(model, EPS, version="custom", attacks=["apgd-t", "fab-t"], n_iter=2).run(x, y)
    assert res.protocol["n_target_classes"] == 4 and res.protocol["n_classes"] == 5
    assert (res.x_adv - x).abs().max() <= EPS + 1e-6


@pytest.mark.parametrize(
    ("n_classes", "attacks", "match"), [(3, None, "apgd-t uses the DLR loss"), (2, ["apgd-dlr"], "at least 3")]
)
def test_too_few_classes_for_dlr_is_a_clear_error(n_classes, attacks, match) -> None:
    model = Linear(n_classes=n_classes).eval()
    x, y = labelled(model, n=4, wrong=0)
    version = "custom" if attacks else "standard"
    with pytest.raises(rf.RobustfastError, match=match):
        AutoAttackAdapter(model, EPS, version=version, attacks=attacks).run(x, y)


def test_two_classes_work_with_apgd_ce() -> None:
    model = Linear(n_classes=2, scale=0.1).eval()
    x, y = labelled(model, n=4, wrong=0)
    res = AutoAttackAdapter(model, EPS, version="custom", attacks=["apgd-ce"], n_iter=3).run(x, y)
    assert res.protocol["n_classes"] == 2 and res.robust.shape == (4,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": "custom"}, "needs attacks"),
        ({"version": "standard", "attacks": ["apgd-ce"]}, "only used with version='custom'"),
        ({"version": "custom", "attacks": ["pgd"]}, "unknown AutoAttack components"),
        ({"version": "fast"}, "version='fast'"),
        ({"n_iter": 10}, "change the 'standard' protocol"),
        ({"eps": 8}, "8/255, not 8"),
        ({"norm": "Linfinity"}, "norm="),
        ({"backend": "torchattacks"}, "backend="),
    ],
)
def test_bad_adapter_arguments(kwargs, match) -> None:
    kw = {"eps": EPS, **kwargs}
    with pytest.raises(rf.RobustfastError, match=match):
        AutoAttackAdapter(Linear(), **kw)


def test_standard_version_is_the_default_protocol() -> None:
    p = AutoAttackAdapter(Linear(), EPS).protocol(10)
    assert p["version"] == "standard" and p["components"] == ALL
    assert p["n_iter"] == 100 and p["n_restarts"] == 1 and p["n_target_classes"] == 9 and p["n_queries"] == 5000
    assert AutoAttackAdapter(Linear(), EPS, version="plus").protocol(10)["n_restarts"] == 5
    custom = AutoAttackAdapter(Linear(), EPS, version="custom", attacks=["apgd-ce"]).protocol(3)
    assert custom["n_restarts"] == 5 and custom["n_target_classes"] == 2  # what the package really runs


def test_real_resnet18_end_to_end() -> None:
    """The CIFAR-10 ResNet-18 from the pyautoattack wheel on two synthetic images labelled by the model."""
    torch.manual_seed(0)
    model = resnet18()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    adapter = AutoAttackAdapter(model, 2 / 255, version="custom", attacks=["apgd-ce"], n_iter=2)
    rep = evaluate(model, (x, y), 2 / 255, attacks=["clean", adapter], progress=False)
    assert rep.accuracy["clean"] == 1.0
    assert rep.accuracy["autoattack-custom"] <= rep.accuracy["clean"]
    assert rep["autoattack-custom"].protocol["n_classes"] == 10
    assert not model.training


def test_adapter_on_a_model_returning_a_tuple_is_a_clear_error() -> None:
    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Linear(scale=0.2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = self.inner(x)
            return z, z

    model = Pair().eval()
    x = torch.rand(4, 3, 8, 8)
    adapter = AutoAttackAdapter(model, EPS, version="custom", attacks=["apgd-ce"], n_iter=2)
    with pytest.raises(rf.RobustfastError, match=r"AutoAttackAdapter.run: model\(x\) returned a tuple of 2 items"):
        adapter.run(x, torch.zeros(4, dtype=torch.long))
