"""Cost of one training step for every attack × regularizer, relative to a standard step; peak memory too.

Ratios are measured inside one run with interleaved repetitions (these machines are noisy). The floor is set by
the passes the math needs: a standard step is 1 forward + 1 backward; FGSM-family ≈ 2×, PGD-10 ≈ 11× (k+1 passes).
``floor`` in the table is that pass count; ``vs floor`` = ratio / floor.

``naive_gradalign`` is the straightforward FGSM+GradAlign written in this file (FGSM's own gradient, then two
separate ``autograd.grad(create_graph=True)`` calls at ``x`` and ``x + η``, then a separate training forward);
``fgsm+gradalign`` is the library's (reuses FGSM's clean gradient), ``fgsm+gradalign_fd`` the library's with
``estimator="fd"`` (finite differences instead of double backprop). Same model, batch and run. ``vit_tiny`` is
timm's ViT-Tiny on 32×32 inputs with 4×4 patches: there exact GradAlign runs attention on the math path (the fused
kernel has no double backward) and the fd estimator keeps the fused kernel.
``handwritten_fgsm`` is an FGSM-AT step written with bare tensor ops: the practical floor the library's ``fgsm``
step is compared with.

Memory (``--memory``, ``saved MiB``): the peak, during one training step, of the bytes autograd holds for
backward (``saved_tensors_hooks``; parameters excluded, each storage counted once) — the activation memory of the
step's graphs. Temporaries, gradients, optimizer state and allocator slack are not included; it is exact and
insensitive to other processes, unlike RSS on a shared machine.

    python benchmarks/step_cost.py --quick            # CI: tiny model, few repetitions
    python benchmarks/step_cost.py --models small_cnn preact_resnet18 wrn_16_4 --memory --out docs/benchmarks/step_cost
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from _timing import CLOCKS, interleaved_medians, machine

import robustfast as rf
from robustfast.modes import math_attention
from robustfast.regularizers.gradalign import grad_align_cos
from robustfast.training import adversarial_step

ATTACKS = {
    "fgsm": lambda m, e: rf.FGSM(m, eps=e, bn_mode="train"),
    "rs": lambda m, e: rf.RS(m, eps=e, bn_mode="train"),
    "nfgsm": lambda m, e: rf.NFGSM(m, eps=e, bn_mode="train"),
    "zerograd": lambda m, e: rf.ZeroGrad(m, eps=e, bn_mode="train"),
    "multigrad": lambda m, e: rf.MultiGrad(m, eps=e, bn_mode="train"),
    "multigrad_batched": lambda m, e: rf.MultiGrad(m, eps=e, bn_mode="train", batched=True),
    "seat_attack": lambda m, e: rf.SEATAttack(m, eps=e, bn_mode="train"),
    "pgd2": lambda m, e: rf.PGD(m, eps=e, steps=2, alpha=e / 2, random_start=False, bn_mode="train"),
    "pgd10": lambda m, e: rf.PGD(m, eps=e, steps=10, alpha=e / 5, random_start=False, bn_mode="train"),
}


def _switched_on(reg: rf.ELLEA) -> rf.ELLEA:
    """ELLE-A with λ > 0 and a history in which no step is an outlier (λ only decays while it is timed)."""
    reg.lam = 1.0
    reg.adaptive.count, reg.adaptive.mean, reg.adaptive.m2 = 10, 1e9, 0.0
    return reg


REGS = {
    "gradalign": lambda e: [rf.GradAlign(eps=e, lam=0.2, seed=0)],
    "gradalign_sym": lambda e: [rf.GradAlign(eps=e, lam=0.2, symmetric=True, seed=0)],
    "gradalign_fd": lambda e: [rf.GradAlign(eps=e, lam=0.2, seed=0, estimator="fd")],
    "advlc": lambda e: [rf.AdvLC()],
    "seat": lambda e: [rf.SEAT()],
    "cure": lambda e: [rf.CURE()],
    "gradnorm": lambda e: [rf.GradNorm()],
    "elle": lambda e: [rf.ELLE(eps=e, seed=0)],
    # ELLE-A switched on (λ > 0, where it spends most of a run): the default bounds its weight at every step
    "ellea_on": lambda e: [_switched_on(rf.ELLEA(eps=e, seed=0))],
    "ellea_4000_on": lambda e: [_switched_on(rf.ELLEA(eps=e, lam_max=4000, seed=0))],
}
#: forward+backward pass pairs the math needs (a standard step is 1); double backprop has no pass floor ("—").
FLOOR = {"standard": 1, "handwritten_fgsm": 2, "fgsm": 2, "rs": 2, "nfgsm": 2, "zerograd": 2, "multigrad": 4,
         "multigrad_batched": 4, "seat_attack": 3, "pgd2": 3, "pgd10": 11}  # fmt: skip


def build_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A model and its input shape (C, H, W)."""
    if name == "tiny_cnn":
        m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                          nn.Flatten(), nn.Linear(256, 10))  # fmt: skip
        return m, (3, 32, 32)
    from robustfast.models import create

    if name == "vit_tiny":  # timm ViT-Tiny on 32×32 inputs, 4×4 patches (64 tokens), fused attention
        return create("timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4), (3, 32, 32)
    kw = {"in_chans": 3} if name == "small_cnn" else {}
    return create(name, num_classes=10, **kw), (3, 32, 32)


def naive_gradalign_loss(model: nn.Module, x, y, eps: float, lam: float, gen: torch.Generator):
    """The straightforward FGSM+GradAlign step loss: nothing shared between its four gradient computations.

    Run under ``math_attention`` (a no-op for CNNs): fused attention kernels have no double backward.
    """
    with math_attention(model):
        xr = x.detach().requires_grad_(True)
        g_atk = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)[0]  # the FGSM attack
        x_adv = (x + eps * g_atk.sign()).clamp(0, 1).detach()
        x1 = x.detach().requires_grad_(True)
        g1 = torch.autograd.grad(F.cross_entropy(model(x1), y, reduction="sum"), x1, create_graph=True)[0]
        x2 = (x + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).requires_grad_(True)
        g2 = torch.autograd.grad(F.cross_entropy(model(x2), y, reduction="sum"), x2, create_graph=True)[0]
        return F.cross_entropy(model(x_adv), y) + lam * grad_align_cos(g1.detach(), g2)


