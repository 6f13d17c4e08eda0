"""The ``Attack`` base class: torchattacks conventions, with the side effects fixed, on the method protocol.

Subclasses declare their hyper-parameters (:class:`Magnitude` for pixel-unit sizes such as ``alpha``) and
implement :meth:`Attack.perturb`, which calls the attack's functional kernel (``robustfast.functional``). The base
class does everything else: argument and input checks, model modes, normalization, targeted modes, reproducible
randomness, the step record (:class:`~robustfast.context.StepContext`) and the method protocol's state and
strengthening (:class:`~robustfast.component.Component`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor, nn

from .._checks import (
    as_magnitude,
    check_batch,
    check_kwargs,
    check_labels_in_range,
    check_logits,
    check_model_dtype,
    input_bounds,
    range_problem,
)
from .._io import save_torch_file
from .._registry import Registry
from ..component import Component
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import cross_entropy
from ..modes import ModePolicy, model_mode, resolve_policy
from ..ops import input_grad
from ..rng import SeededRNG

__all__ = [
    "ATTACKS",
    "KERNELS",
    "Attack",
    "GradFn",
    "Magnitude",
    "create_attack",
    "kernel",
    "least_likely",
    "list_attacks",
    "loss_grad_fn",
    "register_attack",
]

ATTACKS = Registry("attack")
register_attack = ATTACKS.register

LossFn = Callable[[Tensor, Tensor], Tensor]
#: ``grad_fn(delta)`` returns the detached per-example input gradient of the objective at ``x + delta``
#: (``delta=None``: at the clean ``x``). Kernels take one, so the classes can reuse and publish gradients.
GradFn = Callable[[Tensor | None], Tensor]


#: The functional kernels (``robustfast.functional``), by name; filled by :func:`kernel`.
KERNELS: dict[str, Callable[..., Tensor]] = {}

_F = TypeVar("_F", bound=Callable[..., Tensor])


def kernel(fn: _F) -> _F:
    """Decorator listing an attack's functional kernel in ``robustfast.functional`` (under its own name)."""
    if fn.__name__ in KERNELS and KERNELS[fn.__name__] is not fn:
        raise RobustfastError(f"kernel name {fn.__name__!r} is already registered")
    KERNELS[fn.__name__] = fn
    return fn


def list_attacks(pattern: str = "*") -> list[str]:
    """Names of the registered attacks matching an fnmatch ``pattern``."""
    return ATTACKS.list(pattern)


def create_attack(name: str, model: nn.Module, *args: Any, **kwargs: Any) -> Attack:
    """Build a registered attack by name, e.g. ``create_attack("zerograd", model, q=0.35)``.

    Unknown keyword arguments raise a :class:`RobustfastError` that lists the accepted ones.
    """
    cls = ATTACKS.get(name)
    check_kwargs(cls, kwargs, f"attack {name!r} ({cls.__name__})")
    return cls(model, *args, **kwargs)


def loss_grad_fn(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, loss_fn: LossFn | None = None) -> GradFn:
    """The default gradient oracle of the functional kernels: ``∇ Σ_i loss_fn(model(x + δ), y)_i`` (detached).

    ``loss_fn`` is per-sample (default: cross-entropy). Parameter ``.grad`` is never written.
    """
    fn = loss_fn or cross_entropy

    def grad(delta: Tensor | None) -> Tensor:
        point = (x if delta is None else x + delta).detach().requires_grad_(True)
        with torch.enable_grad():
            return input_grad(fn(model(point), y), point).detach()

    return grad


