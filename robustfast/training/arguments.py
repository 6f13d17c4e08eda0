"""Argument validation of :class:`~robustfast.training.AdversarialTrainer`: every argument is checked once, up front,
so nothing fails in epoch 1; the wording comes from :mod:`robustfast._checks`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._checks import check_bool, check_choice, check_int, check_number
from ..attacks.base import Attack
from ..component import Component
from ..errors import RobustfastError
from ..losses import TrainingLoss
from ..modes import resolve_policy
from ..regularizers.base import Regularizer
from .averaging import EMA, SWA
from .co_guard import COGuard

__all__ = ["check_train_loader", "check_trainer_args"]


OWNER = "AdversarialTrainer"


def check_trainer_args(a: dict[str, Any]) -> None:
    """Raise :class:`RobustfastError` naming the first invalid argument and how to fix it."""
    model, attack, opt = a["model"], a["attack"], a["optimizer"]
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise RobustfastError("AdversarialTrainer(model=...): pass an nn.Module with trainable parameters")
    if not any(p.requires_grad for p in model.parameters()):
        raise RobustfastError(
            "AdversarialTrainer(model=...): every parameter is frozen (requires_grad=False), so there is nothing to "
            "train; unfreeze the layers to train (p.requires_grad_(True))"
        )
    if attack is not None:
        if not isinstance(attack, Attack):
            raise RobustfastError(f"AdversarialTrainer(attack=...): expected an Attack or None, got {type(attack)}")
        if attack.model is not model:
            raise RobustfastError(
                "AdversarialTrainer: the attack was built on a different model; build it on the model you train "
                "(e.g. FGSM(model, eps)) so it attacks the current weights"
            )
        if attack.space != "pixel":
            raise RobustfastError(
                f"AdversarialTrainer: {type(attack).__name__} was told its inputs are normalized "
                "(set_normalization_used), but the trainer's validation, guard and checkpoints work on [0, 1] images; "
                "put the normalization inside the model (robustfast.models.Normalize) and feed [0, 1] images"
            )
    regs = a["regularizers"]
    if isinstance(regs, Regularizer) or not all(isinstance(r, Regularizer) for r in regs):
        raise RobustfastError("AdversarialTrainer(regularizers=...): pass a sequence of Regularizer objects (or ())")
    if opt is not None:
        if not isinstance(opt, torch.optim.Optimizer):
            raise RobustfastError(f"AdversarialTrainer(optimizer=...): expected an Optimizer, got {type(opt)}")
        own = {id(p) for p in model.parameters()}
        if not any(id(p) in own for g in opt.param_groups for p in g["params"]):
            raise RobustfastError("AdversarialTrainer: the optimizer holds none of the model's parameters")
    sched = a["lr_schedule"]
    if isinstance(sched, torch.optim.lr_scheduler.LRScheduler):
        if opt is None or sched.optimizer is not opt:
            raise RobustfastError("AdversarialTrainer(lr_schedule=...): build the torch LRScheduler on `optimizer`")
    elif sched is not None and not callable(sched):
        raise RobustfastError("AdversarialTrainer(lr_schedule=...): pass f(t, epochs) -> lr or a torch LRScheduler")
    for name in ("lr", "weight_decay", "momentum"):
        check_number(OWNER, name, a[name], 0.0, lo_open=name == "lr")
    warm = a["eps_warmup"]
    if not callable(warm):
        check_number(OWNER, "eps_warmup", warm, 0.0)
    for name in ("progress", "verbose", "channels_last", "compile"):
        check_bool(OWNER, name, a[name])
    check_choice(OWNER, "eps_warmup_target", a["eps_warmup_target"], ("all", "eps", "step"))
    if warm and attack is None:
        raise RobustfastError("AdversarialTrainer(eps_warmup=...): there is no attack to warm up (attack=None)")
    if a["attack_bn_mode"] is not None:
        resolve_policy(a["attack_bn_mode"])
    crit = a["criterion"]
    if crit is not None and not isinstance(crit, TrainingLoss) and not callable(crit):
        raise RobustfastError(
            "AdversarialTrainer(criterion=...): a TrainingLoss (e.g. robustfast.losses.CrossEntropy()) or a callable "
            "(logits, y) -> scalar loss"
        )
    plugins = a["plugins"]
    if isinstance(plugins, Component) or not all(isinstance(p, Component) for p in plugins):
        raise RobustfastError("AdversarialTrainer(plugins=...): pass a sequence of Component objects (e.g. [AWP(...)])")
    check_number(OWNER, "label_smoothing", a["label_smoothing"], 0.0, 1.0, hi_open=True)
    if a["criterion"] is not None and a["label_smoothing"]:
        raise RobustfastError("AdversarialTrainer: label_smoothing applies to the default criterion; put it in yours")
    if a["grad_clip"] is not None:
        check_number(OWNER, "grad_clip", a["grad_clip"], 0.0, lo_open=True)
    check_choice(OWNER, "amp", a["amp"], (None, "bf16", "fp16"))
    parts = [*regs, *([crit] if isinstance(crit, TrainingLoss) else [])]
    if a["compile"] and any(getattr(r, "needs_double_backward", False) for r in parts):
        raise RobustfastError(
            "AdversarialTrainer(compile=True): torch.compile does not support the double backward these "
            "regularizers need; use compile=False (or GradAlign(estimator='fd'), which needs none)"
        )
    has_bn = any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())
    reusers = [type(r).__name__ for r in parts if "clean_logits" in r.requests]
    if a["compile"] and has_bn and reusers:
        raise RobustfastError(
            f"AdversarialTrainer(compile=True): {', '.join(reusers)} reuse(s) the attack's clean forward in the final "
            "backward, and the compiled BatchNorm's running-statistics updates in the later forwards invalidate it; "
            "use compile=False with this model"
        )
    avg = a["averaging"]
    avgs = [avg] if isinstance(avg, (EMA, SWA)) else list(avg)
    if not all(isinstance(x, (EMA, SWA)) for x in avgs):
        raise RobustfastError("AdversarialTrainer(averaging=...): pass EMA(...) / SWA(...) instances")
    if a["co_guard"] is not None and not isinstance(a["co_guard"], COGuard):
        raise RobustfastError("AdversarialTrainer(co_guard=...): pass a COGuard(x_heldout, y_heldout, ...)")
    if a["co_guard"] is not None and attack is not None and getattr(attack, "norm", "Linf") != "Linf":
        raise RobustfastError(
            f"AdversarialTrainer(co_guard=...): the guard compares FGSM and PGD accuracy in L∞, but "
            f"{type(attack).__name__} trains in the {attack.norm} norm; drop the guard for this run"
        )
    va = a["val_attack"]
    if va != "pgd" and va is not None and (not isinstance(va, Attack) or va.model is not model):
        raise RobustfastError("AdversarialTrainer(val_attack=...): 'pgd', None, or an Attack built on the model")
    for name in ("checkpoint_dir", "log_dir"):
        if a[name] is not None and not isinstance(a[name], (str, Path)):
            raise RobustfastError(f"AdversarialTrainer({name}=...): a path, got {type(a[name])}")
    check_int(OWNER, "seed", a["seed"], allow_none=True)


def check_train_loader(model: nn.Module, loader: Any) -> None:
    """``fit``'s loader: a last training batch of one example fails inside a ``BatchNorm1d`` (train mode), so it is
    refused before training, naming the fix.

    (2-d BatchNorm fails only on 1×1 maps, which cannot be told before a forward; the step names that case.)
    """
    has_bn = any(isinstance(m, nn.BatchNorm1d) and m.training for m in model.modules())
    bs, sampler = getattr(loader, "batch_size", None), getattr(loader, "sampler", None)
    if not has_bn or not isinstance(bs, int) or getattr(loader, "drop_last", True) or sampler is None:
        return
    try:
        n = len(sampler)
    except TypeError:
        return
    if n % bs == 1:
        raise RobustfastError(
            f"fit(train_loader): {n} training examples in batches of {bs} leave a last batch of one example, which "
            "BatchNorm cannot normalize in train mode; build the loader with drop_last=True (command line: "
            "drop_last: true in --config) or choose another batch size"
        )
