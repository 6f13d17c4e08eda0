"""Does the catastrophic-overfitting guard rescue runs, without firing on runs that do not collapse?

Protocol (``_protocol.py``): Fashion-MNIST (12,000 training images) or digits, the 2-conv CNN, Adam with a
one-cycle learning rate (peak 3e-3 at 40%), batch 128, 10 epochs (digits: 100), attacks in train mode. The guard
uses 256 images held out of the training split. After every epoch the test PGD-20 accuracy (step ε/4) is measured
on ``--n-epoch-eval`` test points; the final model gets PGD-20 on ``--n-test`` points.

Every (dataset, ε, method, seed) is run with the guard in ``"flag"`` mode (it only records its checks: the run is
the unguarded run) and, when the guard flagged anything there, again in ``"rollback"`` mode (a run the guard never
flags is identical in both modes: the guard draws no training randomness). A run *collapsed* when its test PGD-20
accuracy at some epoch fell below half of its best earlier epoch's (a best of at least 15%).

    python benchmarks/co_guard.py --quick                       # CI: digits, 1 seed, 2 epochs, 2 methods
    python benchmarks/co_guard.py --out docs/benchmarks/co_guard --workers 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import _protocol as P
from _timing import machine

import robustfast as rf
from robustfast.training import AdversarialTrainer, COGuard


def parts(method: str, model: torch.nn.Module, eps: float, seed: int) -> dict[str, Any]:
    """Trainer arguments of one method."""
    if method == "FGSM":
        return {"attack": rf.FGSM(model, eps)}
    if method.startswith("FGSM+GradAlign"):
        lam = float(method.split("λ=")[1].rstrip(")"))
        return {"attack": rf.FGSM(model, eps), "regularizers": [rf.GradAlign(eps=eps, lam=lam, seed=seed)]}
    if method == "RS":
        return {"attack": rf.RS(model, eps, seed=seed)}
    if method == "N-FGSM":
        return {"attack": rf.NFGSM(model, eps, seed=seed)}
    if method == "PGD-10":
        return {"attack": rf.PGD(model, eps, eps / 4, 10, True, seed=seed)}
    if method == "FGSM+ELLE-A":
        return {"attack": rf.FGSM(model, eps), "regularizers": [rf.ELLEA(eps=eps, seed=seed)]}
    raise ValueError(method)


METHODS = ("FGSM", "FGSM+GradAlign(λ=0.5)", "RS", "N-FGSM", "PGD-10", "FGSM+ELLE-A")
EXTRA = ("FGSM+GradAlign(λ=1.0)", "FGSM+GradAlign(λ=2.0)")  # fixed λ, for the "best fixed λ" comparison
COST = {"PGD-10": 6, "FGSM+GradAlign": 3, "FGSM+ELLE-A": 2.5}


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one run and measure it (executed in a worker process)."""
    torch.set_num_threads(1)
    data = P.load(job["dataset"], job["n_train"], job["n_test"], 256, 1)
    torch.manual_seed(job["seed"])
    side = data["x"].shape[-1]
    model = P.cnn(side)
    eps = job["eps"]
    n_ev = job["n_epoch_eval"]
    curve: list[float] = []

    class EpochEval:
        def on_epoch_end(self, trainer: AdversarialTrainer) -> None:
            curve.append(P.pgd_accuracy(trainer.model, data["xt"][:n_ev], data["yt"][:n_ev], eps, 20))

    guard = COGuard(data["xg"], data["yg"], on_co=job["mode"])
    tr = AdversarialTrainer(model, optimizer=P.optimizer(model), lr_schedule=P.schedule(), co_guard=guard,
                            val_attack=None, callbacks=[EpochEval()], progress=False, verbose=False, seed=job["seed"],
                            eps_warmup=job.get("eps_warmup", 0),
                            **parts(job["method"], model, eps, job["seed"]))  # fmt: skip
    t0, c0 = time.perf_counter(), time.process_time()
    tr.fit(P.loader(data, job["seed"]), job["epochs"])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if job.get("save_dir"):  # the final weights, for a later evaluation (PGD-50-10, AutoAttack) without retraining
        torch.save(model.state_dict(), Path(job["save_dir"]) / f"{job['key']}.pt")
    final = P.pgd_accuracy(model, data["xt"], data["yt"], eps, 20)
    hist = list(tr.history)
    clean = P.accuracy(model, data["xt"], data["yt"])
    return {**job, "seconds": seconds, "cpu_seconds": cpu, "clean": clean, "pgd20": final,
            "curve": curve, "flags": sum(bool(h.get("co")) for h in hist),
            "rollbacks": sum("rolled_back_to" in h for h in hist),
            "strengthened": [h["strengthened"] for h in hist if "rolled_back_to" in h],
            "guard": [(h.get("co_fgsm_acc"), h.get("co_pgd_acc"), bool(h.get("co"))) for h in hist]}  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> str:
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["eps"], r["method"]), {}).setdefault(r["mode"], []).append(r)
    lines = [
        "| dataset | ε | method | seeds | collapsed, no guard | guard flagged | collapsed, guard | rollbacks per run "
        "| final PGD-20, no guard | best epoch, no guard | final PGD-20, guard | final − best epoch (guard), worst |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (ds, eps, method), modes in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        flag = sorted(modes.get("flag", []), key=lambda r: r["seed"])
        roll = {r["seed"]: r for r in modes.get("rollback", [])}
        guarded = [roll.get(r["seed"], r) for r in flag]  # unflagged runs are identical under rollback
        if not flag:
            continue

        def ms(v: list[float]) -> str:
            return f"{100 * statistics.fmean(v):.1f} ± {100 * (statistics.stdev(v) if len(v) > 1 else 0):.1f}"

        gap = min(g["pgd20"] - max(g["curve"] or [g["pgd20"]]) for g in guarded)
        lines.append(
            f"| {ds} | {eps:g} | {method} | {len(flag)} | {sum(P.collapsed(r['curve']) for r in flag)} "
            f"| {sum(r['flags'] > 0 for r in flag)} | {sum(P.collapsed(g['curve']) for g in guarded)} "
            f"| {statistics.fmean(g['rollbacks'] for g in guarded):.1f} | {ms([r['pgd20'] for r in flag])} "
            f"| {ms([max(r['curve']) for r in flag])} | {ms([g['pgd20'] for g in guarded])} | {100 * gap:+.1f} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Per-epoch test PGD-20 of every run the guard flagged: unguarded (grey, red where it collapsed) and with the
    guard rolling back (blue; its epochs include the replayed ones), one panel per (dataset, ε, method)."""
    roll = {(r["dataset"], r["eps"], r["method"], r["seed"]): r for r in runs if r["mode"] == "rollback"}
    panels: dict[tuple, list[P.Line]] = {}
    for r in sorted((r for r in runs if r["mode"] == "flag"), key=lambda r: r["seed"]):
        g = roll.get((r["dataset"], r["eps"], r["method"], r["seed"]))
        if g is not None:
            panels.setdefault((r["dataset"], r["eps"], r["method"]), []).extend(
                [(r["curve"], "tab:red" if P.collapsed(r["curve"]) else "tab:gray", 0.7), (g["curve"], "tab:blue", 0.8)]
            )
    if not panels:
        return None
    titled = [(f"{ds} ε={eps:g}\n{method}", lines) for (ds, eps, method), lines in sorted(panels.items())]
    return P.curve_grid(titled, "test PGD-20 %", "epochs run", path)


def evaluate_saved(out_dir: Path, aa_seeds: tuple[int, ...] = (0,), workers: int = 2) -> Path:
    """PGD-50-10 (and AutoAttack on ``aa_seeds``) of every saved final model, unguarded (flag) and guarded (the
    rollback rerun when there was one, else the same run), as a quality-style JSON next to ``out_dir``."""
    runs = [json.loads(f.read_text()) for f in sorted(out_dir.glob("*.json"))]
    jobs = []
    by_key = {(r["dataset"], r["eps"], r["method"], r["seed"]): {} for r in runs}
    for r in runs:
        by_key[(r["dataset"], r["eps"], r["method"], r["seed"])][r["mode"]] = r
    for (_ds, _eps, method, seed), modes in sorted(by_key.items()):
        flag = modes.get("flag")
        if flag is None:
            continue
        jobs.append((flag, f"{method}", seed in aa_seeds))
        jobs.append((modes.get("rollback", flag), f"{method} + guard", seed in aa_seeds))
    with ProcessPoolExecutor(workers) as pool:
        evals = list(pool.map(_evaluate_one, [(r, out_dir, aa) for r, _, aa in jobs]))
    groups: dict[tuple, list[dict]] = {}
    for (r, label, _), e in zip(jobs, evals, strict=True):
        groups.setdefault((r["dataset"], r["eps"], label), []).append({**r, **e})
    rows = []
    for (ds, eps, label), rs in sorted(groups.items()):

        def ms(k: str, rs: list[dict] = rs) -> list[float] | None:
            v = [x[k] for x in rs if x.get(k) is not None]
            return [statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0] if v else None

        rows.append({"dataset": ds, "eps": eps, "method": label, "seeds": len(rs), "clean": ms("clean"),
                     "pgd20": ms("pgd20"), "pgd50": ms("pgd50"), "aa": ms("aa"),
                     "aa_seeds": sum(x.get("aa") is not None for x in rs),
                     "collapsed": sum(P.collapsed(x["curve"]) for x in rs), "cost": None})  # fmt: skip
    meta = (f"Command: `python benchmarks/co_guard.py --evaluate --out {out_dir}` on the weights of the co_guard runs "
            f"(Fashion-MNIST 28×28, 12,000 training images, 10 epochs; digits {P.DIGITS_EPOCHS} epochs; Adam "
            f"one-cycle); machine: {machine()}; date: {datetime.date.today()}; PGD-50-10 on the first 1,000 test "
            f"points (digits: 450), AutoAttack (APGD-CE + APGD-T, 3 targets) on seeds {list(aa_seeds)}.")  # fmt: skip
    path = out_dir.with_name(out_dir.name + "_quality.json")
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return path


def _evaluate_one(args: tuple[dict[str, Any], Path, bool]) -> dict[str, Any]:
    r, out_dir, aa = args
    torch.set_num_threads(1)
    data = P.load(r["dataset"], r["n_train"], r["n_test"], 256, 1)
    model = P.cnn(data["x"].shape[-1])
    model.load_state_dict(torch.load(out_dir / f"{r['key']}.pt", weights_only=True))
    attacks: list[Any] = ["clean", "pgd-50-10"]
    if aa:
        attacks.append(rf.evaluation.AutoAttackAdapter(model, r["eps"], version="custom", attacks=["apgd-ce", "apgd-t"],
                                                       n_restarts=1, n_target_classes=3, seed=0))  # fmt: skip
    rep = rf.evaluate(model, (data["xt"], data["yt"]), r["eps"], attacks, seed=0, progress=False)
    acc = dict(rep.accuracy)
    return {"pgd50": acc["pgd-50-10"], "aa": next((v for k, v in acc.items() if k.startswith("autoattack")), None)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits, one ε, one seed, 2 epochs, 2 methods (CI)")
    p.add_argument("--settings", nargs="+", default=["fashion_mnist:0.2", "fashion_mnist:0.3", "digits:0.2",
                                                      "digits:0.3"])  # fmt: skip
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="SETTING",
        help="settings that also run GradAlign with fixed λ = 1 and 2 (the 'best fixed λ' comparison)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-train", type=int, default=12000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-epoch-eval", type=int, default=500)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--digits-epochs", type=int, default=P.DIGITS_EPOCHS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="folder of per-run JSON files (reused), plus <out>.md")
    p.add_argument("--evaluate", action="store_true", help="PGD-50-10 / AutoAttack of the saved models in --out")
    args = p.parse_args(argv)
    if args.evaluate:
        print(f"wrote {evaluate_saved(args.out, workers=args.workers)}")
        return
    if args.quick:
        args.settings, args.methods, args.seeds, args.epochs, args.digits_epochs = (
            ["digits:0.2"],
            ["FGSM", "RS"],
            [0],
            2,
            2,
        )
        args.n_test = args.n_epoch_eval = 100
    jobs = []
    for s in args.settings:
        ds, eps = s.split(":")
        methods = list(args.methods) + (list(EXTRA) if s in args.extra else [])
        for m in methods:
            for seed in args.seeds:
                epochs = args.digits_epochs if ds == "digits" else args.epochs
                warm = P.eps_warmup(float(eps), epochs)  # in the job (when any), so the cache tells runs apart
                jobs.append({"dataset": ds, "eps": float(eps), "method": m, "seed": seed, "mode": "flag",
                             "epochs": epochs, "n_train": args.n_train, "n_test": args.n_test,
                             "n_epoch_eval": args.n_epoch_eval, **({"eps_warmup": warm} if warm else {})})  # fmt: skip
    out_dir = args.out
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    def key(job: dict[str, Any]) -> str:
        return f"{job['dataset']}_{job['eps']:g}_{job['method']}_{job['seed']}_{job['mode']}".replace("/", "-")

    def execute(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        done, todo = [], []
        for j in batch:
            if out_dir is not None:
                j["key"], j["save_dir"] = key(j), str(out_dir)
            f = out_dir / f"{key(j)}.json" if out_dir is not None else None
            cached = json.loads(f.read_text()) if f is not None and f.is_file() else None
            if cached is not None and all(cached.get(k) == v for k, v in j.items()):  # same protocol (epochs, ...)
                done.append(cached)
            else:
                todo.append(j)
        todo.sort(key=lambda j: -COST.get(j["method"].split("(")[0], 1) * (3 if j["dataset"] != "digits" else 1))
        with ProcessPoolExecutor(args.workers) as pool:
            for j, r in zip(todo, pool.map(run, todo)):
                done.append(r)
                if out_dir is not None:
                    (out_dir / f"{key(j)}.json").write_text(json.dumps(r))
                print(f"# {key(j)}: final {r['pgd20']:.3f}, best {max(r['curve'] or [0]):.3f}, flags {r['flags']}, "
                      f"rollbacks {r['rollbacks']}, {r['seconds']:.0f}s", flush=True)  # fmt: skip
        return done

    t0 = time.perf_counter()
    runs = execute(jobs)
    again = [{**r, "mode": "rollback"} for r in runs if r["flags"] > 0]
    job_keys = set().union(*jobs)  # a run's result holds its job's fields (eps_warmup only where there is one)
    again = [{k: v for k, v in j.items() if k in job_keys} for j in again]
    runs += execute(again)
    table = summarize(runs)
    when = datetime.date.today().isoformat()
    meta = (f"Command: `python benchmarks/co_guard.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
            f"machine: {machine()} (one thread per worker, {args.workers} workers); date: {when}; "
            f"{time.perf_counter() - t0:.0f} s.")  # fmt: skip
    print("\n" + table + "\n\n" + meta)
    if out_dir is not None:
        out_dir.with_suffix(".md").write_text(table + "\n\n" + meta + "\n")
        if (png := plot(runs, out_dir.with_name(out_dir.name + "_curves.png"))) is not None:
            print(f"wrote {png}")


if __name__ == "__main__":
    main()
