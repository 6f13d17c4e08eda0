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

__all__ = [
    "RESUMABLE_KEYS",
    "EvalConfig",
    "RunConfig",
    "format_value",
    "list_presets",
    "load_preset",
    "parse_number",
    "resume_conflicts",
]

#: Datasets the command line knows: offline ones first, then torchvision's.
DATASETS = ("digits", "fashion_mnist", "cifar10", "cifar100", "svhn", "imagenet")
_DATASET_ALIASES = {d.replace("_", ""): d for d in DATASETS} | {"fmnist": "fashion_mnist"}
#: Keys a resumed run may change (``train --resume``); every other key must match the run's ``config.yaml``.
RESUMABLE_KEYS = ("epochs", "device", "workers", "data_dir", "download", "output", "eval", "compile", "channels_last",
                  "imports")  # fmt: skip
_PIXEL_KEYS = ("eps", "alpha", "noise", "clip", "step_size", "pgd_alpha")


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
        eps_warmup_target: what the ramp scales: ``all`` (ε and steps, N-FGSM's code), ``eps`` or ``step``
            (GradAlign's code ramps only ε for PGD and only the step for FGSM).
        attack_bn_mode: the attack's BatchNorm/dropout mode during training: ``train`` (default, the fast-AT papers'
            code), ``eval`` (TRADES, MART, GAT, NuAT and FGSM-CKPT's official code), ``train_no_stats``, or ``null``
            to keep the attack's own.
        drop_last: drop the last incomplete training batch (GradAlign's and AdvLC's code do).
        amp: ``None``, ``"bf16"`` or ``"fp16"``.
        swa, ema: weight averaging settings (``{"start_epoch":…, "every":…}``, ``{"decay":…}``).
        co_guard: enable the catastrophic-overfitting guard (FGSM vs PGD accuracy on held-out points each epoch).
        co_action: what the guard does on CO: ``flag`` (default), ``rollback`` (ZeroGrad's recipe) or ``stop``.
        download: let torchvision download missing datasets (needs internet).
        val_examples: points held out from the training split (never the test set) for the per-epoch validation and
            the CO guard; ``None`` (default): 10% of the training split, at most 512.
        output: output directory (report, history, curves, checkpoints).
        imports: the user's method files (``path/to/file.py``, stored as absolute paths) or modules imported before
            anything is built, so their registered attacks, regularizers, losses, plugins and models can be named
            (``--import``; a run's ``config.yaml`` keeps them for ``--resume`` and ``eval``).
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
    eps_warmup_target: str = "all"
    attack_bn_mode: str | None = "train"
    drop_last: bool = False
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
    val_examples: int | None = None
    co_action: str = "flag"
    imports: list[str] = field(default_factory=list)
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
        if self.eps < 0:
            raise RobustfastError(f"eps={self.eps:g}: eps must be >= 0 (an L∞ radius in pixel units, e.g. 8/255)")
        if self.eps > 1 and self.norm == "Linf":
            raise RobustfastError(
                f"eps={self.eps:g} looks like a 0-255 scale but inputs are in [0, 1]; "
                f"did you mean eps={self.eps:g}/255?"
            )
        if self.eps_warmup_target not in ("all", "eps", "step"):
            raise RobustfastError(f"eps_warmup_target={self.eps_warmup_target!r}: choose all, eps or step")
        if self.attack_bn_mode is not None:
            from .modes import resolve_policy

            resolve_policy(self.attack_bn_mode)
        name = _DATASET_ALIASES.get(str(self.dataset).lower().replace("-", "").replace("_", ""), str(self.dataset))
        if name not in DATASETS:
            close = difflib.get_close_matches(name, DATASETS, n=2)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise RobustfastError(f"unknown dataset {self.dataset!r}.{hint} Available: {', '.join(DATASETS)}")
        self.dataset = name
        if self.device is not None:
            self.device = _check_device_name(self.device)
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise RobustfastError(f"{key}={value!r}: expected an integer")
        v = self.val_examples
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise RobustfastError(
                f"val_examples={v!r}: expected a positive integer, or null for 10% of the training split"
            )
        self.swa = _check_averaging("swa", self.swa)
        self.ema = _check_averaging("ema", self.ema)
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
        if isinstance(self.imports, str):
            self.imports = [self.imports]
        if not isinstance(self.imports, list) or not all(isinstance(i, str) for i in self.imports):
            raise RobustfastError(f"imports={self.imports!r}: expected a list of file paths or module names")

    @property
    def norm(self) -> str:
        """The threat model: the training attack's declared norm (``"Linf"`` for standard training)."""
        name = str(self.attack.get("name", "none")) if isinstance(self.attack, dict) else str(self.attack)
        if name.lower() == "none":
            return "Linf"
        from .attacks.base import ATTACKS

        return getattr(ATTACKS.get(name), "norm", "Linf") if name in ATTACKS else "Linf"

    def lr_schedule(self) -> Any:
        """The learning-rate schedule of ``schedule``, ``lr``, ``peak`` and ``milestones``
        (:mod:`robustfast.training.schedules`)."""
        from .training import Constant, Cyclic, OneCycle, Piecewise

        if self.schedule == "cyclic":
            return Cyclic(self.lr, peak=self.peak)
        if self.schedule == "onecycle":
            return OneCycle(self.lr)
        if self.schedule == "piecewise":
            return Piecewise(self.lr, tuple(self.milestones))
        return Constant(self.lr)

    def trainer_kwargs(self, *, custom_criterion: bool = False) -> dict[str, Any]:
        """The :class:`~robustfast.training.AdversarialTrainer` keywords this configuration sets: the one place the
        command line turns a configuration into training options (it adds the model, the method's parts, the
        guard, the output folders and the device).

        Args:
            custom_criterion: the run has its own training loss (``loss``), which then carries any label
                smoothing itself.
        """
        return {
            "lr_schedule": self.lr_schedule(),
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "eps_warmup": self.eps_warmup,
            "eps_warmup_target": self.eps_warmup_target,
            "attack_bn_mode": self.attack_bn_mode,
            "label_smoothing": 0.0 if custom_criterion else self.label_smoothing,
            "grad_clip": self.grad_clip,
            "amp": self.amp,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "seed": self.seed,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (for the run's ``config.yaml``)."""
        return dataclasses.asdict(self)


def _check_device_name(device: Any) -> str:
    """``"cuda"``, ``"cuda:1"``, ``"cpu"``, ``"mps"``... as a string; anything torch does not parse is a clear error."""
    import torch

    try:
        return str(torch.device(str(device)))
    except RuntimeError:
        raise RobustfastError(
            f"device={device!r}: not a torch device; use cpu, cuda, cuda:N (the N-th GPU) or mps, or leave it unset "
            "(the GPU when one is available, else the CPU)"
        ) from None


def _check_averaging(name: str, value: Any) -> dict[str, Any] | None:
    """``swa``/``ema`` settings: ``None`` or a mapping (its keywords are checked when the averager is built)."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        example = "{start_epoch: 50, every: 500}" if name == "swa" else "{decay: 0.999}"
        raise RobustfastError(f"{name}={value!r}: expected a mapping such as {example}, or null")
    return dict(value)


def resume_conflicts(saved: RunConfig, new: RunConfig) -> list[str]:
    """Settings in which ``new`` differs from the run's ``saved`` configuration, outside :data:`RESUMABLE_KEYS`.

    Each entry reads ``"model: small_cnn (run) vs preact_resnet18 (now)"``; an empty list means the run can be
    resumed with ``new``.
    """
    a, b = saved.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} (run) vs {b[k]!r} (now)" for k in a if k not in RESUMABLE_KEYS and a[k] != b.get(k)]


def format_value(key: str, value: Any) -> str:
    """``eps``-like values as ``8/255`` (or ``1.6/255``) when they are whole or tenth 255ths, other floats as ``%g``;
    for listings."""
    if isinstance(value, float) and key in _PIXEL_KEYS and 0 < value <= 1:
        k = value * 255
        if abs(k - round(k)) < 1e-6:
            return f"{round(k)}/255"
        short = float(f"{value:.3g}") == value  # 0.5, 0.031: written as decimals
        if not short and abs(10 * k - round(10 * k)) < 1e-5:  # e.g. PGD-10's 2ε/10 = 1.6/255
            return f"{round(k, 1):g}/255"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


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
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise RobustfastError(f"cannot read the configuration file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise RobustfastError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RobustfastError(f"{path}: expected a YAML mapping of configuration keys")
    return data
