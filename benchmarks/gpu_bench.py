"""GPU throughput and peak memory of training steps, bf16 + channels_last against fp32; ViT-B/16 GradAlign; DDP.

One prepared script for a machine with a GPU (issue 24); everything it measures:

* **Steps on PreAct ResNet-18** (CIFAR-shaped synthetic data, 32×32): training images/s of a clean step and of the
  FGSM, N-FGSM, FGSM+GradAlign (λ = 0.2, double backward) and PGD-10 steps (attack + forward + penalty + backward
  + SGD, ``adversarial_step`` as the trainer runs it), at batch 128 and 512, in fp32 and in bf16 autocast +
  channels_last; peak allocated memory of each (``torch.cuda.max_memory_allocated``). Timed after warm-up with
  device synchronisation. A configuration that runs out of memory is reported as such, not as a crash.
* **ViT-B/16** (timm, 224², 10 classes): the FGSM+GradAlign step with its double backward (attention on the math
  path: the fused kernel has no double backward), images/s and peak memory.
* **DDP** when more than one GPU is visible: the FGSM step through ``AdversarialTrainer`` under
  ``DistributedDataParallel`` (NCCL, one process per GPU, per-GPU batch 128, bf16 + channels_last), aggregate
  images/s against the same trainer on one GPU, and the scaling efficiency.
* **Projection**: the time of a 30-epoch CIFAR-10 run (50,000 training images; training steps only, no
  evaluation) from the measured images/s of each method.
* **AMP numerics**: the same model from the same seed trained briefly in fp32 and in bf16 + channels_last on a
  learnable synthetic task (labels from a frozen random teacher): no non-finite loss, final accuracies within
  ``--acc-tol``.

    python benchmarks/gpu_bench.py --out docs/benchmarks/gpu_bench   # CUDA: the whole table (minutes on an H100)
    python benchmarks/gpu_bench.py --quick                            # CI on CPU: tiny models, every code path
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from _timing import machine, sync
from step_cost import build_model

import robustfast as rf
from robustfast.training import adversarial_step

PRECISIONS = {"fp32": (None, False), "bf16+channels_last": (torch.bfloat16, True)}
EPS = 8 / 255
CIFAR10_TRAIN, PROJECTED_EPOCHS = 50_000, 30


def _parts(model: torch.nn.Module, method: str) -> tuple[rf.Attack | None, list[rf.Regularizer]]:
    """The attack and regularizers of one method (CIFAR-10 ε = 8/255 settings of the papers' code)."""
    kw: dict[str, Any] = {"bn_mode": "train", "check_range": "off"}
    if method == "clean":
        return None, []
    if method == "FGSM":
        return rf.FGSM(model, EPS, **kw), []
    if method == "N-FGSM":
        return rf.NFGSM(model, EPS, seed=0, **kw), []
    if method == "FGSM+GradAlign":
        return rf.FGSM(model, EPS, **kw), [rf.GradAlign(eps=EPS, lam=0.2, seed=0)]
    if method == "PGD-10":
        return rf.PGD(model, EPS, 2 / 255, 10, True, seed=0, **kw), []
    raise ValueError(method)


METHODS = ("clean", "FGSM", "N-FGSM", "FGSM+GradAlign", "PGD-10")


def model_and_shape(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """``build_model``'s models, plus ``"vit_base_224"``: timm's ViT-B/16 at 224² with 10 classes."""
    if name == "vit_base_224":
        return rf.models.create("timm:vit_base_patch16_224", num_classes=10), (3, 224, 224)
    return build_model(name)


def setup(model_name: str, batch: int, device: torch.device, channels_last: bool, seed: int = 0):
    """Model, synthetic batch and labels on ``device`` in the chosen memory format."""
    torch.manual_seed(seed)
    model, shape = model_and_shape(model_name)
    model = model.to(device).train()
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    x = torch.rand(batch, *shape, device=device).contiguous(memory_format=mf)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, x, y


def make_step(model: torch.nn.Module, method: str, dtype: torch.dtype | None) -> Callable[[Any, Any], float]:
    """One training step of ``method`` (the trainer's ``adversarial_step``, then backward and SGD)."""
    atk, regs = _parts(model, method)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dev = next(model.parameters()).device.type

    def step(x, y) -> float:
        with torch.autocast(dev, dtype=dtype) if dtype is not None else nullcontext():
            out = adversarial_step(model, atk, regs, x, y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return float(out.loss.detach().float())

    return step


def throughput(model_name: str, method: str, precision: str, batch: int, steps: int, device) -> dict[str, Any]:
    """Images/s and peak allocated MiB of ``steps`` timed steps (``{"oom": True}`` when it does not fit)."""
    dtype, cl = PRECISIONS[precision]
    cuda = device.type == "cuda"
    try:
        model, x, y = setup(model_name, batch, device, cl)
        step = make_step(model, method, dtype)
        for _ in range(2):
            step(x, y)
        sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        sync(device)
        ips = batch * steps / (time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
        return {"ips": ips, "peak_mib": peak, "oom": False}
    except torch.OutOfMemoryError:
        return {"ips": None, "peak_mib": None, "oom": True}
    finally:
        if cuda:
            torch.cuda.empty_cache()


def numerics(model_name: str, method: str, precision: str, n: int, batch: int, epochs: int, device) -> dict:
    """Short training on a learnable synthetic task; returns non-finite loss count and final train accuracy."""
    dtype, cl = PRECISIONS[precision]
    g = torch.Generator().manual_seed(123)
    _, shape = model_and_shape(model_name)
    x = torch.rand(n, *shape, generator=g)
    teacher = torch.randn(10, shape[0] * 16, generator=g)
    y = (F.adaptive_avg_pool2d(x - 0.5, 4).flatten(1) @ teacher.T).argmax(1)
    model, _, _ = setup(model_name, 1, device, cl)
    step = make_step(model, method, dtype)
    mf = torch.channels_last if cl else torch.contiguous_format
    x, y = x.to(device).contiguous(memory_format=mf), y.to(device)
    bad = 0
    for _ in range(epochs):
        for i in range(0, n, batch):
            bad += not math.isfinite(step(x[i : i + batch], y[i : i + batch]))
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    return {"nonfinite_losses": bad, "train_acc": acc}


# ------------------------------------------------------------------------------------------------ DDP
def _process_device(kind: str, rank: int) -> torch.device:
    """The device of process ``rank``: its own GPU with CUDA, else the CPU."""
    return torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")


def _trainer_ips(model_name: str, batch: int, steps: int, device: torch.device, amp: str | None) -> float:
    """Images/s of this process's second epoch of FGSM training through ``AdversarialTrainer`` (DDP when a
    process group is initialized: the trainer wraps the model), times the number of processes."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from robustfast.training import AdversarialTrainer
    from robustfast.training.distributed import is_distributed, world_size

    world = world_size()
    torch.manual_seed(0)
    model, shape = model_and_shape(model_name)
    model = model.to(device)
    n = batch * steps * world
    ds = TensorDataset(torch.rand(n, *shape), torch.randint(0, 10, (n,)))
    sampler = DistributedSampler(ds, shuffle=True, seed=0) if is_distributed() else None
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, shuffle=sampler is None, drop_last=True)
    tr = AdversarialTrainer(model, rf.FGSM(model, EPS, check_range="off"), lr=0.1, amp=amp,
                            channels_last=amp is not None, val_attack=None, progress=False, verbose=False,
                            seed=0, device=device)  # fmt: skip
    hist = tr.fit(loader, 2)  # the first epoch warms up (cuDNN autotuning, NCCL buckets)
    return world * batch * steps / hist[-1]["time"]


def _ddp_worker(rank: int, world: int, init_file: str, args: dict[str, Any], out: str) -> None:
    import torch.distributed as dist

    cuda = args["device"] == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        if cuda:
            torch.cuda.set_device(rank)
        else:
            torch.set_num_threads(1)
        ips = _trainer_ips(
            args["model"], args["batch"], args["steps"], _process_device(args["device"], rank), args["amp"]
        )
        if rank == 0:
            Path(out).write_text(json.dumps({"ips": ips}))
    finally:
        dist.destroy_process_group()


def ddp(model_name: str, world: int, batch: int, steps: int, device: torch.device) -> dict[str, Any]:
    """Aggregate images/s of ``world`` DDP processes against one process, same per-process batch."""
    import torch.multiprocessing as mp

    amp = "bf16" if device.type == "cuda" else None
    single = _trainer_ips(model_name, batch, steps, _process_device(device.type, 0), amp)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.json")
        args = {"model": model_name, "batch": batch, "steps": steps, "device": device.type, "amp": amp}
        mp.spawn(_ddp_worker, args=(world, os.path.join(tmp, "init"), args, out), nprocs=world, join=True)
        multi = json.loads(Path(out).read_text())["ips"]
    return {"world": world, "batch_per_process": batch, "precision": amp or "fp32", "single_ips": single,
            "ddp_ips": multi, "efficiency": multi / (world * single)}  # fmt: skip


# ------------------------------------------------------------------------------------------------ report
def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "—" if v is None else format(v, spec)


def _hours(ips: float | None) -> str:
    return "—" if not ips else f"{CIFAR10_TRAIN * PROJECTED_EPOCHS / ips / 3600:.2f} h"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="preact_resnet18")
    p.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--vit-model", default="vit_base_224", help="'vit_base_224' (timm ViT-B/16, 224²) or 'none'")
    p.add_argument("--vit-batches", type=int, nargs="+", default=[32, 64])
    p.add_argument("--ddp-steps", type=int, default=50, help="steps per epoch of each DDP process")
    p.add_argument("--check-n", type=int, default=4096, help="images of the AMP numerics run")
    p.add_argument("--check-epochs", type=int, default=3)
    p.add_argument("--acc-tol", type=float, default=0.05)
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU, tiny models, batch 8, 2 steps, 2-process gloo DDP: every code path, no GPU numbers (CI)",
    )
    p.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if args.quick:
        torch.set_num_threads(1)
        args.model, args.batches, args.steps, args.check_n, args.check_epochs = "tiny_cnn", [8], 2, 32, 1
        args.vit_model, args.vit_batches, args.ddp_steps = "vit_tiny", [2], 2
    elif device.type != "cuda":
        print("warning: no CUDA device; numbers below are CPU numbers, not GPU throughput", file=sys.stderr)

    rows = []
    for method in args.methods:
        for b in args.batches:
            r = {pr: throughput(args.model, method, pr, b, args.steps, device) for pr in PRECISIONS}
            rows.append({"model": args.model, "method": method, "batch": b, **r})
            said = ", ".join(f"{k} " + ("OOM" if v["oom"] else f"{v['ips']:.0f} img/s") for k, v in r.items())
            print(f"# {args.model} {method} batch {b}: {said}", flush=True)
    if args.vit_model != "none":
        name = args.vit_model
        for b in args.vit_batches:
            r = {pr: throughput(name, "FGSM+GradAlign", pr, b, args.steps, device) for pr in PRECISIONS}
            rows.append({"model": name, "method": "FGSM+GradAlign", "batch": b, **r})
            print(f"# {name} FGSM+GradAlign batch {b}: done", flush=True)
    ddp_row = None
    if args.quick or n_gpus > 1:
        world = 2 if args.quick else n_gpus
        ddp_row = ddp(args.model, world, min(args.batches) if args.quick else 128, args.ddp_steps, device)
        print(f"# DDP x{world}: {ddp_row['ddp_ips']:.0f} img/s (1 process {ddp_row['single_ips']:.0f})", flush=True)

    methods = [m for m in ("FGSM", "FGSM+GradAlign") if m in args.methods] or args.methods[:1]
    checks = {(m, pr): numerics(args.model, m, pr, args.check_n, min(args.batches), args.check_epochs, device)
              for m in methods for pr in PRECISIONS}  # fmt: skip

    lines = ["| model | method | batch | fp32 img/s | bf16+channels_last img/s | speed-up | fp32 peak MiB | "
             "bf16+cl peak MiB | 30 CIFAR-10 epochs (best) |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        a, b = r["fp32"], r["bf16+channels_last"]
        speed = f"{b['ips'] / a['ips']:.2f}×" if a["ips"] and b["ips"] else "—"
        best = max((v["ips"] for v in (a, b) if v["ips"]), default=None)
        cells = [("OOM" if v["oom"] else _fmt(v["ips"])) for v in (a, b)]
        lines.append(f"| {r['model']} | {r['method']} | {r['batch']} | {cells[0]} | {cells[1]} | {speed} | "
                     f"{_fmt(a['peak_mib'])} | {_fmt(b['peak_mib'])} | {_hours(best)} |")  # fmt: skip
    if ddp_row is not None:
        d = ddp_row
        lines += [
            "",
            "| DDP processes | per-process batch | precision | 1 process img/s | DDP img/s | efficiency "
            "| 30 CIFAR-10 epochs |",
            "|---|---|---|---|---|---|---|",
            f"| {d['world']} | {d['batch_per_process']} | {d['precision']} | {d['single_ips']:.0f} "
            f"| {d['ddp_ips']:.0f} | {100 * d['efficiency']:.0f}% | {_hours(d['ddp_ips'])} |",
        ]
    lines += ["", "| method | precision | non-finite losses | train accuracy |", "|---|---|---|---|"]
    ok = True
    for m in methods:
        accs = [checks[(m, pr)]["train_acc"] for pr in PRECISIONS]
        ok &= abs(accs[0] - accs[1]) <= args.acc_tol or args.quick
        for pr in PRECISIONS:
            c = checks[(m, pr)]
            ok &= c["nonfinite_losses"] == 0
            lines.append(f"| {m} | {pr} | {c['nonfinite_losses']} | {100 * c['train_acc']:.1f} |")
    cmd = shlex.join(argv if argv is not None else sys.argv[1:])
    meta = (f"Command: `python benchmarks/gpu_bench.py {cmd}`; device: {device} ({max(n_gpus, 1)} visible); "
            f"machine: {machine()}; date: {datetime.date.today()}; {args.steps} timed steps after 2 warm-up steps, "
            f"CIFAR-shaped synthetic data, ε = 8/255; projection: {PROJECTED_EPOCHS} × {CIFAR10_TRAIN:,} images at "
            f"the faster precision's images/s (training steps only); numerics: {args.check_n} synthetic images, "
            f"{args.check_epochs} epochs; AMP check {'passed' if ok else 'FAILED'}.")  # fmt: skip
    table = "\n".join(lines)
    print(table + "\n\n" + meta)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "throughput": rows, "ddp": ddp_row,
                   "numerics": {f"{k[0]}|{k[1]}": v for k, v in checks.items()}}  # fmt: skip
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
        args.out.with_suffix(".md").write_text(table + "\n\n" + meta + "\n")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
