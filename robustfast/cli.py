"""``robustfast`` command line: ``train`` (the main job), ``eval`` and ``presets``.

Examples::

    robustfast train --preset demo                     # the main job (make demo): digits, FGSM + GradAlign, CPU
    robustfast train --preset zerograd-cifar10-eps8    # a paper's recipe (GPU machine with internet)
    robustfast train --dataset cifar10 --model preact_resnet18 --attack zerograd --eps 8/255 --epochs 30
    robustfast eval --checkpoint runs/demo/model.pt --dataset digits --model small_cnn --eps 0.1
    robustfast presets
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .config import RunConfig, list_presets, load_preset, load_yaml
from .errors import RobustfastError

__all__ = ["build_parser", "main"]

OFFLINE = ("digits", "fashion_mnist")
N_CLASSES = {"cifar100": 100, "imagenet": 1000}


def _kv(items: list[str] | None) -> dict[str, Any]:
    """``["q=0.35", "alpha=16/255"]`` -> ``{"q": 0.35, "alpha": "16/255"}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise RobustfastError(f"{item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = v if "/" in v else yaml.safe_load(v)
    return out


def _reg_spec(text: str) -> dict[str, Any]:
    """``gradalign:lam=0.2`` -> ``{"name": "gradalign", "lam": 0.2}``."""
    name, _, rest = text.partition(":")
    return {"name": name, **_kv([p for p in rest.split(",") if p])}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags override ``--config`` which overrides ``--preset``)."""
    p = argparse.ArgumentParser(prog="robustfast", description="Fast, reliable adversarial training.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (then evaluate) a model; defaults run offline in a few minutes")
    t.add_argument("--preset", help=f"a paper recipe: {', '.join(list_presets())}")
    t.add_argument("--config", help="a YAML file with RunConfig keys")
    t.add_argument("--dataset", help="digits, fashion_mnist, cifar10, cifar100, svhn, imagenet")
    t.add_argument("--data-dir")
    t.add_argument("--model", help="e.g. small_cnn, preact_resnet18, wrn_28_10, timm:vit_base_patch16_224")
    t.add_argument("--normalize", help="dataset whose mean/std go inside the model (cifar10, ...), or 'none'")
    t.add_argument("--eps", help="radius in pixel units, e.g. 8/255")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", help="peak learning rate")
    t.add_argument("--schedule", choices=["cyclic", "onecycle", "piecewise", "constant"])
    t.add_argument("--attack", help="training attack name (fgsm, rs, nfgsm, zerograd, multigrad, pgd, seat, none)")
    t.add_argument("--attack-arg", action="append", metavar="K=V", help="attack keyword, e.g. q=0.35 (repeatable)")
    t.add_argument("--reg", action="append", metavar="NAME[:K=V,...]", help="regularizer, e.g. gradalign:lam=0.2")
    t.add_argument("--amp", choices=["bf16", "fp16"])
    t.add_argument("--eps-warmup", type=int, help="epochs of linear eps ramp")
    t.add_argument("--co-action", choices=["flag", "rollback", "stop"])
    t.add_argument("--no-co-guard", action="store_true")
    t.add_argument("--eval-attacks", nargs="+", metavar="ATTACK")
    t.add_argument("--n-eval", type=int, help="test points for the adversarial evaluation")
    t.add_argument("--output", help="output directory (default runs/demo)")
    t.add_argument("--device")
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", type=int)
    t.add_argument("--no-download", action="store_true", help="never download datasets")
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last.pt")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("eval", help="evaluate saved weights (clean, PGD-50-10, AutoAttack...)")
    e.add_argument("--checkpoint", required=True, help="weights saved by `robustfast train` (model.pt)")
    e.add_argument("--preset")
    e.add_argument("--config", help="the run's config.yaml (dataset, model, eps) or any RunConfig YAML")
    e.add_argument("--dataset")
    e.add_argument("--data-dir")
    e.add_argument("--model")
    e.add_argument("--normalize")
    e.add_argument("--eps")
    e.add_argument("--attacks", nargs="+", metavar="ATTACK")
    e.add_argument("--n-eval", type=int)
    e.add_argument("--output", help="where to write report.md/report.json (default: next to the checkpoint)")
    e.add_argument("--device")
    e.add_argument("--quiet", action="store_true")

    sub.add_parser("presets", help="list the bundled paper presets")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < preset < config file < flags."""
    cfg = RunConfig()
    if getattr(args, "preset", None):
        cfg = RunConfig.from_dict(load_preset(args.preset), cfg)
    if getattr(args, "config", None):
        cfg = RunConfig.from_dict(load_yaml(args.config), cfg)
    flags: dict[str, Any] = {}
    simple = ["dataset", "data_dir", "model", "eps", "epochs", "batch_size", "lr", "schedule", "amp", "eps_warmup",
              "co_action", "output", "device", "seed", "workers"]  # fmt: skip
    for key in simple:
        v = getattr(args, key, None)
        if v is not None:
            flags[key] = v
    if getattr(args, "normalize", None) is not None:
        flags["normalize"] = None if args.normalize.lower() == "none" else args.normalize
    if getattr(args, "attack", None):
        flags["attack"] = {"name": args.attack, **_kv(args.attack_arg)}
    elif getattr(args, "attack_arg", None):
        flags["attack"] = {**cfg.attack, **_kv(args.attack_arg)}
    if getattr(args, "reg", None):
        flags["regularizers"] = [_reg_spec(r) for r in args.reg]
    if getattr(args, "no_co_guard", False):
        flags["co_guard"] = False
    if getattr(args, "no_download", False):
        flags["download"] = False
    ev: dict[str, Any] = {}
    attacks = getattr(args, "eval_attacks", None) or getattr(args, "attacks", None)
    if attacks:
        ev["attacks"] = attacks
    if getattr(args, "n_eval", None) is not None:
        ev["n_examples"] = args.n_eval
    if ev:
        flags["eval"] = ev
    return RunConfig.from_dict(flags, cfg)


