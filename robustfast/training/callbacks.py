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
current epoch. :class:`Callback` is a typed base with every hook as a no-op; subclassing it is optional.

A method named like a hook (``on_*``, ``around_*``) that is not one is an error when the object is registered, with
the closest hook named: a typo (``on_after_atack``) is never silently a method that is not called.

The trainer's own logging, progress bar, history files and checkpoints are built-in callbacks of this kind
(:mod:`robustfast.training.loggers`, :class:`robustfast.training.checkpoint.Checkpointer`).
"""

from __future__ import annotations

import difflib
import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from torch.utils.hooks import RemovableHandle

from ..errors import RobustfastError

__all__ = ["HOOKS", "WRAPPER", "Callback", "HookSet", "check_hook_names"]

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


class Callback:
    """A typed base for callbacks and method parts: every hook point as a no-op (override the ones you need).

    Overriding is optional (any object with hook-named methods works); hooks left as they are here cost nothing,
    the trainer does not call them.
    """

    def on_fit_start(self, trainer: Any, epochs: int) -> None:
        """Before the first epoch (also after a resume)."""

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Before each epoch (``epoch`` counts from 0)."""

    def on_batch_start(self, trainer: Any, epoch: int, step: int, x: Any, y: Any, index: Any) -> None:
        """Before each optimizer step (each replay, for attacks that replay minibatches)."""

    def on_after_attack(self, trainer: Any, ctx: Any) -> None:
        """After the attack crafted the step record ``ctx``."""

    def on_before_backward(self, trainer: Any, out: Any, loss: Any) -> None:
        """After the training loss and penalties, before ``loss.backward()``."""

    def on_after_backward(self, trainer: Any, out: Any) -> None:
        """After the backward pass (parameter gradients are set)."""

    def on_before_optimizer_step(self, trainer: Any, optimizer: Any) -> None:
        """Before ``optimizer.step()`` (gradients unscaled)."""

    def on_after_optimizer_step(self, trainer: Any, optimizer: Any, step: int) -> None:
        """After the optimizer step (``step`` counts steps done)."""

    def on_batch_end(self, trainer: Any, epoch: int, step: int, out: Any, loss: float, lr: float) -> None:
        """After each optimizer step."""

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        """After each epoch that was kept (``record``: its history row)."""

    def on_rollback(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        """After a catastrophic-overfitting rollback to ``epoch``."""

    def on_fit_end(self, trainer: Any, history: Any) -> None:
        """When ``fit`` returns."""

    def around_update(self, trainer: Any, ctx: Any) -> AbstractContextManager[None]:  # pragma: no cover - base
        """A context manager around the training loss, backward and optimizer step (none here)."""
        raise NotImplementedError


def check_hook_names(obj: object) -> None:
    """Raise when ``obj`` has a method named like a hook (``on_*``, ``around_*``) that is not one."""
    known = (*HOOKS, WRAPPER)
    for name in dir(type(obj)):
        if not (name.startswith("on_") or name.startswith("around_")) or name in known:
            continue
        if not callable(getattr(type(obj), name, None)):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RobustfastError(
            f"{type(obj).__name__}.{name} is named like a hook but is not one{hint} Hook points: {', '.join(known)}"
        )


def _overrides(obj: object, name: str) -> bool:
    """Whether ``obj``'s hook ``name`` is more than :class:`Callback`'s no-op."""
    fn = getattr(type(obj), name, None)
    return fn is not None and fn is not getattr(Callback, name, None)


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
        self._late: OrderedDict[int, tuple[object, dict[str, Callable[[dict[str, Any]], Any]]]] = OrderedDict()
        self._by_hook: dict[str, list[Callable[[dict[str, Any]], Any]]] = {}
        self._keys: tuple[int, ...] | None = None

    def add(self, obj: object, *, strict: bool = False, last: bool = False) -> RemovableHandle:
        """Register ``obj``'s hook methods; ``strict`` requires at least one (a callback with a typo errs).

        ``last`` puts ``obj`` after every object registered without it, also those added later: the trainer's own
        displays, history files and checkpoints see what every other callback did to an epoch's record.
        Returns a handle whose ``.remove()`` unregisters ``obj``.
        """
        check_hook_names(obj)
        bound = {
            h: _bind(getattr(obj, h))
            for h in (*HOOKS, WRAPPER)
            if callable(getattr(obj, h, None)) and (not isinstance(obj, Callback) or _overrides(obj, h))
        }
        if strict and not bound:
            raise RobustfastError(
                f"callback {obj!r} implements none of the hook points {', '.join(HOOKS)}; check the method names"
            )
        entries = self._late if last else self._entries
        handle = RemovableHandle(entries)
        entries[handle.id] = (obj, bound)
        return handle

    def _all(self) -> list[tuple[object, dict[str, Callable[[dict[str, Any]], Any]]]]:
        return [*self._entries.values(), *self._late.values()]

    def _table(self) -> dict[str, list[Callable[[dict[str, Any]], Any]]]:
        keys = (*self._entries, -1, *self._late)
        if keys != self._keys:  # an object was added or removed since the table was built
            self._by_hook = {h: [b[h] for _, b in self._all() if h in b] for h in (*HOOKS, WRAPPER)}
            self._keys = keys
        return self._by_hook

    def __iter__(self) -> Iterator[object]:
        """The registered objects, in calling order."""
        return iter([o for o, _ in self._all()])

    def __contains__(self, obj: object) -> bool:
        return any(o is obj for o, _ in self._all())

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
