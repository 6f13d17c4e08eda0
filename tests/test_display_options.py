"""No display option changes a single bit of training: the progress bar, the per-epoch line, the history files and
``--quiet`` leave the weights, the history and the random streams exactly as they are without them.

The progress bar used to wrap the loader in ``tqdm.auto.tqdm``, whose asyncio variant calls ``iter(loader)`` when
built: a second DataLoader iterator that drew from the loader's generator, so the shuffles differed from epoch 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
from robustfast.cli import main
from robustfast.data import load_digits_tensors
from robustfast.training import AdversarialTrainer, COGuard


def _fit(tmp_path: Path, **display) -> AdversarialTrainer:
    xtr, ytr, _, _ = load_digits_tensors(seed=0)
    torch.manual_seed(0)
    model = rf.models.create("small_cnn", num_classes=10, in_chans=1, width=8, hidden=32)
    loader = DataLoader(TensorDataset(xtr[:320], ytr[:320]), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    guard = COGuard(xtr[400:464], ytr[400:464])
    tr = AdversarialTrainer(model, rf.RS(model, 0.1, seed=0), lr=0.05, co_guard=guard, seed=0, **display)
    tr.fit(loader, 2, val_loader=[(xtr[500:564], ytr[500:564])])
    return tr


def _strip(history) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "ips")} for r in history]


def test_progress_bar_verbose_and_log_files_do_not_change_training(tmp_path: Path, capsys) -> None:
    quiet = _fit(tmp_path, progress=False, verbose=False)
    shown = _fit(tmp_path, progress=True, verbose=True, log_dir=tmp_path / "logs")
    assert "epoch 2/2" in capsys.readouterr().out and (tmp_path / "logs" / "history.csv").is_file()
    for (k, a), b in zip(quiet.model.state_dict().items(), shown.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert _strip(quiet.history) == _strip(shown.history)
    assert torch.equal(quiet.attack.rng.state_dict()["states"]["cpu"], shown.attack.rng.state_dict()["states"]["cpu"])


def test_cli_quiet_gives_the_same_model(tmp_path: Path) -> None:
    common = ["train", "--epochs", "2", "--eval-attacks", "clean", "--n-eval", "20"]
    assert main([*common, "--output", str(tmp_path / "a")]) == 0
    assert main([*common, "--output", str(tmp_path / "b"), "--quiet"]) == 0
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_callback_added_later_still_feeds_the_history_files(tmp_path: Path) -> None:
    """The trainer's own writers run after every other callback, also one added with add_callback: what it adds to an
    epoch's record reaches history.json at that epoch's end."""
    xtr, ytr, _, _ = load_digits_tensors(seed=0)
    model = rf.models.create("small_cnn", num_classes=10, in_chans=1, width=8, hidden=32)
    tr = AdversarialTrainer(model, rf.FGSM(model, 0.1), val_attack=None, progress=False, verbose=False,
                            log_dir=tmp_path)  # fmt: skip

    class Extra:
        def on_epoch_end(self, record):
            record["extra"] = record["epoch"] * 10

    tr.add_callback(Extra())
    tr.fit(DataLoader(TensorDataset(xtr[:64], ytr[:64]), batch_size=32), 1)
    import json

    assert json.loads((tmp_path / "history.json").read_text())[0]["extra"] == 10
