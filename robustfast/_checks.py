"""Argument and input checks shared by attacks, regularizers, losses and the trainer (one place, one wording)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

from .errors import RobustfastError

__all__ = [
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


def as_magnitude(owner: str, name: str, value: Any, *, allow_none: bool = True) -> float | None:
    """A pixel-unit magnitude (eps, alpha, noise) as a float in ``[0, 1]``; 0-d tensors are accepted.

    Raises a :class:`RobustfastError` naming the argument and the fix (``8`` → "did you mean 8/255?").
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
    if value > 1:
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
) -> float | None:
    """A finite real number in the interval ``lo..hi`` (ends open or closed), as a float; ``None`` when allowed.

    The error reads ``Owner(name=value): must be a number in (lo, hi]``.
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
        raise RobustfastError(f"{owner}({name}={value!r}): must be a number in {left}{lo:g}, {hi:g}{right}{none}")
    return float(value)


def check_int(
    owner: str, name: str, value: Any, lo: int | None = None, hi: int | None = None, *, allow_none: bool = False
) -> int | None:
    """An integer (not a bool) with ``lo <= value <= hi``; ``None`` when allowed."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        ok = False
    if not ok:
        bound = f" >= {lo}" if lo is not None and hi is None else f" in [{lo}, {hi}]" if lo is not None else ""
        none = " or None" if allow_none else ""
        raise RobustfastError(f"{owner}({name}={value!r}): must be an integer{bound}{none}")
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
    """The model's output must be an ``(N, C)`` logits tensor; tuples and dicts get a clear error."""
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == n:
        return out
    if isinstance(out, (tuple, list, dict)):
        kind = type(out).__name__
        raise RobustfastError(
            f"{owner}: the model returned a {kind}, not a logits tensor of shape ({n}, C); wrap the model so that "
            "it returns the logits (e.g. a small nn.Module whose forward returns model(x)[0] or model(x)['logits'])"
        )
    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    raise RobustfastError(f"{owner}: the model must return logits of shape (N, C) = ({n}, C), got {shape}")


def check_kwargs(cls: type, kwargs: dict[str, Any], what: str) -> None:
    """Keyword arguments for building ``cls`` by name must be accepted by it; unknown ones raise a
    :class:`RobustfastError` that suggests close matches and lists the accepted ones."""
    import difflib
    import inspect

    accepted: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        accepted += [p for p in params if p not in ("self", "model") and params[p].kind is not params[p].VAR_KEYWORD]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, accepted, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise RobustfastError(f"{what} got unknown argument(s) {', '.join(hints)}; it accepts {sorted(set(accepted))}")
