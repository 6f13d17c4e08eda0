"""Overhead of robustfast's AutoAttack adapter over calling pyautoattack directly (same model, data, settings).

Usage: python benchmarks/aa_overhead.py [--model resnet18|linear] [--n 16] [--n-iter 10] [--attacks apgd-ce,apgd-t]
       [--repeats 3] [--device cpu] [--quick] [--out docs/benchmarks/aa_overhead]

``--quick`` (CI): linear model, 8 points, APGD-CE with 2 iterations, 2 repetitions.

Prints the median and best wall time of both paths (interleaved runs), their ratios, and whether the adversarial
examples are identical.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import pyautoattack
import torch
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from _timing import machine

from robustfast.evaluation import AutoAttackAdapter
from robustfast.evaluation.autoattack import _set_apgd_iters


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name == "resnet18":  # the CIFAR-10 checkpoint shipped in the pyautoattack wheel
        import pyautoattack.examples.resnet as resnet

        model = resnet.ResNet18()
        path = os.path.join(os.path.dirname(resnet.__file__), "model_test.pt")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model, (3, 32, 32)
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), (3, 32, 32)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "linear"])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--n-iter", type=int, default=10)
    ap.add_argument("--eps", type=float, default=2 / 255)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attacks", default="apgd-ce,apgd-t", help="comma-separated AutoAttack components")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="linear model, 8 points, APGD-CE x2 iterations (CI)")
    ap.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.model, args.n, args.n_iter, args.repeats, args.attacks = "linear", 8, 2, 2, "apgd-ce"
    dev = torch.device(args.device)
    model, shape = build(args.model)
    model = model.to(dev).eval()
    x = torch.rand(args.n, *shape, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        y = model(x).argmax(1)  # synthetic inputs labelled by the model: every point is attacked
    attacks = args.attacks.split(",")

    def ours() -> torch.Tensor:
        adapter = AutoAttackAdapter(model, args.eps, version="custom", attacks=attacks, n_iter=args.n_iter, seed=0)
        return adapter.run(x, y, batch_size=args.n).x_adv

    def direct() -> torch.Tensor:
        aa = pyautoattack.AutoAttack(model, attacks=attacks, device=dev, eps=args.eps, seed=0, version="custom")
        for apgd in (aa.apgd, aa.apgd_targeted):
            _set_apgd_iters(apgd, args.n_iter)
        return aa.run_standard_evaluation(x, y, batch_size=args.n)[0]

    def timed(fn) -> tuple[float, torch.Tensor]:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, out

    timed(ours), timed(direct)  # warm-up of both paths (first-call imports, caches)
    t_ours, t_direct = [], []
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both paths alike
        t, a = timed(ours)
        t_ours.append(t)
        t, b = timed(direct)
        t_direct.append(t)
    mo, md = statistics.median(t_ours), statistics.median(t_direct)
    bo, bd = min(t_ours), min(t_direct)  # best of n: least sensitive to other load on the machine
    with torch.no_grad():
        acc = (model(a).argmax(1) == y).float().mean().item()
    cmd = shlex.join(argv if argv is not None else sys.argv[1:])
    table = (
        "| model | points | attacks | n_iter | adapter s (median) | direct s (median) | ratio median | ratio best |"
        " identical x_adv |\n|---|---|---|---|---|---|---|---|---|\n"
        f"| {args.model} | {args.n} | {' + '.join(attacks)} | {args.n_iter} | {mo:.3f} | {md:.3f} | {mo / md:.3f} |"
        f" {bo / bd:.3f} | {'yes' if torch.equal(a, b) else 'NO'} |"
    )
    meta = (f"Command: `python benchmarks/aa_overhead.py {cmd}`; machine: {machine()}; date: {datetime.date.today()}; "
            f"pyautoattack {getattr(pyautoattack, '__version__', '?')}; {args.repeats} interleaved repetitions; "
            "ratio = adapter time / pyautoattack called directly.")  # fmt: skip
    print(table + "\n\n" + meta)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "adapter_s": t_ours, "direct_s": t_direct, "identical": torch.equal(a, b)}
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
        args.out.with_suffix(".md").write_text(table + "\n\n" + meta + "\n")
    print(f"model={args.model} device={dev} n={args.n} attacks={attacks} n_iter={args.n_iter} eps={args.eps:.5f}")
    print(f"median: adapter {mo:.3f}s  direct {md:.3f}s  ratio {mo / md:.3f}")
    print(f"best:   adapter {bo:.3f}s  direct {bd:.3f}s  ratio {bo / bd:.3f}  identical x_adv: {torch.equal(a, b)}")
    print(f"robust accuracy ({' + '.join(attacks)}) on synthetic inputs labelled by the model: {acc:.3f}")


if __name__ == "__main__":
    main()
