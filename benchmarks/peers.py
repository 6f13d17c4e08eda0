"""Peers side by side: robustfast's FGSM / RS / PGD against torchattacks' FGSM / FFGSM / PGD.

Same model (eval mode, both libraries' default), same batch, timed interleaved in one run. FGSM and PGD without a
random start are deterministic, so the adversarial examples must be equal (max |difference| is reported); FFGSM
and RS draw different random starts, so for them (both at α = 10/255) the check is the threat model: every
``x_adv`` inside the ε-ball and ``[0, 1]``. ``ours / peer`` < 1 means robustfast is faster.

    python benchmarks/peers.py --quick                       # CI: tiny CNN, 3 repetitions
    python benchmarks/peers.py --out docs/benchmarks/peers    # small_cnn and PreAct ResNet-18
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from _timing import CLOCKS, interleaved_medians, machine
from step_cost import build_model

import robustfast as rf


def pairs(model, eps: float) -> dict[str, tuple]:
    import torchattacks

    a = 10 / 255
    return {
        "FGSM vs FGSM": (rf.FGSM(model, eps), torchattacks.FGSM(model, eps=eps), True),
        "RS (α=10/255) vs FFGSM": (
            rf.RS(model, eps, alpha=a, seed=0),
            torchattacks.FFGSM(model, eps=eps, alpha=a),
            False,
        ),
        "PGD-10 vs PGD-10 (no random start)": (
            rf.PGD(model, eps, alpha=eps / 4, steps=10, random_start=False),
            torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=False),
            True,
        ),
    }


def measure(model_name: str, batch: int, reps: int, eps: float, clock: str = "wall") -> list[dict]:
    torch.manual_seed(0)
    model, shape = build_model(model_name)
    model.eval()
    x, y = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
    rows = []
    for name, (ours, peer, deterministic) in pairs(model, eps).items():
        fns = {"ours": lambda o=ours: o(x, y), "peer": lambda p=peer: p(x, y)}
        med = interleaved_medians(fns, x.device, reps, clock=clock)
        a, b = ours(x, y), peer(x, y)
        in_ball = all(bool(((t - x).abs() <= eps + 1e-6).all() and t.min() >= 0 and t.max() <= 1) for t in (a, b))
        rows.append({"model": model_name, "pair": name, "ours_ms": 1000 * med["ours"], "peer_ms": 1000 * med["peer"],
                     "ratio": med["ours"] / med["peer"], "max_abs_diff": (a - b).abs().max().item() if deterministic
                     else None, "in_ball": in_ball})  # fmt: skip
        r = rows[-1]
        print(f"# {model_name} {name}: ours {r['ours_ms']:.1f} ms, peer {r['peer_ms']:.1f} ms", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["small_cnn", "preact_resnet18"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=CLOCKS, default="wall", help="wall seconds, or this process's CPU seconds")
    p.add_argument("--quick", action="store_true", help="tiny CNN, batch 16, 3 repetitions (CI)")
    p.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.models, args.batch, args.reps = ["tiny_cnn"], 16, 3
    rows = [r for m in args.models for r in measure(m, args.batch, args.reps, args.eps, args.clock)]
    lines = ["| model | ours vs torchattacks | ours ms | torchattacks ms | ours / peer | max abs diff | in ε-ball |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        diff = "random starts differ" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        lines.append(f"| {r['model']} | {r['pair']} | {r['ours_ms']:.1f} | {r['peer_ms']:.1f} | {r['ratio']:.3f} |"
                     f" {diff} | {'yes' if r['in_ball'] else 'NO'} |")  # fmt: skip
    import torchattacks

    cmd = shlex.join(argv if argv is not None else sys.argv[1:])
    meta = (f"Command: `python benchmarks/peers.py {cmd}`; machine: {machine()}; date: {datetime.date.today()}; "
            f"torchattacks {torchattacks.__version__}; batch {args.batch}, 32×32, eval mode, ε = {args.eps:.4g}; "
            f"median of {args.reps} interleaved repetitions ({args.clock} clock).")  # fmt: skip
    table = "\n".join(lines)
    print(table + "\n\n" + meta)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        args.out.with_suffix(".md").write_text(table + "\n\n" + meta + "\n")


if __name__ == "__main__":
    main()
