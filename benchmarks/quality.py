"""Quality on real data: clean / PGD accuracy of every fast-AT method, CO incidence across seeds, accuracy per cost.

Datasets: Fashion-MNIST (``robustfast.data``, a random training subset) and scikit-learn's digits (8×8). Model:
``robustfast.models.create("small_cnn", width=8, hidden=64)`` (BatchNorm), SGD momentum 0.9, weight decay 5e-4,
batch 128, cyclic learning rate (the trainer's default), every method trained by ``AdversarialTrainer`` from the
same seed (attacks in ``bn_mode="train"``).
Evaluation in fp32, eval mode: clean accuracy and PGD-20 (α = ε/4, one random start) on held-out test images.

Catastrophic overfitting (CO) of a run: its final PGD accuracy is below half of the PGD-10-AT reference's at the
same dataset, ε and seed while its FGSM accuracy stays above its PGD accuracy + 0.2 (the usual CO signature).
Cost = training wall time / standard training's in the same run.

    python benchmarks/quality.py --quick                     # CI: digits, one ε, one seed, 1 epoch, 3 methods
    python benchmarks/quality.py --out docs/benchmarks/quality   # full: writes .json, .md and .png
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from _timing import machine

import robustfast as rf
from robustfast.data import load_digits_tensors, load_fashion_mnist_tensors
from robustfast.models import create
from robustfast.training import AdversarialTrainer

WIDTH = 8

METHODS = (
    "Standard", "FGSM", "RS", "N-FGSM", "ZeroGrad", "MultiGrad", "SEAT", "FGSM+GradAlign", "FGSM+GradAlign(fd)",
    "FGSM+AdvLC", "PGD-10",
)  # fmt: skip


def build(method: str, model, eps: float, seed: int):
    """(attack, regularizers) of one method; the attacks run in ``bn_mode="train"`` like the papers' code."""
    kw = {"bn_mode": "train", "check_range": "off"}
    if method == "Standard":
        return None, []
    if method == "FGSM":
        return rf.FGSM(model, eps, **kw), []
    if method == "RS":
        return rf.RS(model, eps, seed=seed, **kw), []
    if method == "N-FGSM":
        return rf.NFGSM(model, eps, seed=seed, **kw), []
    if method == "ZeroGrad":
        return rf.ZeroGrad(model, eps, seed=seed, **kw), []
    if method == "MultiGrad":
        return rf.MultiGrad(model, eps, seed=seed, **kw), []
    if method == "SEAT":
        return rf.SEATAttack(model, eps, seed=seed, **kw), [rf.SEAT()]
    if method == "FGSM+GradAlign":
        return rf.FGSM(model, eps, **kw), [rf.GradAlign(eps=eps, lam=1.0, seed=seed)]
    if method == "FGSM+GradAlign(fd)":
        return rf.FGSM(model, eps, **kw), [rf.GradAlign(eps=eps, lam=1.0, seed=seed, estimator="fd")]
    if method == "FGSM+AdvLC":
        return rf.FGSM(model, eps, **kw), [rf.AdvLC()]
    if method == "PGD-10":
        return rf.PGD(model, eps, alpha=eps / 4, steps=10, seed=seed, **kw), []
    raise ValueError(method)


def load(dataset: str, n_train: int, n_test: int, seed: int):
    if dataset == "digits":
        return load_digits_tensors(seed=0)
    return load_fashion_mnist_tensors(n_train=n_train, n_test=n_test, seed=0)


def run_one(dataset, data, method, eps, seed, epochs, lr) -> dict:
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = create("small_cnn", num_classes=10, in_chans=1, width=WIDTH, hidden=64)
    attack, regs = build(method, model, eps, seed)
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    tr = AdversarialTrainer(model, attack, regs, lr=lr, val_attack=None, progress=False)
    t0 = time.perf_counter()
    tr.fit(loader, epochs)
    seconds = time.perf_counter() - t0
    model.eval()
    pgd = rf.PGD(model, eps, alpha=eps / 4, steps=20, seed=0)
    fgsm = rf.FGSM(model, eps)
    with torch.no_grad():
        clean = (model(xte).argmax(1) == yte).float().mean().item()
        robust = (model(pgd(xte, yte)).argmax(1) == yte).float().mean().item()
        fg = (model(fgsm(xte, yte)).argmax(1) == yte).float().mean().item()
    return {"dataset": dataset, "method": method, "eps": eps, "seed": seed, "clean": clean, "pgd": robust,
            "fgsm": fg, "seconds": seconds}  # fmt: skip


