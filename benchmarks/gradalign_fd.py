"""Does finite-difference GradAlign keep the robustness? FGSM vs FGSM+GradAlign (exact / fd), several seeds.

Fashion-MNIST at ε = 0.2 (where plain FGSM training overfits catastrophically on some seeds), the setting of
``fmnist_table.py``: its small CNN, Adam, batch 128, ``AdversarialTrainer``; PGD-10 (α = ε/4, random start) in
eval mode on held-out images. Per seed the three runs start from the same weights and see the same batches.
Also reported: the cosine between the two estimators' parameter gradients of the penalty on one batch of the
trained fd model (how close the finite difference is to double backprop on a ReLU network), and the training
time of each method relative to FGSM's, measured in the same run.

    python benchmarks/gradalign_fd.py --quick                              # CI: 1 seed, 1,000 images, 1 epoch
    python benchmarks/gradalign_fd.py --out docs/benchmarks/gradalign_fd    # 5 seeds, 5,000 images, 3 epochs
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from _timing import machine
from fmnist_table import small_cnn

import robustfast as rf
from robustfast.data import load_fashion_mnist_tensors
from robustfast.training import AdversarialTrainer

METHODS = ("FGSM", "FGSM+GradAlign (exact)", "FGSM+GradAlign (fd)")


def make_model(activation: str) -> torch.nn.Module:
    """fmnist_table's CNN; ``activation="softplus"`` swaps every ReLU for a smooth softplus (β = 10)."""
    model = small_cnn()
    if activation == "softplus":
        for i, m in enumerate(model):
            if isinstance(m, torch.nn.ReLU):
                model[i] = torch.nn.Softplus(beta=10.0)
    return model


def regularizers(method: str, eps: float, lam: float, seed: int) -> list[rf.Regularizer]:
    if method == "FGSM":
        return []
    estimator = "fd" if method.endswith("(fd)") else "exact"
    return [rf.GradAlign(eps=eps, lam=lam, seed=seed, estimator=estimator)]


def penalty_grad_cosine(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    """Cosine between the exact and the finite-difference parameter gradient of the GradAlign penalty."""
    model.train()
    grads = []
    for est in ("exact", "fd"):
        value = rf.GradAlign(eps=eps, lam=1.0, seed=0, estimator=est)(model, x, y)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(value, list(model.parameters()))]))
    return F.cosine_similarity(grads[0], grads[1], dim=0).item()


def run(args: argparse.Namespace) -> tuple[list[dict], dict[str, float]]:
    xtr, ytr, xte, yte = load_fashion_mnist_tensors(n_train=args.n_train, n_test=args.n_test, seed=0)
    rows, cosines = [], {}
    warm = make_model(args.activation)  # first calls pay one-off costs (allocator, kernels): not inside any timed run
    for method in METHODS:
        step = rf.training.adversarial_step(warm, rf.FGSM(warm, args.eps), regularizers(method, args.eps, 1.0, 0),
                                            xtr[:128], ytr[:128])  # fmt: skip
        step.loss.backward()
    for seed in args.seeds:
        for method in METHODS:
            torch.manual_seed(seed)
            model = make_model(args.activation)
            attack = rf.FGSM(model, args.eps)
            opt = torch.optim.Adam(model.parameters(), lr=args.lr)
            data = DataLoader(TensorDataset(xtr, ytr), batch_size=128, shuffle=True,
                              generator=torch.Generator().manual_seed(seed))  # fmt: skip
            regs = regularizers(method, args.eps, args.lam, seed)
            trainer = AdversarialTrainer(model, attack, regs, optimizer=opt, val_attack=None, progress=False)
            t0 = time.perf_counter()
            trainer.fit(data, args.epochs)
            seconds = time.perf_counter() - t0
            model.eval()
            pgd = rf.PGD(model, args.eps, alpha=args.eps / 4, steps=10, seed=0)
            with torch.no_grad():
                clean = (model(xte).argmax(1) == yte).float().mean().item()
            robust = (model(pgd(xte, yte)).argmax(1) == yte).float().mean().item()
            rows.append({"seed": seed, "method": method, "clean": clean, "pgd": robust, "seconds": seconds})
            print(f"# seed {seed} {method}: clean {clean:.3f} PGD-10 {robust:.3f} ({seconds:.0f}s)", flush=True)
            if method.endswith("(fd)"):
                cosines[str(seed)] = penalty_grad_cosine(model, xtr[:128], ytr[:128], args.eps)
    return rows, cosines


