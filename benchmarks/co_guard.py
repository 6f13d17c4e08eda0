"""Does the catastrophic-overfitting guard keep its promise: no guarded run ends far below its best checked epoch,
runs that collapse are rescued, runs that do not are left alone?

Protocol (``_protocol.py``): Fashion-MNIST (12,000 training images), digits or digits16 (digits upsampled to 16×16),
the 2-conv CNN, Adam with a one-cycle learning rate (peak 3e-3 at 40%), batch 128, 10 epochs (digits: 100), attacks
in train mode, ε warm-up over the first 10% of the epochs at ε ≥ 0.3. The guard uses 256 images held out of the
training split. After every epoch the test PGD-20 accuracy (step ε/4) is measured on ``--n-epoch-eval`` test
points (the curve); the final model gets clean accuracy and PGD-20 on ``--n-test`` points.

Every (dataset, ε, method, seed) runs once with the guard in ``"flag"`` mode and ``restore_best=True``: it only
records its checks during training, so up to the last epoch this *is* the unguarded run (its final weights are
taken at the last epoch end, before anything is restored); then the end-of-training restore gives what the guarded
run returns when the guard never flagged (a guarded run that is never flagged trains identically: the guard draws no
training randomness). When the guard flagged anything, the run is trained again with ``on_co="rollback"``.

The guard's decisions on a flag-mode run are **replayed** from its recorded checks through ``COGuard.judge`` with
the library's current rules (the run's training never depended on them), so a change of rule re-decides every cached
run exactly; the rollback reruns carry the rule version they were made with (``GUARD_RULE``): one made under an
older version stands when the current rules, replayed on its recorded checks, take every one of its decisions again
(its end-of-training restore is replayed too), and is trained again otherwise. Final accuracies in the table are on
the curve points (the same points and attack seed as the curve).

Per run: *collapsed* (the unguarded curve fell below half of its best earlier epoch, a best of at least 15%), *ends
collapsed* (the final model's PGD-20 on the curve points is below half of the curve's best), rollbacks, the
end-of-training restore, and **final − best checked epoch**: the final model's PGD-20 on the curve points minus the
curve's value at the epoch the guard judged best (the same points and attack seed, so a run that ends on that state
scores exactly 0). "final − best epoch" compares with the curve's maximum instead, a max of noisy measurements.

    python benchmarks/co_guard.py --quick                       # CI: digits, 1 seed, 2 epochs, 2 methods
    python benchmarks/co_guard.py --out docs/benchmarks/co_guard --workers 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
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


METHODS = ("FGSM", "FGSM+GradAlign(λ=0.5)", "FGSM+GradAlign(λ=1.0)", "FGSM+GradAlign(λ=2.0)", "FGSM+ELLE-A", "RS",
           "N-FGSM", "PGD-10")  # fmt: skip
GUARD_RULE = 3  # version of COGuard's rules the rollback reruns were made with (2: the gap rule needs falling PGD;
# 3: patience 3, restore tolerance 0). A rerun made under an older version still stands when the current rules take
# every one of its decisions again (:func:`same_decisions`): its training is then what the current rules would do.
COST = {"PGD-10": 6, "FGSM+GradAlign": 3, "FGSM+ELLE-A": 2.5}


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one run and measure it (executed in a worker process)."""
    torch.set_num_threads(1)
    data = P.load(job["dataset"], job["n_train"], job["n_test"], 256, 1)
    torch.manual_seed(job["seed"])
    side = data["x"].shape[-1]
    model = P.cnn(side)
    eps, epochs = job["eps"], job["epochs"]
    xc, yc = data["xt"][: job["n_epoch_eval"]], data["yt"][: job["n_epoch_eval"]]
    curve: list[tuple[int, float]] = []  # (epoch, PGD-20 on the curve points) of every epoch kept, replays included
    last: dict[str, torch.Tensor] = {}

    class EpochEval:
        def on_epoch_end(self, trainer: AdversarialTrainer, epoch: int) -> None:
            curve.append((epoch + 1, P.pgd_accuracy(trainer.model, xc, yc, eps, 20)))
            if epoch + 1 == epochs:  # the final epoch, before an end-of-training restore: the unguarded model
                last.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    guard = COGuard(data["xg"], data["yg"], on_co=job["mode"], restore_best=True)
    tr = AdversarialTrainer(model, optimizer=P.optimizer(model), lr_schedule=P.schedule(), co_guard=guard,
                            val_attack=None, callbacks=[EpochEval()], progress=False, verbose=False, seed=job["seed"],
                            eps_warmup=job.get("eps_warmup", 0),
                            **parts(job["method"], model, eps, job["seed"]))  # fmt: skip
    t0, c0 = time.perf_counter(), time.process_time()
    tr.fit(P.loader(data, job["seed"]), epochs)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    hist = list(tr.history)
    by_epoch = dict(curve)  # the trajectory the run kept: a rollback's redone epochs replace the abandoned ones
    best = guard.best_epoch
    out = {**job, "seconds": seconds, "cpu_seconds": cpu, "curve": [v for _, v in curve],
           "curve_epochs": [e for e, _ in curve], "best_checked_epoch": best,
           "best_checked": by_epoch.get(best) if best is not None else None,
           "restored_best_epoch": hist[-1].get("restored_best_epoch") if hist else None,
           "flags": sum(bool(h.get("co")) for h in hist), "rollbacks": sum("rolled_back_to" in h for h in hist),
           "strengthened": [h["strengthened"] for h in hist if "rolled_back_to" in h],
           "guard": [(h.get("co_fgsm_acc"), h.get("co_pgd_acc"), bool(h.get("co"))) for h in hist]}  # fmt: skip
    # the run as it ends (guarded: restored when the guard restored it)
    out.update(clean=P.accuracy(model, data["xt"], data["yt"]),
               pgd20=P.pgd_accuracy(model, data["xt"], data["yt"], eps),
               final_curve=P.pgd_accuracy(model, xc, yc, eps, 20))  # fmt: skip
    if job.get("save_dir"):  # the final weights, for a later evaluation (PGD-50-10, AutoAttack) without retraining
        torch.save(model.state_dict(), Path(job["save_dir"]) / f"{job['key']}.pt")
    if job["mode"] == "flag":  # the unguarded run: its last epoch's weights
        if last and out["restored_best_epoch"] is not None:
            model.load_state_dict(last)
            out.update(unguarded_clean=P.accuracy(model, data["xt"], data["yt"]),
                       unguarded_pgd20=P.pgd_accuracy(model, data["xt"], data["yt"], eps))  # fmt: skip
            if job.get("save_dir"):
                torch.save(last, Path(job["save_dir"]) / f"{job['key']}_unguarded.pt")
        else:
            out.update(unguarded_clean=out["clean"], unguarded_pgd20=out["pgd20"])
    return out


