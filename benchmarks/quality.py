"""Quality on public offline data: clean / PGD / AutoAttack accuracy, CO incidence and cost of every method.

Protocol (``_protocol.py``): Fashion-MNIST 28×28 (a fixed random subset of ``--n-train`` = 12,000 training images;
``--downsample 2`` average-pools to 14×14) and scikit-learn's digits (8×8, the 1,347 training images minus 256 held
out); the 2-conv CNN (16/32 channels, a 100-unit hidden layer); Adam with a one-cycle learning rate peaking at 3e-3
at 40% of training; batch 128; attacks in train mode; every method trained by ``AdversarialTrainer`` from the same
seed. Each method keeps its paper's hyper-parameters as multiples of ε (see ``RECIPES``); λ-type weights that the
papers tune per dataset are given once here for these datasets and stated in the docs.

Per run: the final model's clean accuracy, PGD-20 and PGD-50-10 (step ε/4, uniform starts, the per-example worst
case) and AutoAttack (``--aa``: ``lite`` = APGD-CE + APGD-T with 3 target classes, 1 restart, 100 iterations each; or
the ``standard`` version; ``--aa-seeds`` limits it to some seeds) on the first ``--n-eval`` test points; the test
PGD-10 accuracy on 200 points after every epoch (the curves); the training cost in CPU seconds of the training
process (one torch thread), divided by standard training's at the same setting and seed. A run *collapsed*
(catastrophic overfitting) when its per-epoch PGD-10 accuracy fell below half of its best earlier epoch's (a best
of at least 15%). At ε ≥ 0.3, ε ramps up over the first 10% of the epochs (``_protocol.eps_warmup``).

    python benchmarks/quality.py --quick                           # CI: digits, 1 seed, 2 epochs, 3 methods
    python benchmarks/quality.py --workers 2 --out docs/benchmarks/quality     # the full run
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import _protocol as P
from _timing import machine

import robustfast as rf
from robustfast.training import AdversarialTrainer

Recipe = Callable[[torch.nn.Module, float, int], dict[str, Any]]


def _r(**parts: Any) -> dict[str, Any]:
    return parts


#: method -> (trainer parts for (model, eps, seed), relative cost used only to schedule the longest runs first)
RECIPES: dict[str, tuple[Recipe, float]] = {
    "Standard": (lambda m, e, s: _r(attack=None), 1),
    "FGSM": (lambda m, e, s: _r(attack=rf.FGSM(m, e)), 2),
    "RS": (lambda m, e, s: _r(attack=rf.RS(m, e, seed=s)), 2),
    "N-FGSM": (lambda m, e, s: _r(attack=rf.NFGSM(m, e, seed=s)), 2),
    "ZeroGrad": (lambda m, e, s: _r(attack=rf.ZeroGrad(m, e, seed=s)), 2),
    "MultiGrad": (lambda m, e, s: _r(attack=rf.MultiGrad(m, e, seed=s)), 4),
    "FGSM-CKPT": (lambda m, e, s: _r(attack=rf.FGSMCKPT(m, e, seed=s)), 3),
    "FGSM-N": (lambda m, e, s: _r(attack=rf.FGSMN(m, e, seed=s)), 2),
    "Free-AT (m=4)": (lambda m, e, s: _r(attack=rf.FreeAT(m, e, 4)), 1),
    "FGSM-PGI": (lambda m, e, s: _r(attack=rf.FGSMPGI(m, e, seed=s), criterion=rf.PGILoss()), 3),
    "GAT": (lambda m, e, s: _r(attack=rf.GATAttack(m, e, seed=s), criterion=rf.GATLoss()), 3),
    "NuAT": (lambda m, e, s: _r(attack=rf.NuATAttack(m, e, seed=s), criterion=rf.NuATLoss()), 3),
    "SEAT": (lambda m, e, s: _r(attack=rf.SEATAttack(m, e, seed=s), regularizers=[rf.SEAT()]), 3),
    "SEAT (detach_clean)": (
        lambda m, e, s: _r(attack=rf.SEATAttack(m, e, seed=s), regularizers=[rf.SEAT(detach_clean=True)]), 3),
    "FGSM+GradAlign": (
        lambda m, e, s: _r(attack=rf.FGSM(m, e), regularizers=[rf.GradAlign(eps=e, lam=1.0, seed=s)]), 6),
    "FGSM+GradAlignFD": (
        lambda m, e, s: _r(attack=rf.FGSM(m, e), regularizers=[rf.GradAlignFD(eps=e, lam=1.0, seed=s)]), 5),
    "FGSM+ELLE-A": (lambda m, e, s: _r(attack=rf.FGSM(m, e), regularizers=[rf.ELLEA(eps=e, seed=s)]), 4),
    "FGSM+LLR": (lambda m, e, s: _r(attack=rf.FGSM(m, e), regularizers=[rf.LLR(eps=e, seed=s)]), 6),
    "FGSM-N+AdvLC": (lambda m, e, s: _r(attack=rf.FGSMN(m, e, seed=s), regularizers=[rf.AdvLC(lam=0.55)]), 3),
    "PGD-10": (lambda m, e, s: _r(attack=rf.PGD(m, e, e / 4, 10, True, seed=s)), 11),
    "TRADES": (lambda m, e, s: _r(attack=rf.TRADESAttack(m, e, seed=s), criterion=rf.TRADESLoss()), 12),
    "MART": (lambda m, e, s: _r(attack=rf.MARTAttack(m, e, seed=s), criterion=rf.MARTLoss()), 12),
    "PGD-10+AWP": (lambda m, e, s: _r(attack=rf.PGD(m, e, e / 4, 10, True, seed=s), plugins=[rf.AWP(m)]), 13),
}  # fmt: skip
QUICK_METHODS = ("Standard", "FGSM", "PGD-10")
PGD_REF = "PGD-10"


def available(method: str) -> bool:
    """Whether the method's classes exist in this robustfast."""
    try:
        RECIPES[method][0](P.cnn(8), 0.1, 0)
    except AttributeError:
        return False
    return True


