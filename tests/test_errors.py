"""Bad input gets a clear error naming the problem and the fix (library side; the CLI's are in test_cli.py).

Each case below was a silent wrong result or a raw traceback from deep inside torch before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
from robustfast.errors import RobustfastError
from robustfast.training import AdversarialTrainer, adversarial_step

EPS = 8 / 255


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


# ---------------------------------------------------------------------------------------------- NaN and range
def test_nan_inputs_are_refused_before_they_reach_batchnorm(xy):
    x, y = xy
    x_nan = x.clone()
    x_nan[0, 0, 0, 0] = float("nan")
    m = TinyCNN()
    stats = m.bn.running_mean.clone()
    for check in ("error", "warn"):
        with pytest.raises(RobustfastError, match="NaN"):
            rf.FGSM(m, bn_mode="train", check_range=check)(x_nan, y)
    assert torch.equal(m.bn.running_mean, stats)  # the model was not corrupted
    with pytest.raises(RobustfastError, match="NaN"):
        rf.GradAlign()(m, x_nan, y)
    x_inf = x.clone()
    x_inf[1, 1, 1, 1] = float("inf")
    with pytest.raises(RobustfastError, match="infinite"):
        rf.PGD(m)(x_inf, y)


def test_regularizers_check_the_input_range_and_empty_batches(xy):
    x, y = xy
    m = TinyCNN().eval()
    with pytest.raises(RobustfastError, match=r"\[0, 1\]"):
        rf.GradAlign()(m, x * 255, y, x * 255)
    with pytest.raises(RobustfastError, match=r"\[0, 1\]"):
        rf.GradNorm()(m, x * 255, y)
    with pytest.raises(RobustfastError, match="empty"):
        rf.GradNorm()(m, x[:0], y[:0])
    with pytest.raises(RobustfastError, match="empty"):
        rf.GradAlign()(m, x[:0], y[:0])


def test_trainer_names_nan_data_instead_of_blaming_the_learning_rate(xy):
    x, y = xy
    x = x.clone()
    x[0] = float("nan")
    model = TinyCNN()
    tr = AdversarialTrainer(model, None, val_attack=None, progress=False, verbose=False)
    with pytest.raises(RobustfastError, match="inputs contain NaN"):
        tr.fit(DataLoader(TensorDataset(x, y), batch_size=8), 1)


# ---------------------------------------------------------------------------------------------- labels, outputs, dtypes
def test_labels_outside_the_model_outputs(xy):
    x, y = xy
    bad = y.clone()
    bad[0] = 12
    m = TinyCNN()
    with pytest.raises(RobustfastError, match=r"class indices in \[0, 10\).*\[\d+, 12\]"):
        rf.FGSM(m)(x, bad)
    with pytest.raises(RobustfastError, match=r"\[0, 10\)"):
        rf.GradNorm()(m, x, bad)
    tr = AdversarialTrainer(m, None, val_attack=None, progress=False, verbose=False)  # standard training
    with pytest.raises(RobustfastError, match=r"\[0, 10\)"):
        tr.fit(DataLoader(TensorDataset(x, bad), batch_size=8), 1)
    with pytest.raises(RobustfastError, match="labels"):
        rf.PGD(m)(x, bad - 20)


class TupleModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCNN()

    def forward(self, x):
        return self.net(x), {"aux": x.mean()}


def test_models_returning_tuples(xy):
    x, y = xy
    m = TupleModel()
    with pytest.raises(RobustfastError, match="returned a tuple"):
        rf.GradAlign()(m, x, y)
    with pytest.raises(RobustfastError, match="returned a tuple"):
        rf.FGSM(m)(x, y)


def test_half_precision_model_with_float_inputs(xy):
    x, y = xy
    m = TinyCNN().half()
    with pytest.raises(RobustfastError, match=r"torch\.float16 but the inputs are torch\.float32"):
        rf.FGSM(m)(x, y)
    with pytest.raises(RobustfastError, match=r"torch\.float16"):
        rf.GradNorm()(m, x, y)


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_empty_batch(name, xy):
    x, y = xy
    with pytest.raises(RobustfastError, match="empty"):
        rf.create_attack(name, TinyCNN())(x[:0], y[:0])


def test_trainer_on_a_fully_frozen_model():
    m = TinyCNN().requires_grad_(False)
    with pytest.raises(RobustfastError, match="every parameter is frozen"):
        AdversarialTrainer(m, rf.FGSM(m), progress=False)


def test_unknown_method_arguments_name_the_accepted_ones():
    # one keyword check and one message for the library, the command line and the model factory
    with pytest.raises(
        RobustfastError,
        match=r"attack 'zerograd' \(ZeroGrad\): unknown keyword 'qq'\. Did you mean 'q'\? Valid keywords: alpha",
    ):
        rf.create_attack("zerograd", TinyCNN(), qq=0.3)
    with pytest.raises(
        RobustfastError, match=r"regularizer 'gradalign' \(GradAlign\): unknown keyword 'lamb'\. Did you mean 'lam'"
    ):
        rf.create_regularizer("gradalign", lamb=0.3)


def test_seat_flooding_uses_the_steps_actual_loss(xy):
    """SEAT-FL floods the training loss the step really uses (here label-smoothed), not a plain mean CE."""
    x, y = xy
    torch.manual_seed(0)
    m = TinyCNN().train()
    b = 5.0  # above the loss: the flood is active
    crit = rf.CrossEntropy(label_smoothing=0.3)
    out = adversarial_step(m, rf.SEATAttack(m, seed=0, bn_mode="train"), [rf.SEAT(lam=0.0, flood=b)], x, y,
                           criterion=crit)  # fmt: skip
    j = out.criterion
    assert j < b and torch.allclose(out.loss.detach(), (j - b).abs() + b)


# ---------------------------------------------------------------------------------------------- resume
def _trainer(model, regs=(), ckpt=None):
    return AdversarialTrainer(model, rf.FGSM(model, 0.1), list(regs), checkpoint_dir=ckpt, val_attack=None,
                              progress=False, verbose=False)  # fmt: skip


def _data():
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.rand(32, 3, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)), 16)


def test_resume_from_bad_files(tmp_path: Path):
    model = TinyCNN()
    _trainer(model, ckpt=tmp_path).fit(_data(), 1)
    good = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(RobustfastError, match=r"trunc\.pt.*truncated") as err:
        _trainer(TinyCNN()).fit(_data(), 2, resume=tmp_path / "trunc.pt")
    assert "internal miniz error" not in str(err.value)  # torch's first sentence only
    (tmp_path / "garbage.pt").write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(RobustfastError, match=r"garbage\.pt") as err:
        _trainer(TinyCNN()).fit(_data(), 2, resume=tmp_path / "garbage.pt")
    assert "weights_only=False" not in str(err.value)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(RobustfastError, match="plain model state_dict"):
        _trainer(TinyCNN()).fit(_data(), 2, resume=tmp_path / "weights.pt")
    with pytest.raises(RobustfastError, match=r"do not fit this model \(\d+ shape\(s\) differ, e\.g\. "):
        _trainer(TinyCNN(width=4)).fit(_data(), 2, resume=tmp_path / "last.pt")
    with pytest.raises(RobustfastError, match=r"another method set-up.*GradAlign"):
        _trainer(TinyCNN(), [rf.GradAlign()]).fit(_data(), 2, resume=tmp_path / "last.pt")
    with pytest.raises(RobustfastError, match="does not exist"):
        _trainer(TinyCNN()).fit(_data(), 2, resume=tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------- torchattacks habits
def test_attack_save_like_torchattacks(tmp_path: Path, xy):
    x, y = xy
    m = TinyCNN().eval()
    atk = rf.PGD(m, EPS, 2 / 255, 3, seed=0)
    acc, l2, _seconds = atk.save(DataLoader(TensorDataset(x, y), batch_size=4), tmp_path / "adv.pt", verbose=False,
                                return_verbose=True, save_predictions=True, save_clean_inputs=True)  # fmt: skip
    saved = torch.load(tmp_path / "adv.pt", weights_only=True)
    assert saved["adv_inputs"].shape == x.shape and torch.equal(saved["labels"], y)
    assert torch.equal(saved["clean_inputs"], x) and saved["preds"].shape == y.shape
    assert (saved["adv_inputs"] - x).abs().max() <= EPS + 1e-6 and 0 <= acc <= 100 and l2 > 0
    atk.save(DataLoader(TensorDataset(x, y), batch_size=4), tmp_path / "adv8.pt", verbose=False, save_type="int")
    assert torch.load(tmp_path / "adv8.pt", weights_only=True)["adv_inputs"].dtype == torch.uint8


def test_eps_as_a_scalar_tensor_and_as_a_0_255_number(xy):
    x, y = xy
    m = TinyCNN()
    assert rf.FGSM(m, torch.tensor(EPS)).eps == pytest.approx(EPS)
    with pytest.raises(RobustfastError, match=r"did you mean eps=8/255"):
        rf.FGSM(m, 8)
    with pytest.raises(RobustfastError, match="must be >= 0"):
        rf.FGSM(m, -0.1)
    assert F.cross_entropy(m(rf.FGSM(m, torch.tensor(EPS))(x, y)), y) > 0


# ---------------------------------------------------------------------------------------------- user habits
def _bn_model() -> nn.Module:
    torch.manual_seed(0)  # BatchNorm1d: a batch of one example has one value per channel
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def test_a_last_batch_of_one_example_is_refused_before_training(xy):
    x, y = xy
    data = TensorDataset(torch.cat([x, x, x[:1]]), torch.cat([y, y, y[:1]]))  # 17 examples
    model = _bn_model()
    tr = AdversarialTrainer(model, rf.FGSM(model, EPS), val_attack=None, progress=False, verbose=False)
    with pytest.raises(
        RobustfastError, match=r"17 training examples in batches of 8 leave a last batch of one.*drop_last"
    ):
        tr.fit(DataLoader(data, batch_size=8), 1)
    assert tr.step == 0  # refused up front, not mid-epoch
    tr.fit(DataLoader(data, batch_size=8, drop_last=True), 1)  # the fix works


def test_a_batch_of_one_inside_batchnorm_is_named(xy):
    x, y = xy
    model = _bn_model()
    tr = AdversarialTrainer(model, rf.FGSM(model, EPS), val_attack=None, progress=False, verbose=False)
    with pytest.raises(RobustfastError, match=r"batch of 1 example\(s\) reached BatchNorm in train mode.*drop_last"):
        tr.fit([(x, y), (x[:1], y[:1])], 1)  # a plain list of batches: no batch size to check up front


def test_fit_again_with_the_same_epochs_says_what_to_do(xy):
    x, y = xy
    model = TinyCNN()
    tr = AdversarialTrainer(model, rf.FGSM(model, EPS), val_attack=None, progress=False, verbose=False)
    loader = [(x, y)]
    tr.fit(loader, 2)
    with pytest.raises(RobustfastError, match=r"already trained 2 epoch\(s\).*fit\(loader, 4\) to train 2 more"):
        tr.fit(loader, 2)
    tr.fit(loader, 3)  # epochs is the total: one more
    assert tr.epoch == 3 and len(tr.history) == 3


def test_state_a_checkpoint_cannot_hold_is_refused_at_construction(xy):
    class PlainGeneratorFGSM(rf.FGSM):
        state_attrs = ("gen",)

        def __init__(self, model, eps):
            super().__init__(model, eps)
            self.gen = torch.Generator().manual_seed(0)

    model = TinyCNN()
    with pytest.raises(RobustfastError, match=r"PlainGeneratorFGSM: its state .*'gen'.* is a Generator.*SeededRNG"):
        AdversarialTrainer(model, PlainGeneratorFGSM(model, EPS), progress=False)

    class SeededFGSM(rf.FGSM):  # the fix the message names
        state_attrs = ("gen",)

        def __init__(self, model, eps):
            super().__init__(model, eps)
            self.gen = rf.SeededRNG(0)

    AdversarialTrainer(model, SeededFGSM(model, EPS), progress=False)


def test_guard_eps_on_a_255_scale_is_refused_when_built(xy):
    x, y = xy
    with pytest.raises(RobustfastError, match=r"COGuard\(eps=8\).*did you mean eps=8/255"):
        rf.COGuard(x, y, eps=8)
