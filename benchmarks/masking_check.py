"""Is a surprisingly robust model really robust, or does it mask gradients? The standard checks, side by side with a
reference model (PGD-10 adversarial training) trained under the same protocol.

For each seed both methods are trained as in ``quality.py`` (``_protocol.py``: the 2-conv CNN, Adam one-cycle,
batch 128, attacks in train mode; digits: 100 epochs). On all test points (digits: 450) each model gets:

* white-box: PGD-20, PGD-50-10 (step ε/4, uniform starts, the per-example worst case) and full **standard
  AutoAttack** (APGD-CE, APGD-T, FAB-T, Square; the package's own version, through ``robustfast.evaluate``);
* black-box: **Square** alone (5,000 queries, on every point, not only on those the white-box attacks left);
* **transfer**: the PGD-50-10 examples crafted on the *other* model;
* an **ε sweep**: PGD-50 accuracy at growing ε (an unmasked model reaches 0 at large ε).

Gradient masking shows as a black-box or transfer attack that is stronger than the white-box ones, or accuracy that
does not vanish as ε grows (Athalye et al. 2018; Carlini et al. 2019's checklist).

    python benchmarks/masking_check.py --quick
    python benchmarks/masking_check.py --dataset digits --eps 0.2 --method FGSM-PGI --seeds 0 1 \\
        --out docs/benchmarks/masking_fgsm_pgi
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
from typing import Any

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import _protocol as P
from _timing import machine
from quality import RECIPES

import robustfast as rf
from robustfast.training import AdversarialTrainer

SWEEP = (0.1, 0.2, 0.3, 0.5, 1.0)


def train(method: str, dataset: str, eps: float, seed: int, epochs: int) -> torch.nn.Module:
    """One model under the quality protocol (as ``quality.run`` trains it)."""
    torch.manual_seed(seed)
    data = P.load(dataset, 12000, 1000, 256, 1)
    model = P.cnn(data["x"].shape[-1])
    parts = RECIPES[method][0](model, eps, seed)
    replays = getattr(parts.get("attack"), "replays", 1) or 1
    epochs = max(1, round(epochs / replays))
    warm = P.eps_warmup(eps, epochs) if parts.get("attack") is not None else 0
    tr = AdversarialTrainer(model, optimizer=P.optimizer(model), lr_schedule=P.schedule(), val_attack=None,
                            progress=False, verbose=False, seed=seed, eps_warmup=warm, **parts)  # fmt: skip
    tr.fit(P.loader(data, seed), epochs)
    return model.eval()


@torch.no_grad()
def accuracy_on(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def check(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, eps: float,
          quick: bool) -> dict[str, dict[str, float]]:  # fmt: skip
    """Every check for every model (keyed by method)."""
    square = rf.evaluation.AutoAttackAdapter
    out: dict[str, dict[str, float]] = {}
    adv: dict[str, torch.Tensor] = {}
    for name, model in models.items():
        attacks: list[Any] = ["clean", "pgd-20", "pgd-50-10"]
        attacks.append("apgd-ce" if quick else "autoattack")
        rep = rf.evaluate(model, (x, y), eps, attacks, seed=0, progress=False, keep_adversarial=True)
        acc = dict(rep.accuracy)
        sq = square(model, eps, version="custom", attacks=["square"], n_queries=100 if quick else 5000, seed=0)
        acc["square"] = rf.evaluate(model, (x, y), eps, ["clean", sq], seed=0, progress=False).worst_case_accuracy
        for e in SWEEP[:2] if quick else SWEEP:
            r = rf.evaluate(model, (x, y), e, ["pgd-50"], seed=0, progress=False)
            acc[f"pgd-50 @ {e:g}"] = r.worst_case_accuracy
        adv[name] = rep.adversarial["pgd-50-10"]
        out[name] = {k if not k.startswith("autoattack") else "autoattack": v for k, v in acc.items()}
        out[name]["worst white-box"] = rep.worst_case_accuracy
    names = list(models)
    for target in names:  # transfer: the other model's PGD-50-10 examples
        for source in names:
            if source != target:
                out[target][f"transfer from {source}"] = accuracy_on(models[target], adv[source], y)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--method", default="FGSM-PGI")
    p.add_argument("--reference", default="PGD-10")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=None, help="default: the protocol's (digits 100, else 10)")
    p.add_argument("--quick", action="store_true", help="2 epochs, 60 points, APGD-CE for AutoAttack (CI)")
    p.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    epochs = args.epochs or (P.DIGITS_EPOCHS if args.dataset in P.DIGITS else 10)
    if args.quick:
        epochs, args.seeds = 2, args.seeds[:1]
    data = P.load(args.dataset, 12000, 1000, 256, 1)
    x, y = (data["xt"][:60], data["yt"][:60]) if args.quick else (data["xt"], data["yt"])
    t0 = time.perf_counter()
    per_seed = []
    for seed in args.seeds:
        models = {m: train(m, args.dataset, args.eps, seed, epochs) for m in (args.method, args.reference)}
        res = check(models, x, y, args.eps, args.quick)
        per_seed.append(res)
        print(f"# seed {seed}: " + json.dumps({m: {k: round(v, 4) for k, v in r.items()} for m, r in res.items()}),
              flush=True)  # fmt: skip
    methods = list(per_seed[0])
    rows = list(per_seed[0][methods[0]])
    rows = sorted(
        set(rows) | {r for m in methods for r in per_seed[0][m]},
        key=lambda r: (
            ["clean", "pgd-20", "pgd-50-10", "apgd-ce", "autoattack", "worst white-box", "square"].index(r)
            if not r.startswith(("pgd-50 @", "transfer"))
            else (20 if r.startswith("transfer") else 10 + float(r[9:]))
        ),
    )

    def cell(m: str, r: str) -> str:
        v = [s[m][r] for s in per_seed if r in s[m]]
        if not v:
            return "—"
        return f"{100 * statistics.fmean(v):.1f} ± {100 * (statistics.stdev(v) if len(v) > 1 else 0):.1f}"

    lines = [f"| check ({args.dataset}, ε = {args.eps:g}, {len(x)} test points) | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]  # fmt: skip
    lines += [f"| {r} | " + " | ".join(cell(m, r) for m in methods) + " |" for r in rows]
    table = "\n".join(lines)
    cmd = shlex.join(argv if argv is not None else sys.argv[1:])
    meta = (f"Command: `python benchmarks/masking_check.py {cmd}`; machine: {machine()} (one torch thread); date: "
            f"{datetime.date.today()}; {time.perf_counter() - t0:.0f} s; seeds {args.seeds}; {epochs} epochs; "
            f"AutoAttack: {'APGD-CE only (quick)' if args.quick else 'standard'} "
            f"({' '.join(rf.evaluation.autoattack_backend()[1:])}); Square alone: "
            f"{100 if args.quick else 5000} queries; transfer: PGD-50-10 examples of the other model; accuracies in %, "
            "mean ± std over seeds.")  # fmt: skip
    print("\n" + table + "\n\n" + meta)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "per_seed": per_seed}, indent=1))
        args.out.with_suffix(".md").write_text(table + "\n\n" + meta + "\n")


if __name__ == "__main__":
    main()
