"""``AdversarialTrainer``: any attack + any regularizers + any ``nn.Module``, with the fast-AT papers' recipe.

The fit loop is short and calls named hook points (see :mod:`robustfast.training.callbacks`); checkpoints,
averaging, the CO guard, schedules and DDP live in their own modules.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import PGD
from ..attacks.base import Attack
from ..errors import RobustfastError
from ..modes import ModePolicy, model_mode, resolve_policy
from ..regularizers.base import Regularizer
from .averaging import EMA, SWA
from .callbacks import call_hook, check_callbacks
from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .co_guard import COGuard
from .distributed import all_reduce_sum, is_distributed, rank, wrap_ddp
from .history import History
from .schedules import Cyclic, LinearWarmup
from .step import adversarial_step

__all__ = ["AdversarialTrainer"]

LRScheduler = torch.optim.lr_scheduler.LRScheduler
ScheduleFn = Callable[[float, float], float]


class AdversarialTrainer:
    """Train ``model`` on ``attack``'s adversarial examples plus ``regularizers``' penalties.

    Defaults follow the seed papers' code: SGD (momentum 0.9, weight decay 5e-4) with a per-iteration triangular
    cyclic learning rate (``lr_max=0.2`` peaking at 2/5 of training, GradAlign's code), attacks crafted with the
    model in ``train()`` mode (``attack_bn_mode="train"``: every official fast-AT code does this, unlike
    torchattacks' eval default), fp32, no gradient clipping, no label smoothing.

    Example::

        atk = ZeroGrad(model, eps=8/255, q=0.35)
        guard = COGuard(x_heldout, y_heldout, on_co="rollback")      # ZeroGrad's rolling back: larger q
        trainer = AdversarialTrainer(model, atk, co_guard=guard, averaging=EMA(0.999), checkpoint_dir="ckpt")
        history = trainer.fit(train_loader, epochs=30, val_loader=val_loader, resume=True)

    Args:
        model: any ``nn.Module`` mapping ``[0, 1]`` images to ``(N, C)`` logits.
        attack: the training attack, built on ``model`` (``None``: standard training).
        regularizers: penalties added to the loss (e.g. ``GradAlign``); see :func:`adversarial_step`.
        optimizer: default ``SGD(lr, momentum, weight_decay)`` over ``model.parameters()``.
        lr_schedule: per-iteration schedule ``f(t, total_epochs) -> lr`` (:mod:`~robustfast.training.schedules`)
            or a torch ``LRScheduler`` on ``optimizer`` (stepped every iteration). Default: ``Cyclic(lr)`` with the
            default optimizer, the optimizer's constant lr otherwise.
        lr: peak learning rate of the defaults (0.2).
        momentum: SGD momentum of the default optimizer (0.9).
        weight_decay: weight decay of the default optimizer (5e-4; AdvLC uses 1e-4).
        eps_warmup: ε (and step size) warm-up: number of epochs of a linear ramp from 0 (GradAlign's SVHN: 5), or
            a schedule ``f(t, total) -> factor``; 0 (default) disables. Applied through :meth:`Attack.scaled`.
        attack_bn_mode: the attack's BatchNorm/dropout policy during training (default ``"train"``); ``None`` keeps
            the attack's own. Restored when ``fit`` returns.
        criterion: ``(logits, y) -> scalar`` training loss (default cross-entropy with ``label_smoothing``).
        label_smoothing: label smoothing of the default criterion (0.0).
        grad_clip: clip the gradient norm to this value (default ``None``: no clipping, as the papers).
        amp: ``None`` (fp32, default), ``"bf16"`` or ``"fp16"`` (autocast; fp16 adds a ``GradScaler``).
            Validation and the CO guard always run in fp32.
        channels_last: convert model and inputs to channels-last memory format (default False).
        compile: ``torch.compile`` the model for the training step (default False; incompatible with
            double-backward regularizers — ``GradAlign(estimator="fd")`` needs none). Graphs are compiled without
            donated buffers, since the step reuses graphs.
        averaging: :class:`EMA` / :class:`SWA` instances (evaluated next to the model, saved in checkpoints).
        co_guard: a :class:`COGuard` (catastrophic-overfitting detection and rolling back).
        val_attack: attack for validation: ``"pgd"`` (default: PGD-10, α = ε/4, seeded random start),
            an :class:`Attack` on ``model``, or ``None`` (clean accuracy only).
        callbacks: duck-typed objects with hook methods (see :mod:`~robustfast.training.callbacks`).
        checkpoint_dir: save ``last.pt`` there atomically after every epoch (rank 0), for ``fit(resume=True)``.
        log_dir: write ``history.json`` and ``history.csv`` there after every epoch (rank 0).
        progress: show a tqdm progress bar with loss, accuracy and images/s (rank 0; default True).
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
        lr_schedule: ScheduleFn | LRScheduler | None = None,
        lr: float = 0.2,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        eps_warmup: float | ScheduleFn = 0,
        attack_bn_mode: str | ModePolicy | None = "train",
        criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
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
        seed: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        from .config import check_trainer_args

        check_trainer_args(locals())
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.attack, self.regularizers = attack, list(regularizers)
        self.optimizer = optimizer or torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        if lr_schedule is None and optimizer is None:
            lr_schedule = Cyclic(lr_max=lr)
        self.lr_schedule = lr_schedule
        self.eps_warmup: ScheduleFn | None = (
            eps_warmup if callable(eps_warmup) else (LinearWarmup(eps_warmup) if eps_warmup else None)
        )
        self.attack_policy = None if attack_bn_mode is None else resolve_policy(attack_bn_mode)
        self._attack_bn_mode = attack_bn_mode
        self.criterion = criterion or (lambda z, t: F.cross_entropy(z, t, label_smoothing=label_smoothing))
        self.grad_clip, self.amp, self.channels_last, self.compile = grad_clip, amp, channels_last, compile
        self.averagers = [averaging] if isinstance(averaging, (EMA, SWA)) else list(averaging)
        self.co_guard = co_guard
        if val_attack == "pgd":
            eps = attack.eps if attack is not None else 8 / 255
            val_attack = PGD(model, eps, alpha=eps / 4, steps=10, seed=0, bn_mode="eval")
        self.val_attack = val_attack
        self.callbacks = check_callbacks(callbacks)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.progress, self.seed = progress, seed
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.history = History()
        self.step = 0
        self.epoch = 0
        self.should_stop = False
        self.train_loader: Any = None
        self._good: dict[str, Any] | None = None
        self._train_model: nn.Module | None = None

    # ------------------------------------------------------------------ properties
    @property
    def is_main_process(self) -> bool:
        """True on rank 0 (always without a process group)."""
        return rank() == 0

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ the loop
    def fit(self, train_loader: Iterable[Any], epochs: int, val_loader: Iterable[Any] | None = None, *,
            resume: bool | str | Path = False) -> History:  # fmt: skip
        """Train for ``epochs`` epochs (in total, counting resumed ones); returns the per-epoch :class:`History`.

        Args:
            train_loader: yields ``(x, y, ...)`` batches with ``x`` in ``[0, 1]``; must have ``len()``.
            epochs: total number of epochs.
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
        if resume:
            self._resume(resume, train_loader)
        elif self.seed is not None:
            torch.manual_seed(self.seed)
        self._train_model = self._build_train_model()
        call_hook(self.callbacks + self.averagers, "on_fit_start", trainer=self, epochs=epochs)
        with self._attack_mode():
            while self.epoch < epochs and not self.should_stop:
                if self.co_guard is not None and self._good is None:
                    self._good = self._snapshot(self.epoch)
                call_hook(self._hooks, "on_epoch_start", trainer=self, epoch=self.epoch)
                record, co_mid = self._train_epoch(train_loader, n_batches, epochs)
                if self._end_epoch(record, co_mid, val_loader):
                    continue  # rolled back: redo from the last good epoch
                self.epoch += 1
        call_hook(self._hooks, "on_fit_end", trainer=self, history=self.history)
        return self.history

    @property
    def _hooks(self) -> list[object]:
        return self.callbacks + self.averagers

    def _train_epoch(self, loader: Iterable[Any], n: int, epochs: int) -> tuple[dict[str, Any], bool]:
        model, epoch = self._train_model, self.epoch
        assert model is not None
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.model.train()
        stats, pens, t0, co_mid = [0.0, 0.0, 0.0], {}, time.perf_counter(), False
        bar = self._bar(loader, n, epoch, epochs)
        for i, batch in enumerate(bar):
            x, y = self._to_device(batch)
            t = epoch + (i + 1) / n
            self._set_lr(t, epochs)
            call_hook(self._hooks, "on_batch_start", trainer=self, epoch=epoch, step=self.step, x=x, y=y)
            factor = self.eps_warmup(t, epochs) if self.eps_warmup is not None else 1.0
            scaled = self.attack.scaled(factor) if self.attack is not None and factor != 1.0 else nullcontext()
            with self._autocast(), scaled, self._compile_config():
                out = adversarial_step(model, self.attack, self.regularizers, x, y, criterion=self.criterion)
            call_hook(self._hooks, "on_before_backward", trainer=self, out=out, loss=out.loss)
            self._optimize(out.loss)
            stats[0] += out.loss.item() * len(y)
            stats[1] += (out.logits.argmax(1) == y).sum().item()
            stats[2] += len(y)
            for k, v in out.penalties.items():
                pens[k] = pens.get(k, 0.0) + v.item() * len(y)
            call_hook(self._hooks, "on_batch_end", trainer=self, epoch=epoch, step=self.step, out=out,
                      loss=out.loss.item(), lr=self.lr)  # fmt: skip
            if hasattr(bar, "set_postfix") and (i % 10 == 0 or i == n - 1):
                dt = time.perf_counter() - t0
                bar.set_postfix(loss=stats[0] / stats[2], acc=stats[1] / stats[2], ips=stats[2] / max(dt, 1e-9))
            g = self.co_guard
            if g is not None and g.every_steps and self.step % g.every_steps == 0 and g.on_co != "flag":
                if self._co_check(record=None):
                    co_mid = True
                    break
        seconds = time.perf_counter() - t0
        loss_sum, correct, count, *pen_sums = all_reduce_sum([*stats, *pens.values()], self.device)
        record: dict[str, Any] = {"epoch": epoch, "step": self.step, "lr": self.lr}
        if self.eps_warmup is not None:
            record["eps_factor"] = self.eps_warmup(epoch + 1, epochs)
        record.update(train_loss=loss_sum / count, train_acc=correct / count, time=seconds, ips=count / seconds)
        if self.device.type == "cuda":
            record["max_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        record.update({f"train_{k}": v / count for k, v in zip(pens, pen_sums)})
        return record, co_mid

    def _optimize(self, loss: Tensor) -> None:
        if not torch.isfinite(loss):
            raise RobustfastError(
                f"non-finite training loss ({loss.item()}) at step {self.step}; lower the lr or use amp=None"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if isinstance(self.lr_schedule, LRScheduler):
            self.lr_schedule.step()
        self.step += 1

    def _end_epoch(self, record: dict[str, Any], co_mid: bool, val_loader: Iterable[Any] | None) -> bool:
        """Validate, check CO, log, checkpoint; returns True when training was rolled back."""
        if val_loader is not None:
            record.update(self.evaluate(val_loader, prefix="val_"))
            for j, avg in enumerate(self.averagers):
                if avg.model is not None:
                    name = type(avg).__name__.lower() + (str(j) if j else "")
                    record.update(self.evaluate(val_loader, prefix=f"{name}_val_", model=avg.model))
        if self.co_guard is not None and self._co_check(record, already=co_mid):
            return True
        self.history.append(record)
        call_hook(self._hooks, "on_epoch_end", trainer=self, epoch=self.epoch, record=record)
        if self.is_main_process:
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self.history.to_json(self.log_dir / "history.json")
                self.history.to_csv(self.log_dir / "history.csv")
            if self.checkpoint_dir is not None:
                save_checkpoint(self.state_dict(self.epoch + 1), self.checkpoint_dir / "last.pt")
        return False

    # ------------------------------------------------------------------ CO guard
    def _co_check(self, record: dict[str, Any] | None, already: bool = False) -> bool:
        """Run the guard; on CO apply its policy. Returns True when the run was rolled back."""
        g = self.co_guard
        assert g is not None
        eps = self.attack.eps if self.attack is not None else 8 / 255
        res = g.check(self.model, eps, self.device)
        co = res.co or already
        if record is None:  # mid-epoch check: only report whether to abort the epoch
            return co
        record.update(co_fgsm_acc=res.fgsm_acc, co_pgd_acc=res.pgd_acc, co=co)
        if not co:
            self._good = self._snapshot(self.epoch + 1)
            return False
        if g.on_co == "rollback" and g.n_rollbacks < g.max_rollbacks and self._good is not None:
            hyper = self._hyper()  # strengthening accumulates over rollbacks
            self.load_state_dict(self._good, load_history=False, load_guard=False)
            self._set_hyper(hyper)
            change = g.strengthen(self.attack, self.regularizers)
            record.update(rolled_back_to=self.epoch, strengthened=change)
            self.history.append(record)
            call_hook(self._hooks, "on_epoch_end", trainer=self, epoch=record["epoch"], record=record)
            if change is None:  # nothing to strengthen: end with the restored last good state
                self.should_stop = True
            g.n_rollbacks += 1
            return True
        if g.on_co == "stop":
            self.should_stop = True
        return False

    def _snapshot(self, next_epoch: int) -> dict[str, Any]:
        return copy.deepcopy(self.state_dict(next_epoch))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any], *, prefix: str = "", model: nn.Module | None = None) -> dict[str, float]:
        """Clean accuracy (and ``val_attack`` accuracy) of ``model`` (default: the trained one) in eval mode, fp32."""
        model = model if model is not None else self.model
        atk = self.val_attack
        if atk is not None and model is not self.model:
            atk = copy.copy(atk)
            atk.model = model
        sums = [0.0, 0.0, 0.0]
        with model_mode(model, "eval"):
            for batch in loader:
                x, y = self._to_device(batch)
                sums[0] += (model(x).argmax(1) == y).sum().item()
                if atk is not None:
                    sums[1] += (model(atk(x, y)).argmax(1) == y).sum().item()
                sums[2] += len(y)
        clean, robust, n = all_reduce_sum(sums, self.device)
        out = {f"{prefix}acc": clean / n}
        if atk is not None:
            out[f"{prefix}{type(atk).__name__.lower()}_acc"] = robust / n
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self, next_epoch: int | None = None) -> dict[str, Any]:
        """Everything needed to resume exactly (tensors and plain values only)."""
        sched = self.lr_schedule.state_dict() if isinstance(self.lr_schedule, LRScheduler) else None
        return {
            "format": 1,
            "epoch": self.epoch if next_epoch is None else next_epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": sched,
            "scaler": self.scaler.state_dict(),
            "averagers": [a.state_dict() for a in self.averagers],
            "co_guard": self.co_guard.state_dict() if self.co_guard is not None else None,
            "hyper": self._hyper(),
            "history": self.history.state_dict(),
            "rng": capture_rng([self.attack, self.val_attack], [self.train_loader]),
        }

    def load_state_dict(self, state: dict[str, Any], *, load_history: bool = True, load_guard: bool = True) -> None:
        """Restore :meth:`state_dict` (model, optimizer, scheduler, scaler, averagers, RNG, counters)."""
        if len(state["averagers"]) != len(self.averagers):
            raise RobustfastError("checkpoint has a different number of averagers than this trainer")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if isinstance(self.lr_schedule, LRScheduler) and state["lr_scheduler"] is not None:
            self.lr_schedule.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for a, s in zip(self.averagers, state["averagers"]):
            a.load_state_dict(s, self.model)
        if load_guard and self.co_guard is not None and state["co_guard"] is not None:
            self.co_guard.load_state_dict(state["co_guard"])
        self._set_hyper(state["hyper"])
        if load_history:
            self.history = History(state["history"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        restore_rng(state["rng"], [self.attack, self.val_attack], [self.train_loader])

    def _hyper(self) -> dict[str, Any]:
        q = getattr(self.attack, "q", None)
        return {"q": q if isinstance(q, float) else None, "lams": [r.lam for r in self.regularizers]}

    def _set_hyper(self, hyper: dict[str, Any]) -> None:
        if hyper["q"] is not None and self.attack is not None:
            self.attack.q = hyper["q"]  # type: ignore[attr-defined]
        for r, lam in zip(self.regularizers, hyper["lams"]):
            r.lam = lam

    def _resume(self, resume: bool | str | Path, loader: Any) -> None:
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

    def _set_lr(self, t: float, epochs: int) -> None:
        if self.lr_schedule is None or isinstance(self.lr_schedule, LRScheduler):
            return
        lr = float(self.lr_schedule(t, epochs))
        if not math.isfinite(lr) or lr < 0:
            raise RobustfastError(f"lr_schedule returned {lr!r} at epoch {t:.3f}; it must be a finite number >= 0")
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _to_device(self, batch: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise RobustfastError("loaders must yield (x, y, ...) batches")
        x = batch[0].to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, batch[1].to(self.device, non_blocking=True)

    def _bar(self, loader: Iterable[Any], n: int, epoch: int, epochs: int) -> Iterable[Any]:
        if not (self.progress and self.is_main_process):
            return loader
        from tqdm.auto import tqdm

        return tqdm(loader, total=n, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)

    def __repr__(self) -> str:
        regs = ", ".join(map(repr, self.regularizers))
        return f"AdversarialTrainer(attack={self.attack!r}, regularizers=[{regs}], distributed={is_distributed()})"


class _AttackPolicy:
    """Set an attack's mode policy for the duration of ``fit`` and restore the user's setting afterwards."""

    def __init__(self, attack: Attack, bn_mode: Any, policy: ModePolicy) -> None:
        self.attack, self.bn_mode, self.policy = attack, bn_mode, policy

    def __enter__(self) -> None:
        self.saved = (self.attack.bn_mode, self.attack.policy)
        self.attack.bn_mode, self.attack.policy = self.bn_mode, self.policy

    def __exit__(self, *exc: object) -> None:
        self.attack.bn_mode, self.attack.policy = self.saved