class Magnitude:
    """A pixel-unit hyper-parameter of an attack (``alpha``, ``noise``...): validated on assignment.

    ``None`` means ``relative * eps`` (read back as that number), so the default follows ``eps`` (also under
    :meth:`Attack.scaled`). Values are in ``[0, 1]`` (a size other than ``eps`` up to 8·eps, e.g. N-FGSM's
    noise 4ε = 1.2 at ε = 0.3); ``8`` raises "did you mean 8/255?".

    Args:
        relative: the default as a multiple of ``eps`` (``None``: the value is required, as for ``eps``).
        optional: ``None`` stays ``None`` (e.g. N-FGSM's optional projection radius).
        step: this size is a step size: what an ε warm-up with ``target="step"`` scales (:meth:`Attack.scaled`).
            Default ``None``: a magnitude named ``alpha`` is one; Free-AT declares its ``step``.
    """

    def __init__(self, relative: float | None = None, *, optional: bool = False, step: bool | None = None) -> None:
        self.relative, self.optional, self._step = relative, optional, step

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.attr = name, f"_{name}"
        self.step = name == "alpha" if self._step is None else self._step

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__.get(self.attr)
        if value is None and self.relative is not None:
            return self.relative * obj.eps
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        allow_none = self.relative is not None or self.optional
        eps = getattr(obj, "eps", None) if self.name != "eps" else None  # set first by Attack.__init__
        obj.__dict__[self.attr] = as_magnitude(type(obj).__name__, self.name, value, allow_none=allow_none, eps=eps)

    def raw(self, obj: Any) -> float | None:
        """The stored value (``None`` when it follows ``eps``)."""
        return obj.__dict__.get(self.attr)


class _LeastLikely:
    """Target selector: the ``k``-th least likely class under the model (eval mode, no grad)."""

    def __init__(self, k: int = 1) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RobustfastError(f"least_likely(k={k!r}): k must be an integer >= 1")
        self.k = k

    def __repr__(self) -> str:
        return f"least_likely(k={self.k})"


def least_likely(k: int = 1) -> _LeastLikely:
    """Targeted mode: attack towards the ``k``-th least likely class (``PGD(..., target_fn=least_likely(2))``)."""
    return _LeastLikely(k)


def _as_type(x: Tensor, save_type: str) -> Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8) if save_type == "int" else x


