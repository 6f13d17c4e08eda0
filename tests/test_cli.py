"""The command line: configuration precedence, presets, errors, and a tiny end-to-end train + eval run."""

from __future__ import annotations

import json

import pytest
import yaml

from robustfast import RobustfastError
from robustfast.cli import build_method, build_parser, config_from_args, main
from robustfast.config import RunConfig, list_presets, load_preset, parse_number
from robustfast.models import create

REQUIRED_PRESETS = {
    "gradalign-cifar10-eps8",
    "zerograd-cifar10-eps8",
    "nfgsm-cifar10-eps8",
    "seat-cifar10-eps8",
    "advlc-cifar10",
    "demo",
}


def parse(*argv: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_parse_number_accepts_fractions() -> None:
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number(0.1) == 0.1
    with pytest.raises(RobustfastError, match="8/255"):
        parse_number("eight")


def test_presets_exist_and_carry_the_papers_values() -> None:
    assert REQUIRED_PRESETS <= set(list_presets())
    ga = RunConfig.from_dict(load_preset("gradalign-cifar10-eps8"))
    assert ga.eps == pytest.approx(8 / 255) and ga.lr == 0.3 and ga.peak == 0.4 and ga.epochs == 30
    assert ga.attack == {"name": "fgsm"} and ga.regularizers == [{"name": "gradalign", "lam": 0.2}]
    zg = RunConfig.from_dict(load_preset("zerograd-cifar10-eps8"))
    assert zg.attack["q"] == 0.35 and zg.peak == 0.5 and zg.normalize == "cifar10"
    pgd = RunConfig.from_dict(load_preset("pgd10-cifar10-eps8"))
    assert pgd.attack["alpha"] == pytest.approx(2 * pgd.eps / 10) and pgd.attack["random_start"] is False
    advlc = RunConfig.from_dict(load_preset("advlc-cifar10"))
    assert advlc.milestones == [100, 150] and advlc.weight_decay == 1e-4 and advlc.regularizers[0]["lam"] == 0.4


def test_every_preset_builds_its_method() -> None:
    for name in list_presets():
        cfg = RunConfig.from_dict(load_preset(name))
        model = create("small_cnn", num_classes=10, in_chans=3)
        attack, regs = build_method(cfg, model)
        assert attack is not None and attack.eps == pytest.approx(cfg.eps)
        for r in regs:
            if hasattr(r, "eps"):
                assert r.eps == pytest.approx(cfg.eps)  # regularizers get the run's eps


def test_flags_override_config_file_override_preset(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"epochs": 3, "eps": "4/255", "attack": {"name": "rs"}}))
    cfg = parse("--preset", "zerograd-cifar10-eps8", "--config", str(f), "--epochs", "5")
    assert cfg.epochs == 5  # flag wins
    assert cfg.eps == pytest.approx(4 / 255)  # file beats preset
    assert cfg.attack == {"name": "rs"} and cfg.dataset == "cifar10"  # preset fills the rest
    cfg = parse("--attack", "zerograd", "--attack-arg", "q=0.5", "--reg", "gradalign:lam=0.3")
    assert cfg.attack == {"name": "zerograd", "q": 0.5} and cfg.regularizers == [{"name": "gradalign", "lam": 0.3}]
    cfg = parse("--preset", "awp-cifar10", "--loss", "trades:beta=3", "--plugin", "awp:gamma=0.005")
    assert cfg.loss == {"name": "trades", "beta": 3} and cfg.plugins == [{"name": "awp", "gamma": 0.005}]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--preset", "zerograd-cifar10"], "Did you mean"),
        (["--eps", "8"], r"did you mean eps=8/255\?"),
        (["--eps=-1"], r"eps=-1: eps must be >= 0 \(an L∞ radius"),
        (["--schedule", "cyclic", "--lr", "fast"], "lr="),
    ],
)
def test_bad_configuration_is_a_clear_error(argv, match) -> None:
    with pytest.raises(RobustfastError, match=match):
        parse(*argv)


