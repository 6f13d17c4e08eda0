"""The command line never damages a run folder, and every bad input ends in ``robustfast: error: ...`` (exit 2)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from robustfast import RobustfastError
from robustfast.attacks import ATTACKS
from robustfast.cli import build_data, main
from robustfast.component import PLUGINS
from robustfast.config import RunConfig, list_presets
from robustfast.losses import LOSSES
from robustfast.models import MODELS
from robustfast.regularizers import REGULARIZERS

EPS = "4/255"  # not the default 0.1: eval must read it from the run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny digits run (1 epoch), shared; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = ["train", "--epochs", "1", "--eps", EPS, "--eval-attacks", "clean", "pgd-3", "--n-eval", "30",
            "--output", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustfast: error: ") or "\nrobustfast: error: " in err, err
    return err


# ------------------------------------------------------------------------------------------------ run folders
def test_train_refuses_to_overwrite_an_existing_run(run: Path, capsys) -> None:
    before = snapshot(run)
    err = fails(["train", "--epochs", "1", "--output", str(run), "--quiet"], capsys)
    assert "already holds a run (config.yaml, model.pt" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(run) == before


def test_overwrite_replaces_the_run_and_its_stale_evaluations(run: Path, capsys) -> None:
    (run / "eval").mkdir()
    (run / "eval" / "report.md").write_text("old evaluation")
    (run / "notes.txt").write_text("mine")
    argv = ["train", "--epochs", "1", "--eval-attacks", "clean", "--n-eval", "20", "--output", str(run), "--quiet",
            "--overwrite"]  # fmt: skip
    assert main(argv) == 0
    assert not (run / "eval").exists() and (run / "notes.txt").read_text() == "mine"
    assert RunConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text())).eps == pytest.approx(0.1)
    assert "removed the earlier run's files" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "conflict"),
    [
        (["--model", "preact_resnet18"], "model: 'small_cnn' (run) vs 'preact_resnet18' (now)"),
        (["--eps", "8/255"], "eps: 0.01568627450980392 (run) vs 0.03137254901960784 (now)"),
        (["--reg", "gradalign"], "regularizers: [] (run) vs [{'name': 'gradalign'}] (now)"),
    ],
)
def test_resume_with_other_settings_writes_nothing(run: Path, capsys, flags, conflict) -> None:
    before = snapshot(run)
    err = fails(["train", "--resume", "--output", str(run), "--quiet", *flags], capsys)
    assert "was trained with other settings" in err and conflict in err and "Nothing was written" in err
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("truncate", r"train --resume: could not read checkpoint .*last.pt.*truncated.*--overwrite"),
        ("garbage", r"train --resume: could not read checkpoint .*last.pt.*not a torch file"),
        ("weights", "is not a training checkpoint written by `robustfast train`"),
    ],
)
def test_resume_from_a_damaged_checkpoint_is_a_clear_error(run: Path, capsys, damage, match) -> None:
    last = run / "checkpoints" / "last.pt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:5000])
    elif damage == "garbage":
        last.write_bytes(b"<html>not a checkpoint</html>")
    else:
        shutil.copy(run / "model.pt", last)
    before = snapshot(run)
    err = fails(["train", "--resume", "--output", str(run), "--quiet"], capsys)
    assert re.search(match, err), err
    assert "weights_only=False" not in err  # never suggest the unsafe load
    assert snapshot(run) == before


def test_resume_continues_with_the_runs_own_settings(run: Path, capsys) -> None:
    assert main(["train", "--resume", "--output", str(run), "--epochs", "2", "--eval-attacks", "clean", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "with changed settings: epochs 1 -> 2" in err
    history = json.loads((run / "history.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert len(history) == 2 and cfg["epochs"] == 2 and cfg["eps"] == pytest.approx(4 / 255)


def test_eval_reads_the_runs_config_and_keeps_the_training_report(run: Path, capsys) -> None:
    before = snapshot(run)
    assert main(["eval", "--checkpoint", str(run / "model.pt"), "--attacks", "clean", "fgsm", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"settings from {run / 'config.yaml'} (dataset=digits, model=small_cnn, eps=4/255)" in err
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["eps"] == pytest.approx(4 / 255) and report["n_examples"] == 30  # the run's eval.n_examples
    assert [r["name"] for r in report["results"]] == ["clean", "fgsm"]
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("eval")} == before  # training report kept
    # a second evaluation asks before replacing the first
    err = fails(["eval", "--checkpoint", str(run / "model.pt"), "--attacks", "clean", "--quiet"], capsys)
    assert "eval already holds report.md, report.json; pass --overwrite" in err
    argv = ["eval", "--checkpoint", str(run / "model.pt"), "--attacks", "clean", "--quiet", "--overwrite"]
    assert main(argv) == 0
    assert [r["name"] for r in json.loads((run / "eval" / "report.json").read_text())["results"]] == ["clean"]


def test_eval_a_resume_checkpoint_and_save_adversarial_examples(run: Path, capsys) -> None:
    out = run / "ev2"
    argv = ["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--attacks", "clean", "pgd-3", "--n-eval",
            "12", "--output", str(out), "--save-adversarial", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    saved = torch.load(out / "adversarial" / "pgd-3.pt", weights_only=True)
    assert saved["adv_inputs"].shape == (12, 1, 8, 8) and saved["labels"].shape == (12,)
    assert saved["eps"] == pytest.approx(4 / 255)


def test_eval_without_a_run_config_says_what_it_uses(run: Path, tmp_path: Path, capsys) -> None:
    lone = tmp_path / "lone" / "weights.pt"
    lone.parent.mkdir()
    shutil.copy(run / "model.pt", lone)
    assert main(["eval", "--checkpoint", str(lone), "--attacks", "clean", "--n-eval", "10", "--quiet"]) == 0
    assert "no config.yaml next to" in capsys.readouterr().err and (lone.parent / "eval" / "report.md").is_file()


def test_validation_points_are_held_out_of_the_training_split() -> None:
    data = build_data(RunConfig())
    x_val, y_val = data.val
    subset = data.train.dataset.dataset  # the loader's IndexedDataset wraps the held-in Subset
    train_x, train_y = subset.dataset.tensors
    held = sorted(set(range(len(train_x))) - set(subset.indices))
    assert len(held) == len(x_val) == 134 and len(subset) + len(x_val) == 1347  # 10% of digits' training split
    assert sorted(bytes(r.numpy()) for r in x_val) == sorted(bytes(train_x[i].numpy()) for i in held)
    assert sorted(y_val.tolist()) == sorted(train_y[held].tolist())
    assert len(data.test.dataset) == 450  # the test split (the report's points) is left whole
    batch = next(iter(data.train))
    assert len(batch) == 3 and batch[2].dtype == torch.long  # batches carry dataset indices (FGSM-PGI's memory)
    with pytest.raises(RobustfastError, match="held out of it, so choose fewer"):
        build_data(RunConfig.from_dict({"val_examples": 2000}))


# ------------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--attack-arg", "qq=0.3"], "attack 'fgsm' (FGSM): unknown keyword 'qq'. Valid keywords: alpha, bn_mode"),
        (["--attack", "zerograd", "--attack-arg", "qq=0.3"], "unknown keyword 'qq'. Did you mean 'q'? Valid keywords"),
        (["--reg", "gradalign:lamb=0.3"], "regularizer 'gradalign' (GradAlign): unknown keyword 'lamb'. Did you mean"),
        (["--attack-arg", "model=1"], "attack 'fgsm' (FGSM): 'model' is set by the command line"),
        (["--attack-arg", "q"], "'q': expected key=value"),
        (["--device", "gpu"], "device='gpu': not a torch device; use cpu, cuda, cuda:N"),
        (["--dataset", "cifar-1O"], "unknown dataset 'cifar-1O'. Did you mean 'cifar10'"),
        (["--eps", "8"], "eps=8 looks like a 0-255 scale but inputs are in [0, 1]; did you mean eps=8/255?"),
        (["--eps=-1"], "eps=-1: eps must be >= 0 (an L∞ radius in pixel units, e.g. 8/255)\n"),
    ],
)
def test_bad_train_inputs_are_clear_errors_and_write_nothing(tmp_path: Path, capsys, flags, message) -> None:
    out = tmp_path / "never"
    err = fails(["train", "--epochs", "1", "--output", str(out), "--quiet", *flags], capsys)
    assert message in err, err
    assert "-1/255" not in err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu(tmp_path: Path, capsys) -> None:
    err = fails(["train", "--device", "cuda", "--output", str(tmp_path / "x"), "--quiet"], capsys)
    assert "device='cuda' but no CUDA GPU is available" in err and "--device cpu" in err


@pytest.mark.parametrize(
    ("swa", "message"),
    [
        ({"start_epoch": 5, "every": 5}, "swa.start_epoch=5 but the run trains 2 epochs"),
        ({"start_epoch": 1, "every": 500}, "averaging every 500 steps never happens"),
        ({"start_epoch": 1, "evry": 5}, "swa (SWA): unknown keyword 'evry'. Did you mean 'every'?"),
    ],
)
def test_swa_that_would_average_nothing_is_caught_before_training(tmp_path: Path, capsys, swa, message) -> None:
    cfg = tmp_path / "swa.yaml"
    cfg.write_text(yaml.safe_dump({"swa": swa, "epochs": 2}))
    out = tmp_path / "never"
    assert message in fails(["train", "--config", str(cfg), "--output", str(out), "--quiet"], capsys)
    assert not out.exists()


def test_unreadable_config_files(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    assert "is not valid YAML" in fails(["train", "--config", str(bad)], capsys)
    assert "cannot read the configuration file" in fails(["train", "--config", str(tmp_path / "none.yaml")], capsys)


# ------------------------------------------------------------------------------------------------ listings
def test_list_reads_the_registries(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for registry in (ATTACKS, REGULARIZERS, LOSSES, PLUGINS, MODELS):
        assert registry.list(), registry
        for name in registry.list():
            assert f"\n  {name} " in out, name
    assert main(["list", "regularizers"]) == 0
    only = capsys.readouterr().out
    assert only.startswith("regularizers") and "attacks (" not in only


def test_presets_show_method_and_eps(capsys) -> None:
    assert main(["presets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert set(list_presets()) <= set(lines)
    assert "8/255" in lines["gradalign-cifar10-eps8"] and "gradalign(lam=0.2)" in lines["gradalign-cifar10-eps8"]
    assert "zerograd(q=0.35)" in lines["zerograd-cifar10-eps8"] and "digits/small_cnn" in lines["demo"]
    assert "advlc(lam=0.3)" in lines["advlc-swa-cifar10"]
    assert "awp(gamma=0.01)" in lines["awp-cifar10"] and "trades(beta=6)" in lines["trades-cifar10"]


# ------------------------------------------------------------------------------------- the operating system's errors
def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) <= 2, err
    return lines[-1]


def test_read_only_output_is_one_line_before_training(tmp_path: Path, capsys, monkeypatch) -> None:
    import errno

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    err = fails(["train", "--epochs", "1", "--output", str(tmp_path / "ro"), "--quiet"], capsys)
    line = _one_line(err)
    assert "cannot write to the output folder" in line and "Read-only file system" in line and "--output" in line


def test_full_disk_mid_run_is_one_line_with_the_resume_command(tmp_path: Path, capsys, monkeypatch) -> None:
    import errno
    import os

    real, out = os.fsync, tmp_path / "full"

    def fsync(fd):  # the first epoch's files are written; then the disk is full
        if (out / "checkpoints" / "last.pt").is_file():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    err = fails(["train", "--epochs", "3", "--output", str(out), "--quiet"], capsys)
    line = _one_line(err)
    assert "disk is full" in line and f"robustfast train --output {out} --resume" in line, line
    monkeypatch.undo()
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1  # intact, resumable


def test_ctrl_c_says_how_to_resume(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "robustfast.cli", "train", "--epochs", "200", "--output", str(out), "--quiet"]
    # a shell without job control starts background commands with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the child the default disposition, as a terminal would (CI may run in the background)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.pt").is_file() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    line = _one_line(stderr)
    assert "interrupted" in line and f"robustfast train --output {out} --resume" in line, stderr


def test_eval_with_another_model_names_the_mismatch_briefly(run: Path, capsys) -> None:
    err = fails(["eval", "--checkpoint", str(run / "model.pt"), "--model", "preact_resnet18", "--attacks", "clean"],
                capsys)  # fmt: skip
    line = _one_line(err)
    assert "do not fit this model" in line and "Missing key(s)" not in err and len(line) < 600, line
