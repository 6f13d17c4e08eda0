"""Hook points of the training loop and their registry; callbacks are duck-typed objects.

The step has named phases: craft → training loss → penalties → backward → optimizer step. Hook points, in the
order the trainer calls them::

    on_fit_start(trainer, epochs)
    for each epoch:
        on_epoch_start(trainer, epoch)
        for each batch (and each replay of it, when the attack replays minibatches):
            on_batch_start(trainer, epoch, step, x, y, index)
            ctx = attack.craft(x, y, index)                  # phase 1: craft
            on_after_attack(trainer, ctx)
            with around_update(trainer, ctx):                 # context managers (AWP perturbs the weights here)
                out = loss(ctx) + penalties(ctx)              # phases 2-3: training loss, penalties
                on_before_backward(trainer, out, loss)
                backward                                      # phase 4
                on_after_backward(trainer, out)               # input gradient in out.context.adv_point.grad
                on_before_optimizer_step(trainer, optimizer)  # gradients are unscaled here
                optimizer step                                # phase 5
                on_after_optimizer_step(trainer, optimizer, step)
            on_batch_end(trainer, epoch, step, out, loss, lr)
        on_epoch_end(trainer, epoch, record)        # record: this epoch's history row (dict)
        on_rollback(trainer, epoch, record)         # after a catastrophic-overfitting rollback
    on_fit_end(trainer, history)

Every participant of a step (the attack, the training loss, the regularizers, trainer plugins such as AWP, the
weight averagers) and every callback is called the same way: each method named after a hook point receives
only the keyword arguments it names, resolved once when it is registered. :meth:`HookSet.add` returns a
``torch.utils.hooks.RemovableHandle``. A callback may set ``trainer.should_stop = True`` to end the run after the
current epoch.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from torch.utils.hooks import RemovableHandle

from ..errors import RobustfastError

__all__ = ["HOOKS", "HookSet", "TensorBoardLogger"]

HOOKS = (
    "on_fit_start",
    "on_epoch_start",
    "on_batch_start",
    "on_after_attack",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_after_optimizer_step",
    "on_batch_end",
    "on_epoch_end",
    "on_rollback",
    "on_fit_end",
)
#: Context-manager hook: ``around_update(trainer, ctx)`` wraps the training loss, backward and optimizer step.
WRAPPER = "around_update"


def _bind(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    """A caller passing ``fn`` only the keyword arguments it names (signature read once, here)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return lambda kw: fn(**kw)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return lambda kw: fn(**{k: v for k, v in kw.items() if k in names})


class HookSet:
    """Objects taking part in the training loop, with their hook methods resolved once at registration."""

    def __init__(self) -> None:
        self._entries: OrderedDict[int, tuple[object, dict[str, Callable[[dict[str, Any]], Any]]]] = OrderedDict()
        self._by_hook: dict[str, list[Callable[[dict[str, Any]], Any]]] = {}
        self._keys: tuple[int, ...] | None = None

    def add(self, obj: object, *, strict: bool = False) -> RemovableHandle:
        """Register ``obj``'s hook methods; ``strict`` requires at least one (a callback with a typo errs).

        Returns a handle whose ``.remove()`` unregisters ``obj``.
        """
        bound = {h: _bind(getattr(obj, h)) for h in (*HOOKS, WRAPPER) if callable(getattr(obj, h, None))}
        if strict and not bound:
            raise RobustfastError(
                f"callback {obj!r} implements none of the hook points {', '.join(HOOKS)}; check the method names"
            )
        handle = RemovableHandle(self._entries)
        self._entries[handle.id] = (obj, bound)
        return handle

    def _table(self) -> dict[str, list[Callable[[dict[str, Any]], Any]]]:
        keys = tuple(self._entries)
        if keys != self._keys:  # an object was added or removed since the table was built
            self._by_hook = {h: [b[h] for _, b in self._entries.values() if h in b] for h in (*HOOKS, WRAPPER)}
            self._keys = keys
        return self._by_hook

    def __contains__(self, obj: object) -> bool:
        return any(o is obj for o, _ in self._entries.values())

    def call(self, hook: str, **kwargs: Any) -> None:
        """Call ``hook`` on every registered object that has it."""
        for fn in self._table()[hook]:
            fn(kwargs)

    @contextmanager
    def around_update(self, **kwargs: Any) -> Iterator[None]:
        """Enter every registered ``around_update`` context manager (exited in reverse order, also on error)."""
        wrappers = self._table()[WRAPPER]
        if not wrappers:
            yield
            return
        with ExitStack() as stack:
            for fn in wrappers:
                stack.enter_context(fn(kwargs))
            yield


def check_callbacks(callbacks: Iterable[object]) -> list[object]:
    """Validate callbacks up front: each must implement at least one hook (a typo is an error, not a no-op)."""
    out = list(callbacks)
    probe = HookSet()
    for cb in out:
        probe.add(cb, strict=True)
    return out


class TensorBoardLogger:
    """Write each epoch's numeric history values and the per-step loss to TensorBoard (rank 0 only).

    Args:
        log_dir: the event folder.
        every_steps: log the training loss every this many steps (default 50; 0 disables step logging).
    """

    def __init__(self, log_dir: str | Path, every_steps: int = 50) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RobustfastError("TensorBoardLogger needs tensorboard: pip install 'robustfast[tensorboard]'") from e
        if not isinstance(every_steps, int) or every_steps < 0:
            raise RobustfastError(f"TensorBoardLogger(every_steps={every_steps!r}): must be an integer >= 0")
        self.writer = SummaryWriter(str(log_dir))
        self.every_steps = every_steps

    def on_batch_end(self, trainer: Any, step: int, loss: float) -> None:
        """Log the step loss every ``every_steps`` steps."""
        if trainer.is_main_process and self.every_steps and step % self.every_steps == 0:
            self.writer.add_scalar("train/step_loss", loss, step)

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        """Log every numeric value of the epoch's record."""
        if not trainer.is_main_process:
            return
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                self.writer.add_scalar(k, v, epoch)
        self.writer.flush()

    def on_fit_end(self) -> None:
        """Close the writer."""
        self.writer.close()
