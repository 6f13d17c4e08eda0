"""Weight averaging as trainer participants, on ``torch.optim.swa_utils``: EMA, and SWA with BatchNorm re-estimation.

Both keep an :class:`~torch.optim.swa_utils.AveragedModel` (``averager.averaged``; ``averager.model`` is the
averaged network itself) updated after optimizer steps; the trainer evaluates it next to the live model and stores
it in checkpoints. EMA uses ``get_ema_multi_avg_fn`` and SWA ``get_swa_multi_avg_fn``; BatchNorm statistics are
re-estimated with ``torch.optim.swa_utils.update_bn``. Our code adds only what torch lacks: the trainer hooks,
EMA's ``start_step``, SWA's period in steps and a cap on the batches used for BatchNorm.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn, update_bn

from .._checks import check_choice, check_int, check_number

__all__ = ["EMA", "SWA", "recompute_bn"]


class _Averager:
    name: ClassVar[str] = "avg"
    averaged: AveragedModel | None = None

    def _make(self, model: nn.Module) -> AveragedModel:
        raise NotImplementedError

    def _ensure(self, model: nn.Module) -> AveragedModel:
        if self.averaged is None:
            self.averaged = self._make(model)
            self.averaged.eval()
        return self.averaged

    @property
    def model(self) -> nn.Module | None:
        """The averaged network (same architecture as the live model), or ``None`` before training."""
        return None if self.averaged is None else self.averaged.module

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state (weights, buffers, ``n_averaged``) and the averager's counters."""
        return {"averaged": None if self.averaged is None else self.averaged.state_dict(), **self._counters()}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """Restore :meth:`state_dict`; ``model`` is the live model (the average's architecture)."""
        if state.get("averaged") is not None:
            self._ensure(model).load_state_dict(state["averaged"])
        else:
            self.averaged = None
        for k, v in state.items():
            if k != "averaged":
                setattr(self, k, v)

    def _counters(self) -> dict[str, Any]:
        return {}

    def on_fit_start(self, trainer: Any) -> None:
        """Create the averaged copy from the live model (unless a checkpoint restored it)."""
        self._ensure(trainer.model)


class EMA(_Averager):
    """Exponential moving average of the weights: ``avg ← decay·avg + (1 − decay)·w`` after every step.

    Buffers (BatchNorm statistics) are copied from the live model (``AveragedModel(use_buffers=False)``). Not
    used by the seed papers (their only averaging is AdvLC's SWA); FastAT_Benchmark uses decay 0.9995.

    Args:
        decay: EMA decay per step (default 0.999).
        start_step: optimizer steps before averaging starts (default 0); until then the copy tracks the live
            weights.
    """

    name: ClassVar[str] = "ema"

    def __init__(self, decay: float = 0.999, start_step: int = 0) -> None:
        check_number("EMA", "decay", decay, 0.0, 1.0, hi_open=True)
        check_int("EMA", "start_step", start_step, 0)
        self.decay, self.start_step = float(decay), start_step
        self.averaged = None

    def _make(self, model: nn.Module) -> AveragedModel:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the live ``model`` into the average (``step``: the global optimizer step, from 1)."""
        avg = self._ensure(model)
        if step <= self.start_step:
            avg.n_averaged.zero_()  # the next update copies the live weights
        avg.update_parameters(model)

    def on_after_optimizer_step(self, trainer: Any, step: int) -> None:
        """Update after every optimizer step."""
        self.update(trainer.model, step)


class SWA(_Averager):
    """Stochastic weight averaging with equal weights and BatchNorm re-estimation (AdvLC's ``--swa 50 n 500``).

    From epoch ``start_epoch`` on, every ``every_steps`` optimizer steps the live weights are folded into an equal-
    weight running mean; BatchNorm running statistics of the average are then recomputed with forward passes over
    the training loader (``bn_update="each"``, AdvLC's code), only at the end of training (``"end"``), or never
    (``None``).

    Args:
        start_epoch: first epoch (0-based) whose steps are averaged (default 50, AdvLC).
        every_steps: averaging period in optimizer steps (default 500, AdvLC).
        bn_update: ``"each"`` (default), ``"end"`` or ``None``.
        bn_batches: cap on the batches used to re-estimate BatchNorm (default ``None``: the whole loader).
    """

    name: ClassVar[str] = "swa"

    def __init__(
        self,
        start_epoch: int = 50,
        every_steps: int = 500,
        bn_update: Literal["each", "end"] | None = "each",
        bn_batches: int | None = None,
    ) -> None:
        check_int("SWA", "start_epoch", start_epoch, 0)
        check_int("SWA", "every_steps", every_steps, 1)
        check_choice("SWA", "bn_update", bn_update, ("each", "end", None))
        check_int("SWA", "bn_batches", bn_batches, 1, allow_none=True)
        self.start_epoch, self.every_steps = start_epoch, every_steps
        self.bn_update, self.bn_batches = bn_update, bn_batches
        self.averaged = None

    def _make(self, model: nn.Module) -> AveragedModel:
        return AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn(), use_buffers=False)

    @property
    def n_averaged(self) -> int:
        """Number of weight snapshots in the average."""
        return 0 if self.averaged is None else int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the live ``model`` into the equal-weight average."""
        self._ensure(model).update_parameters(model)

    def on_fit_start(self, trainer: Any) -> None:
        """Nothing to copy yet: the average starts at ``start_epoch``."""

    def on_after_optimizer_step(self, trainer: Any, step: int) -> None:
        """Average every ``every_steps`` steps from ``start_epoch`` on (and re-estimate BatchNorm if asked)."""
        if trainer.epoch >= self.start_epoch and step % self.every_steps == 0:
            self.update(trainer.model)
            if self.bn_update == "each":
                recompute_bn(self.model, trainer.train_loader, trainer.device, self.bn_batches)

    def on_fit_end(self, trainer: Any) -> None:
        """Re-estimate BatchNorm once at the end (``bn_update="end"``)."""
        if self.bn_update == "end" and self.model is not None:
            recompute_bn(self.model, trainer.train_loader, trainer.device, self.bn_batches)


@torch.no_grad()
def recompute_bn(
    model: nn.Module | None, loader: Iterable[Any], device: torch.device | None = None, max_batches: int | None = None
) -> None:
    """Re-estimate BatchNorm running statistics of ``model`` over ``loader`` (``torch.optim.swa_utils.update_bn``).

    Batches may be tensors or ``(x, y, ...)`` tuples; ``max_batches`` caps the passes (torch's ``update_bn`` has
    no cap). Leaves ``model`` in eval mode; no-op without BatchNorm.
    """
    if model is None or not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    update_bn(_inputs(batches), model, device)
    model.eval()


def _inputs(batches: Iterable[Any]) -> Iterable[Tensor]:
    for b in batches:
        yield b[0] if isinstance(b, (list, tuple)) else b