def handwritten_fgsm_loss(model: nn.Module, x, y, eps: float):
    """The physical floor of an FGSM-AT step: the bare tensor ops, no library code."""
    xr = x.detach().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)[0]
    return F.cross_entropy(model((x + eps * g.sign()).clamp(0, 1)), y)


def step_fn(model: nn.Module, opt: torch.optim.Optimizer, attack, regs, x, y, eps: float = 8 / 255, naive=False):
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        model.train()
        if naive == "fgsm":
            loss = handwritten_fgsm_loss(model, x, y, eps)
        elif naive:
            loss = naive_gradalign_loss(model, x, y, eps, 0.2, gen)
        elif attack is None and not regs:
            loss = F.cross_entropy(model(x), y)
        else:
            loss = adversarial_step(model, attack, regs, x, y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def make_fns(model_name: str, batch: int, eps: float, configs: dict[str, tuple]):
    torch.manual_seed(0)
    model, shape = build_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.rand(batch, *shape), torch.randint(0, 10, (batch,))
    fns = {}
    for key, (atk_name, regs) in configs.items():
        if key == "standard":
            fns[key] = step_fn(model, opt, None, [], x, y)
        elif key == "handwritten_fgsm":
            fns[key] = step_fn(model, opt, None, [], x, y, eps, naive="fgsm")
        elif key == "naive_gradalign":
            fns[key] = step_fn(model, opt, None, [], x, y, eps, naive=True)
        else:
            fns[key] = step_fn(model, opt, ATTACKS[atk_name](model, eps), REGS[regs](eps) if regs else [], x, y)
    return fns, x.device


def measure(
    model_name: str, batch: int, reps: int, eps: float, configs: dict[str, tuple], clock: str = "wall"
) -> dict[str, float]:
    fns, device = make_fns(model_name, batch, eps, configs)
    med = interleaved_medians(fns, device, reps, clock=clock)
    return {k: v / med["standard"] for k, v in med.items()} | {"standard_seconds": med["standard"]}


class _SavedTensorMeter:
    """Peak bytes of tensors held by autograd graphs (saved for backward), parameters excluded, each storage
    counted once. Measures the activation memory a step keeps alive, not temporaries or allocator slack."""

    def __init__(self, model: nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.live: dict[int, list[int]] = {}
        self.cur = self.peak = 0

    def pack(self, t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key in self.params or key == 0:
            return t
        entry = self.live.setdefault(key, [t.untyped_storage().nbytes(), 0])
        if entry[1] == 0:
            self.cur += entry[0]
            self.peak = max(self.peak, self.cur)
        entry[1] += 1
        return _Held(t, key, self)

    @staticmethod
    def unpack(h):
        return h.t if isinstance(h, _Held) else h

    def release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.cur -= entry[0]
            del self.live[key]


class _Held:
    __slots__ = ("key", "meter", "t")

    def __init__(self, t: torch.Tensor, key: int, meter: _SavedTensorMeter) -> None:
        self.t, self.key, self.meter = t, key, meter

    def __del__(self) -> None:
        self.meter.release(self.key)


def peak_saved_mib(model_name: str, batch: int, eps: float, configs: dict[str, tuple]) -> dict[str, float]:
    """Peak MiB of autograd-saved tensors during one training step of each config (see _SavedTensorMeter)."""
    out = {}
    for key, config in configs.items():
        fns, _ = make_fns(model_name, batch, eps, {key: config})
        fn = fns[key]
        fn()  # warm-up (optimizer state)
        meter = _SavedTensorMeter(_model_of(fn))
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            fn()
        out[key] = meter.peak / 2**20
    return out


def _model_of(fn) -> nn.Module:
    for cell in fn.__closure__ or ():
        if isinstance(cell.cell_contents, nn.Module):
            return cell.cell_contents
    raise RuntimeError("no model in the step closure")


def default_configs() -> dict[str, tuple]:
    cfg: dict[str, tuple] = {"standard": (None, None), "handwritten_fgsm": ("fgsm", None)}
    cfg |= {a: (a, None) for a in ATTACKS}
    cfg |= {f"fgsm+{r}": ("fgsm", r) for r in REGS if r != "seat"}
    cfg["seat_attack+seat"] = ("seat_attack", "seat")
    cfg["naive_gradalign"] = ("fgsm", "gradalign")
    return cfg


def quick_configs() -> dict[str, tuple]:
    keys = [
        "standard",
        "handwritten_fgsm",
        "fgsm",
        "rs",
        "pgd2",
        "fgsm+gradalign",
        "fgsm+gradalign_fd",
        "naive_gradalign",
    ]
    return {k: default_configs()[k] for k in keys}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["small_cnn", "preact_resnet18", "wrn_16_4"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on shared, loaded cores)")
    p.add_argument("--clock", choices=CLOCKS, default="wall", help="wall seconds, or this process's CPU seconds")
    p.add_argument("--memory", action="store_true", help="also the peak autograd-saved activation memory per config")
    p.add_argument("--configs", nargs="+", default=None, help="only these configs (standard is always run)")
    p.add_argument("--quick", action="store_true", help="tiny model, a few configs, 3 repetitions (CI)")
    p.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = default_configs()
    if args.quick:
        args.models, args.batch, args.reps, configs = ["tiny_cnn"], 32, 3, quick_configs()
    if args.configs:
        configs = {k: v for k, v in configs.items() if k == "standard" or k in args.configs}
    results, memory = {}, {}
    for m in args.models:
        results[m] = measure(m, args.batch, args.reps, args.eps, configs, args.clock)
        print(f"# {m}: standard step {1000 * results[m]['standard_seconds']:.1f} ms", flush=True)
        if args.memory:
            memory[m] = peak_saved_mib(m, args.batch, args.eps, configs)
    head = " | ".join(f"{m} ratio | vs floor" + (" | saved MiB" if args.memory else "") for m in args.models)
    lines = [f"| config | floor | {head} |", "|---|---|" + "---|---|" * len(args.models) + "---|" * len(memory)]
    for key, (_atk, reg) in configs.items():
        floor = FLOOR.get(key) if reg is None else None
        cells = [key, str(floor) if floor else "—"]
        for m in args.models:
            r = results[m][key]
            cells += [f"{r:.2f}×", f"{r / floor:.2f}" if floor else "—"]
            if args.memory:
                cells.append(f"{memory[m][key]:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    naive = {}
    for ours, label in (("fgsm+gradalign", "exact"), ("fgsm+gradalign_fd", "fd")):
        if {"naive_gradalign", ours} <= configs.keys():
            naive[label] = {m: results[m]["naive_gradalign"] / results[m][ours] for m in args.models}
            lines += [
                "",
                f"naive GradAlign / ours ({label}): " + ", ".join(f"{m} {v:.2f}×" for m, v in naive[label].items()),
            ]
    if {"handwritten_fgsm", "fgsm"} <= configs.keys():
        hw = {m: results[m]["fgsm"] / results[m]["handwritten_fgsm"] for m in args.models}
        lines += ["", "library FGSM step / hand-written FGSM step: " + ", ".join(f"{m} {v:.3f}" for m, v in hw.items())]
    cmd = shlex.join(argv if argv is not None else sys.argv[1:])
    meta = (f"Command: `python benchmarks/step_cost.py {cmd}`; machine: {machine()}; date: {datetime.date.today()}; "
            f"batch {args.batch}, 32×32 inputs, median of {args.reps} interleaved repetitions ({args.clock} clock); "
            "ratio = time per training step (attack + forward + penalties + backward + SGD) / standard training "
            "step, same model and batch; floor = forward+backward pairs the math needs.")  # fmt: skip
    table = "\n".join(lines)
    print(table + "\n\n" + meta)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "results": results, "memory_mib": memory, "naive_over_ours": naive}
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
        args.out.with_suffix(".md").write_text(table + "\n\n" + meta + "\n")


if __name__ == "__main__":
    main()
