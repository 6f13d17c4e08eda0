"""robustfast.evaluate: report contents, protocol, attack ordering, custom lists, bad inputs, model modes."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import TinyCNN
from evalutils import Linear, labelled
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
from robustfast.evaluation import AttackResult, AutoAttackAdapter, EvaluationReport, evaluate

EPS = 8 / 255


@pytest.fixture
def lin() -> Linear:
    return Linear(scale=0.2).eval()


@pytest.fixture
def data(lin) -> tuple[torch.Tensor, torch.Tensor]:
    return labelled(lin, n=16, wrong=2)


def test_evaluate_is_exported_from_the_package() -> None:
    assert rf.evaluate is evaluate and rf.EvaluationReport is EvaluationReport


def test_report_fields_and_protocol(lin, data) -> None:
    x, y = data
    rep = evaluate(lin, (x, y), EPS, attacks=("clean", "fgsm", "pgd-5-2"), progress=False)
    assert [r.name for r in rep.results] == ["clean", "fgsm", "pgd-5-2"]
    assert rep.n_examples == 16 and rep.eps == EPS and rep.seed == 0
    clean = (lin(x).argmax(1) == y).float().mean().item()
    assert rep.accuracy["clean"] == pytest.approx(clean) == 14 / 16
    pgd = rep["pgd-5-2"].protocol
    assert pgd["steps"] == 5 and pgd["restarts"] == 2 and pgd["step_size"] == pytest.approx(EPS / 4)
    assert pgd["seed"] == 0 and pgd["eps"] == EPS and pgd["random_start"] == "uniform"
    assert rep["fgsm"].protocol["step_size"] == pytest.approx(EPS)
    for r in rep.results:  # accuracy is the mean of the per-example mask, in data order
        assert len(r.robust) == 16 and r.accuracy == pytest.approx(sum(r.robust) / 16) and r.time_s >= 0
    worst = [all(r.robust[i] for r in rep.results) for i in range(16)]
    assert list(rep.worst_case) == worst and rep.worst_case_accuracy == pytest.approx(sum(worst) / 16)
    assert rep.robust_mask("fgsm").dtype == torch.bool and rep.robust_mask().tolist() == worst
    assert rep.meta["model"] == "Linear" and rep.meta["device"] == "cpu" and rep.time_s > 0


def test_stronger_attacks_never_do_better(lin, data) -> None:
    x, y = data
    rep = evaluate(lin, (x, y), EPS, attacks=("clean", "pgd-20", "pgd-50-10"), progress=False)
    acc = rep.accuracy
    assert acc["pgd-50-10"] <= acc["pgd-20"] <= acc["clean"]
    assert acc["pgd-20"] < acc["clean"]  # the attack does break points
    # per example: same seed and start, early exit -> whatever PGD-20 breaks, PGD-50-10's first restart breaks
    p20, p50 = rep.robust_mask("pgd-20"), rep.robust_mask("pgd-50-10")
    assert not (p50 & ~p20).any() and not (p20 & ~rep.robust_mask("clean")).any()
    assert rep.cumulative["pgd-50-10"] == pytest.approx(rep.worst_case_accuracy)


def test_pgd_restarts_keep_the_worst_case_per_example(lin, data) -> None:
    x, y = data
    one = evaluate(lin, (x, y), EPS, attacks=["pgd-2"], progress=False)
    many = evaluate(lin, (x, y), EPS, attacks=["pgd-2-5"], progress=False)
    assert not (many.robust_mask("pgd-2-5") & ~one.robust_mask("pgd-2")).any()


def test_same_seed_same_report_and_global_rng_untouched(lin, data) -> None:
    x, y = data
    state = torch.get_rng_state()
    apgd = AutoAttackAdapter(lin, EPS, version="custom", attacks=["apgd-ce"], n_iter=5)
    a = evaluate(lin, (x, y), EPS, attacks=("pgd-3-2", apgd), progress=False)
    assert torch.equal(state, torch.get_rng_state())
    b = evaluate(lin, (x, y), EPS, attacks=("pgd-3-2", apgd), progress=False)
    assert [r.robust for r in a.results] == [r.robust for r in b.results]


def test_custom_attack_instances_and_duplicate_names(lin, data) -> None:
    x, y = data
    pgd = rf.PGD(lin, EPS, steps=3, seed=1)
    rep = evaluate(lin, (x, y), EPS, attacks=[pgd, "clean", rf.FGSM(lin, EPS), "pgd-3", "pgd-3"], progress=False)
    assert [r.name for r in rep.results] == ["pgd", "clean", "fgsm", "pgd-3", "pgd-3#2"]
    # a custom attack is run as given, on the correctly classified points only
    correct = lin(x).argmax(1) == y
    x_adv = rf.PGD(lin, EPS, steps=3, seed=1)(x[correct], y[correct])
    expected = correct.clone()
    expected[correct] = lin(x_adv).argmax(1) == y[correct]
    assert rep.robust_mask("pgd").tolist() == expected.tolist()
    assert "PGD(" in rep["pgd"].protocol["attack"]


def test_attack_with_a_larger_eps_is_rejected(lin, data) -> None:
    with pytest.raises(rf.RobustfastError, match="larger than eps"):
        evaluate(lin, data, EPS, attacks=[rf.PGD(lin, 4 * EPS, steps=2)], progress=False)
    with pytest.raises(rf.RobustfastError, match="larger than eps"):
        evaluate(lin, data, EPS, attacks=[AutoAttackAdapter(lin, 2 * EPS)], progress=False)


def test_dataloader_gives_the_same_report_as_tensors(lin, data) -> None:
    x, y = data
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    a = evaluate(lin, loader, EPS, attacks=("clean", "pgd-3"), n_examples=12, batch_size=4, progress=False)
    b = evaluate(lin, (x[:12], y[:12]), EPS, attacks=("clean", "pgd-3"), batch_size=4, progress=False)
    assert a.n_examples == 12 and [r.robust for r in a.results] == [r.robust for r in b.results]


def test_eps_in_255_units_is_the_same_error_as_the_attacks(lin, data) -> None:
    hint = "eps=8 looks like a 0-255 scale but inputs are in [0, 1]; did you mean eps=8/255?"
    with pytest.raises(rf.RobustfastError, match=re.escape(hint)):
        evaluate(lin, data, 8, attacks=["fgsm"], progress=False)
    with pytest.raises(rf.RobustfastError, match=re.escape(hint.split("; ")[1])):
        rf.FGSM(lin, 8)
    with pytest.raises(rf.RobustfastError, match="eps must be >= 0") as err:
        evaluate(lin, data, -1, attacks=["clean"], progress=False)
    assert "/255?" not in str(err.value)
    rep = evaluate(lin, data, torch.tensor(EPS), attacks=["clean"], progress=False)  # a 0-d tensor is a number
    assert rep.eps == pytest.approx(EPS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_examples": 17}, "n_examples=17 but the data has only 16 points"),
        ({"n_examples": 0}, "positive integer"),
        ({"attacks": ["pgd-fast"]}, "unknown attack 'pgd-fast'"),
        ({"attacks": ["pgd-0"]}, "steps >= 1"),
        ({"attacks": []}, "attacks is empty"),
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": 0.0}, "eps must be > 0"),
        ({"eps": float("nan")}, "finite number"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise_clear_errors(lin, data, kwargs, match) -> None:
    kw = {"eps": EPS, "attacks": ("clean",), "progress": False, **kwargs}
    with pytest.raises(rf.RobustfastError, match=match):
        evaluate(lin, data, **kw)


def test_bad_data_raises(lin, data) -> None:
    x, y = data
    with pytest.raises(rf.RobustfastError, match=r"in \[0, 1\]"):
        evaluate(lin, ((x - 0.5) / 0.25, y), EPS, attacks=["clean"], progress=False)
    with pytest.raises(rf.RobustfastError, match="DataLoader or an"):
        evaluate(lin, x, EPS, attacks=["clean"], progress=False)
    with pytest.raises(rf.RobustfastError, match="15 labels"):
        evaluate(lin, (x, y[:15]), EPS, attacks=["clean"], progress=False)


def test_eval_mode_is_forced_and_restored(data) -> None:
    x, y = data
    torch.manual_seed(0)
    m = TinyCNN(dropout=0.5).train()
    m.bn.eval()  # mixed state: must come back exactly
    flags = {n: mod.training for n, mod in m.named_modules()}
    bn_stats = m.bn.running_mean.clone()
    apgd = AutoAttackAdapter(m, EPS, version="custom", attacks=["apgd-ce"], n_iter=5)
    rep = evaluate(m, (x, y), EPS, attacks=("clean", "pgd-2", apgd), progress=False)
    assert {n: mod.training for n, mod in m.named_modules()} == flags
    assert torch.equal(bn_stats, m.bn.running_mean)
    m.eval()
    with torch.no_grad():
        assert rep.accuracy["clean"] == (m(x).argmax(1) == y).float().mean().item()


def test_report_json_round_trip_and_markdown(lin, data) -> None:
    apgd = AutoAttackAdapter(lin, EPS, version="custom", attacks=["apgd-ce"], n_iter=5)
    rep = evaluate(lin, data, EPS, attacks=("clean", "pgd-3", apgd), progress=False)
    back = EvaluationReport.from_json(rep.to_json())
    assert back == rep and isinstance(back.results[0], AttackResult)
    d = json.loads(rep.to_json())
    assert d["results"][2]["protocol"]["package"] == "pyautoattack" and set(d["worst_case"]) <= {"0", "1"}
    md = rep.to_markdown()
    assert md.count("\n| ") == 4 and "| autoattack-custom |" in md and "Worst case" in md and "8/255" in md
    with pytest.raises(rf.RobustfastError, match="not a"):
        EvaluationReport.from_json('{"a": 1}')
    with pytest.raises(dataclasses_frozen_error()):
        rep.eps = 1.0  # type: ignore[misc]


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_inputs_are_an_error(lin, data, bad) -> None:
    x, y = data
    x = x.clone()
    x[3, 0, 0, 0] = bad
    x[5, 1, 2, 3] = bad
    with pytest.raises(
        rf.RobustfastError, match=r"2 NaN/inf input values in 2 of 16 examples \(the first at index 3\)"
    ):
        evaluate(lin, (x, y), EPS, attacks=["clean"], progress=False)


def test_attack_instance_with_a_smaller_eps_is_refused_unless_allowed(lin, data) -> None:
    weak = rf.PGD(lin, EPS / 2, steps=3, seed=0)
    with pytest.raises(rf.RobustfastError, match=r"smaller than the evaluation's eps=0.03137 \(= 8/255\)") as err:
        evaluate(lin, data, EPS, attacks=["clean", weak], progress=False)
    assert "allow_smaller_eps=True" in str(err.value) and "Build it with eps=0.03137" in str(err.value)
    with pytest.raises(rf.RobustfastError, match="smaller than the evaluation's eps"):
        evaluate(lin, data, EPS, attacks=[AutoAttackAdapter(lin, EPS / 2)], progress=False)
    rep = evaluate(lin, data, EPS, attacks=["clean", weak, "pgd-3"], allow_smaller_eps=True, progress=False)
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in rep.to_markdown().splitlines() if line[:2] == "| "}
    assert rows["pgd"][1] == "4/255" and rows["pgd"][2] == "3"  # the table shows each attack's eps and steps
    assert rows["pgd-3"][1] == "8/255" and rows["pgd-3"][2] == "3" and rows["clean"][1] == "–"


def test_attack_instance_built_on_another_model_is_refused(lin, data) -> None:
    other = Linear(scale=0.2).eval()
    with pytest.raises(rf.RobustfastError, match=r"was built on another model .* Build it on the evaluated model"):
        evaluate(lin, data, EPS, attacks=[rf.PGD(other, EPS, steps=2)], progress=False)
    with pytest.raises(rf.RobustfastError, match="was built on another model"):
        evaluate(lin, data, EPS, attacks=[AutoAttackAdapter(other, EPS)], progress=False)


class _TupleOut(nn.Module):
    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x: torch.Tensor):
        z = self.inner(x)
        if self.kind == "tuple":
            return z, z.detach()
        if self.kind == "dict":
            return {"logits": z, "features": x}
        return z.unsqueeze(-1)  # (N, C, 1)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("tuple", r"returned a tuple of 2 items .* \(e.g. return out\[0\]\)"),
        ("dict", r"returned a dict with keys \['features', 'logits'\] .* \(e.g. return out\['logits'\]\)"),
        ("shape", r"returned a tensor of shape \(1, 10, 1\)"),
    ],
)
def test_models_not_returning_logits_get_a_clear_error(lin, data, kind, match) -> None:
    with pytest.raises(rf.RobustfastError, match=match):
        evaluate(_TupleOut(lin, kind), data, EPS, attacks=["clean", "pgd-2"], progress=False)


def test_labels_outside_the_classes_are_an_error(lin, data) -> None:
    x, y = data
    with pytest.raises(
        rf.RobustfastError, match=r"labels must be class indices in \[0, 10\) .* got labels in \[1, 10\]"
    ):
        evaluate(lin, (x, torch.where(y == y[0], 10, y)), EPS, attacks=["clean"], progress=False)


def test_official_pgd_keeps_the_max_loss_restart_and_is_never_stronger_than_ours() -> None:
    """Papers' rule (all steps, the max-loss restart counts) vs ours (early exit, any restart breaks): the same
    starts per example, so every point the official rule breaks, ours breaks too."""
    differs = 0
    for scale, eps in ((0.02, 4 / 255), (0.05, 8 / 255)):
        model = Linear(scale=scale).eval()
        x, y = labelled(model, n=64, wrong=4)
        rep = evaluate(model, (x, y), eps, attacks=("pgd-5-5", "pgd-5-5-official"), progress=False)
        ours, official = rep.robust_mask("pgd-5-5"), rep.robust_mask("pgd-5-5-official")
        assert not (ours & ~official).any()  # per example: official accuracy >= ours
        assert rep.accuracy["pgd-5-5-official"] >= rep.accuracy["pgd-5-5"]
        differs += int((official & ~ours).sum())
        proto = rep["pgd-5-5-official"].protocol
        assert proto["per_example"] == "no early exit; the max-loss restart counts" and proto["restarts"] == 5
        assert "max-loss restart, no early exit" in rep.to_markdown()
    assert differs >= 1  # the rules do differ


def test_keep_adversarial_and_save_them(lin, data, tmp_path) -> None:
    x, y = data
    rep = evaluate(lin, data, EPS, attacks=("clean", "pgd-3-2", "fgsm"), keep_adversarial=True, progress=False)
    assert set(rep.adversarial) == {"pgd-3-2", "fgsm"} and torch.equal(rep.labels, y)
    for name, x_adv in rep.adversarial.items():
        assert x_adv.shape == x.shape and (x_adv - x).abs().amax() <= EPS + 1e-6
        assert ((lin(x_adv).argmax(1) == y) == rep.robust_mask(name)).all()  # they reproduce the report's masks
    with pytest.raises(rf.RobustfastError, match=r"pass name="):
        rep.save_adversarial(tmp_path / "adv.pt")
    path = rep.save_adversarial(tmp_path / "sub" / "adv.pt", "pgd-3-2")
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["adv_inputs"], rep.adversarial["pgd-3-2"]) and torch.equal(saved["labels"], y)
    assert saved["attack"] == "pgd-3-2" and saved["robust"].tolist() == list(rep["pgd-3-2"].robust)
    assert EvaluationReport.from_json(rep.to_json()) == rep  # the tensors are not part of the JSON
    plain = evaluate(lin, data, EPS, attacks=("pgd-3",), progress=False)
    with pytest.raises(rf.RobustfastError, match="keep_adversarial=True"):
        plain.save_adversarial(tmp_path / "x.pt")


def test_markdown_keeps_long_protocols_out_of_the_table(lin, data) -> None:
    aa = AutoAttackAdapter(lin, EPS, version="custom", attacks=["apgd-ce", "apgd-t"], n_iter=3)
    rep = evaluate(lin, data, EPS, attacks=("clean", "pgd-3-2", aa), progress=False)
    md = rep.to_markdown()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 4 and max(len(line) for line in table) < 140
    assert "| autoattack-custom | 8/255 | 3 |" in md and "custom: apgd-ce+apgd-t (pyautoattack" in md
    full = next(line for line in md.splitlines() if line.startswith("- autoattack-custom: "))
    assert "n_target_classes=" in full and "package_version=" in full  # the full protocol, below the table


def test_training_curves_label_epochs_as_the_history_numbers_them(tmp_path) -> None:
    from robustfast.evaluation import plot_training_curves

    history = [{"epoch": e, "val_acc": 0.5 + e / 10, "val_pgd_acc": None if e == 2 else 0.3} for e in (1, 2, 3)]
    out = plot_training_curves(history, tmp_path / "curves")
    assert out.suffix == ".png" and out.read_bytes()[:4] == b"\x89PNG"