def _same_protocol(cached: dict[str, Any], job: dict[str, Any]) -> bool:
    """Whether a cached run was made under ``job``'s protocol (its ``aa`` and ``pgd50`` fields hold accuracies)."""
    if (job["aa"] != "none" and cached.get("aa") is None) or (job["pgd50"] and cached.get("pgd50") is None):
        return False
    return all(cached.get(k) == v for k, v in job.items() if k not in ("aa", "pgd50"))


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (dataset, ε, method, seed) in a worker process (one torch thread)."""
    torch.set_num_threads(1)
    data = P.load(job["dataset"], job["n_train"], job["n_eval"], 256, job["downsample"])
    torch.manual_seed(job["seed"])
    model = P.cnn(data["x"].shape[-1], tuple(job.get("widths", (16, 32, 100))))
    eps, seed = job["eps"], job["seed"]
    parts = RECIPES[job["method"]][0](model, eps, seed)
    curve: list[float] = []
    xc, yc = data["xt"][:200], data["yt"][:200]

    eval_cpu = [0.0]

    class Curve:  # its CPU time is not training cost: subtracted below
        def on_epoch_end(self, trainer: AdversarialTrainer) -> None:
            t = time.process_time()
            curve.append(P.pgd_accuracy(trainer.model, xc, yc, eps, 10))
            eval_cpu[0] += time.process_time() - t

    epochs = job["epochs"]
    replays = getattr(parts.get("attack"), "replays", 1) or 1
    if replays > 1:  # Free-AT: each minibatch serves `replays` steps, so the passes over the data are divided
        epochs = max(1, round(epochs / replays))
    warm = P.eps_warmup(eps, epochs) if parts.get("attack") is not None else 0
    tr = AdversarialTrainer(model, optimizer=P.optimizer(model), lr_schedule=P.schedule(), val_attack=None,
                            callbacks=[Curve()], progress=False, verbose=False, seed=seed, eps_warmup=warm,
                            **parts)  # fmt: skip
    t0 = time.process_time()
    tr.fit(P.loader(data, seed), epochs)
    cpu = time.process_time() - t0 - eval_cpu[0]
    attacks: list[Any] = ["clean", "pgd-20"] + (["pgd-50-10"] if job.get("pgd50", True) else [])
    if job["aa"] == "standard":
        attacks.append("autoattack")
    elif job["aa"] == "lite":
        attacks.append(rf.evaluation.AutoAttackAdapter(model, eps, version="custom", attacks=["apgd-ce", "apgd-t"],
                                                       n_restarts=1, n_target_classes=3, seed=0))  # fmt: skip
    rep = rf.evaluate(model, (data["xt"], data["yt"]), eps, attacks, seed=0, progress=False)
    acc = dict(rep.accuracy)
    return {**job, "epochs_run": epochs, "cpu_seconds": cpu, "clean": acc["clean"], "pgd20": acc["pgd-20"],
            "pgd50": acc.get("pgd-50-10"),
            "aa": next((v for k, v in acc.items() if k.startswith("autoattack") or k.startswith("apgd")), None),
            "worst": rep.worst_case_accuracy, "curve": curve, "eps_warmup_epochs": warm,
            "lam": [h.get(k) for h in tr.history for k in h if k.startswith("lam_")]}  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, ε, method): mean ± std over seeds, collapses, cost relative to standard training."""
    std_cpu = {(r["dataset"], r["eps"], r["seed"]): r["cpu_seconds"] for r in runs if r["method"] == "Standard"}
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["eps"], r["method"]), []).append(r)
    rows = []
    for (ds, eps, method), rs in groups.items():

        def ms(key: str, rs: list[dict] = rs) -> tuple[float, float] | None:
            v = [r[key] for r in rs if r.get(key) is not None]
            if not v:
                return None
            return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

        costs = [r["cpu_seconds"] / std_cpu[(ds, eps, r["seed"])] for r in rs if (ds, eps, r["seed"]) in std_cpu]
        aa_seeds = sum(r.get("aa") is not None for r in rs)
        pgd50_seeds = sum(r.get("pgd50") is not None for r in rs)
        rows.append({"dataset": ds, "eps": eps, "method": method, "seeds": len(rs), "clean": ms("clean"),
                     "pgd20": ms("pgd20"), "pgd50": ms("pgd50"), "pgd50_seeds": pgd50_seeds, "aa": ms("aa"),
                     "aa_seeds": aa_seeds,
                     "collapsed": sum(P.collapsed(r["curve"]) for r in rs), "cost": ms_list(costs)})  # fmt: skip
    order = {m: i for i, m in enumerate(RECIPES)}
    rows.sort(key=lambda r: (r["dataset"], r["eps"], order.get(r["method"], 99)))
    return rows


