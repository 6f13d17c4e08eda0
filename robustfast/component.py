"""The method protocol shared by attacks, regularizers, training losses and trainer plugins.

Every part of a training step is a :class:`Component`. A component

* **owns its state.** ``state_attrs`` (accumulated over the class hierarchy) names the attributes that change
  during training: random generators, per-example memories, adaptive weights, hyper-parameters raised by
  strengthening. :meth:`Component.state_dict` / :meth:`Component.load_state_dict` save and restore exactly
  those, so the trainer checkpoints, resumes and rolls back any method without knowing which one it runs.
* **declares its response to catastrophic overfitting** by overriding :meth:`Component._strengthen` (a larger
  λ, a larger ZeroGrad ``q``, a smaller FGSM step...). :meth:`Component.strengthen` applies it and counts it in
  ``strength``, so strengthening accumulates across rollbacks, and refuses once ``max_strength`` steps were taken:
  every component's strengthening is bounded (a doubled λ reaches at most 4× its start), so repeated rollbacks
  cannot over-regularize a run.
* **may join the training loop's phases** by defining methods named after hook points
  (:data:`robustfast.training.callbacks.HOOKS`, e.g. ``on_after_attack``, ``on_before_optimizer_step``); the
  trainer calls them with the keyword arguments they name, like any callback.

:class:`ExampleMemory` is the building block for per-example state that survives across epochs (keyed by the
dataset indices that loaders yield as a third element; see :class:`robustfast.data.IndexedDataset`).
"""

from __future__ import annotations

import copy
import difflib
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._checks import check_kwargs
from ._registry import Registry
from .errors import RobustfastError

__all__ = [
    "PLUGINS",
    "REQUESTS",
    "Component",
    "ExampleMemory",
    "check_requests",
    "check_saveable",
    "create_plugin",
    "known_requests",
    "list_plugins",
    "register_plugin",
    "register_request",
]

#: What a consumer can ask the step to keep attached to the autograd graph.
#: ``"clean_logits"``: logits at the clean ``x`` with their graph (AdvLC, SEAT, TRADES);
#: ``"clean_grad_graph"``: the clean input gradient computed with ``create_graph=True`` (symmetric GradAlign,
#: CURE, GradNorm); ``"adv_grad_graph"``: the training forward at ``x_adv`` runs on a leaf that requires grad,
#: so ``∇x ℓ(x_adv)`` comes from it without another forward (CURE) and the final backward leaves the input
#: gradient in ``ctx.adv_point.grad`` (Free-AT).
REQUESTS = frozenset({"clean_logits", "clean_grad_graph", "adv_grad_graph"})
_METHOD_REQUESTS: dict[str, str] = {}


def register_request(name: str, what: str) -> str:
    """Declare a request that a method's own parts honour (e.g. FGSM-PGI's ``"prior_logits"``: its attack keeps the
    logits at the prior point with their graph for :class:`~robustfast.PGILoss`); returns ``name``.

    Register it in the method's file, before the classes that name it in ``requests``.
    """
    if name in REQUESTS or _METHOD_REQUESTS.get(name, what) != what:
        raise RobustfastError(f"request {name!r} is already declared")
    _METHOD_REQUESTS[name] = what
    return name


def known_requests() -> frozenset[str]:
    """:data:`REQUESTS` and the requests methods declared with :func:`register_request`."""
    return REQUESTS | frozenset(_METHOD_REQUESTS)


def check_requests(owner: str, requests: Any) -> frozenset[str]:
    """``requests`` as a frozenset of known request names; an unknown name (a typo) is an error naming the known."""
    names = frozenset(requests)
    known = known_requests()
    unknown = sorted(names - known)
    if unknown:
        close = [m for u in unknown for m in difflib.get_close_matches(u, sorted(known), n=1)]
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise RobustfastError(
            f"{owner}.requests names {unknown}{hint}; the known requests are {sorted(known)} (a method declares its "
            "own with robustfast.component.register_request)"
        )
    return names


#: Trainer plugins (method parts that change the loop itself, e.g. AWP), by name.
PLUGINS = Registry("plugin")
register_plugin = PLUGINS.register


def list_plugins(pattern: str = "*") -> list[str]:
    """Names of the registered trainer plugins matching an fnmatch ``pattern``."""
    return PLUGINS.list(pattern)


def create_plugin(name: str, model: Any, **kwargs: Any) -> Component:
    """Build a registered trainer plugin by name, e.g. ``create_plugin("awp", model, gamma=0.01)``."""
    cls = PLUGINS.get(name)
    check_kwargs(cls, kwargs, f"plugin {name!r} ({cls.__name__})")
    return cls(model, **kwargs)


