"""One factory for every model: ``create(name, num_classes=..., in_chans=..., normalize=...)``.

Names come from robustfast's own registry (``"preact_resnet18"``, ``"wrn_28_10"``, ``"small_cnn"``, ...) or from timm
with a ``"timm:"`` prefix (``"timm:vit_base_patch16_224"``). Unknown names raise a :class:`~robustfast.RobustfastError`
that suggests close matches.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor, nn

from .._checks import check_kwargs
from .._io import read_torch_file
from .._registry import Registry
from ..errors import RobustfastError
from .normalize import Normalize, resolve_normalize

__all__ = ["MODELS", "create", "list_models", "load_weights", "register_model", "weights_mismatch"]

F = TypeVar("F", bound=Callable[..., nn.Module])

#: Registry of robustfast's own architectures (entry points ``fn(num_classes=..., in_chans=..., **kwargs)``).
MODELS = Registry("model")

_TIMM_PREFIX = "timm:"


def register_model(name: str, *aliases: str) -> Callable[[F], F]:
    """Decorator registering a model entry point ``fn(num_classes, in_chans, **kwargs) -> nn.Module``."""
    return MODELS.register(name, *aliases)


def list_models(pattern: str = "*", *, include_timm: bool = False) -> list[str]:
    """Names accepted by :func:`create`, sorted.

    Args:
        pattern: fnmatch filter, e.g. ``"wrn*"`` (default ``"*"``: everything).
        include_timm: also list timm's architectures as ``"timm:<name>"`` (default ``False``).

    Returns:
        Canonical names; aliases such as ``"prn18"`` are accepted by :func:`create` but not listed.
    """
    names = MODELS.list(pattern)
    if include_timm:
        import timm

        names += [n for n in (_TIMM_PREFIX + m for m in timm.list_models()) if fnmatch.fnmatch(n, pattern)]
    return names


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RobustfastError(f"{what} must be a positive int, got {value!r} ({type(value).__name__})")
    return value


def create(
    name: str,
    num_classes: int = 10,
    in_chans: int = 3,
    normalize: str | tuple[Sequence[float], Sequence[float]] | None = None,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a classifier for ``[0, 1]`` images, optionally with its input normalization inside.

    Args:
        name: a name from :func:`list_models` (``"preact_resnet18"``, ``"preact_resnet18_gradalign"``,
            ``"wrn_28_10"``, ``"wrn_34_10"``, ``"small_cnn"``, ...; case and ``-``/``_`` do not matter) or
            ``"timm:<timm model name>"``.
        num_classes: number of output logits (default 10).
        in_chans: number of input channels (default 3).
        normalize: ``None`` (default: the model sees raw ``[0, 1]`` pixels, as in GradAlign and AdvLC), a
            dataset name (``"cifar10"``, ``"cifar100"``, ``"imagenet"``) or a ``(mean, std)`` pair. When set, the
            result is ``nn.Sequential(normalize=Normalize(mean, std), model=net)``, so attacks and ε stay in
            pixel space (the ZeroGrad, N-FGSM and SEAT setting). Pretrained timm models expect their own
            statistics: ``normalize=(net.pretrained_cfg["mean"], net.pretrained_cfg["std"])`` (e.g. 0.5 for
            the augreg ViTs).
        pretrained: load pretrained weights. Only timm models have them; they come from the Hugging Face Hub
            (or timm's local cache). Offline, this raises with instructions instead of retrying for minutes.
        checkpoint: path of a state dict saved with ``torch.save(model.state_dict(), path)``, loaded with
            ``torch.load(weights_only=True)``; it may be that of the bare network or of the normalized wrapper.
            Takes precedence over ``pretrained``.
        **kwargs: architecture options, e.g. ``variant="wong"`` for ``preact_resnet18``, ``dropout=0.3`` for
            WideResNets, ``img_size=32, patch_size=4`` for timm ViTs. Unknown options raise instead of being ignored.

    Returns:
        The model, in train mode, on the CPU.

    Raises:
        RobustfastError: unknown name or option, bad ``num_classes``/``in_chans``/``normalize``, no pretrained
            weights (offline or none exist), or a checkpoint that does not fit.

    Example:
        >>> net = create("preact_resnet18", num_classes=10, normalize="cifar10")
        >>> vit = create("timm:vit_base_patch16_224", img_size=32, patch_size=4, normalize="cifar10")
    """
    if not isinstance(name, str):
        raise RobustfastError(f"model name must be a str, got {type(name).__name__}")
    num_classes = _check_int(num_classes, "num_classes")
    in_chans = _check_int(in_chans, "in_chans")
    stats = resolve_normalize(normalize, in_chans)  # validate before building a large model
    use_hub = pretrained and checkpoint is None
    if name.startswith(_TIMM_PREFIX):
        from .timm_models import create_timm

        net = create_timm(name[len(_TIMM_PREFIX) :], num_classes, in_chans, pretrained=use_hub, **kwargs)
    else:
        if name not in MODELS:
            _unknown_model(name)
        entry = MODELS.get(name)
        if use_hub:
            raise RobustfastError(
                f"No pretrained weights are distributed for {name!r}: train it, or pass checkpoint='path/to/"
                "state_dict.pt' (robustfast checkpoints) or use a 'timm:' model for hub weights."
            )
        check_kwargs(entry, kwargs, f"model {name!r}", reserved=("num_classes", "in_chans"))
        net = entry(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model = net if stats is None else nn.Sequential(OrderedDict(normalize=Normalize(*stats), model=net))
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def _unknown_model(name: str) -> None:
    """Raise for an unknown name, pointing to ``timm:<name>`` when timm has such a model."""
    hint = ""
    try:
        import timm

        if timm.list_models(name) or timm.list_models(name.replace("-", "_")):
            hint = f" timm has a model of that name: use 'timm:{name}' (ImageNet-style, for 224×224 inputs)."
    except Exception:  # pragma: no cover - timm missing
        pass
    try:
        MODELS.get(name)
    except RobustfastError as e:
        msg, head = str(e), f"Unknown model {name!r}."
        if hint and msg.startswith(head):  # the timm hint first: it is most likely what was meant
            msg = head + hint + msg[len(head) :]
        raise RobustfastError(msg) from None


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise RobustfastError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    prefix = "module."  # saved from nn.DataParallel / DistributedDataParallel
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in obj.items()}


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict file into ``model`` (strictly), safely (``torch.load(weights_only=True)``).

    The file may hold the bare network's state dict or that of the normalized wrapper built by :func:`create`
    (keys ``normalize.*`` and ``model.*``); ``{"state_dict": ...}`` dicts and ``module.`` prefixes are accepted.

    Args:
        model: the model to fill (as returned by :func:`create`).
        path: the ``.pt``/``.pth`` file.

    Returns:
        ``model``, for chaining.

    Raises:
        RobustfastError: missing file, unreadable file, or keys/shapes that do not match the model.
    """
    path = Path(path)
    state = _unwrap_state_dict(read_torch_file(path, "cpu", what="weights file"), path)
    target = model
    if isinstance(model, nn.Sequential) and hasattr(model, "normalize") and "normalize.mean" not in state:
        target = model.model  # a bare-network checkpoint for a normalized model
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError:
        raise RobustfastError(
            f"the weights in {str(path)!r} do not fit this model ({weights_mismatch(target, state)}); load them into "
            "the architecture they were trained with (same model name, number of classes, input channels and "
            "normalization)"
        ) from None
    return model


def weights_mismatch(model: nn.Module, saved: dict[str, Any]) -> str:
    """What differs between a model's tensors and a saved state dict, in a few words (counts and one example)."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in saved]
    extra = [k for k in saved if k not in mine]
    shapes = [f"{k}: {tuple(saved[k].shape)} saved vs {tuple(v.shape)} here" for k, v in mine.items()
              if k in saved and hasattr(saved[k], "shape") and saved[k].shape != v.shape]  # fmt: skip
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) of this model are not in the file, e.g. {missing[0]!r}")
    if extra:
        parts.append(f"{len(extra)} saved tensor(s) are not in this model, e.g. {extra[0]!r}")
    if shapes:
        parts.append(f"{len(shapes)} shape(s) differ, e.g. {shapes[0]}")
    return "; ".join(parts) or "the tensors do not load"