# --------------------------------------------------------------------------------------------- building blocks
def build_data(cfg: RunConfig) -> tuple[DataLoader, DataLoader, int, int]:
    """Train/test loaders, number of classes and input channels for ``cfg.dataset``."""
    from .data import offline_loaders, vision_loaders

    name = cfg.dataset.lower().replace("-", "_")
    if name in OFFLINE:
        train, test = offline_loaders(name, batch_size=cfg.batch_size, seed=cfg.seed)
        return train, test, 10, 1
    train, test = vision_loaders(name, cfg.data_dir, cfg.batch_size, download=cfg.download,
                                 num_workers=cfg.workers, seed=cfg.seed)  # fmt: skip
    return train, test, N_CLASSES.get(name, 10), 3


def build_model(cfg: RunConfig, n_classes: int, in_chans: int, checkpoint: str | None = None) -> nn.Module:
    """The model from the factory, with normalization inside when ``cfg.normalize`` is set."""
    from .models import create

    return create(cfg.model, num_classes=n_classes, in_chans=in_chans, normalize=cfg.normalize,
                  checkpoint=checkpoint, **cfg.model_kwargs)  # fmt: skip


def build_parts(cfg: RunConfig, model: nn.Module) -> tuple[Any, list[Any]]:
    """The training loss and the trainer plugins of ``cfg`` (``None`` / ``[]`` when not set)."""
    from .component import create_plugin
    from .losses import create_loss

    loss = None
    if cfg.loss is not None:
        spec = dict(cfg.loss)
        loss = create_loss(spec.pop("name"), **spec)
    plugins = []
    for p in cfg.plugins:
        spec = dict(p)
        plugins.append(create_plugin(spec.pop("name"), model, **spec))
    return loss, plugins


def build_method(cfg: RunConfig, model: nn.Module) -> tuple[Any, list[Any]]:
    """The attack and regularizers; regularizers that take ``eps`` get the run's ε unless given."""
    from .attacks import create_attack
    from .regularizers import REGULARIZERS

    spec = dict(cfg.attack)
    name = spec.pop("name")
    attack = None if str(name).lower() == "none" else create_attack(name, model, eps=cfg.eps, **spec)
    regs = []
    for r in cfg.regularizers:
        r = dict(r)
        cls = REGULARIZERS.get(r.pop("name"))
        if "eps" in inspect.signature(cls).parameters and "eps" not in r:
            r["eps"] = cfg.eps
        regs.append(cls(**r))
    return attack, regs


def _schedule(cfg: RunConfig) -> Any:
    from .training import Constant, Cyclic, OneCycle, Piecewise

    if cfg.schedule == "cyclic":
        return Cyclic(cfg.lr, peak=cfg.peak)
    if cfg.schedule == "onecycle":
        return OneCycle(cfg.lr)
    if cfg.schedule == "piecewise":
        return Piecewise(cfg.lr, tuple(cfg.milestones))
    return Constant(cfg.lr)