def ms_list(v: list[float]) -> tuple[float, float] | None:
    if not v:
        return None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def fmt(v: tuple[float, float] | None, scale: float = 100.0, digits: int = 1) -> str:
    if v is None:
        return "—"
    return f"{scale * v[0]:.{digits}f} ± {scale * v[1]:.{digits}f}"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def table(rows: list[dict[str, Any]]) -> str:
    head = "| dataset | ε | method | clean % | PGD-20 % | PGD-50-10 % | AutoAttack % | collapsed | cost (× standard) |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        aa = fmt(r["aa"]) + (f" ({_seeds(r['aa_seeds'])})" if r["aa"] and r["aa_seeds"] != r["seeds"] else "")
        n50 = r.get("pgd50_seeds", r["seeds"])
        pgd50 = fmt(r["pgd50"]) + (f" ({_seeds(n50)})" if r["pgd50"] and n50 != r["seeds"] else "")
        lines.append(f"| {r['dataset']} | {r['eps']:g} | {r['method']} | {fmt(r['clean'])} | {fmt(r.get('pgd20'))} "
                     f"| {pgd50} | {aa} "
                     f"| {r['collapsed']}/{r['seeds']} | {fmt(r['cost'], 1.0, 2)} |")  # fmt: skip
    return "\n".join(lines)