def replay(r: dict[str, Any], restore_tolerance: float | None = None) -> dict[str, Any]:
    """A run's guard decisions under the library's *current* rules, replayed through :meth:`COGuard.judge` on its
    recorded checks (a flag-mode run's training never depended on them, so this is exactly what the guard would
    decide now). Returns the number of flags, every check's verdict (``co``), the best checked epoch (0-based index
    into a flag-mode run's curve) and whether the end-of-training restore (``restore_tolerance``; ``None``: the
    guard's default) would act, with the epoch a never-flagged run would end on."""
    guard = COGuard(torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long))
    tol = guard.restore_tolerance if restore_tolerance is None else restore_tolerance
    flags, best_i, last_p, co = 0, None, None, []
    for i, (f, p, _) in enumerate(r["guard"]):
        if f is None:  # not checked (the ε warm-up)
            co.append(None)
            continue
        c = guard.judge(f, p)
        flags += c.co
        co.append(c.co)
        best_i = i if c.improved else best_i
        last_p = p
    last = len(r["curve"]) - 1
    # a rollback run whose last check flagged ends on its best state (a flag-mode run only flags and goes on)
    ended_on_best = r.get("mode") == "rollback" and bool(co) and co[-1] is True
    restore = (best_i is not None and last_p is not None and not ended_on_best
               and guard.best_pgd_acc - last_p > tol)  # fmt: skip
    return {"flags": flags, "co": co, "best_i": best_i, "end_i": best_i if restore else last, "restored": restore}


