"""Argument and input checks shared by attacks, regularizers, losses and the trainer (one place, one wording)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

from .errors import RobustfastError

__all__ = [
    "accepted_keywords",
    "as_magnitude",
    "check_batch",
    "check_bool",
    "check_choice",
    "check_int",
    "check_kwargs",
    "check_logits",
    "check_model_dtype",
    "check_number",
    "input_bounds",
]

# Inputs may leave [0, 1] by this much (float round-off, e.g. after a normalize/inverse round trip).
RANGE_TOL = 1e-4
# A step or noise size may exceed 1 up to this multiple of eps (the largest any method uses or strengthens to is 4).
MAX_EPS_MULTIPLE = 8.0


def as_magnitude(
    owner: str, name: str, value: Any, *, allow_none: bool = True, eps: float | None = None
) -> float | None:
    """A pixel-unit magnitude (eps, alpha, noise) as a float; 0-d tensors are accepted.

    Values are in ``[0, 1]``, except that a size measured against a known ``eps`` (a step or a noise radius) may
    reach ``MAX_EPS_MULTIPLE·eps`` (N-FGSM's noise 4ε at ε = 0.3 is 1.2). Raises a :class:`RobustfastError` naming
    the argument and the fix (``8`` → "did you mean 8/255?").
    """
    if value is None and allow_none:
        return None
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise RobustfastError(f"{owner}({name}=tensor of shape {tuple(value.shape)}): {name} must be a scalar")
        value = value.item()
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok:
        raise RobustfastError(f"{owner}({name}={value!r}): {name} must be a finite number in pixel units, e.g. 8/255")
    value = float(value)
    if value < 0:
        raise RobustfastError(f"{owner}({name}={value:g}): {name} must be >= 0")
    if value > max(1.0, MAX_EPS_MULTIPLE * eps if eps is not None else 0.0):
        raise RobustfastError(
            f"{owner}({name}={value:g}): {name} looks like a 0-255 scale but inputs are in [0, 1]; "
            f"did you mean {name}={value:g}/255?"
        )
    return value


def check_number(
    owner: str,
    name: str,
    value: Any,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_none: bool = False,
    hint: str = "",
) -> float | None:
    """A finite real number in the interval ``lo..hi`` (ends open or closed), as a float; ``None`` when allowed.

    The error reads ``Owner(name=value): must be a number in (lo, hi]`` and then ``hint`` (what the value means,
    the papers' value...) when given.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        left = "(" if lo_open or lo == -math.inf else "["
        right = ")" if hi_open or hi == math.inf else "]"
        none = " or None" if allow_none else ""
        more = f" ({hint})" if hint else ""
        raise RobustfastError(f"{owner}({name}={value!r}): must be a number in {left}{lo:g}, {hi:g}{right}{none}{more}")
    return float(value)


def check_int(
    owner: str,
    name: str,
    value: Any,
    lo: int | None = None,
    hi: int | None = None,
    *,
    allow_none: bool = False,
    hint: str = "",
) -> int | None:
    """An integer (not a bool) with ``lo <= value <= hi``; ``None`` when allowed (``hint``: as :func:`check_number`)."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        ok = False
    if not ok:
        bound = f" >= {lo}" if lo is not None and hi is None else f" in [{lo}, {hi}]" if lo is not None else ""
        none = " or None" if allow_none else ""
        more = f" ({hint})" if hint else ""
        raise RobustfastError(f"{owner}({name}={value!r}): must be an integer{bound}{none}{more}")
    return int(value)


def check_choice(owner: str, name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """One of ``choices`` (compared with ``==``); the error lists them."""
    if not any(value == c and type(value) is type(c) for c in choices):
        shown = ", ".join(repr(c) for c in choices)
        raise RobustfastError(f"{owner}({name}={value!r}): choose one of {shown}")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``True`` or ``False`` (not a truthy number or string)."""
    if not isinstance(value, bool):
        raise RobustfastError(f"{owner}({name}={value!r}): True or False")
    return value


def check_batch(owner: str, x: Any, y: Any, *, labels: bool = True) -> None:
    """Shape, dtype and device checks of an ``(x, y)`` batch (no device sync)."""
    if not isinstance(x, Tensor) or (labels and not isinstance(y, Tensor)):
        raise RobustfastError(f"{owner}: inputs and labels must be tensors, got {type(x).__name__}, {type(y).__name__}")
    if not x.is_floating_point():
        raise RobustfastError(
            f"{owner}: inputs must be a floating-point tensor in [0, 1], got dtype {x.dtype} "
            "(convert uint8 images with x.float() / 255)"
        )
    if x.dim() < 2:
        raise RobustfastError(f"{owner}: inputs must be batched (N, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise RobustfastError(f"{owner}: the batch is empty (shape {tuple(x.shape)}); skip empty batches")
    if not labels:
        return
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise RobustfastError(
            f"{owner}: labels must have shape (N,) = ({x.shape[0]},) matching the batch, got {tuple(y.shape)}"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise RobustfastError(f"{owner}: labels must be integer class indices, got dtype {y.dtype}")
    if y.device != x.device:
        raise RobustfastError(f"{owner}: labels are on {y.device} but inputs are on {x.device}; move them together")


def check_model_dtype(owner: str, model: Any, x: Tensor) -> None:
    """The model's parameters must live on the inputs' device and, outside autocast, share their dtype."""
    if not isinstance(model, nn.Module):
        return
    p = next(iter(model.parameters()), None)
    if p is None:
        return
    if p.device.type != x.device.type:
        raise RobustfastError(f"{owner}: model is on {p.device} but inputs are on {x.device}; move one of them")
    if p.is_floating_point() and p.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        raise RobustfastError(
            f"{owner}: the model's parameters are {p.dtype} but the inputs are {x.dtype}; convert one "
            f"(x.to({p.dtype}) or model.to({x.dtype})), or keep an fp32 model and use torch.autocast for mixed "
            "precision"
        )


def input_bounds(x: Tensor, y: Tensor | None = None) -> tuple[float, float, int, int]:
    """``(min x, max x, min y, max y)`` with one device sync; NaN when ``x`` holds NaN."""
    lo, hi = torch.aminmax(x.detach().reshape(-1))
    parts = [lo.float(), hi.float()]
    if y is not None and y.numel():
        ylo, yhi = torch.aminmax(y.detach())
        parts += [ylo.float(), yhi.float()]
    vals = torch.stack(parts).tolist()
    if len(vals) == 2:
        vals += [0.0, 0.0]
    return vals[0], vals[1], int(vals[2]), int(vals[3])


def range_problem(lo: float, hi: float) -> str | None:
    """Why inputs with these bounds are not ``[0, 1]`` images (``None`` when they are)."""
    if math.isnan(lo) or math.isnan(hi):
        return "inputs contain NaN; check the data pipeline (NaN images would corrupt BatchNorm statistics)"
    if math.isinf(lo) or math.isinf(hi):
        return f"inputs contain infinite values (range [{lo:g}, {hi:g}]); check the data pipeline"
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        return (
            f"inputs must be images in [0, 1], got values in [{lo:.3g}, {hi:.3g}]. If your loader normalizes, move "
            "the normalization into the model (robustfast.models.Normalize) or call set_normalization_used(mean, std)"
        )
    return None


def check_labels_in_range(owner: str, ylo: int, yhi: int, n_classes: int) -> None:
    """Labels must index the model's ``n_classes`` outputs."""
    if ylo < 0 or yhi >= n_classes:
        raise RobustfastError(
            f"{owner}: labels must be class indices in [0, {n_classes}) for a model with {n_classes} outputs, "
            f"got labels in [{ylo}, {yhi}]"
        )


def check_logits(owner: str, out: Any, n: int) -> Tensor:
    """Return ``out`` when it is an ``(n, C)`` logits tensor (what ``model(x)`` gave for ``n`` inputs); otherwise
    raise a :class:`RobustfastError` saying what the model returned and how to wrap it (one message everywhere)."""
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == n:
        return out
    if isinstance(out, dict):
        got, fix = f"a dict with keys {sorted(map(str, out))}", "e.g. return out['logits']"
    elif isinstance(out, (tuple, list)):
        got, fix = f"a {type(out).__name__} of {len(out)} items", "e.g. return out[0]"
    elif isinstance(out, Tensor):
        got, fix = f"a tensor of shape {tuple(out.shape)}", "flatten or pool it to (N, C)"
    else:
        got, fix = f"a {type(out).__name__}", "return the logits tensor"
    raise RobustfastError(
        f"{owner}: model(x) returned {got} for {n} input(s); it needs logits of shape (N, C) = ({n}, n_classes). "
        f"Wrap the model in a module whose forward returns the logits ({fix})."
    )


def accepted_keywords(target: Any, skip: tuple[str, ...] = ("self",)) -> set[str] | None:
    """Keywords ``target(...)`` accepts (a class: its ``__init__``, following ``**kwargs`` up the class hierarchy;
    else the callable's own); ``None`` when open-ended (``**kwargs`` all the way)."""
    import inspect

    names: set[str] = set()
    for klass in inspect.getmro(target) if inspect.isclass(target) else (target,):
        init = klass.__dict__.get("__init__") if inspect.isclass(target) else klass
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - set(skip)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def check_kwargs(
    target: Any,
    kwargs: dict[str, Any],
    what: str,
    *,
    reserved: tuple[str, ...] = ("model",),
    reserved_by: str = "the caller",
    renames: dict[str, str] | None = None,
) -> None:
    """Keyword arguments for building ``target`` by name (a registry, the command line, a model factory) must be
    accepted by it: the one check, with one message: ``what: unknown keyword 'qq'. Did you mean 'q'? Valid
    keywords: ...``.

    Args:
        target: the class or function to call.
        kwargs: the keywords given.
        what: how the message names the object, e.g. ``"attack 'zerograd' (ZeroGrad)"``.
        reserved: keywords the caller supplies itself (refused in ``kwargs``; default ``("model",)``).
        reserved_by: who supplies them, for the message (default ``"the caller"``).
        renames: configuration key -> keyword of ``target`` (e.g. SWA's ``every`` -> ``every_steps``).
    """
    import difflib

    renames = renames or {}
    valid = accepted_keywords(target)
    if valid is None:
        return
    shown = {next((k for k, v in renames.items() if v == n), n) for n in valid - set(reserved)}
    for key in kwargs:
        if key in reserved:
            raise RobustfastError(f"{what}: {key!r} is set by {reserved_by}, not by a keyword")
        if key not in shown and key not in valid:
            close = difflib.get_close_matches(key, sorted(shown), n=2)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            valid_text = f"Valid keywords: {', '.join(sorted(shown))}" if shown else "It takes no keywords."
            raise RobustfastError(f"{what}: unknown keyword {key!r}.{hint} {valid_text}")