def plots(rows: list[dict[str, Any]], runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """A Pareto plot (robust accuracy vs cost, error bars over seeds) per dataset, and the per-epoch curves of the
    largest ε. The robust accuracy is PGD-50-10 when every seed has it, else PGD-20."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for ds in sorted({r["dataset"] for r in rows}):
        sub = [r for r in rows if r["dataset"] == ds and r["cost"]]
        key, label = "pgd50", "PGD-50-10"
        if not all(r["pgd50"] and r.get("pgd50_seeds", r["seeds"]) == r["seeds"] for r in sub):
            key, label = "pgd20", "PGD-20"
        epss = sorted({r["eps"] for r in rows if r["dataset"] == ds})  # a setting without Standard has no cost
        fig, axes = plt.subplots(1, len(epss), figsize=(5.2 * len(epss), 4.4), squeeze=False)
        for ax, eps in zip(axes[0], epss, strict=True):
            for r in (r for r in sub if r["eps"] == eps):
                ax.errorbar(r["cost"][0], 100 * r[key][0], xerr=r["cost"][1], yerr=100 * r[key][1], fmt="o",
                            capsize=3, ms=4)  # fmt: skip
                ax.annotate(r["method"], (r["cost"][0], 100 * r[key][0]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("training cost (× standard training, CPU seconds)")
            ax.set_ylabel(f"{label} accuracy (%)")
            ax.set_title(f"{ds}, ε = {eps:g}")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        p = out.parent / f"{out.name}_pareto_{ds}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
        eps = max(epss) if epss else None
        if eps is None:
            continue
        sel = [r for r in runs if r["dataset"] == ds and r["eps"] == eps and r["curve"]]
        panels = [(m, [(r["curve"], "tab:red" if P.collapsed(r["curve"]) else "tab:blue", 0.8)
                       for r in sorted((r for r in sel if r["method"] == m), key=lambda r: r["seed"])])
                  for m in RECIPES if any(r["method"] == m for r in sel)]  # fmt: skip
        p = P.curve_grid(panels, "test PGD-10 %", "epoch", out.parent / f"{out.name}_curves_{ds}.png")
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits, one ε, one seed, 2 epochs, 3 methods (CI)")
    p.add_argument("--settings", nargs="+", default=["fashion_mnist:0.1", "fashion_mnist:0.2", "fashion_mnist:0.3",
                                                      "digits:0.1", "digits:0.2"])  # fmt: skip
    p.add_argument("--methods", nargs="+", default=None, help="default: every method available")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-train", type=int, default=12000, help="Fashion-MNIST training images")
    p.add_argument("--downsample", type=int, default=1, help="Fashion-MNIST average-pooling factor (2: 14x14)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--digits-epochs", type=int, default=P.DIGITS_EPOCHS)
    p.add_argument("--n-eval", type=int, default=1000, help="test points of the final evaluation")
    p.add_argument("--aa", choices=["lite", "standard", "none"], default="lite")
    p.add_argument("--aa-seeds", type=int, nargs="*", default=None, help="seeds evaluated with AutoAttack (all)")
    p.add_argument("--pgd50-seeds", type=int, nargs="*", default=None, help="seeds evaluated with PGD-50-10 (all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write <out>.json/.md/_*.png; per-run cache <out>_runs/")
    args = p.parse_args(argv)
    if args.quick:
        args.settings, args.seeds, args.digits_epochs, args.methods = ["digits:0.2"], [0], 2, list(QUICK_METHODS)
        args.n_eval, args.aa = 100, "none"
    methods = args.methods or [m for m in RECIPES if available(m)]
    jobs = []
    for s in args.settings:
        ds, eps = s.split(":")
        for m in methods:
            for seed in args.seeds:
                aa = args.aa if args.aa_seeds is None or seed in args.aa_seeds else "none"
                pgd50 = args.pgd50_seeds is None or seed in args.pgd50_seeds
                epochs = args.digits_epochs if ds in P.DIGITS else args.epochs
                down = args.downsample if ds not in P.DIGITS else 1
                jobs.append({"dataset": ds, "eps": float(eps), "method": m, "seed": seed, "aa": aa, "epochs": epochs,
                             "n_train": args.n_train, "downsample": down, "n_eval": args.n_eval,
                             "pgd50": pgd50, "cost_clock": "fit minus curve",
                             **({"warmup": "10%"} if P.eps_warmup(float(eps), epochs) else {})})  # fmt: skip
    cache = args.out.parent / f"{args.out.name}_runs" if args.out else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)

    def key(j: dict[str, Any]) -> str:
        return f"{j['dataset']}_{j['eps']:g}_{j['method']}_{j['seed']}".replace("/", "-").replace(" ", "")

    runs, todo = [], []
    for j in jobs:
        f = cache / f"{key(j)}.json" if cache is not None else None
        cached = json.loads(f.read_text()) if f is not None and f.is_file() else None
        if cached is not None and _same_protocol(cached, j):
            runs.append(cached)
        else:
            todo.append(j)
    todo.sort(key=lambda j: -RECIPES[j["method"]][1] * (4 if j["dataset"] not in P.DIGITS else 1))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        for j, r in zip(todo, pool.map(run, todo)):
            runs.append(r)
            if cache is not None:
                (cache / f"{key(j)}.json").write_text(json.dumps(r))
            print(f"# {key(j)}: clean {r['clean']:.3f} PGD-20 {r['pgd20']:.3f} PGD-50-10 {r['pgd50']} AA {r['aa']} "
                  f"collapsed {P.collapsed(r['curve'])} {r['cpu_seconds']:.0f} cpu-s", flush=True)  # fmt: skip
    rows = summarize(runs)
    text = table(rows)
    cmd = shlex.join(argv if argv is not None else sys.argv[1:])
    side = 28 // args.downsample
    meta = (f"Command: `python benchmarks/quality.py {cmd}`; machine: {machine()} (one torch thread per worker, "
            f"{args.workers} workers); date: {datetime.date.today()}; {time.perf_counter() - t0:.0f} s for the runs "
            f"not cached. Fashion-MNIST {side}×{side}, {args.n_train} training images, {args.epochs} epochs; digits "
            f"8×8, 1,091 training images (1,347 minus the 256 held out), {args.digits_epochs} epochs; final "
            f"evaluation on the first {args.n_eval} test points (digits: {min(args.n_eval, 450)} of its 450); "
            f"AutoAttack: {args.aa}"
            + (f" on seeds {args.aa_seeds}" if args.aa_seeds is not None else "")
            + (f"; PGD-50-10 on seeds {args.pgd50_seeds}" if args.pgd50_seeds is not None else "") + ".")  # fmt: skip
    print("\n" + text + "\n\n" + meta)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        args.out.with_suffix(".md").write_text(text + "\n\n" + meta + "\n")
        for path in plots(rows, runs, args.out):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
