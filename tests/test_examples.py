"""Every script under examples/ runs at its tiny setting (offline, CPU), prints its result and writes its files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

needs_fmnist = pytest.mark.usefixtures("fashion_mnist")  # the one skip rule (tests/conftest.py)


def _run(args: list[str], cwd: Path, timeout: float = 300) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    # own session: on a timeout the whole group (torchrun's workers too) is killed, not only the launcher
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, f"{args} exited with {proc.returncode}:\n{(stdout + stderr)[-4000:]}"
    return stdout


def test_examples_readme_lists_every_example():
    readme = (EXAMPLES / "README.md").read_text()
    scripts = sorted(p.name for p in EXAMPLES.glob("[0-9]*.py"))
    assert len(scripts) == 5
    for name in scripts:
        assert name in readme, f"examples/README.md does not mention {name}"
        assert '"""' in (EXAMPLES / name).read_text()[:3], f"{name} must start with a module docstring"


def test_01_plug_in(tmp_path: Path):
    out = _run([str(EXAMPLES / "01_plug_in.py"), "--tiny"], tmp_path)
    assert "RESULT clean=" in out and "| pgd-20 |" in out


@needs_fmnist
def test_02_catastrophic_overfitting(tmp_path: Path):
    png = tmp_path / "co.png"
    out = _run([str(EXAMPLES / "02_catastrophic_overfitting.py"), "--tiny", "--out", str(png)], tmp_path)
    assert "| method | clean | FGSM | PGD | CO | time (s) |" in out
    for method in ("FGSM", "FGSM+GradAlign", "N-FGSM"):
        assert f"| {method} |" in out
    assert png.read_bytes()[:8] == PNG_MAGIC


@needs_fmnist
def test_03_vit_zerograd(tmp_path: Path):
    out = _run([str(EXAMPLES / "03_vit_zerograd.py"), "--tiny"], tmp_path)
    assert "RESULT ViT ZeroGrad(q=0.7) clean=" in out


@needs_fmnist
def test_04_wrn_seat_autoattack(tmp_path: Path):
    pytest.importorskip("pyautoattack", reason="AutoAttack (pyautoattack) not installed")
    report = tmp_path / "report.json"
    out = _run([str(EXAMPLES / "04_wrn_seat_autoattack.py"), "--tiny", "--save", str(report)], tmp_path)
    assert "RESULT WRN-10-1 SEAT: clean=" in out and "autoattack=" in out and "pgd-50-10=" in out
    assert report.is_file()


def test_05_multi_gpu_torchrun(tmp_path: Path):
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args += [str(EXAMPLES / "05_multi_gpu_torchrun.py"), "--backend", "gloo", "--tiny", "--log-dir", str(tmp_path)]
    out = _run(args, tmp_path)
    assert "RESULT world_size=2 clean=" in out
    assert (tmp_path / "history.json").is_file()
