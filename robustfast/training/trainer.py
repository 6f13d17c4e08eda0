"""``AdversarialTrainer``: any attack + training loss + regularizers + plugins on any ``nn.Module``.

The fit loop is short: each step runs the phases of :mod:`robustfast.training.step` and calls the hook points of
:mod:`robustfast.training.callbacks` between them. The trainer names no method: the attack, the training loss,
the regularizers and the plugins are :class:`~robustfast.component.Component` objects that own their state,
declare their needs and their response to catastrophic overfitting, and join the loop through hooks.
Checkpoints, averaging, the CO guard, schedules and DDP live in their own modules.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.hooks import RemovableHandle

from ..attacks import PGD, PGDL2
from ..attacks.base import Attack
from ..component import Component
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import CrossEntropy, TrainingLoss, as_training_loss
from ..modes import ModePolicy, model_mode, resolve_policy
from ..regularizers.attention import math_attention
from ..regularizers.base import Regularizer
from .averaging import EMA, SWA
from .callbacks import HookSet, check_callbacks
from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .co_guard import COGuard
from .distributed import all_reduce_sum, is_distributed, rank, wrap_ddp
from .history import History
from .schedules import Cyclic, LinearWarmup, Schedule, build_scheduler
from .step import StepOutput, craft, needs_double_backward, step_losses, step_requests

__all__ = ["AdversarialTrainer"]

ScheduleFn = Callable[[float, float], float]
FORMAT = 2


class AdversarialTrainer:
    """Train ``model`` on ``attack``'s adversarial examples with a training loss, penalties and plugins.

    Defaults follow the seed papers' code: SGD (momentum 0.9, weight decay 5e-4) with a per-iteration triangular
    cyclic learning rate (``lr_max=0.2`` peaking at 2/5 of training, GradAlign's code), attacks crafted with the
    model in ``train()`` mode (``attack_bn_mode="train"``: every official fast-AT code does this, unlike
    torchattacks' eval default), the mean cross-entropy at ``x_adv``, fp32, no gradient clipping.

    Example:
        ```python
        atk = ZeroGrad(model, eps=8/255, q=0.35)
        guard = COGuard(x_heldout, y_heldout, on_co="rollback")      # on CO: roll back, ZeroGrad raises q
        trainer = AdversarialTrainer(model, atk, co_guard=guard, averaging=EMA(0.999), checkpoint_dir="ckpt")
        history = trainer.fit(train_loader, epochs=30, val_loader=val_loader, resume=True)
        ```

    Args:
        model: any ``nn.Module`` mapping ``[0, 1]`` images to ``(N, C)`` logits, with trainable parameters.
        attack: the training attack, built on ``model`` (``None``: standard training).
        regularizers: penalties added to the loss (e.g. ``GradAlign``).
        optimizer: default ``SGD(lr, momentum, weight_decay)`` over ``model.parameters()``.
        criterion: the training loss: a :class:`~robustfast.losses.TrainingLoss` (e.g. TRADES's, on the clean
            and adversarial inputs) or ``(logits, y) -> scalar`` at ``x_adv``. Default: mean cross-entropy at
            ``x_adv`` with ``label_smoothing``.
        plugins: trainer-level method parts (:class:`~robustfast.component.Component` objects with hooks, e.g.
            AWP, which wraps the optimizer step).
        lr_schedule: a :class:`~robustfast.training.schedules.Schedule` (``Cyclic``, ``OneCycle``, ``Piecewise``,
            ``Constant``: turned into a torch scheduler stepped every optimizer step), a callable
            ``f(t, epochs) -> lr`` of the fractional epoch after the step, or a torch ``LRScheduler`` on
            ``optimizer``. Default: ``Cyclic(lr)`` with the default optimizer, the optimizer's rate otherwise.
        lr: peak learning rate of the defaults (0.2).
        momentum: SGD momentum of the default optimizer (0.9).
        weight_decay: weight decay of the default optimizer (5e-4; AdvLC uses 1e-4).
        eps_warmup: ε (and step size) warm-up: number of epochs of a linear ramp from 0 (GradAlign's SVHN: 5), or
            a schedule ``f(t, total) -> factor``; 0 (default) disables. Applied through :meth:`Attack.scaled`.
        eps_warmup_target: what the warm-up scales: ``"all"`` (default: ε and the step sizes, N-FGSM's code),
            ``"eps"`` (the radius only, GradAlign's code for PGD) or ``"step"`` (the step only, GradAlign's code for
            FGSM).
        attack_bn_mode: the attack's BatchNorm/dropout policy during training (default ``"train"``); ``None`` keeps
            the attack's own. Restored when ``fit`` returns.
        label_smoothing: label smoothing of the default criterion (0.0).
        grad_clip: clip the gradient norm to this value (default ``None``: no clipping, as the papers).
        amp: ``None`` (fp32, default), ``"bf16"`` or ``"fp16"`` (autocast; fp16 adds a ``GradScaler``).
            Validation and the CO guard always run in fp32.
        channels_last: convert model and inputs to channels-last memory format (default False).
        compile: ``torch.compile`` the model for the training step (default False; incompatible with
            double-backward regularizers — ``GradAlign(estimator="fd")`` needs none). Graphs are compiled without
            donated buffers, since the step reuses graphs.
        averaging: :class:`EMA` / :class:`SWA` instances (evaluated next to the model, saved in checkpoints).
        co_guard: a :class:`COGuard` (catastrophic-overfitting detection, rolling back and strengthening). It
            probes at the full ε, so during an ``eps_warmup`` ramp it waits (history: ``co_skipped``).
        val_attack: attack for validation: ``"pgd"`` (default: PGD-10 in the attack's norm, α = ε/4, seeded random
            start), an :class:`Attack` on ``model``, or ``None`` (clean accuracy only).
        callbacks: duck-typed objects with hook methods (see :mod:`~robustfast.training.callbacks`).
        checkpoint_dir: save ``last.pt`` there atomically after every epoch (rank 0), for ``fit(resume=True)``.
        log_dir: write ``history.json`` and ``history.csv`` there after every epoch (rank 0).
        progress: show a tqdm progress bar with loss, accuracy and images/s (rank 0; default True).
        verbose: print one summary line per epoch and every catastrophic-overfitting event (rank 0; default True).
        seed: ``torch.manual_seed(seed)`` at the start of a fresh ``fit`` (default ``None``: untouched).
        device: default: the device of the model's parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        attack: Attack | None,
        regularizers: Sequence[Regularizer] = (),
        optimizer: torch.optim.Optimizer | None = None,
        *,
        criterion: TrainingLoss | Callable[[Tensor, Tensor], Tensor] | None = None,
        plugins: Sequence[Component] = (),
        lr_schedule: Schedule | ScheduleFn | LRScheduler | None = None,
        lr: float = 0.2,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        eps_warmup: float | ScheduleFn = 0,
        eps_warmup_target: Literal["all", "eps", "step"] = "all",
        attack_bn_mode: str | ModePolicy | None = "train",
        label_smoothing: float = 0.0,
        grad_clip: float | None = None,
        amp: Literal["bf16", "fp16"] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        averaging: EMA | SWA | Sequence[EMA | SWA] = (),
        co_guard: COGuard | None = None,
        val_attack: Attack | Literal["pgd"] | None = "pgd",
        callbacks: Iterable[object] = (),
        checkpoint_dir: str | Path | None = None,
        log_dir: str | Path | None = None,
        progress: bool = True,
        verbose: bool = True,
        seed: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        from .config import check_trainer_args

        check_trainer_args(locals())
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.attack = attack
        self.criterion = CrossEntropy(label_smoothing) if criterion is None else as_training_loss(criterion)
        self.regularizers, self.plugins = list(regularizers), list(plugins)
        self.optimizer = optimizer or torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        if lr_schedule is None and optimizer is None:
            lr_schedule = Cyclic(lr_max=lr)
        self.lr_schedule = lr_schedule
        self.scheduler: LRScheduler | None = lr_schedule if isinstance(lr_schedule, LRScheduler) else None
        self.eps_warmup: ScheduleFn | None = (
            eps_warmup if callable(eps_warmup) else (LinearWarmup(eps_warmup) if eps_warmup else None)
        )
        self.eps_warmup_target = eps_warmup_target
        self.attack_policy = None if attack_bn_mode is None else resolve_policy(attack_bn_mode)
        self._attack_bn_mode = attack_bn_mode
        self.grad_clip, self.amp, self.channels_last, self.compile = grad_clip, amp, channels_last, compile
        self.averagers = [averaging] if isinstance(averaging, (EMA, SWA)) else list(averaging)
        self.co_guard = co_guard
        if val_attack == "pgd":
            eps = attack.eps if attack is not None else 8 / 255
            cls = PGDL2 if getattr(attack, "norm", "Linf") == "L2" else PGD
            val_attack = cls(model, eps, alpha=eps / 4, steps=10, seed=0, bn_mode="eval")
        self.val_attack = val_attack
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.progress, self.verbose, self.seed = progress, verbose, seed
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.history = History()
        self.step = 0
        self.epoch = 0
        self.should_stop = False
        self.train_loader: Any = None
        self._good: dict[str, Any] | None = None
        self._train_model: nn.Module | None = None
        parts = [self.criterion, *self.regularizers]
        self._requests = step_requests(parts)
        self._double = needs_double_backward(parts)
        self.hooks = HookSet()
        for c in self.components:
            self.hooks.add(c)
        for a in self.averagers:
            self.hooks.add(a)
        for cb in check_callbacks(callbacks):
            self.hooks.add(cb, strict=True)

    # ------------------------------------------------------------------ properties
    @property
    def components(self) -> list[Component]:
        """The method's parts: the attack, the training loss, the regularizers and the plugins (in that order)."""
        return [c for c in (self.attack, self.criterion, *self.regularizers, *self.plugins) if c is not None]

    @property
    def replays(self) -> int:
        """Optimizer steps per minibatch (the attack's ``replays``, e.g. Free-AT's m; 1 for every other attack)."""
        return int(getattr(self.attack, "replays", 1) or 1)

    @property
    def is_main_process(self) -> bool:
        """True on rank 0 (always without a process group)."""
        return rank() == 0

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def add_callback(self, callback: object) -> RemovableHandle:
        """Register a callback (an object with hook methods); ``handle.remove()`` unregisters it."""
        return self.hooks.add(callback, strict=True)

    # ------------------------------------------------------------------ the loop
    def fit(self, train_loader: Iterable[Any], epochs: int, val_loader: Iterable[Any] | None = None, *,
            resume: bool | str | Path = False) -> History:  # fmt: skip
        """Train for ``epochs`` epochs (in total, counting resumed ones); returns the per-epoch :class:`History`.

        Args:
            train_loader: yields ``(x, y)`` or ``(x, y, index)`` batches (``x`` in ``[0, 1]``; ``index``: dataset
                indices, see :class:`robustfast.data.IndexedDataset`); must have ``len()``.
            epochs: total number of epochs (with a replaying attack such as Free-AT, passes over the data).
            val_loader: evaluated after every epoch (clean and ``val_attack`` accuracy).
            resume: ``True``: continue from ``checkpoint_dir/last.pt`` when it exists; a path: from that file.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise RobustfastError(f"fit(epochs={epochs!r}): must be a positive integer")
        try:
            n_batches = len(train_loader)  # type: ignore[arg-type]
        except TypeError as e:
            raise RobustfastError("fit(train_loader): the loader must have len() (per-iteration schedules)") from e
        if n_batches == 0:
            raise RobustfastError("fit(train_loader): the loader is empty")
        self.train_loader, self.should_stop = train_loader, False
        if not isinstance(self.lr_schedule, LRScheduler):
            self.scheduler = build_scheduler(self.lr_schedule, self.optimizer, n_batches * self.replays, epochs)
        if resume:
            self._resume(resume)
        elif self.seed is not None:
            torch.manual_seed(self.seed)
        self._train_model = self._build_train_model()
        self.hooks.call("on_fit_start", trainer=self, epochs=epochs)
        with self._attack_mode():
            while self.epoch < epochs and not self.should_stop:
                if self.co_guard is not None and self._good is None:
                    self._good = self._snapshot(self.epoch)
                self.hooks.call("on_epoch_start", trainer=self, epoch=self.epoch)
                record, co_mid = self._train_epoch(train_loader, n_batches, epochs)
                if self._end_epoch(record, co_mid, val_loader, epochs):
                    continue  # rolled back: redo from the restored epoch
                self.epoch += 1
        self.hooks.call("on_fit_end", trainer=self, history=self.history)
        return self.history

    def _train_epoch(self, loader: Iterable[Any], n: int, epochs: int) -> tuple[dict[str, Any], bool]:
        epoch = self.epoch
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.model.train()
        stats, pens, t0, co_mid = [0.0, 0.0, 0.0, 0.0], {}, time.perf_counter(), False
        bar = self._bar(loader, n, epoch, epochs)
        g, m = self.co_guard, self.replays
        for i, batch in enumerate(bar):
            x, y, index = self._unpack(batch)
            for r in range(m):
                out = self._train_step(x, y, index, epoch + (i + (r + 1) / m) / n, epochs)
                stats[0] += out.loss.item() * len(y)
                if out.logits is not None:
                    stats[1] += (out.logits.argmax(1) == y).sum().item()
                    stats[3] += len(y)
                stats[2] += len(y)
                for k, v in out.penalties.items():
                    pens[k] = pens.get(k, 0.0) + v.item() * len(y)
                self.hooks.call("on_batch_end", trainer=self, epoch=epoch, step=self.step, out=out,
                                loss=out.loss.item(), lr=self.lr)  # fmt: skip
            if hasattr(bar, "set_postfix") and (i % 10 == 0 or i == n - 1):
                dt = time.perf_counter() - t0
                acc = stats[1] / stats[3] if stats[3] else float("nan")
                bar.set_postfix(loss=stats[0] / stats[2], acc=acc, ips=stats[2] / max(dt, 1e-9))
            if g is not None and g.every_steps and i + 1 < n and (i + 1) % g.every_steps == 0 and g.on_co != "flag":
                if not self._warming_up(epoch + (i + 1) / n, epochs) and self._co_check(record=None):
                    co_mid = True
                    break
        seconds = time.perf_counter() - t0
        loss_sum, correct, count, acc_count, *pen_sums = all_reduce_sum([*stats, *pens.values()], self.device)
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.step, "lr": self.lr}
        if self.eps_warmup is not None:
            record["eps_factor"] = self.eps_warmup(epoch + 1, epochs)
        record.update(train_loss=loss_sum / count, time=seconds, ips=count / seconds)
        if acc_count:
            record["train_acc"] = correct / acc_count
        if self.device.type == "cuda":
            record["max_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        record.update({f"train_{k}": v / count for k, v in zip(pens, pen_sums)})
        for c in self.components:  # what each part logs (e.g. ELLE-A's adaptive λ), as it is now
            name = getattr(c, "name", type(c).__name__.lower())
            record.update({f"{k}_{name}": float(v) for k, v in c.log_values().items()})
        return record, co_mid

    def _train_step(self, x: Tensor, y: Tensor, index: Tensor | None, t: float, epochs: int) -> StepOutput:
        """One optimizer step: craft → training loss → penalties → backward → optimizer step, with the hooks."""
        model = self._train_model
        assert model is not None
        self.hooks.call("on_batch_start", trainer=self, epoch=self.epoch, step=self.step, x=x, y=y, index=index)
        factor = self.eps_warmup(t, epochs) if self.eps_warmup is not None else 1.0
        scaled = (
            self.attack.scaled(factor, self.eps_warmup_target)
            if self.attack is not None and factor != 1.0
            else nullcontext()
        )
        with self._compile_config(), math_attention(self.model) if self._double else nullcontext():
            with self._autocast(), scaled:
                ctx = craft(model, self.attack, x, y, index=index, requests=self._requests)
            ctx.model = model  # the training passes go through the DDP / compiled wrapper
            if model is not self.model and is_distributed():
                ctx.detach_attack_values()  # the attack's passes bypass DDP: their graphs would skip the all-reduce
            self.hooks.call("on_after_attack", trainer=self, ctx=ctx)
            with self.hooks.around_update(trainer=self, ctx=ctx):
                with self._autocast():
                    out = step_losses(ctx, self.criterion, self.regularizers)
                self.hooks.call("on_before_backward", trainer=self, out=out, loss=out.loss)
                self._backward(out.loss, ctx)
                self.hooks.call("on_after_backward", trainer=self, out=out)
                self._optimizer_step()
        return out

    def _backward(self, loss: Tensor, ctx: StepContext) -> None:
        if not torch.isfinite(loss):
            finite = bool(torch.isfinite(ctx.x).all()) and (ctx.x_adv is None or bool(torch.isfinite(ctx.x_adv).all()))
            hint = "the inputs contain NaN or inf: check the data" if not finite else (
                "lower the learning rate, use amp=None, or set grad_clip")  # fmt: skip
            raise RobustfastError(f"non-finite training loss ({loss.item()}) at step {self.step}; {hint}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def _optimizer_step(self) -> None:
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.hooks.call("on_before_optimizer_step", trainer=self, optimizer=self.optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        self.hooks.call("on_after_optimizer_step", trainer=self, optimizer=self.optimizer, step=self.step)

    def _end_epoch(self, record: dict[str, Any], co_mid: bool, val_loader: Iterable[Any] | None, epochs: int) -> bool:
        """Validate, check CO, log, checkpoint; returns True when training was rolled back."""
        if val_loader is not None:
            record.update(self.evaluate(val_loader, prefix="val_"))
            for avg in self.averagers:
                if avg.model is not None:
                    record.update(self.evaluate(val_loader, prefix=f"{avg.name}_val_", model=avg.model))
        if self.co_guard is not None:
            if self._warming_up(self.epoch + 1, epochs):  # the guard probes at the full ε: it waits for the ramp
                record["co_skipped"] = "eps warm-up"
            elif self._co_check(record, already=co_mid):
                return True
        self.history.append(record)
        self.hooks.call("on_epoch_end", trainer=self, epoch=self.epoch, record=record)
        self._say(self._summary(record, epochs))
        if self.is_main_process:
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self.history.to_json(self.log_dir / "history.json")
                self.history.to_csv(self.log_dir / "history.csv")
            if self.checkpoint_dir is not None:
                save_checkpoint(self.state_dict(self.epoch + 1), self.checkpoint_dir / "last.pt")
        return False

    # ------------------------------------------------------------------ CO guard
    def _warming_up(self, t: float, epochs: int) -> bool:
        """Whether the ε warm-up is still below the full ε at (fractional) epoch ``t``."""
        return self.eps_warmup is not None and self.eps_warmup(t, epochs) < 1.0

    def _co_check(self, record: dict[str, Any] | None, already: bool = False) -> bool:
        """Run the guard on the raw model; on CO apply its policy. Returns True when the run was rolled back."""
        g = self.co_guard
        assert g is not None
        eps = self.attack.eps if self.attack is not None else 8 / 255
        res = g.check(self.model, eps, self.device, update=record is not None)
        co = res.co or already
        if record is None:  # mid-epoch check: only report whether to abort the epoch
            if co:
                self._say(f"catastrophic overfitting detected mid-epoch {self.epoch + 1} at step {self.step} "
                          f"({res.reason}); ending the epoch early")  # fmt: skip
            return co
        record.update(co_fgsm_acc=res.fgsm_acc, co_pgd_acc=res.pgd_acc, co=co)
        if not co:
            if res.improved or self._good is None:
                self._good = self._snapshot(self.epoch + 1)
                g.best_epoch = self.epoch + 1
            return False
        record["co_reason"] = res.reason or "flagged mid-epoch"
        spare = g.n_rollbacks < g.max_rollbacks
        # roll back while rollbacks remain; once they are used up, still end on the best state (a checked epoch end)
        # rather than on a collapsed model
        if g.on_co == "rollback" and self._good is not None and (spare or g.best_epoch is not None):
            levels = [c.strength for c in self.components]  # strengthening accumulates over rollbacks
            self.load_state_dict(self._good, load_history=False, load_guard=False)
            change = None
            if spare:
                for c, level in zip(self.components, levels):
                    while c.strength < level and c.strengthen() is not None:
                        pass
                change = g.strengthen_components(self.components)
                g.n_rollbacks += 1
            record.update(rolled_back_to=self.epoch, strengthened=change)
            self.history.append(record)
            self.hooks.call("on_rollback", trainer=self, epoch=self.epoch, record=record)
            if not spare:
                what = f"max_rollbacks={g.max_rollbacks} used up: stopping on the best state"
            else:
                what = f"strengthened: {change}" if change else "nothing to strengthen; stopping"
            self._say(f"catastrophic overfitting at epoch {record['epoch']} ({record['co_reason']}): rolled back to "
                      f"epoch {self.epoch}, {what}")  # fmt: skip
            if change is None:  # nothing (more) to strengthen: end with the restored best state
                self.should_stop = True
            else:
                self._good = self._snapshot(self.epoch)
            return True
        self._say(f"catastrophic overfitting at epoch {record['epoch']} ({record['co_reason']})"
                  + ("; stopping" if g.on_co == "stop" else ""))  # fmt: skip
        if g.on_co == "stop":
            self.should_stop = True
        return False

    def _snapshot(self, next_epoch: int) -> dict[str, Any]:
        return copy.deepcopy(self.state_dict(next_epoch))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any], *, prefix: str = "", model: nn.Module | None = None) -> dict[str, float]:
        """``{prefix}acc`` (clean) and ``{prefix}robust_acc`` (``val_attack``) of ``model`` (default: the trained
        one) in eval mode, fp32."""
        model = model if model is not None else self.model
        atk = self.val_attack
        if atk is not None and model is not self.model:
            atk = copy.copy(atk)
            atk.model = model
        sums = [0.0, 0.0, 0.0]
        with model_mode(model, "eval"):
            for batch in loader:
                x, y, _ = self._unpack(batch)
                sums[0] += (model(x).argmax(1) == y).sum().item()
                if atk is not None:
                    sums[1] += (model(atk(x, y)).argmax(1) == y).sum().item()
                sums[2] += len(y)
        clean, robust, n = all_reduce_sum(sums, self.device)
        out = {f"{prefix}acc": clean / n}
        if atk is not None:
            out[f"{prefix}robust_acc"] = robust / n
        return out

    # ------------------------------------------------------------------ state
    def _component_slots(self) -> dict[str, Component | None]:
        slots: dict[str, Component | None] = {"attack": self.attack, "criterion": self.criterion}
        slots.update({f"regularizer{i}": r for i, r in enumerate(self.regularizers)})
        slots.update({f"plugin{i}": p for i, p in enumerate(self.plugins)})
        if isinstance(self.val_attack, Attack):
            slots["val_attack"] = self.val_attack
        return slots

    def state_dict(self, next_epoch: int | None = None) -> dict[str, Any]:
        """Everything needed to resume exactly (tensors and plain values only): model, optimizer, scheduler,
        scaler, averagers, guard, every component's own state, history, global and loader RNGs."""
        comps = {k: None if c is None else {"class": type(c).__name__, "state": c.state_dict()}
                 for k, c in self._component_slots().items()}  # fmt: skip
        return {
            "format": FORMAT,
            "epoch": self.epoch if next_epoch is None else next_epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "averagers": [{"class": type(a).__name__, "state": a.state_dict()} for a in self.averagers],
            "co_guard": self.co_guard.state_dict() if self.co_guard is not None else None,
            "components": comps,
            "history": self.history.state_dict(),
            "rng": capture_rng([self.train_loader]),
        }

    def load_state_dict(self, state: dict[str, Any], *, load_history: bool = True, load_guard: bool = True) -> None:
        """Restore :meth:`state_dict`; a checkpoint of another set-up is refused with the difference named."""
        self._check_state(state)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            why = _weights_mismatch(self.model, state["model"])
            raise RobustfastError(f"the checkpoint's weights do not fit this model ({why}); resume with the model "
                                  "the run was trained with") from None  # fmt: skip
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["lr_scheduler"] is not None:
            self.scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for a, s in zip(self.averagers, state["averagers"]):
            a.load_state_dict(s["state"], self.model)
        if load_guard and self.co_guard is not None and state["co_guard"] is not None:
            self.co_guard.load_state_dict(state["co_guard"])
        for key, c in self._component_slots().items():
            saved = state["components"].get(key)
            if c is not None and saved is not None:
                c.load_state_dict(saved["state"])
        if load_history:
            self.history = History(state["history"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        restore_rng(state["rng"], [self.train_loader])

    def _check_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "model" not in state or "components" not in state:
            tensors = isinstance(state, dict) and state and all(isinstance(v, Tensor) for v in state.values())
            what = "a plain model state_dict (weights only)" if tensors else "not a trainer checkpoint"
            raise RobustfastError(
                f"this file is {what}; fit(resume=...) needs a checkpoint written by AdversarialTrainer "
                "(checkpoint_dir/last.pt). To start from saved weights, load them into the model first "
                "(robustfast.models.load_weights(model, path)) and call fit() without resume"
            )
        if state.get("format") != FORMAT:
            raise RobustfastError(f"checkpoint format {state.get('format')!r} is not {FORMAT}; it was written by "
                                  "another robustfast version: start a new run")  # fmt: skip
        mine = {k: None if c is None else type(c).__name__ for k, c in self._component_slots().items()}
        saved = {k: None if v is None else v["class"] for k, v in state["components"].items()}
        if mine != saved:

            def fmt(d: dict[str, Any]) -> str:
                return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None) or "none"

            raise RobustfastError(f"the checkpoint was saved by another method set-up ({fmt(saved)}) than this "
                                  f"trainer's ({fmt(mine)}); resume with the same attack, loss, regularizers "
                                  "and plugins")  # fmt: skip
        names = [type(a).__name__ for a in self.averagers]
        if [a["class"] for a in state["averagers"]] != names:
            raise RobustfastError("the checkpoint has different weight averagers than this trainer "
                                  f"({[a['class'] for a in state['averagers']]} vs {names})")  # fmt: skip

    def _resume(self, resume: bool | str | Path) -> None:
        if resume is True:
            if self.checkpoint_dir is None:
                raise RobustfastError("fit(resume=True) needs checkpoint_dir=...; or pass resume=<path>")
            path = self.checkpoint_dir / "last.pt"
            if not path.is_file():
                if self.seed is not None:
                    torch.manual_seed(self.seed)
                return  # nothing to resume: a fresh run
        else:
            path = Path(resume)
        self.load_state_dict(load_checkpoint(path, map_location=self.device))

    # ------------------------------------------------------------------ helpers
    def _say(self, line: str) -> None:
        if not (self.verbose and self.is_main_process):
            return
        from tqdm.auto import tqdm

        tqdm.write(line)

    @staticmethod
    def _summary(record: dict[str, Any], epochs: int) -> str:
        parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}"]
        for key, label in (("train_acc", "train acc"), ("val_acc", "val acc"), ("val_robust_acc", "val robust acc")):
            if key in record:
                parts.append(f"{label} {100 * record[key]:.1f}%")
        if "co_pgd_acc" in record:
            parts.append(f"guard FGSM/PGD {100 * record['co_fgsm_acc']:.1f}/{100 * record['co_pgd_acc']:.1f}%")
        parts.append(f"lr {record['lr']:.3g}")
        parts.append(f"{record['time']:.1f} s ({record['ips']:.0f} img/s)")
        return "  ".join(parts)

    def _compile_config(self) -> Any:
        """Under ``compile=True``: compile graphs without donated buffers, which forbid ``retain_graph``.

        The step reuses graphs (the attack's clean logits, GradAlign's finite-difference probe), and AOTAutograd
        would otherwise free saved tensors after their first backward. Compilation happens lazily inside the step.
        """
        if not self.compile:
            return nullcontext()
        try:
            import torch._functorch.config as functorch_config
        except ImportError:  # pragma: no cover - very old torch
            return nullcontext()
        if not hasattr(functorch_config, "donated_buffer"):  # pragma: no cover - torch without donated buffers
            return nullcontext()
        return functorch_config.patch(donated_buffer=False)

    def _build_train_model(self) -> nn.Module:
        m = wrap_ddp(self.model, self.device)
        return torch.compile(m) if self.compile else m  # type: ignore[return-value]

    def _attack_mode(self) -> Any:
        atk, policy = self.attack, self.attack_policy
        if atk is None or policy is None:
            return nullcontext()
        return _AttackPolicy(atk, self._attack_bn_mode, policy)

    def _autocast(self) -> Any:
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2 or not isinstance(batch[0], Tensor):
            raise RobustfastError("loaders must yield (x, y) or (x, y, index) batches of tensors")
        x = batch[0].to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.as_tensor(batch[1]).to(self.device, non_blocking=True)
        index = batch[2] if len(batch) > 2 and isinstance(batch[2], Tensor) and batch[2].dim() == 1 else None
        return x, y, None if index is None else index.to(self.device, non_blocking=True)

    def _bar(self, loader: Iterable[Any], n: int, epoch: int, epochs: int) -> Iterable[Any]:
        if not (self.progress and self.is_main_process):
            return loader
        from tqdm.auto import tqdm

        return tqdm(loader, total=n, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)

    def __repr__(self) -> str:
        regs = ", ".join(map(repr, self.regularizers))
        plugins = f", plugins={self.plugins!r}" if self.plugins else ""
        return (f"AdversarialTrainer(attack={self.attack!r}, criterion={self.criterion!r}, regularizers=[{regs}]"
                f"{plugins}, distributed={is_distributed()})")  # fmt: skip


class _AttackPolicy:
    """Set an attack's mode policy for the duration of ``fit`` and restore the user's setting afterwards."""

    def __init__(self, attack: Attack, bn_mode: Any, policy: ModePolicy) -> None:
        self.attack, self.bn_mode, self.policy = attack, bn_mode, policy

    def __enter__(self) -> None:
        self.saved = (self.attack.bn_mode, self.attack.policy)
        self.attack.bn_mode, self.attack.policy = self.bn_mode, self.policy

    def __exit__(self, *exc: object) -> None:
        self.attack.bn_mode, self.attack.policy = self.saved


def _weights_mismatch(model: nn.Module, saved: dict[str, Any]) -> str:
    """What differs between a model's parameters and a saved state_dict, in a few words."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in saved]
    extra = [k for k in saved if k not in mine]
    shapes = [f"{k}: {tuple(saved[k].shape)} saved vs {tuple(v.shape)} here" for k, v in mine.items()
              if k in saved and hasattr(saved[k], "shape") and saved[k].shape != v.shape]  # fmt: skip
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) of this model are not in the checkpoint, e.g. {missing[0]!r}")
    if extra:
        parts.append(f"{len(extra)} saved tensor(s) are not in this model, e.g. {extra[0]!r}")
    if shapes:
        parts.append(f"{len(shapes)} shape(s) differ, e.g. {shapes[0]}")
    return "; ".join(parts) or "the tensors do not load"