def table(rows: list[dict], cosines: dict[str, float]) -> str:
    fgsm_time = {r["seed"]: r["seconds"] for r in rows if r["method"] == "FGSM"}
    lines = ["| method | clean % | PGD-10 % | PGD-10 % per seed | time / FGSM |", "|---|---|---|---|---|"]
    for method in METHODS:
        rs = [r for r in rows if r["method"] == method]
        clean, pgd = [100 * r["clean"] for r in rs], [100 * r["pgd"] for r in rs]
        ratio = statistics.median(r["seconds"] / fgsm_time[r["seed"]] for r in rs)

        def fmt(v: list[float]) -> str:
            return f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"

        lines.append(f"| {method} | {fmt(clean)} | {fmt(pgd)} | {' / '.join(f'{p:.1f}' for p in pgd)} | {ratio:.2f} |")
    cos = ", ".join(f"{c:.2f}" for c in cosines.values())
    lines += ["", f"cosine(exact, fd) of the penalty's parameter gradient on the trained fd models: {cos}"]
    return "\n".join(lines)


def step_sweep(args: argparse.Namespace) -> str:
    """Cosine and norm ratio of the fd parameter gradient to the exact one, for fd steps from ε down to 1e-6·ε,
    in float32 and float64, on the ReLU and the softplus CNN at initialization (one batch of 128 training images)."""
    xtr, ytr, _, _ = load_fashion_mnist_tensors(n_train=128, n_test=10, seed=0)
    lines = ["| network | dtype | " + " | ".join(f"fd_step = {f:g}·ε" for f in STEPS) + " |",
             "|---|---|" + "---|" * len(STEPS)]  # fmt: skip
    for act in ("relu", "softplus"):
        for dtype in (torch.float32, torch.float64):
            torch.manual_seed(0)
            model = make_model(act).to(dtype).train()
            x, y = xtr.to(dtype), ytr
            exact = rf.GradAlign(eps=args.eps, lam=1.0, seed=0)(model, x, y)
            ge = torch.cat([g.flatten() for g in torch.autograd.grad(exact, list(model.parameters()))])
            cells = []
            for f in STEPS:
                fd = rf.GradAlignFD(eps=args.eps, lam=1.0, seed=0, fd_step=f * args.eps)(model, x, y)
                gf = torch.cat([g.flatten() for g in torch.autograd.grad(fd, list(model.parameters()))])
                cells.append(f"{F.cosine_similarity(ge, gf, dim=0).item():.2f} ({(gf.norm() / ge.norm()).item():.1f}×)")
            lines.append(f"| {act} | {str(dtype).split('.')[-1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


STEPS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--activation", choices=("relu", "softplus"), default="relu",
                   help="softplus: a smooth network, where fd converges to double backprop")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="1 seed, 1,000 images, 1 epoch, 1 thread (CI)")
    sweep_help = "only the cosine/norm of the fd gradient vs the exact one over fd steps and dtypes"
    p.add_argument("--step-sweep", action="store_true", help=sweep_help)
    p.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.n_train, args.n_test, args.epochs, args.threads = [0], 1000, 200, 1, 1
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.step_sweep:
        cmd = shlex.join(argv if argv is not None else sys.argv[1:])
        note = (f"\n\nCells: cosine between the parameter gradients of the penalty (fd vs exact), and the fd "
                f"gradient's norm / the exact one's. Fashion-MNIST, one batch of 128, ε = {args.eps}, fmnist_table's "
                f"CNN at initialization. Command: `python benchmarks/gradalign_fd.py {cmd}`; machine: {machine()}; "
                f"date: {datetime.date.today()}.")  # fmt: skip
        text = step_sweep(args) + note
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".md").write_text(text + "\n")
        return
    rows, cosines = run(args)
    cmd = shlex.join(argv if argv is not None else sys.argv[1:])
    meta = (f"Command: `python benchmarks/gradalign_fd.py {cmd}`; machine: {machine()}; date: {datetime.date.today()}; "
            f"total {time.perf_counter() - t0:.0f}s. Fashion-MNIST ε = {args.eps}, {args.n_train} training images, "
            f"{args.epochs} epochs, Adam lr {args.lr}, λ = {args.lam}, fd step = ε, {args.activation} activations; "
            f"PGD-10 on {args.n_test} test images; seeds {args.seeds}.")  # fmt: skip
    text = table(rows, cosines) + "\n\n" + meta
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "cosines": cosines}, indent=2))
        args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
