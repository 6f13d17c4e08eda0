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