class _Normalized(nn.Module):
    """``model(normalize(x))``: the pixel-space view of a model fed normalized images."""

    def __init__(self, model: Any, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        if isinstance(model, nn.Module):
            self.inner = model
        else:
            object.__setattr__(self, "inner", model)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner((x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype))


class Attack(Component):
    """Base class of every robustfast attack (inputs in ``[0, 1]``, ``eps`` in pixel units).

    Args:
        model: the classifier; returns logits of shape ``(N, C)``. Prefer normalization inside the
            model (:class:`robustfast.models.Normalize`).
        eps: radius of the threat model in pixel units (default ``8/255``; a 0-d tensor is accepted).
        loss_fn: ``(logits, labels) -> per-sample (N,)`` or scalar loss the attack ascends. ``None``
            uses each attack's default (cross-entropy; SEAT's margin loss).
        bn_mode: model mode during the attack: ``"eval"`` (default, torchattacks), ``"train"`` (what the
            seed papers' code does while training), ``"train_no_stats"`` (batch statistics, running
            statistics left untouched) or ``"inherit"``; or a :class:`~robustfast.modes.ModePolicy`.
        seed: seeds a private generator for the random start, so results are reproducible and the
            global RNG is untouched (saved in checkpoints as part of the attack's state).
        generator: use this ``torch.Generator`` instead (must live on the inputs' device).
        check_range: what to do with inputs outside ``[0, 1]`` (or NaN/inf): ``"error"`` (default), ``"warn"``,
            ``"off"`` (no check, no device sync).
        targeted: attack towards target classes instead of away from the true ones. With ``target_fn=None``
            the labels passed to ``atk(x, labels)`` *are* the targets.
        target_fn: how targets are chosen: ``"random"`` (a uniformly random wrong class, from the attack's
            generator), ``"least_likely"`` or :func:`least_likely` ``(k)``, or a callable ``(x, y) -> targets``.
            Setting it implies ``targeted=True``.

    Calling ``atk(x, y)`` (optionally ``atk(x, y, index)`` with dataset indices, for attacks that keep
    per-example memory) returns detached adversarial images with the shape, dtype and device of ``x``,
    inside ``[0, 1]``. It works under ``torch.no_grad()``, never writes parameter ``.grad``, and restores
    every module's train/eval flag exactly. :meth:`craft` returns the whole step record.
    """

    #: Whether ``‖x_adv − x‖∞ ≤ eps`` always holds (N-FGSM's unprojected perturbation does not).
    bounded: ClassVar[bool] = True
    #: The threat model's norm.
    norm: ClassVar[str] = "Linf"
    #: Whether the default objective is untargeted cross-entropy (so a clean gradient may be shared).
    default_loss_is_ce: ClassVar[bool] = True
    #: Optimizer steps the trainer takes per minibatch with this attack (Free-AT's ``m``; 1 for every other).
    replays: int = 1
    #: Hyper-parameters shown by ``repr`` (effective values).
    _repr_params: ClassVar[tuple[str, ...]] = ("eps",)
    state_attrs: ClassVar[tuple[str, ...]] = ("rng",)

    eps = Magnitude()

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        *,
        loss_fn: LossFn | None = None,
        bn_mode: str | ModePolicy = "eval",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        check_range: Literal["error", "warn", "off"] = "error",
        targeted: bool = False,
        target_fn: Callable[[Tensor, Tensor], Tensor] | str | _LeastLikely | None = None,
    ) -> None:
        name = type(self).__name__
        if not isinstance(model, nn.Module) and not callable(model):
            raise RobustfastError(f"{name}: model must be an nn.Module, got {type(model).__name__}")
        if check_range not in ("error", "warn", "off"):
            raise RobustfastError(f"{name}(check_range={check_range!r}): choose 'error', 'warn' or 'off'")
        if loss_fn is not None and not callable(loss_fn):
            raise RobustfastError(f"{name}: loss_fn must be callable (logits, labels) -> per-sample loss")
        self.model = model
        self.eps = eps
        self.loss_fn = loss_fn
        self.policy = resolve_policy(bn_mode)
        self.bn_mode = bn_mode
        self.check_range = check_range
        self.rng = SeededRNG(seed, generator, owner=name)
        self._mean: Tensor | None = None
        self._std: Tensor | None = None
        self._pixel_model: nn.Module | None = None
        self._label_bounds: tuple[int, int] | None = None
        self.targeted, self.target_fn = False, None
        self._set_target(targeted, target_fn)

    # ------------------------------------------------------------------ hyper-parameters
    @property
    def randomized(self) -> bool:
        """Whether the attack draws random numbers (a random start...); ``seed`` makes those reproducible."""
        return True

    @property
    def seed(self) -> int | None:
        """The seed of the private generator (``None``: global RNG or a user generator)."""
        return self.rng.seed

    @classmethod
    def _magnitudes(cls) -> list[Magnitude]:
        out: dict[str, Magnitude] = {}
        for klass in reversed(cls.__mro__):
            for n, v in vars(klass).items():
                if isinstance(v, Magnitude):
                    out[n] = v
        return list(out.values())

    @contextmanager
    def scaled(self, factor: float, what: Literal["all", "eps", "step"] = "all") -> Iterator[Attack]:
        """Temporarily scale the attack's sizes by ``factor`` (ε warm-up).

        ``what="all"`` (default) multiplies ``eps`` and every absolute pixel-unit hyper-parameter (those left at
        their default follow ``eps`` by themselves: N-FGSM's code ramps ε and α together); ``"eps"`` scales only
        the radius and keeps the other sizes at their full values (GradAlign's SVHN warm-up for PGD); ``"step"``
        scales only the step sizes (each attack's ``alpha``, and magnitudes declared ``Magnitude(step=True)`` such
        as Free-AT's ``step``) and keeps the radius (GradAlign's SVHN warm-up for FGSM).
        """
        if what not in ("all", "eps", "step"):
            raise RobustfastError(f"scaled(what={what!r}): choose 'all', 'eps' or 'step'")
        mags = self._magnitudes()
        saved = {m.attr: m.raw(self) for m in mags}
        effective = {m.attr: m.__get__(self) for m in mags}
        try:
            if what == "all":
                for attr, v in saved.items():
                    if v is not None:
                        self.__dict__[attr] = v * factor
            elif what == "eps":
                for m in mags:  # every other size keeps its full value, defaults included
                    self.__dict__[m.attr] = effective[m.attr] if m.name != "eps" else saved[m.attr] * factor
            else:
                for m in mags:
                    if m.step and effective[m.attr] is not None:
                        self.__dict__[m.attr] = effective[m.attr] * factor
            yield self
        finally:
            self.__dict__.update(saved)

    def _repr_extra(self) -> list[str]:
        parts = [f"bn_mode={self.bn_mode!r}"]
        if self.targeted:
            parts.append(f"targeted=True, target_fn={self.target_fn!r}")
        return parts

    # ------------------------------------------------------------------ targets
    def _set_target(self, targeted: bool, target_fn: Any) -> None:
        name = type(self).__name__
        if not isinstance(targeted, bool):
            raise RobustfastError(f"{name}(targeted={targeted!r}): True or False")
        if isinstance(target_fn, str):
            key = target_fn.lower().replace("-", "_")
            if key == "random":
                target_fn = "random"
            elif key == "least_likely":
                target_fn = _LeastLikely(1)
            else:
                raise RobustfastError(
                    f"{name}(target_fn={target_fn!r}): use 'random', 'least_likely', least_likely(k) or a "
                    "callable (x, y) -> targets"
                )
        elif target_fn is not None and not callable(target_fn) and not isinstance(target_fn, _LeastLikely):
            raise RobustfastError(f"{name}(target_fn=...): expected a callable (x, y) -> targets")
        self.targeted = targeted or target_fn is not None
        self.target_fn = target_fn

    # torchattacks-compatible setters: a thin layer over the keyword arguments
    def set_model_training_mode(
        self, model_training: bool = False, batchnorm_training: bool = False, dropout_training: bool = False
    ) -> None:
        """torchattacks-compatible mode setter (restoration is exact here, per module)."""
        self.bn_mode = ModePolicy(model_training, batchnorm_training, dropout_training)
        self.policy = self.bn_mode

    def set_mode_default(self) -> None:
        """torchattacks compatibility: untargeted (``targeted=False``)."""
        self._set_target(False, None)

    def set_mode_targeted_by_label(self) -> None:
        """torchattacks compatibility: ``targeted=True`` (the labels passed are the targets)."""
        self._set_target(True, None)

    def set_mode_targeted_random(self) -> None:
        """torchattacks compatibility: ``target_fn="random"``."""
        self._set_target(True, "random")

    def set_mode_targeted_least_likely(self, kth_min: int = 1) -> None:
        """torchattacks compatibility: ``target_fn=least_likely(kth_min)``."""
        self._set_target(True, _LeastLikely(kth_min))

    def set_mode_targeted_by_function(self, target_map_function: Callable[[Tensor, Tensor], Tensor]) -> None:
        """torchattacks compatibility: ``target_fn=target_map_function``."""
        self._set_target(True, target_map_function)

    def get_mode(self) -> str:
        """torchattacks compatibility: ``"default"``, ``"by_label"``, ``"random"``, ``"least_likely"`` or
        ``"function"``."""
        fn = self.target_fn
        if not self.targeted:
            return "default"
        if fn is None:
            return "by_label"
        if fn == "random":
            return "random"
        return "least_likely" if isinstance(fn, _LeastLikely) else "function"

    def _attack_labels(self, x: Tensor, y: Tensor) -> Tensor:
        fn = self.target_fn
        if not self.targeted or fn is None:
            return y
        if callable(fn) and not isinstance(fn, _LeastLikely):
            return fn(x, y).long()
        with torch.no_grad(), model_mode(self.model, "eval"):
            logits = self.get_logits(x)
        n_classes = logits.shape[1]
        if isinstance(fn, _LeastLikely):
            if fn.k >= n_classes:
                raise RobustfastError(f"least_likely(k={fn.k}) must be < the number of classes ({n_classes})")
            return logits.kthvalue(fn.k, dim=1).indices
        offs = torch.randint(1, n_classes, y.shape, generator=self.rng.get(x.device), device=x.device)
        return (y + offs) % n_classes  # a random wrong class

    # ------------------------------------------------------------------ normalization
    def set_normalization_used(self, mean: Any, std: Any) -> None:
        """torchattacks semantics: inputs and outputs are *normalized* images; ``eps`` stays in pixel space.

        Prefer putting normalization inside the model (:class:`robustfast.models.Normalize`) and feeding
        ``[0, 1]`` images; never do both: a model that already contains a ``Normalize`` is refused.
        """
        from ..models.normalize import Normalize

        name = type(self).__name__
        if isinstance(self.model, nn.Module) and any(isinstance(m, Normalize) for m in self.model.modules()):
            raise RobustfastError(
                f"{name}.set_normalization_used: the model already normalizes its inputs (it contains "
                "robustfast.models.Normalize); feed [0, 1] images instead of normalizing twice"
            )
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if not torch.isfinite(std_t).all() or (std_t <= 0).any():
            raise RobustfastError(f"{name}.set_normalization_used: std must be positive, got {std}")
        self._mean, self._std = mean_t, std_t
        self._pixel_model = _Normalized(self.model, mean_t, std_t)

    @property
    def space(self) -> Literal["pixel", "normalized"]:
        """The space of the tensors ``atk(x, y)`` takes and returns."""
        return "normalized" if self._mean is not None else "pixel"

    @property
    def pixel_model(self) -> Any:
        """The model as a function of pixel-space ``[0, 1]`` images (normalization applied first when set)."""
        return self._pixel_model if self._pixel_model is not None else self.model

    def to_pixel(self, x: Tensor) -> Tensor:
        """Caller-space images to pixel space (identity unless :meth:`set_normalization_used` was called)."""
        if self._mean is None or self._std is None:
            return x
        return x * self._std.to(x.device, x.dtype) + self._mean.to(x.device, x.dtype)

    def to_user(self, x: Tensor) -> Tensor:
        """Pixel-space images back to the caller's space."""
        if self._mean is None or self._std is None:
            return x
        return (x - self._mean.to(x.device, x.dtype)) / self._std.to(x.device, x.dtype)

    # ------------------------------------------------------------------ the call
    def __call__(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor:
        """Detached adversarial examples for ``(x, y)``, in the caller's space (``index``: dataset indices)."""
        return self.to_user(self.craft(x, y, index=index).x_adv).detach()  # type: ignore[arg-type]

    forward = __call__

    def craft(self, x: Tensor, y: Tensor, *, index: Tensor | None = None, requests: Iterable[str] = ()) -> StepContext:
        """Run the attack and return the step record (pixel-space ``x``/``x_adv`` and what the attack computed).

        Args:
            x: inputs in the caller's space (``[0, 1]`` images unless :meth:`set_normalization_used`).
            y: integer labels (the targets when ``targeted`` without ``target_fn``).
            index: dataset indices ``(N,)`` (attacks with per-example memory use them; see each attack).
            requests: names from :data:`robustfast.context.REQUESTS` to keep attached to the graph.
        """
        self._check_inputs(x, y, index)
        x = self.to_pixel(x)
        self._check_range(x, y)
        y = y.long()
        ctx = StepContext(x=x.detach(), y=y, index=index, model=self.pixel_model, space=self.space,
                          requests=frozenset(requests))  # fmt: skip
        ctx.attack_mode = self.bn_mode if isinstance(self.bn_mode, str) else repr(self.bn_mode)
        try:
            with torch.enable_grad(), model_mode(self.model, self.policy):
                labels = self._attack_labels(x.detach(), y)
                ctx.x_adv = self.perturb(x.detach(), labels, ctx).detach()
        finally:
            self._label_bounds = None
        return ctx

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """The algorithm: return pixel-space ``x_adv`` for pixel-space ``x`` and attack labels ``y``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses
    def get_logits(self, x: Tensor) -> Tensor:
        """Model logits for pixel-space ``x`` (override for models returning tuples or dicts)."""
        out = check_logits(type(self).__name__, self.pixel_model(x), x.shape[0])
        if self._label_bounds is not None:  # first forward of this call: labels must index the outputs
            check_labels_in_range(type(self).__name__, *self._label_bounds, out.shape[1])
            self._label_bounds = None
        return out

    def objective(self, logits: Tensor, labels: Tensor) -> Tensor:
        """What the attack ascends: the loss (untargeted) or minus the loss to the target (targeted)."""
        loss = self.loss_fn(logits, labels) if self.loss_fn is not None else self.default_loss(logits, labels)
        return -loss if self.targeted else loss

    def default_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-sample default loss (cross-entropy unless a subclass says otherwise)."""
        return cross_entropy(logits, labels)

    @property
    def shares_clean_grad(self) -> bool:
        """True when this attack's gradient at the clean point is ``∇x CE(f(x), y)`` (reusable)."""
        return self.default_loss_is_ce and self.loss_fn is None and not self.targeted

    def grad_fn(self, x: Tensor, y: Tensor, ctx: StepContext | None = None) -> GradFn:
        """The gradient oracle passed to this attack's kernel.

        At the clean point (``delta=None``) with plain cross-entropy it goes through
        :meth:`StepContext.clean_ce_grad`, so the clean logits and gradient are published for the training loss
        and the regularizers (kept with their graph when they asked for it).
        """

        def grad(delta: Tensor | None) -> Tensor:
            if delta is None and ctx is not None and self.shares_clean_grad:
                keep, graph = ctx.wants("clean_logits"), ctx.wants("clean_grad_graph")
                return ctx.clean_ce_grad(self.get_logits, create_graph=graph, keep_logits=keep).detach()
            point = (x if delta is None else x + delta).detach().requires_grad_(True)
            return input_grad(self.objective(self.get_logits(point), y), point).detach()

        return grad

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The generator for random starts on ``device`` (``None``: the global RNG)."""
        return self.rng.get(device)

    # ------------------------------------------------------------------ saving (torchattacks' atk.save)
    @torch.no_grad()
    def save(
        self,
        data_loader: Iterable[Any],
        save_path: str | Path | None = None,
        verbose: bool = True,
        return_verbose: bool = False,
        save_predictions: bool = False,
        save_clean_inputs: bool = False,
        save_type: Literal["float", "int"] = "float",
    ) -> tuple[float, float, float] | None:
        """torchattacks' ``atk.save``: attack every batch of ``data_loader`` and save the adversarial examples.

        The file (written atomically with ``torch.save``) holds ``{"adv_inputs", "labels", "save_type"}`` plus
        ``"preds"`` and ``"clean_inputs"`` when asked; ``save_type="int"`` stores ``uint8`` images (×255).

        Returns:
            ``(robust accuracy %, mean L2 distance, seconds)`` when ``return_verbose``, else ``None``.
        """
        if save_type not in ("float", "int"):
            raise RobustfastError(f"save(save_type={save_type!r}): choose 'float' or 'int'")
        advs, labels, preds, cleans = [], [], [], []
        correct = total = 0
        l2 = 0.0
        t0 = time.perf_counter()
        for batch in data_loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise RobustfastError("save(data_loader): the loader must yield (inputs, labels) batches")
            x, y = batch[0], batch[1]
            adv = self(x, y)
            with model_mode(self.model, "eval"):
                pred = self.get_logits(self.to_pixel(adv)).argmax(1)
            correct += int((pred == y.to(pred.device)).sum())
            total += len(y)
            l2 += float((self.to_pixel(adv) - self.to_pixel(x)).flatten(1).norm(dim=1).sum())
            advs.append(adv.cpu())
            labels.append(y.cpu())
            preds.append(pred.cpu())
            cleans.append(x.cpu())
            if verbose:
                print(f"- save progress: {total} examples, robust accuracy {100 * correct / total:.2f}%", end="\r")
        if not advs:
            raise RobustfastError("save(data_loader): the loader is empty")
        elapsed = time.perf_counter() - t0
        if verbose:
            print(f"- save complete: robust accuracy {100 * correct / total:.2f}%, L2 {l2 / total:.4f}, "
                  f"{elapsed:.1f} s")  # fmt: skip
        if save_path is not None:
            adv = torch.cat(advs)
            out: dict[str, Any] = {"labels": torch.cat(labels), "save_type": save_type}
            out["adv_inputs"] = _as_type(adv, save_type)
            if save_predictions:
                out["preds"] = torch.cat(preds)
            if save_clean_inputs:
                clean = torch.cat(cleans)
                out["clean_inputs"] = _as_type(clean, save_type)
            save_torch_file(out, save_path, what="adversarial examples")
        return (100 * correct / total, l2 / total, elapsed) if return_verbose else None

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, x: Tensor, y: Tensor, index: Tensor | None) -> None:
        name = type(self).__name__
        check_batch(name, x, y)
        if index is not None:
            if not isinstance(index, Tensor) or index.dim() != 1 or index.shape[0] != x.shape[0]:
                raise RobustfastError(f"{name}: index must be a 1-d tensor of {x.shape[0]} dataset indices")
            if index.is_floating_point() or index.dtype == torch.bool:
                raise RobustfastError(f"{name}: index must hold integer dataset indices, got {index.dtype}")
        check_model_dtype(name, self.model, x)

    def _check_range(self, x: Tensor, y: Tensor) -> None:
        if self.check_range == "off":
            return
        lo, hi, ylo, yhi = input_bounds(x, y)  # one device sync per call
        problem = range_problem(lo, hi)
        self._label_bounds = (ylo, yhi)
        if problem is None:
            return
        msg = f"{type(self).__name__}: {problem}"
        if self.check_range == "error" or lo != lo or hi != hi:  # NaN is always an error
            raise RobustfastError(msg)
        warnings.warn(msg, stacklevel=4)