#: What ``torch.load(weights_only=True)`` reads back: tensors and plain Python values (containers of them).
_PLAIN = (Tensor, bool, int, float, complex, str, bytes, type(None), torch.device, torch.dtype, torch.Size)


def _unsaveable(value: Any, path: str) -> tuple[str, Any] | None:
    """The first value inside ``value`` that a ``weights_only`` checkpoint cannot hold, with its path."""
    if isinstance(value, _PLAIN):
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            bad = _unsaveable(k, f"{path}[key {k!r}]") or _unsaveable(v, f"{path}[{k!r}]")
            if bad:
                return bad
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            bad = _unsaveable(v, f"{path}[{i}]")
            if bad:
                return bad
        return None
    return path, value


def check_saveable(component: Component) -> None:
    """Raise when ``component.state_dict()`` holds something a checkpoint cannot store and read back safely.

    Checkpoints are read with ``torch.load(weights_only=True)`` (no arbitrary code is unpickled), which accepts
    tensors and plain Python values only. A ``torch.Generator`` or a NumPy scalar in ``state_attrs`` would train
    and write ``last.pt``, and then fail at resume; this finds it before training starts.
    """
    name = type(component).__name__
    bad = _unsaveable(component.state_dict(), name)
    if bad is None:
        return
    where, value = bad
    kind = type(value).__name__
    if isinstance(value, torch.Generator):
        fix = ("keep random generators in a robustfast.SeededRNG (it saves its state: self.rng = SeededRNG(seed)) "
               "and draw with self.rng.get(device)")  # fmt: skip
    elif type(value).__module__ == "numpy":
        fix = "store it as a Python number (float(v), int(v)) or a tensor"
    else:
        fix = "store tensors and plain values only, or give the object state_dict() / load_state_dict() methods"
    raise RobustfastError(
        f"{name}: its state {where} is a {kind}, which a checkpoint cannot store (robustfast reads checkpoints with "
        f"torch.load(weights_only=True)); {fix}"
    )


def _fmt(name: str, value: Any) -> str:
    return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value!r}"