def summarize(runs: list[dict]) -> tuple[list[dict], dict]:
    """Per (dataset, ε, method): mean ± std over seeds, CO count, cost ratio, PGD accuracy per unit cost."""
    ref = {(r["dataset"], r["eps"], r["seed"]): r["pgd"] for r in runs if r["method"] == "PGD-10"}
    std_t = {(r["dataset"], r["eps"], r["seed"]): r["seconds"] for r in runs if r["method"] == "Standard"}
    for r in runs:
        k = (r["dataset"], r["eps"], r["seed"])
        r["co"] = bool(k in ref and r["method"] not in ("Standard", "PGD-10")
                       and r["pgd"] < 0.5 * ref[k] and r["fgsm"] > r["pgd"] + 0.2)  # fmt: skip
        r["cost"] = r["seconds"] / std_t[k] if k in std_t else float("nan")
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["eps"], r["method"]), []).append(r)
    rows = []
    for (ds, eps, method), rs in groups.items():

        def ms(key: str, rs=rs) -> tuple[float, float]:
            v = [r[key] for r in rs]
            return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

        cost = statistics.fmean(r["cost"] for r in rs)
        pgd = ms("pgd")
        rows.append({"dataset": ds, "eps": eps, "method": method, "clean": ms("clean"), "pgd": pgd,
                     "co": sum(r["co"] for r in rs), "seeds": len(rs), "cost": cost,
                     "pgd_per_cost": pgd[0] / cost if cost == cost and cost > 0 else float("nan")})  # fmt: skip
    return rows, groups


def table(rows: list[dict]) -> str:
    lines = ["| dataset | ε | method | clean % | PGD-20 % | CO runs | cost (× standard) | PGD % per cost unit |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['eps']:.3g} | {r['method']} | {100 * r['clean'][0]:.1f} ± {100 * r['clean'][1]:.1f}"
            f" | {100 * r['pgd'][0]:.1f} ± {100 * r['pgd'][1]:.1f} | {r['co']}/{r['seeds']} | {r['cost']:.2f} |"
            f" {100 * r['pgd_per_cost']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, meta: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for ds in sorted({r["dataset"] for r in rows}):
        sub = [r for r in rows if r["dataset"] == ds]
        epss = sorted({r["eps"] for r in sub})
        fig, axes = plt.subplots(1, len(epss), figsize=(5 * len(epss), 4.2), squeeze=False)
        for ax, eps in zip(axes[0], epss, strict=True):
            for r in (r for r in sub if r["eps"] == eps):
                ax.errorbar(r["cost"], 100 * r["pgd"][0], yerr=100 * r["pgd"][1], fmt="o", capsize=3)
                ax.annotate(r["method"], (r["cost"], 100 * r["pgd"][0]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("training cost (× standard training, wall time)")
            ax.set_ylabel("PGD-20 accuracy (%)")
            ax.set_title(f"{ds}, ε = {eps:.3g}")
            ax.grid(alpha=0.3)
        fig.text(0.01, 0.005, meta, fontsize=6, wrap=True)
        fig.tight_layout(rect=(0, 0.16 if len(epss) == 1 else 0.09, 1, 1))  # room for the wrapped meta line
        p = out.parent / f"{out.name}_{ds}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits (256 images), 1 ε, 1 seed, 1 epoch, 3 methods (CI)")
    p.add_argument("--datasets", nargs="+", default=["fashion_mnist", "digits"])
    p.add_argument("--fmnist-eps", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--digits-eps", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--digits-epochs", type=int, default=10)
    p.add_argument("--digits-n-train", type=int, default=None, help="digits training subset (default: all 1347)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on shared, loaded cores)")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--out", type=Path, default=None, help="write <out>.json, <out>.md and <out>_<dataset>.png")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.digits_eps, args.seeds, args.digits_epochs = ["digits"], [0.2], [0], 1
        args.methods, args.digits_n_train = ["Standard", "FGSM", "PGD-10"], 256
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    runs = []
    for ds in args.datasets:
        data = load(ds, args.n_train, args.n_test, 0)
        if ds == "digits" and args.digits_n_train:
            data = (data[0][: args.digits_n_train], data[1][: args.digits_n_train], *data[2:])
        epss, epochs = (args.digits_eps, args.digits_epochs) if ds == "digits" else (args.fmnist_eps, args.epochs)
        for eps in epss:
            for seed in args.seeds:
                for method in args.methods:
                    r = run_one(ds, data, method, eps, seed, epochs, args.lr)
                    runs.append(r)
                    print(f"# {ds} eps={eps:.3g} seed={seed} {method}: clean {r['clean']:.3f} PGD {r['pgd']:.3f} "
                          f"FGSM {r['fgsm']:.3f} ({r['seconds']:.1f}s)", flush=True)  # fmt: skip
    rows, _ = summarize(runs)
    meta = (f"Command: `python benchmarks/quality.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
            f"machine: {machine()}; date: {datetime.date.today()}; total {time.perf_counter() - t_start:.0f}s. "
            f"small_cnn(width=8, hidden=64), SGD cyclic lr_max {args.lr}, batch 128; Fashion-MNIST {args.n_train} "
            f"train / {args.n_test} test images, {args.epochs} epochs; digits 1347/450, {args.digits_epochs} epochs; "
            f"seeds {args.seeds}; PGD-20 (α=ε/4, random start) in eval mode.")  # fmt: skip
    text = table(rows)
    print("\n" + text + "\n\n" + meta)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs, "rows": rows}, indent=1))
        args.out.with_suffix(".md").write_text(text + "\n\n" + meta + "\n")
        for path in plot(rows, args.out, meta):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