def _head(loader: DataLoader, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys, got = [], [], 0
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[1])
        got += len(batch[0])
        if got >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _save_weights(model: nn.Module, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)


def _report(model: nn.Module, data: Any, cfg: RunConfig, out: Path, progress: bool) -> Any:
    from .attacks import PGD
    from .evaluation import evaluate

    attacks: list[Any] = []
    for a in cfg.eval.attacks:
        if cfg.eval.pgd_alpha is not None and a.startswith("pgd-"):
            parts = [int(v) for v in a.split("-")[1:]]
            steps, restarts = parts[0], (parts[1] if len(parts) > 1 else 1)
            attacks.append(PGD(model, eps=cfg.eps, alpha=cfg.eval.pgd_alpha, steps=steps, restarts=restarts,
                               keep="success", early_stop=True, seed=0))  # fmt: skip
        else:
            attacks.append(a)
    report = evaluate(model, data, cfg.eps, attacks, n_examples=cfg.eval.n_examples,
                      batch_size=cfg.eval.batch_size, seed=cfg.seed, progress=progress)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.to_markdown() + "\n")
    (out / "report.json").write_text(report.to_json())
    return report


# --------------------------------------------------------------------------------------------- commands
def cmd_train(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train with ``cfg``, then evaluate; writes config, history, curves, report and weights to ``cfg.output``."""
    from .evaluation import plot_training_curves
    from .training import EMA, SWA, AdversarialTrainer, COGuard, LinearWarmup  # noqa: F401

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    torch.manual_seed(cfg.seed)
    train, test, n_classes, in_chans = build_data(cfg)
    model = build_model(cfg, n_classes, in_chans)
    if cfg.device:
        model.to(cfg.device)
    attack, regs = build_method(cfg, model)
    criterion, plugins = build_parts(cfg, model)
    x_val, y_val = _head(test, cfg.val_examples)
    guard = COGuard(x_val, y_val, eps=cfg.eps, on_co=cfg.co_action) if cfg.co_guard and attack is not None else None
    averaging: list[Any] = []
    if cfg.ema:
        averaging.append(EMA(**cfg.ema))
    if cfg.swa:
        averaging.append(SWA(**{("every_steps" if k == "every" else k): v for k, v in cfg.swa.items()}))
    trainer = AdversarialTrainer(
        model, attack, regs, criterion=criterion, plugins=plugins, lr_schedule=_schedule(cfg), lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, eps_warmup=cfg.eps_warmup,
        label_smoothing=cfg.label_smoothing if criterion is None else 0.0,
        grad_clip=cfg.grad_clip, amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile,
        averaging=averaging, co_guard=guard, checkpoint_dir=out / "checkpoints", log_dir=out,
        progress=progress, seed=cfg.seed, device=cfg.device,
    )  # fmt: skip
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=cfg.eval.batch_size)
    history = trainer.fit(train, cfg.epochs, val_loader=val, resume=resume)
    history.to_json(out / "history.json")
    history.to_csv(out / "history.csv")
    method = "+".join([cfg.attack["name"], *(r["name"] for r in cfg.regularizers)])
    title = f"{cfg.model}, {method}, {cfg.dataset}, eps={cfg.eps:.3g}"
    plot_training_curves(list(history), out / "curves.png", title=title)
    final = averaging[-1].model if averaging else model
    _save_weights(final, out / "model.pt")
    report = _report(final, test, cfg, out, progress)
    print(report.to_markdown())
    print(f"\nwrote {out}/: config.yaml history.json history.csv curves.png report.md report.json model.pt")
    return {"history": history, "report": report}


def cmd_eval(args: argparse.Namespace) -> Any:
    """Evaluate saved weights and write ``report.md``/``report.json``."""
    cfg = config_from_args(args)
    _, test, n_classes, in_chans = build_data(cfg)
    model = build_model(cfg, n_classes, in_chans, checkpoint=args.checkpoint)
    out = Path(args.output) if args.output else Path(args.checkpoint).parent
    report = _report(model, test, cfg, out, not args.quiet)
    print(report.to_markdown())
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``robustfast`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "presets":
            for name in list_presets():
                first = load_preset(name)
                print(f"{name:<26} {first.get('dataset')}/{first.get('model')} attack={first.get('attack')}")
            return 0
        if args.command == "train":
            cmd_train(config_from_args(args), resume=args.resume, progress=not args.quiet)
        else:
            cmd_eval(args)
    except RobustfastError as e:
        print(f"robustfast: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
