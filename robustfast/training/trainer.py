"""``AdversarialTrainer``: any attack + training loss + regularizers + plugins on any ``nn.Module``.

The fit loop is short: each step runs the phases of :mod:`robustfast.training.step` and calls the hook points of
:mod:`robustfast.training.callbacks` between them. The trainer names no method: the attack, the training loss,
the regularizers and the plugins are :class:`~robustfast.component.Component` objects that own their state,
declare their needs and their response to catastrophic overfitting, and join the loop through hooks. Everything
else is a part of its own: the guard's policy (:mod:`~robustfast.training.rollback`), the progress bar, the epoch
line and the history files (:mod:`~robustfast.training.loggers`), checkpoints
(:class:`~robustfast.training.checkpoint.Checkpointer`) and the state they hold (:mod:`~robustfast.training.state`),
argument checks (:mod:`~robustfast.training.arguments`), averaging, schedules and DDP.
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
from ..component import Component, check_saveable
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import CrossEntropy, TrainingLoss, as_training_loss
from ..modes import ModePolicy, math_attention, model_mode, resolve_policy
from ..regularizers.base import Regularizer
from .arguments import check_train_loader, check_trainer_args
from .averaging import EMA, SWA
from .callbacks import HookSet, check_callbacks
from .checkpoint import Checkpointer, load_checkpoint
from .co_guard import COGuard
from .distributed import all_reduce_sum, is_distributed, rank, sync_buffers, wrap_ddp
from .history import History
from .loggers import EpochLogger, HistoryWriter, ProgressBar
from .rollback import GuardPolicy
from .schedules import Cyclic, LinearWarmup, Schedule, build_scheduler
from .state import check_state, gather_ranks, load_trainer_state, own_rank, trainer_state
from .step import StepOutput, craft, needs_double_backward, step_losses, step_requests

__all__ = ["AdversarialTrainer"]

ScheduleFn = Callable[[float, float], float]


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
        self.guard_policy = GuardPolicy(co_guard) if co_guard is not None else None
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
        self.batches_per_epoch = 0
        #: This epoch's running sums (``loss``, ``correct``, ``count``, ``acc_count``), read by the progress bar.
        self.running: dict[str, float] = {}
        self._train_model: nn.Module | None = None
        for c in self.components:  # a state a checkpoint cannot hold fails here, not at resume
            check_saveable(c)
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
        for builtin in self._builtin_callbacks():
            self.hooks.add(builtin, last=True)

    def _builtin_callbacks(self) -> list[object]:
        """The displays and files the arguments ask for (called after every other callback, even one added later)."""
        out: list[object] = []
        if self.progress:
            out.append(ProgressBar())
        if self.verbose:
            out.append(EpochLogger())
        if self.log_dir is not None:
            out.append(HistoryWriter(self.log_dir))
        if self.checkpoint_dir is not None:
            out.append(Checkpointer(self.checkpoint_dir))
        return out

    # ------------------------------------------------------------------ properties
    @property
    def components(self) -> list[Component]:
        """The method's parts: the attack, the training loss, the regularizers and the plugins (in that order)."""
        return [c for c in (self.attack, self.criterion, *self.regularizers, *self.plugins) if c is not None]

    @property
    def replays(self) -> int:
        """Optimizer steps per minibatch (the attack's ``replays``, e.g. Free-AT's m; 1 for every other attack)."""
        return self.attack.replays if self.attack is not None else 1

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
            epochs: total number of epochs (with a replaying attack such as Free-AT, passes over the data). A
                second ``fit`` on the same trainer continues up to this total (``fit(loader, 4)`` after
                ``fit(loader, 2)`` trains 2 more epochs).
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
        if not resume and self.epoch >= epochs:
            raise RobustfastError(
                f"fit(epochs={epochs}): this trainer has already trained {self.epoch} epoch(s), and epochs counts the "
                f"total (as resume does); call fit(loader, {self.epoch + epochs}) to train {epochs} more, or build a "
                "new trainer (and model) to train again from the start"
            )
        check_train_loader(self.model, train_loader)
        self.train_loader, self.should_stop, self.batches_per_epoch = train_loader, False, n_batches
        if not isinstance(self.lr_schedule, LRScheduler):
            self.scheduler = build_scheduler(self.lr_schedule, self.optimizer, n_batches * self.replays, epochs)
        if resume:
            self._resume(resume)
        elif self.seed is not None and self.epoch == 0:
            torch.manual_seed(self.seed)
        self._check_ranks_agree(epochs, n_batches)
        self._train_model = self._build_train_model()
        self.hooks.call("on_fit_start", trainer=self, epochs=epochs)
        with self._attack_mode():
            while self.epoch < epochs and not self.should_stop:
                if self.guard_policy is not None:
                    self.guard_policy.start_epoch(self)
                self.hooks.call("on_epoch_start", trainer=self, epoch=self.epoch)
                record, aborted = self._train_epoch(train_loader, n_batches, epochs)
                if self._end_epoch(record, aborted, val_loader, epochs):
                    continue  # rolled back: redo from the restored epoch
                self.epoch += 1
            if self.guard_policy is not None:
                self.guard_policy.end_fit(self)
        self.hooks.call("on_fit_end", trainer=self, history=self.history)
        return self.history

    def _train_epoch(self, loader: Iterable[Any], n: int, epochs: int) -> tuple[dict[str, Any], bool]:
        """One pass over ``loader``; returns the epoch's record and whether a mid-epoch check ended it early."""
        epoch = self.epoch
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.model.train()
        s = self.running = {"loss": 0.0, "correct": 0.0, "count": 0.0, "acc_count": 0.0}
        pens: dict[str, float] = {}
        t0, aborted = time.perf_counter(), False
        policy, m = self.guard_policy, self.replays
        every = self.co_guard.every_steps if self.co_guard is not None and self.co_guard.on_co != "flag" else None
        for i, batch in enumerate(loader):
            x, y, index = self._unpack(batch)
            for r in range(m):
                try:
                    out = self._train_step(x, y, index, epoch + (i + (r + 1) / m) / n, epochs)
                except ValueError as e:
                    if "Expected more than 1 value per channel" not in str(e):
                        raise
                    raise RobustfastError(
                        f"a training batch of {len(y)} example(s) reached BatchNorm in train mode, which needs at "
                        "least 2 values per channel; build the loader with drop_last=True (command line: drop_last: "
                        "true in --config) or a batch size that leaves no batch of one"
                    ) from None
                s["loss"] += out.loss.item() * len(y)
                if out.logits is not None:
                    s["correct"] += (out.logits.argmax(1) == y).sum().item()
                    s["acc_count"] += len(y)
                s["count"] += len(y)
                for k, v in out.penalties.items():
                    pens[k] = pens.get(k, 0.0) + v.item() * len(y)
                self.hooks.call("on_batch_end", trainer=self, epoch=epoch, step=self.step, out=out,
                                loss=out.loss.item(), lr=self.lr)  # fmt: skip
            if policy is not None and every and i + 1 < n and (i + 1) % every == 0:
                if policy.mid_epoch(self, epoch + (i + 1) / n, epochs):
                    aborted = True
                    break
        seconds = time.perf_counter() - t0
        sums = all_reduce_sum([s["loss"], s["correct"], s["count"], s["acc_count"], *pens.values()], self.device)
        loss_sum, correct, count, acc_count, *pen_sums = sums
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
            record.update({f"{k}_{c.name}": float(v) for k, v in c.log_values().items()})
        return record, aborted

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

    def _end_epoch(self, record: dict[str, Any], aborted: bool, val_loader: Iterable[Any] | None, epochs: int) -> bool:
        """Validate, let the guard's policy judge, then the epoch-end hooks; True when training was rolled back."""
        sync_buffers(self.model)  # one model on every rank before anything is measured or saved
        if val_loader is not None:
            record.update(self.evaluate(val_loader, prefix="val_"))
            for avg in self.averagers:
                if avg.model is not None:
                    record.update(self.evaluate(val_loader, prefix=f"{avg.name}_val_", model=avg.model))
        if self.guard_policy is not None and self.guard_policy.end_epoch(self, record, aborted, epochs):
            return True
        self.history.append(record)
        self.hooks.call("on_epoch_end", trainer=self, epoch=self.epoch, record=record)
        return False

    def _check_ranks_agree(self, epochs: int, n_batches: int) -> None:
        """Under DDP: the settings every rank must share for the collectives to line up (a mismatch would hang in a
        collective); a rank without ``checkpoint_dir`` while another has one still joins the checkpoints' gathering."""
        if not is_distributed():
            return
        mine = [1.0, float(self.co_guard is not None), float(self.checkpoint_dir is not None), float(epochs),
                float(n_batches), float(self.replays)]  # fmt: skip
        total = all_reduce_sum(mine, self.device)
        n = total[0]
        if total[1] not in (0.0, n):
            raise RobustfastError(
                f"co_guard is set on {total[1]:.0f} of {n:.0f} processes; pass the same COGuard (the same held-out "
                "batch) on every process: each checks its share and they decide together"
            )
        for i, what in ((3, "fit(epochs=...)"), (4, "training batches per epoch"), (5, "the attack's replays")):
            if total[i] != n * mine[i]:
                raise RobustfastError(
                    f"the processes disagree on {what} (this one: {mine[i]:g}); every process must train the same "
                    "number of steps (use a DistributedSampler with drop_last=True on the training loader)"
                )
        if total[2] and self.checkpoint_dir is None and not any(isinstance(o, Checkpointer) for o in self.hooks):
            self.hooks.add(Checkpointer(None), last=True)  # joins the gathering of per-rank state; writes nothing

    def warming_up(self, t: float, epochs: int) -> bool:
        """Whether the ε warm-up is still below the full ε at (fractional) epoch ``t``."""
        return self.eps_warmup is not None and self.eps_warmup(t, epochs) < 1.0

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

    # ------------------------------------------------------------------ state (robustfast.training.state)
    def state_dict(self, next_epoch: int | None = None, *, all_ranks: bool = False) -> dict[str, Any]:
        """Everything needed to resume exactly (tensors and plain values only): model, optimizer, scheduler,
        scaler, averagers, guard, every component's own state, history, global and loader RNGs.

        Under DDP the method parts' states and the random generators differ between ranks: ``all_ranks=True`` (a
        collective call, what checkpoints use) gathers every rank's under ``"ranks"``, and
        :meth:`load_state_dict` gives each rank its own back.
        """
        state = trainer_state(self, self.epoch if next_epoch is None else next_epoch)
        return gather_ranks(state) if all_ranks else state

    def gather_ranks(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with every rank's own parts under ``"ranks"`` (a collective call under DDP; unchanged without)."""
        return gather_ranks(state)

    def snapshot(self, next_epoch: int) -> dict[str, Any]:
        """A deep copy of this rank's :meth:`state_dict` (what the CO guard's policy keeps as the best state)."""
        return copy.deepcopy(self.state_dict(next_epoch))

    def load_state_dict(self, state: dict[str, Any], *, load_history: bool = True, load_guard: bool = True) -> None:
        """Restore :meth:`state_dict`; a checkpoint of another set-up is refused with the difference named."""
        load_trainer_state(self, state, load_history=load_history, load_guard=load_guard)

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
        best = path.with_name("best.pt")
        if self.guard_policy is not None and best.is_file():  # the state a rollback returns to
            self.guard_policy.best_state = own_rank(check_state(self, load_checkpoint(best, map_location=self.device)))
            self.guard_policy.best_changed = False

    # ------------------------------------------------------------------ helpers
    def say(self, line: str) -> None:
        """Print ``line`` above the progress bar (rank 0, when ``verbose``): epoch lines and guard events."""
        if not (self.verbose and self.is_main_process):
            return
        from tqdm.auto import tqdm

        tqdm.write(line)

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
