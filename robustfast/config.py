"""Run configuration for the command line: a dataclass filled from a preset, a YAML file and flags.

Precedence: defaults < ``--preset`` < ``--config FILE`` < explicit flags. Fractions such as ``"8/255"`` are
accepted for ``eps``, ``lr``, ``peak``, ``eval.pgd_alpha`` and every attack or regularizer argument.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import RobustfastError

__all__ = ["EvalConfig", "RunConfig", "list_presets", "load_preset", "parse_number"]


def parse_number(value: Any, name: str = "value") -> float:
    """``8/255`` -> 0.0314, ``"0.1"`` -> 0.1, ``0.1`` -> 0.1; anything else raises a clear error."""
    if isinstance(value, bool):
        raise RobustfastError(f"{name}={value!r}: expected a number such as 0.1 or 8/255")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                return float(num) / float(den)
            return float(text)
        except (ValueError, ZeroDivisionError):
            pass
    raise RobustfastError(f"{name}={value!r}: expected a number such as 0.1 or 8/255")


@dataclass
class EvalConfig:
    """What ``robustfast eval`` (and the end of ``train``) measures.

    Attributes:
        attacks: attack names understood by :func:`robustfast.evaluate` (``clean``, ``pgd-50-10``, ``autoattack``…).
        n_examples: number of test points for the adversarial evaluations (``None``: the whole test set).
        pgd_alpha: PGD evaluation step (``None``: ε/4 as GradAlign/AdvLC; ZeroGrad/SEAT use 2/255).
        batch_size: evaluation batch size.
    """

    attacks: list[str] = field(default_factory=lambda: ["clean", "pgd-50-10", "autoattack"])
    n_examples: int | None = None
    pgd_alpha: float | None = None
    batch_size: int = 256


@dataclass
class RunConfig:
    """A training run: method (attack + regularizers), data, model, schedule, precision and outputs.

    Attributes:
        dataset: ``digits``, ``fashion_mnist`` (offline), ``cifar10``, ``cifar100``, ``svhn``, ``imagenet``.
        model: a name for :func:`robustfast.models.create` (``small_cnn``, ``preact_resnet18``, ``wrn_28_10``,
            ``timm:vit_base_patch16_224``…).
        normalize: ``None`` or a dataset name whose mean/std are put inside the model.
        eps: training and evaluation radius in pixel units.
        epochs, batch_size: the usual.
        lr: peak learning rate of the schedule.
        schedule: ``cyclic`` (triangular, peak at ``peak``), ``onecycle``, ``piecewise`` (``milestones``), ``constant``.
        attack: ``{"name": ..., **kwargs}`` for :func:`robustfast.create_attack` (``none`` = standard training).
        regularizers: list of ``{"name": ..., **kwargs}`` for :func:`robustfast.create_regularizer`.
        loss: ``{"name": ..., **kwargs}`` for :func:`robustfast.create_loss` (``None``: cross-entropy at ``x_adv``
            with ``label_smoothing``), e.g. ``{"name": "trades", "beta": 6}``.
        plugins: list of ``{"name": ..., **kwargs}`` for :func:`robustfast.create_plugin` (e.g. AWP).
        eps_warmup: epochs of linear ε ramp (GradAlign/N-FGSM on SVHN use 5).
        amp: ``None``, ``"bf16"`` or ``"fp16"``.
        swa, ema: weight averaging settings (``{"start_epoch":…, "every":…}``, ``{"decay":…}``).
        co_guard: enable the catastrophic-overfitting guard (FGSM vs PGD accuracy on held-out points each epoch).
        co_action: what the guard does on CO: ``flag`` (default), ``rollback`` (ZeroGrad's recipe) or ``stop``.
        download: let torchvision download missing datasets (needs internet).
        val_examples: test points used for the per-epoch validation and the CO guard.
        output: output directory (report, history, curves, checkpoints).
    """

    dataset: str = "digits"
    data_dir: str = "./data"
    model: str = "small_cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: str | None = None
    eps: float = 0.1
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cyclic"
    peak: float = 0.4
    milestones: list[int] = field(default_factory=list)
    attack: dict[str, Any] = field(default_factory=lambda: {"name": "fgsm"})
    regularizers: list[dict[str, Any]] = field(default_factory=list)
    loss: dict[str, Any] | None = None
    plugins: list[dict[str, Any]] = field(default_factory=list)
    eps_warmup: int = 0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    swa: dict[str, Any] | None = None
    ema: dict[str, Any] | None = None
    co_guard: bool = True
    seed: int = 0
    device: str | None = None
    workers: int = 0
    output: str = "runs/demo"
    download: bool = True
    val_examples: int = 512
    co_action: str = "flag"
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
        """Overlay ``data`` on ``base`` (or the defaults), checking every key and number."""
        cfg = dataclasses.replace(base) if base is not None else cls()
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise RobustfastError(f"unknown configuration key {key!r}.{hint}")
            if key == "eval":
                value = _eval_from_dict(value or {}, cfg.eval)
            setattr(cfg, key, value)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Normalise numbers (``8/255``) and reject impossible values with clear messages."""
        self.eps = parse_number(self.eps, "eps")
        self.lr = parse_number(self.lr, "lr")
        self.peak = parse_number(self.peak, "peak")
        if isinstance(self.attack, str):
            self.attack = {"name": self.attack}
        if not isinstance(self.attack, dict) or "name" not in self.attack:
            raise RobustfastError(f"attack={self.attack!r}: expected {{name: ..., **kwargs}}")
        self.attack = {k: _maybe_fraction(v, k) for k, v in self.attack.items()}
        self.regularizers = [
            {k: _maybe_fraction(v, k) for k, v in ({"name": r} if isinstance(r, str) else dict(r)).items()}
            for r in self.regularizers
        ]
        self.plugins = [
            {k: _maybe_fraction(v, k) for k, v in ({"name": r} if isinstance(r, str) else dict(r)).items()}
            for r in self.plugins
        ]
        if isinstance(self.loss, str):
            self.loss = {"name": self.loss}
        if self.loss is not None:
            if not isinstance(self.loss, dict) or "name" not in self.loss:
                raise RobustfastError(f"loss={self.loss!r}: expected {{name: ..., **kwargs}}")
            self.loss = {k: _maybe_fraction(v, k) for k, v in self.loss.items()}
        if not 0 <= self.eps <= 1:
            raise RobustfastError(f"eps={self.eps}: must be in [0, 1] pixel units (did you mean {self.eps:g}/255?)")
        if self.epochs < 1 or self.batch_size < 1:
            raise RobustfastError(f"epochs={self.epochs}, batch_size={self.batch_size}: must be >= 1")
        if self.schedule not in ("cyclic", "onecycle", "piecewise", "constant"):
            raise RobustfastError(f"schedule={self.schedule!r}: choose cyclic, onecycle, piecewise or constant")
        if self.co_action not in ("flag", "rollback", "stop"):
            raise RobustfastError(f"co_action={self.co_action!r}: choose flag, rollback or stop")
        if self.amp not in (None, "bf16", "fp16"):
            raise RobustfastError(f"amp={self.amp!r}: choose bf16, fp16 or leave unset")
        if self.eval.pgd_alpha is not None:
            self.eval.pgd_alpha = parse_number(self.eval.pgd_alpha, "eval.pgd_alpha")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (for the run's ``config.yaml``)."""
        return dataclasses.asdict(self)


def _maybe_fraction(value: Any, name: str) -> Any:
    """Method arguments written as fractions (``alpha: 16/255``, ``eps: 8/255``) become floats."""
    if isinstance(value, str) and "/" in value and name != "name":
        return parse_number(value, name)
    return value


def _eval_from_dict(data: dict[str, Any], base: EvalConfig) -> EvalConfig:
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = set(data) - names
    if unknown:
        raise RobustfastError(f"unknown eval configuration keys {sorted(unknown)}; expected some of {sorted(names)}")
    return dataclasses.replace(base, **data)


def list_presets() -> list[str]:
    """Names of the bundled paper presets (``robustfast/presets/*.yaml``)."""
    return sorted(p.name[:-5] for p in resources.files("robustfast.presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The raw dictionary of a bundled preset; unknown names raise with suggestions."""
    names = list_presets()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise RobustfastError(f"unknown preset {name!r}.{hint} Available: {', '.join(names)}")
    return yaml.safe_load(resources.files("robustfast.presets").joinpath(f"{name}.yaml").read_text()) or {}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML configuration file (a mapping)."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise RobustfastError(f"{path}: expected a YAML mapping of configuration keys")
    return data
