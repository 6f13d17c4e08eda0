"""AutoAttack (Croce & Hein, ICML 2020) through one adapter for both distributions of the package.

Two packages ship the same attacks with different call signatures:

* ``pyautoattack`` (PyPI): ``AutoAttack(model, *, attacks=None, device='cpu', eps=0.3, norm='Linf', seed=None,
  version='standard')`` and ``run_standard_evaluation(x, y, /, *, batch_size=250)`` returning ``(x_adv, y_adv)``;
  it rejects ``verbose``, ``log_path`` and ``attacks_to_run``.
* ``autoattack`` (GitHub ``fra31/auto-attack``): ``AutoAttack(model, norm, eps, seed, verbose, attacks_to_run,
  version, is_tf_model, device, log_path)`` and ``run_standard_evaluation(x, y, bs=250, return_labels=False)``.

:class:`AutoAttackAdapter` hides the difference, sizes the targeted attacks from the model's output width, and
returns exactly what the underlying package returns for the same seed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import RobustfastError
from ..modes import model_mode
from ._predict import output_width, predict

__all__ = ["AA_ATTACKS", "AA_VERSIONS", "AutoAttackAdapter", "AutoAttackResult", "autoattack_backend"]

#: Component names understood by AutoAttack's ``version='custom'``.
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
#: Versions: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus`` (+ APGD-DLR, FAB, more restarts),
#: ``rand`` (APGD-CE and APGD-DLR with EoT over 20 draws, for randomized defenses) and ``custom``.
AA_VERSIONS = ("standard", "plus", "rand", "custom")
_COMPONENTS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}
_COMPONENTS["plus"] = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")

Backend = Literal["auto", "autoattack", "pyautoattack"]


def _is_shim(mod: ModuleType) -> bool:
    return bool(getattr(mod, "__robustfast_shim__", False))


def autoattack_backend(backend: Backend = "auto") -> tuple[ModuleType, str, str]:
    """Import the AutoAttack package: ``(module, distribution name, version)``.

    ``"auto"`` prefers the GitHub ``autoattack`` package when it is really installed (not robustfast's
    RobustBench shim), then ``pyautoattack``.
    """
    order = {"auto": ("autoattack", "pyautoattack"), "autoattack": ("autoattack",), "pyautoattack": ("pyautoattack",)}
    if backend not in order:
        raise RobustfastError(f"backend={backend!r}: choose 'auto', 'autoattack' or 'pyautoattack'")
    for name in order[backend]:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if _is_shim(mod):
            continue
        return mod, name, _version(name, mod)
    raise RobustfastError(
        "AutoAttack is not installed: `pip install pyautoattack` (or robustfast[autoattack]), or install the "
        "GitHub package with `pip install git+https://github.com/fra31/auto-attack`"
    )


@functools.cache
def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version(name: str, mod: ModuleType) -> str:
    return _dist_version(name) or str(getattr(mod, "__version__", "unknown"))


@dataclass(frozen=True)
class AutoAttackResult:
    """What one AutoAttack run produced.

    Attributes:
        x_adv: adversarial inputs (the clean input where no attack succeeded), on the inputs' device.
        robust: per-example bool mask, True where the model still classifies ``x_adv`` correctly.
        accuracy: robust accuracy, ``robust.float().mean()``.
        protocol: the exact settings (package, version, components, iterations, targets, seed, eps).
    """

    x_adv: Tensor
    robust: Tensor
    accuracy: float
    protocol: dict[str, Any]


class AutoAttackAdapter:
    """Run AutoAttack with one signature over ``pyautoattack`` or the GitHub ``autoattack`` package.

    The model runs in eval mode (AutoAttack never calls ``.eval()`` itself) and every module's flag is restored
    afterwards; the global RNG state is restored too (AutoAttack re-seeds it). Target counts of APGD-T and
    FAB-T are capped at ``n_classes - 1``; DLR-based components need at least 3 classes (4 for APGD-T).

    Args:
        model: classifier taking ``[0, 1]`` NCHW inputs and returning logits.
        eps: L∞ (or L2) radius in pixel units, e.g. ``8/255``.
        norm: ``"Linf"`` (default), ``"L2"`` or ``"L1"``.
        version: ``"standard"`` (default; the RobustBench protocol), ``"plus"``, ``"rand"`` or ``"custom"``.
        attacks: components for ``version="custom"`` (subset of :data:`AA_ATTACKS`, run in the given order).
        seed: seed of every component (default 0); ``None`` lets AutoAttack use the clock (not reproducible).
        device: where AutoAttack moves each batch; default: the model's device.
        n_classes: output width; default: read from one forward pass.
        n_iter: APGD/FAB iterations (default: the version's 100). Only with ``version="custom"``.
        n_restarts: APGD/FAB restarts (default: the version's). Only with ``version="custom"``.
        n_target_classes: targets of APGD-T/FAB-T (default 9, capped at ``n_classes - 1``).
        n_queries: Square's query budget (default 5000). Only with ``version="custom"``.
        backend: ``"auto"`` (default), ``"autoattack"`` or ``"pyautoattack"``.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        *,
        norm: Literal["Linf", "L2", "L1"] = "Linf",
        version: Literal["standard", "plus", "rand", "custom"] = "standard",
        attacks: list[str] | tuple[str, ...] | None = None,
        seed: int | None = 0,
        device: torch.device | str | None = None,
        n_classes: int | None = None,
        n_iter: int | None = None,
        n_restarts: int | None = None,
        n_target_classes: int | None = None,
        n_queries: int | None = None,
        backend: Backend = "auto",
    ) -> None:
        if norm not in ("Linf", "L2", "L1"):
            raise RobustfastError(f"norm={norm!r}: choose 'Linf', 'L2' or 'L1'")
        if version not in AA_VERSIONS:
            raise RobustfastError(f"version={version!r}: choose one of {AA_VERSIONS}")
        if version == "custom":
            if not attacks:
                raise RobustfastError("version='custom' needs attacks=[...], e.g. ['apgd-ce', 'apgd-t']")
            bad = [a for a in attacks if a not in AA_ATTACKS]
            if bad:
                raise RobustfastError(f"unknown AutoAttack components {bad}; choose from {AA_ATTACKS}")
        elif attacks:
            raise RobustfastError(f"attacks=... is only used with version='custom' (got version={version!r})")
        overrides = {"n_iter": n_iter, "n_restarts": n_restarts, "n_queries": n_queries}
        set_overrides = {k: v for k, v in overrides.items() if v is not None}
        if set_overrides and version != "custom":
            raise RobustfastError(
                f"{sorted(set_overrides)} change the {version!r} protocol; use version='custom' with attacks=[...]"
            )
        for k, v in {**set_overrides, "n_target_classes": n_target_classes}.items():
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise RobustfastError(f"{k}={v!r}: must be an integer >= 1")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < float(eps) < float("inf"):
            raise RobustfastError(f"eps={eps!r}: must be a positive number in pixel units (8/255, not 8)")
        if norm == "Linf" and eps > 1:
            raise RobustfastError(f"eps={eps!r}: an L∞ radius must be in (0, 1] pixel units (8/255, not 8)")
        self.model, self.eps, self.norm, self.version, self.seed = model, float(eps), norm, version, seed
        self.attacks = tuple(attacks) if version == "custom" else _COMPONENTS[version]
        self.device, self.n_classes = device, n_classes
        self.n_iter, self.n_restarts, self.n_queries = n_iter, n_restarts, n_queries
        self.n_target_classes = n_target_classes
        self.module, self.package, self.package_version = autoattack_backend(backend)

    # ------------------------------------------------------------------ building the package's object
    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        p = next(iter(self.model.parameters()), None) if isinstance(self.model, nn.Module) else None
        return p.device if p is not None else torch.device("cpu")

    def _targets(self, n_classes: int) -> int:
        wanted = 9 if self.n_target_classes is None else self.n_target_classes
        return max(1, min(wanted, n_classes - 1))

    def _check_classes(self, n_classes: int) -> None:
        if n_classes < 2:
            raise RobustfastError(f"the model returns {n_classes} logit(s); AutoAttack needs at least 2 classes")
        need = {"apgd-dlr": 3, "apgd-t": 4}
        for a in self.attacks:
            if a in need and n_classes < need[a]:
                keep = [c for c in self.attacks if c not in need] or ["apgd-ce"]
                raise RobustfastError(
                    f"{a} uses the DLR loss, which needs at least {need[a]} classes (the model has {n_classes}); "
                    f"use version='custom', attacks={keep}"
                )

    def build(self, n_classes: int) -> Any:
        """The underlying package's ``AutoAttack`` object, configured exactly as :attr:`protocol` says."""
        self._check_classes(n_classes)
        return self._make(n_classes)

    def _make(self, n_classes: int) -> Any:
        cls = self.module.AutoAttack
        custom = list(self.attacks) if self.version == "custom" else None
        if self.package == "pyautoattack":
            aa = cls(self.model, attacks=custom, device=self._device(), eps=self.eps, norm=self.norm,
                     seed=self.seed, version=self.version)  # fmt: skip
        else:
            kwargs = {"norm": self.norm, "eps": self.eps, "seed": self.seed, "version": self.version,
                      "device": self._device(), "verbose": False, "attacks_to_run": custom or []}  # fmt: skip
            accepted = inspect.signature(cls).parameters
            aa = cls(self.model, **{k: v for k, v in kwargs.items() if k in accepted})
        self._configure(aa, n_classes)
        return aa

    def _configure(self, aa: Any, n_classes: int) -> None:
        targets = self._targets(n_classes)
        aa.apgd_targeted.n_target_classes = targets
        aa.fab.n_target_classes = targets
        if self.n_iter is not None:
            for apgd in (aa.apgd, aa.apgd_targeted):
                _set_apgd_iters(apgd, self.n_iter)
            aa.fab.n_iter = self.n_iter
        if self.n_restarts is not None:
            aa.apgd.n_restarts = aa.fab.n_restarts = self.n_restarts
        if self.n_queries is not None:
            aa.square.n_queries = self.n_queries

    def protocol(self, n_classes: int | None = None) -> dict[str, Any]:
        """The settings of a run, JSON-serializable, read back from a configured package object.

        Budgets are those the package will really use (e.g. ``version="custom"`` keeps the constructor's 5
        restarts for APGD-CE/APGD-DLR/FAB unless ``n_restarts`` is given). Without ``n_classes`` (known after
        :meth:`run`), target counts are shown for 10 classes.
        """
        n = n_classes if n_classes is not None else self.n_classes
        aa = self._make(n or 10)
        return {
            "attack": "autoattack",
            "package": self.package,
            "package_version": self.package_version,
            "version": self.version,
            "components": list(self.attacks),
            "norm": self.norm,
            "eps": self.eps,
            "seed": self.seed,
            "n_iter": aa.apgd.n_iter,
            "n_restarts": aa.apgd.n_restarts,
            "n_restarts_fab": aa.fab.n_restarts,
            "n_restarts_targeted": aa.apgd_targeted.n_restarts,
            "n_target_classes": aa.apgd_targeted.n_target_classes,
            "eot_iter": aa.apgd.eot_iter,
            "n_queries": aa.square.n_queries,
            "n_classes": n,
        }

    # ------------------------------------------------------------------ running
    def run(self, x: Tensor, y: Tensor, batch_size: int = 250) -> AutoAttackResult:
        """Attack ``(x, y)`` (all points; AutoAttack skips the misclassified ones) in batches of ``batch_size``."""
        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise RobustfastError("AutoAttackAdapter.run: x and y must be non-empty tensors with matching length")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise RobustfastError(f"batch_size={batch_size!r}: must be an integer >= 1")
        dev = self._device()
        rng_devices = [dev] if dev.type == "cuda" else []
        with model_mode(self.model, "eval"), torch.random.fork_rng(devices=rng_devices):
            n_classes = self.n_classes or output_width(self.model, x[:1].to(dev), "AutoAttackAdapter.run")
            aa = self.build(n_classes)
            x_adv, y_adv = self._call(aa, x, y.long(), batch_size)
            if y_adv is None:  # a package version that does not return the predictions on x_adv
                y_adv = predict(self.model, x_adv, batch_size, dev)
            robust = y_adv.to(y.device) == y
        return AutoAttackResult(x_adv, robust, robust.float().mean().item(), self.protocol(n_classes))

    def _call(self, aa: Any, x: Tensor, y: Tensor, batch_size: int) -> tuple[Tensor, Tensor | None]:
        """``(x_adv, predictions on x_adv)``; AutoAttack computes the predictions anyway, so no extra pass."""
        if self.package == "pyautoattack":
            out = aa.run_standard_evaluation(x, y, batch_size=batch_size)
        else:
            accepted = inspect.signature(aa.run_standard_evaluation).parameters
            kw = {"bs": batch_size, "return_labels": True} if "return_labels" in accepted else {"bs": batch_size}
            out = aa.run_standard_evaluation(x, y, **kw)
        return (out[0], out[1]) if isinstance(out, tuple) else (out, None)


def _set_apgd_iters(apgd: Any, n_iter: int) -> None:
    """Change APGD's iteration budget and the checkpoint schedule derived from it in its constructor."""
    apgd.n_iter = n_iter
    apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)