def test_unknown_config_key(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("epoch: 3\n")
    with pytest.raises(RobustfastError, match="Did you mean 'epochs'"):
        parse("--config", str(f))


def test_main_reports_errors_with_exit_code_2(capsys, tmp_path) -> None:
    assert main(["train", "--attack", "zerogard", "--epochs", "1", "--output", str(tmp_path / "run")]) == 2
    assert "Did you mean 'zerograd'" in capsys.readouterr().err


def test_train_then_eval_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--epochs", "2", "--eval-attacks", "clean", "pgd-5", "--n-eval", "60", "--output", str(out),
            "--reg", "gradalign:lam=0.5", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    for name in ("config.yaml", "history.json", "history.csv", "curves.png", "report.md", "report.json", "model.pt"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and all("val_robust_acc" in h for h in history)
    report = json.loads((out / "report.json").read_text())
    acc = {r["name"]: r["accuracy"] for r in report["results"]} if "results" in report else report["accuracy"]
    assert acc["clean"] >= acc["pgd-5"] and acc["clean"] > 0.5
    assert "pgd-5" in capsys.readouterr().out
    # evaluate the saved weights again with the run's own config
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--config", str(out / "config.yaml"),
                 "--attacks", "clean", "--n-eval", "60", "--output", str(tmp_path / "ev"), "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "ev" / "report.md").read_text().count("clean") >= 1


def test_presets_command_lists_presets(capsys) -> None:
    assert main(["presets"]) == 0
    assert "gradalign-cifar10-eps8" in capsys.readouterr().out


def test_fractions_in_method_arguments() -> None:
    cfg = parse("--attack", "rs", "--attack-arg", "alpha=10/255", "--reg", "gradalign:eps=8/255,lam=0.2")
    assert cfg.attack["alpha"] == pytest.approx(10 / 255)
    assert cfg.regularizers == [{"name": "gradalign", "eps": pytest.approx(8 / 255), "lam": 0.2}]


def test_bad_names_come_before_the_output_folder_check(capsys, tmp_path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("epochs: 1\n")  # an existing run
    for flags, hint in ((["--attack", "zerogard"], "'zerograd'"), (["--reg", "gradalgn"], "'gradalign'"),
                        (["--model", "small_cn"], "'small_cnn'"), (["--loss", "trdes"], "'trades'"),
                        (["--plugin", "awq"], "'awp'")):  # fmt: skip
        assert main(["train", *flags, "--output", str(tmp_path / "run")]) == 2
        assert f"Did you mean {hint}" in capsys.readouterr().err


# ------------------------------------------------------------------------------- a method of the user's own
MINE = '''
from robustfast.attacks import FGSM, register_attack


@register_attack("half_fgsm")
class HalfFGSM(FGSM):
    """FGSM with half the step (a method of the user's own)."""

    def __init__(self, model, eps=8 / 255, **kw):
        super().__init__(model, eps, alpha=eps / 2, **kw)
'''


def _cli(*argv: str, env: dict | None = None, cwd=None):
    import os
    import subprocess
    import sys

    full = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "robustfast.cli", *argv], capture_output=True, text=True, env=full,
                          cwd=cwd, timeout=300)  # fmt: skip


def test_user_method_files_are_visible_to_the_cli(tmp_path) -> None:
    mine = tmp_path / "mine.py"
    mine.write_text(MINE)
    assert "half_fgsm  FGSM with half the step" in _cli("list", "attacks", "--import", str(mine)).stdout
    assert "half_fgsm" in _cli("--import", str(mine), "list", "attacks").stdout  # before the command too
    assert "half_fgsm" in _cli("list", "attacks", env={"ROBUSTFAST_IMPORT": str(mine)}).stdout
    unknown = _cli("train", "--attack", "half_fgsm", "--output", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "--import path/to/file.py" in unknown.stderr
    run = tmp_path / "run"
    common = ["--epochs", "1", "--eval-attacks", "clean", "--n-eval", "10", "--quiet"]
    res = _cli("train", "--attack", "half_fgsm", "--import", str(mine), "--output", str(run), *common)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["imports"] == [str(mine.resolve())]
    again = _cli("train", "--output", str(run), "--resume", "--epochs", "2", "--quiet")  # no --import: the run knows
    assert again.returncode == 0, again.stderr
    ev = _cli("eval", "--checkpoint", str(run / "model.pt"), "--attacks", "clean", "--n-eval", "10", "--quiet")
    assert ev.returncode == 0, ev.stderr


def test_import_errors_are_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\nraise ValueError('oops')\n")
    res = _cli("list", "attacks", "--import", str(bad))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--import" in res.stderr and "ValueError: oops (line 2 of" in res.stderr
    missing = _cli("list", "--import", "no_such_module_here")
    assert missing.returncode == 2 and "no module named 'no_such_module_here'" in missing.stderr


def test_installed_packages_add_methods_through_entry_points(tmp_path) -> None:
    site = tmp_path / "site"
    (site / "mine_pkg-0.1.dist-info").mkdir(parents=True)
    (site / "mine_pkg-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mine-pkg\nVersion: 0.1\n")
    (site / "mine_pkg-0.1.dist-info" / "entry_points.txt").write_text("[robustfast.methods]\nhalf = mine_methods\n")
    (site / "mine_methods.py").write_text(MINE)
    res = _cli("list", "attacks", env={"PYTHONPATH": str(site)})
    assert "half_fgsm" in res.stdout, res.stderr