def _snapshot(value: Any) -> Any:
    if hasattr(value, "state_dict") and callable(value.state_dict):
        return value.state_dict()
    if isinstance(value, Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


class Component:
    """Base of attacks, regularizers, training losses and trainer plugins (see the module docs).

    Attributes:
        state_attrs: names of the attributes saved by :meth:`state_dict` (each class adds its own; the base
            classes add e.g. the random generator).
        strength: how many times :meth:`strengthen` changed this component (saved in its state).
        max_strength: the cap: :meth:`strengthen` changes the component at most this many times (default 2: a
            weight that doubles reaches at most 4× its start). Each class documents what its cap allows.
    """

    state_attrs: ClassVar[tuple[str, ...]] = ()
    max_strength: ClassVar[int] = 2
    strength: int = 0
    #: Hyper-parameters ``repr`` shows (their current values).
    _repr_params: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A method file with a misspelt request or hook fails when it is imported, naming the fix."""
        super().__init_subclass__(**kwargs)
        requests = cls.__dict__.get("requests")
        if isinstance(requests, (frozenset, set, tuple, list)):
            check_requests(cls.__name__, requests)

    @property
    def name(self) -> str:
        """Short name used in logs and histories (default: the class name in lower case)."""
        return type(self).__name__.lower()

    def __repr__(self) -> str:
        parts = [_fmt(n, getattr(self, n, None)) for n in self._repr_params] + self._repr_extra()
        return f"{type(self).__name__}({', '.join(parts)})"

    def _repr_extra(self) -> list[str]:
        """More ``key=value`` parts for ``repr`` (e.g. an attack's BatchNorm mode)."""
        return []

    @classmethod
    def state_names(cls) -> tuple[str, ...]:
        """All state attribute names of this class and its bases, base classes first."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for n in klass.__dict__.get("state_attrs", ()):
                if n not in names:
                    names.append(n)
        return tuple(names)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (safe for ``torch.load(weights_only=True)``)."""
        out: dict[str, Any] = {"strength": self.strength}
        for n in self.state_names():
            out[n] = _snapshot(getattr(self, n))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; objects with their own ``load_state_dict`` are restored in place."""
        name = type(self).__name__
        if not isinstance(state, dict):
            raise RobustfastError(f"{name}.load_state_dict: expected a dict, got {type(state).__name__}")
        missing = [n for n in self.state_names() if n not in state]
        if missing:
            raise RobustfastError(
                f"{name}.load_state_dict: the state lacks {missing}; it was saved by another method or version"
            )
        self.strength = int(state.get("strength", 0))
        for n in self.state_names():
            current, value = getattr(self, n, None), state[n]
            if hasattr(current, "load_state_dict") and callable(current.load_state_dict):
                current.load_state_dict(value)
            else:
                setattr(self, n, value.clone() if isinstance(value, Tensor) else copy.deepcopy(value))

    def log_values(self) -> dict[str, float]:
        """Values the trainer logs per epoch as ``<key>_<component name>`` (e.g. an adaptive weight); none here."""
        return {}

    def strengthen(self) -> str | None:
        """Apply this method's response to catastrophic overfitting; returns what changed, or ``None`` (nothing left
        to strengthen, or the cap ``max_strength`` reached).

        Override :meth:`_strengthen`, not this method: this one enforces the cap and counts successful changes in
        ``strength``.
        """
        if self.strength >= self.max_strength:
            return None
        change = self._strengthen()
        if change is not None:
            self.strength += 1
        return change

    def _strengthen(self) -> str | None:
        """Make training stronger against catastrophic overfitting; ``None``: nothing to strengthen (default)."""
        return None


class ExampleMemory:
    """Per-example tensors keyed by dataset index, allocated and grown on demand.

    Values are stored on the device of the first tensor written. Rows never written read as ``fill``, and
    :meth:`get` also says which rows were written. Saved and restored with its owner's state.

    Args:
        fill: value of rows not written yet (default 0).
    """

    def __init__(self, fill: float = 0.0) -> None:
        self.fill = float(fill)
        self.data: Tensor | None = None
        self.written: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.data is None else self.data.shape[0]

    @staticmethod
    def _check_index(index: Tensor, n: int) -> Tensor:
        if not isinstance(index, Tensor) or index.dim() != 1 or index.shape[0] != n:
            raise RobustfastError(f"ExampleMemory: index must be a 1-d tensor of {n} dataset indices")
        if index.is_floating_point() or index.dtype == torch.bool:
            raise RobustfastError(f"ExampleMemory: index must hold integers, got {index.dtype}")
        if n and int(index.min()) < 0:
            raise RobustfastError("ExampleMemory: dataset indices must be >= 0")
        return index.long()

    def _grow(self, size: int, like: Tensor) -> None:
        if self.data is not None and self.data.shape[1:] != like.shape[1:]:
            raise RobustfastError(
                f"ExampleMemory: stored rows have shape {tuple(self.data.shape[1:])}, got {tuple(like.shape[1:])}"
            )
        have = len(self)
        if size <= have:
            return
        size = max(size, 2 * have)
        data = torch.full((size, *like.shape[1:]), self.fill, dtype=like.dtype, device=like.device)
        written = torch.zeros(size, dtype=torch.bool, device=like.device)
        if self.data is not None and self.written is not None:
            data[:have] = self.data.to(like.device)
            written[:have] = self.written.to(like.device)
        self.data, self.written = data, written

    def get(self, index: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """Rows ``index`` (shaped like ``like``, on its device and dtype) and a mask of the rows written before."""
        index = self._check_index(index, like.shape[0])
        out = torch.full_like(like, self.fill)
        seen = torch.zeros(like.shape[0], dtype=torch.bool, device=like.device)
        if self.data is not None and self.written is not None and like.shape[0]:
            inside = index < len(self)
            idx = index[inside].to(self.data.device)
            out[inside] = self.data[idx].to(like.device, like.dtype)
            seen[inside] = self.written[idx].to(like.device)
        return out, seen

    def set(self, index: Tensor, values: Tensor) -> None:
        """Write rows ``index`` (values are detached and stored)."""
        index = self._check_index(index, values.shape[0])
        if not values.shape[0]:
            return
        self._grow(int(index.max()) + 1, values)
        assert self.data is not None and self.written is not None
        idx = index.to(self.data.device)
        self.data[idx] = values.detach().to(self.data.device, self.data.dtype)
        self.written[idx] = True

    def clear(self) -> None:
        """Forget every row (FGSM-PGI's periodic reset)."""
        self.data, self.written = None, None

    def state_dict(self) -> dict[str, Any]:
        """The stored rows and the written mask (``None`` before the first write)."""
        return {"fill": self.fill, "data": _snapshot(self.data), "written": _snapshot(self.written)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.fill = float(state["fill"])
        self.data, self.written = state["data"], state["written"]
