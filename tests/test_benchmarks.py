"""Each benchmark script's ``--quick`` mode runs and prints a sane table (the scripts run concurrently)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from robustfast.data import missing_fashion_mnist_files

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["step_cost", "peers", "aa_overhead", "quality", "gpu_bench", "gradalign_fd", "co_guard", "masking_check"]
NEEDS_FASHION_MNIST = {"gradalign_fd"}  # their tests take the `fashion_mnist` fixture (skip when it is absent)


@pytest.fixture(scope="module")
def outputs() -> dict[str, subprocess.CompletedProcess]:
    """Start every script's quick mode at once (one torch thread each), then collect them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
        if name not in NEEDS_FASHION_MNIST or not missing_fashion_mnist_files()
    }
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


def _ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| " in res.stdout and "|---" in res.stdout, res.stdout
    assert "machine:" in res.stdout and "Command:" in res.stdout
    return res.stdout


def test_step_cost_quick(outputs):
    text = _ok(outputs["step_cost"])
    ratios = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\S+) \| \S+ \| ([0-9.]+)×", text, re.M)}
    assert ratios["standard"] == pytest.approx(1.0)
    assert {"fgsm", "pgd2", "fgsm+gradalign", "fgsm+gradalign_fd", "naive_gradalign"} <= ratios.keys()
    assert all(r > 0 for r in ratios.values())
    assert "naive GradAlign / ours (exact)" in text and "naive GradAlign / ours (fd)" in text


def test_peers_quick(outputs):
    text = _ok(outputs["peers"])
    rows = [line for line in text.splitlines() if line.startswith("| tiny_cnn")]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[4]) > 0 and cells[6] == "yes"
    assert "0.0e+00" in rows[0] and "0.0e+00" in rows[2]  # FGSM and PGD without random start: identical


def test_aa_overhead_quick(outputs):
    text = _ok(outputs["aa_overhead"])
    row = next(line for line in text.splitlines() if line.startswith("| linear"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[6]) > 0 and cells[8] == "yes"


def test_quality_quick(outputs):
    text = _ok(outputs["quality"])
    assert re.search(r"\| digits \| 0.2 \| FGSM \| [0-9.]+ ± [0-9.]+ \|", text)


def test_gpu_bench_quick(outputs):
    text = _ok(outputs["gpu_bench"])
    assert "AMP check passed" in text
    for method in ("clean", "FGSM", "N-FGSM", r"FGSM\+GradAlign", "PGD-10"):  # every step of issue 24's table
        assert re.search(
            rf"^\| tiny_cnn \| {method} \| 8 \| [0-9]+ \| [0-9]+ \| [0-9.]+× \| — \| — \| [0-9.]+ h \|$", text, re.M
        )
    assert re.search(r"^\| vit_tiny \| FGSM\+GradAlign \| 2 \| [0-9]+ \| [0-9]+ \|", text, re.M)  # double backward
    assert re.search(r"^\| 2 \| 8 \| fp32 \| [0-9]+ \| [0-9]+ \| [0-9]+% \| [0-9.]+ h \|$", text, re.M)  # 2-process DDP


def test_gradalign_fd_quick(fashion_mnist, outputs):
    text = _ok(outputs["gradalign_fd"])
    for method in ("FGSM", r"FGSM\+GradAlign \(exact\)", r"FGSM\+GradAlign \(fd\)"):
        assert re.search(rf"^\| {method} \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$", text, re.M), method
    cos = float(re.search(r"trained fd models: (-?[0-9.]+)", text).group(1))
    assert -1.0 <= cos <= 1.0


def test_co_guard_quick(outputs):
    text = _ok(outputs["co_guard"])
    assert "final − best checked epoch (guard), worst" in text and "restored at end" in text
    row = re.search(r"^\| digits \| 0\.2 \| FGSM \| 1 \| (\d) \| (\d) \| ([0-9.]+) \| (\d) \|", text, re.M)
    assert row is not None, text


def test_masking_check_quick(outputs):
    text = _ok(outputs["masking_check"])
    for check in ("pgd-50-10", "square", "transfer from PGD-10", "transfer from FGSM-PGI", "pgd-50 @ 0.1"):
        assert re.search(rf"^\| {check} \| [0-9.]+ ± [0-9.]+ \|", text, re.M) or check.startswith("transfer"), check
    assert re.search(r"^\| transfer from PGD-10 \| [0-9.]+ ± [0-9.]+ \| — \|$", text, re.M), text


def test_every_quality_recipe_builds():
    # the full run builds every method at startup; a recipe out of step with its class's signature would only
    # fail there (``--quick`` trains 3 methods)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _protocol as P
        import quality
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for name, (recipe, _) in quality.RECIPES.items():
        parts = recipe(P.cnn(8), 0.2, 0)
        assert name == "Standard" or parts["attack"] is not None, name