def same_decisions(r: dict[str, Any]) -> bool:
    """A rollback rerun made under an older rule version is still the current rules' run when they take every one of
    its recorded decisions again (the same checks flagged, in order): its training did not depend on anything else
    that changed. (Its end-of-training restore is re-decided by :func:`guarded_runs`.)"""
    return r.get("mode") == "rollback" and replay(r)["co"] == [None if f is None else c for f, _, c in r["guard"]]


def guarded_runs(runs: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """(dataset, ε, method, seed) -> the guarded result, scored on the curve points: the rollback rerun when the
    current rules flag the run, else the flag-mode run itself (identical training) ending where the end-of-training
    restore puts it. Each result carries ``final_curve``, ``best_checked`` (the curve at the best checked epoch),
    ``restored``, ``rollbacks`` and ``curve``."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in runs:
        k = (r["dataset"], r["eps"], r["method"], r["seed"])
        if r["mode"] == "rollback" and (r.get("guard_rule") == GUARD_RULE or same_decisions(r)):
            restored = r["restored_best_epoch"] is not None
            if not restored and replay(r)["restored"]:  # the current end-of-training restore acts where the old
                # one did not: the run ends on its best checked state, whose curve value is recorded
                out[k] = {**r, "final_curve": r["best_checked"], "restored": True, "restore_replayed": True}
            else:
                out[k] = {**r, "restored": restored}
        elif r["mode"] == "flag" and k not in out and len(r["guard"]) == len(r["curve"]):
            rp = replay(r)
            if rp["flags"] == 0:
                best = r["curve"][rp["best_i"]] if rp["best_i"] is not None else None
                out[k] = {**r, "final_curve": r["curve"][rp["end_i"]], "best_checked": best,
                          "restored": rp["restored"], "rollbacks": 0}  # fmt: skip
    return out


def ends_collapsed(r: dict[str, Any]) -> bool:
    """The final model's PGD-20 on the curve points is below half of the best epoch of its curve (best ≥ 15%)."""
    best = max(r["curve"] or [0.0])
    return best >= 0.15 and r["final_curve"] < 0.5 * best


def summarize(runs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table and its rows (one per dataset, ε and method)."""
    flag_runs = [r for r in runs if r["mode"] == "flag"]
    guarded = guarded_runs(runs)
    groups: dict[tuple, list[dict]] = {}
    for r in flag_runs:
        groups.setdefault((r["dataset"], r["eps"], r["method"]), []).append(r)
    lines = [
        "| dataset | ε | method | seeds | collapsed, no guard | guard flagged | rollbacks per run | restored at end "
        "| ends collapsed, guard | final PGD-20, no guard | final PGD-20, guard | final − best checked epoch (guard), "
        "worst | final − best epoch (guard), worst |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    order = {m: i for i, m in enumerate(METHODS)}
    for (ds, eps, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99))):
        rs = sorted(rs, key=lambda r: r["seed"])
        gs = [guarded.get((ds, eps, method, r["seed"])) for r in rs]
        if any(g is None for g in gs):
            continue

        def ms(v: list[float]) -> str:
            return f"{100 * statistics.fmean(v):.1f} ± {100 * (statistics.stdev(v) if len(v) > 1 else 0):.1f}"

        checked = [g["final_curve"] - g["best_checked"] for g in gs if g["best_checked"] is not None]
        gap_max = min(g["final_curve"] - max(g["curve"] or [g["final_curve"]]) for g in gs)
        row = {"dataset": ds, "eps": eps, "method": method, "seeds": len(rs),
               "collapsed": sum(P.collapsed(r["curve"]) for r in rs),
               "flagged": sum(replay(r)["flags"] > 0 for r in rs),
               "rollbacks": statistics.fmean(g["rollbacks"] for g in gs),
               "restored": sum(g["restored"] for g in gs),
               "ends_collapsed": sum(ends_collapsed(g) for g in gs),
               "pgd20_unguarded": [r["curve"][-1] for r in rs], "pgd20_guarded": [g["final_curve"] for g in gs],
               "worst_vs_checked": min(checked) if checked else None, "worst_vs_max": gap_max}  # fmt: skip
        rows.append(row)
        worst = f"{100 * row['worst_vs_checked']:+.1f}" if checked else "—"
        lines.append(
            f"| {ds} | {eps:g} | {method} | {len(rs)} | {row['collapsed']} | {row['flagged']} | {row['rollbacks']:.1f} "
            f"| {row['restored']} | {row['ends_collapsed']} | {ms(row['pgd20_unguarded'])} "
            f"| {ms(row['pgd20_guarded'])} "
            f"| {worst} | {100 * gap_max:+.1f} |"
        )
    return "\n".join(lines), rows


def restore_study(
    runs: list[dict[str, Any]], tolerances: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 1.0)
) -> tuple[str, list[dict[str, Any]]]:
    """How the end-of-training restore's tolerance trades off, replayed offline on the flag-mode runs.

    A flag-mode run's training does not depend on the guard, and its record holds every epoch's check (FGSM and PGD
    accuracy on the guard's points) and every epoch's test PGD-20 (the curve). For each tolerance the guard is
    replayed on the checks (:func:`replay`: best = the highest PGD accuracy of the unflagged checks; restore it
    when the last check is more than the tolerance below it) and the state the run would end on is scored on the
    curve: how far below the curve's maximum it ends, on average and at worst, and how many runs end more than
    3 points below it. Tolerance 1 never restores (the plain last epoch)."""
    flag_runs = [r for r in runs if r["mode"] == "flag" and len(r["guard"]) == len(r["curve"])]
    lines = ["| tolerance | runs | restored | end − curve max, mean | end − curve max, worst "
             "| runs ending > 3 points below the curve max |", "|---|---|---|---|---|---|"]  # fmt: skip
    rows = []
    for tol in tolerances:
        gaps, restored = [], 0
        for r in flag_runs:
            rp = replay(r, tol)
            restored += rp["restored"]
            gaps.append(r["curve"][rp["end_i"]] - max(r["curve"]))
        if not gaps:
            continue
        row = {"tolerance": tol, "runs": len(gaps), "restored": restored, "mean": statistics.fmean(gaps),
               "worst": min(gaps), "over_3": sum(g < -0.03 for g in gaps)}  # fmt: skip
        rows.append(row)
        lines.append(f"| {'never' if tol >= 1 else f'{tol:g}'} | {len(gaps)} | {restored} | {100 * row['mean']:+.1f} "
                     f"| {100 * row['worst']:+.1f} | {row['over_3']} |")  # fmt: skip
    return "\n".join(lines), rows


def plot(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Per-epoch test PGD-20 of every run the guard flagged or restored: unguarded (grey, red where it collapsed)
    and guarded (blue; its epochs include the replayed ones), one panel per (dataset, ε, method)."""
    guarded = guarded_runs(runs)
    panels: dict[tuple, list[P.Line]] = {}
    for r in sorted((r for r in runs if r["mode"] == "flag"), key=lambda r: r["seed"]):
        k = (r["dataset"], r["eps"], r["method"], r["seed"])
        g = guarded.get(k)
        if g is not None and (g["mode"] == "rollback" or g["restored"]):
            lines = [(r["curve"], "tab:red" if P.collapsed(r["curve"]) else "tab:gray", 0.7)]
            if g["mode"] == "rollback":
                lines.append((g["curve"], "tab:blue", 0.8))
            panels.setdefault(k[:3], []).extend(lines)
    if not panels:
        return None
    titled = [(f"{ds} ε={eps:g}\n{method}", lines) for (ds, eps, method), lines in sorted(panels.items())]
    return P.curve_grid(titled, "test PGD-20 %", "epochs run", path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits, one ε, one seed, 2 epochs, 2 methods (CI)")
    p.add_argument("--settings", nargs="+", default=["fashion_mnist:0.2", "fashion_mnist:0.3", "digits16:0.2"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-train", type=int, default=12000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-epoch-eval", type=int, default=500)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--digits-epochs", type=int, default=P.DIGITS_EPOCHS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="folder of per-run JSON files (reused), plus <out>.md")
    p.add_argument("--cached-only", action="store_true",
                   help="train nothing: report the runs in --out's cache (a (dataset, ε, method) row appears once each "
                        "of its cached seeds has its guarded result; 'seeds' counts them) and count the runs still "
                        "to make")  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.settings, args.methods, args.seeds, args.epochs, args.digits_epochs = (["digits:0.2"], ["FGSM", "RS"],
                                                                                   [0], 2, 2)  # fmt: skip
        args.n_test = args.n_epoch_eval = 100
    jobs = []
    for s in args.settings:
        ds, eps = s.split(":")
        for m in args.methods:
            for seed in args.seeds:
                epochs = args.digits_epochs if ds in P.DIGITS else args.epochs
                warm = P.eps_warmup(float(eps), epochs)  # in the job (when any), so the cache tells runs apart
                jobs.append({"dataset": ds, "eps": float(eps), "method": m, "seed": seed, "mode": "flag",
                             "epochs": epochs, "n_train": args.n_train, "n_test": args.n_test,
                             "n_epoch_eval": args.n_epoch_eval, "protocol": 2,
                             **({"eps_warmup": warm} if warm else {})})  # fmt: skip
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
            same = cached is not None and all(
                cached.get(k) == v for k, v in j.items() if k not in ("save_dir", "guard_rule")
            )
            same = same and (cached.get("guard_rule") == j.get("guard_rule") or same_decisions(cached))
            if same:  # the same protocol (epochs, ...), wherever the cache folder is now
                done.append(cached)
            else:
                todo.append(j)
        todo.sort(key=lambda j: -COST.get(j["method"].split("(")[0], 1) * (3 if j["dataset"] not in P.DIGITS else 1))
        if args.cached_only:
            pending.extend(todo)
            return done
        with ProcessPoolExecutor(args.workers) as pool:
            for j, r in zip(todo, pool.map(run, todo)):
                done.append(r)
                if out_dir is not None:
                    (out_dir / f"{key(j)}.json").write_text(json.dumps(r))
                checked = "—" if r["best_checked"] is None else f"{r['final_curve'] - r['best_checked']:+.3f}"
                print(f"# {key(j)}: final {r['pgd20']:.3f}, best epoch {max(r['curve'] or [0]):.3f}, final − best "
                      f"checked {checked}, flags {r['flags']}, rollbacks {r['rollbacks']}, restored "
                      f"{r['restored_best_epoch']}, {r['seconds']:.0f}s", flush=True)  # fmt: skip
        return done

    t0 = time.perf_counter()
    pending: list[dict[str, Any]] = []
    runs = execute(jobs)
    job_keys = set().union(*jobs)  # a run's result holds its job's fields (eps_warmup only where there is one)
    again = [{k: v for k, v in r.items() if k in job_keys} | {"mode": "rollback", "guard_rule": GUARD_RULE}
             for r in runs if r["mode"] == "flag" and replay(r)["flags"] > 0]  # fmt: skip
    runs += execute(again)
    table, rows = summarize(runs)
    study, study_rows = restore_study(runs)
    table += "\n\nEnd-of-training restore by tolerance, replayed on the flag-mode (unguarded) runs:\n\n" + study
    when = datetime.date.today().isoformat()
    meta = (f"Command: `python benchmarks/co_guard.py {shlex.join(argv if argv is not None else sys.argv[1:])}`; "
            f"machine: {machine()} (one thread per worker, {args.workers} workers); date: {when}; "
            f"{time.perf_counter() - t0:.0f} s for the runs not cached.")  # fmt: skip
    if pending:
        n_flag = sum(j["mode"] == "flag" for j in pending)
        meta += (f" Report of the cache only: {len(pending)} runs still to make ({n_flag} flag-mode, "
                 f"{len(pending) - n_flag} rollback reruns); rows appear when complete.")  # fmt: skip
    print("\n" + table + "\n\n" + meta)
    if out_dir is not None:
        out_dir.with_suffix(".md").write_text(table + "\n\n" + meta + "\n")
        record = {"meta": meta, "rows": rows, "restore_study": study_rows}
        out_dir.with_suffix(".json").write_text(json.dumps(record, indent=1))
        if (png := plot(runs, out_dir.with_name(out_dir.name + "_curves.png"))) is not None:
            print(f"wrote {png}")


if __name__ == "__main__":
    main()
