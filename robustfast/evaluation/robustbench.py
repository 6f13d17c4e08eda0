"""RobustBench from robustfast: data loaders, the model zoo and a standard-AutoAttack benchmark, offline-safe.

The PyPI ``robustbench`` wheel depends on ``pyautoattack`` but its ``eval`` module (GitHub versions) does
``from autoattack import AutoAttack`` and ``from autoattack.state import EvaluationState``: ``autoattack`` is the
GitHub package name, which PyPI cannot install. :func:`install_autoattack_shim` registers, *only when no
``autoattack`` package exists*, an in-memory ``autoattack`` module backed by ``pyautoattack`` that exposes the
GitHub signatures (``AutoAttack(model, norm=, eps=, version=, device=, log_path=)``,
``run_standard_evaluation(x, y, bs=...)`` returning ``x_adv``) and aliases its submodules (``autoattack.state``,
``autoattack.autopgd_base``, ...). Nothing happens at import time; nothing is written to disk or site-packages.

Every loader here checks for local files first and then for connectivity (a 3-second probe), so offline use
fails at once with a :class:`~robustfast.RobustfastError` instead of hanging or writing HTML as a checkpoint.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import socket
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import RobustfastError
from ..modes import model_mode
from ._predict import predict
from .autoattack import AutoAttackAdapter
from .report import AttackResult, EvaluationReport

__all__ = [
    "benchmark",
    "import_robustbench",
    "install_autoattack_shim",
    "load_cifar10",
    "load_cifar100",
    "load_imagenet",
    "load_model",
    "robustbench_benchmark",
]

_SUBMODULES = ("state", "autopgd_base", "fab_pt", "fab_base", "fab_projections", "square", "checks", "other_utils")
_PROBE_HOSTS = {"gdrive": ("docs.google.com", 443), "cifar": ("www.cs.toronto.edu", 443)}


# ---------------------------------------------------------------------------------------------- the shim
def _compat_class(base: type) -> type:
    """A subclass of ``pyautoattack.AutoAttack`` with the GitHub ``autoattack.AutoAttack`` call signatures."""

    class AutoAttack(base):  # type: ignore[misc, valid-type]
        """GitHub-signature AutoAttack running on ``pyautoattack`` (installed by robustfast's shim)."""

        def __init__(
            self, model, norm="Linf", eps=0.3, seed=None, verbose=True, attacks_to_run=(), version="standard",
            is_tf_model=False, device="cuda", log_path=None,
        ) -> None:  # fmt: skip
            if is_tf_model:
                raise RobustfastError("the autoattack shim over pyautoattack supports PyTorch models only")
            attacks = list(attacks_to_run) or None
            super().__init__(model, attacks=attacks, device=device, eps=eps, norm=norm, seed=seed, version=version)

        def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False, state_path=None, **kw):
            if "batch_size" in kw:  # pyautoattack's own methods call back with its signature
                return super().run_standard_evaluation(x_orig, y_orig, batch_size=kw["batch_size"])
            path = Path(state_path) if state_path is not None else None
            x_adv, y_adv = super().run_standard_evaluation(x_orig, y_orig, batch_size=bs, state_path=path)
            return (x_adv, y_adv) if return_labels else x_adv

        def set_version(self, version="standard"):
            self._set_version(version)

    return AutoAttack


def install_autoattack_shim() -> bool:
    """Make ``import autoattack`` (and ``autoattack.state`` etc.) work on top of ``pyautoattack``.

    Does nothing when a real ``autoattack`` package is importable or the shim is already installed.

    Returns:
        True when the shim is active after the call.
    """
    current = sys.modules.get("autoattack")
    if current is not None:
        return bool(getattr(current, "__robustfast_shim__", False))
    if importlib.util.find_spec("autoattack") is not None:
        return False
    try:
        pya = importlib.import_module("pyautoattack")
    except ImportError as e:
        raise RobustfastError("RobustBench needs AutoAttack: `pip install pyautoattack`") from e
    shim = types.ModuleType("autoattack", "robustfast shim: the GitHub autoattack API over pyautoattack")
    shim.__robustfast_shim__ = True  # type: ignore[attr-defined]
    shim.__path__ = []  # type: ignore[attr-defined]  # a package, so `autoattack.state` resolves
    shim.__version__ = getattr(pya, "__version__", "unknown")  # type: ignore[attr-defined]
    shim.AutoAttack = _compat_class(pya.AutoAttack)  # type: ignore[attr-defined]
    subs = {}
    for name in _SUBMODULES:
        try:
            subs[name] = importlib.import_module(f"pyautoattack.{name}")
        except ImportError:  # pragma: no cover - a future pyautoattack may drop one
            continue
    for name, mod in subs.items():
        setattr(shim, name, mod)
        sys.modules[f"autoattack.{name}"] = mod
    sys.modules["autoattack"] = shim
    return True


def import_robustbench() -> types.ModuleType:
    """Import ``robustbench`` after installing the shim when needed (its ``pkg_resources`` warning silenced)."""
    install_autoattack_shim()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            return importlib.import_module("robustbench")
    except ImportError as e:
        raise RobustfastError(f"robustbench is not importable ({e}); `pip install robustfast[robustbench]`") from e


# ---------------------------------------------------------------------------------------------- offline checks
def _online(kind: str, timeout: float = 3.0) -> bool:
    host, port = _PROBE_HOSTS[kind]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cifar_ready(name: str, data_dir: str | Path) -> bool:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    probe = cls.__new__(cls)
    probe.root = str(Path(data_dir).expanduser())
    return bool(probe._check_integrity())


def _load_cifar(name: str, n_examples: int | None, data_dir: str | Path) -> tuple[Tensor, Tensor]:
    if n_examples is not None and (not isinstance(n_examples, int) or n_examples < 1):
        raise RobustfastError(f"n_examples={n_examples!r}: must be a positive integer or None")
    if not _cifar_ready(name, data_dir) and not _online("cifar"):
        raise RobustfastError(
            f"{name} test set not found in data_dir={str(data_dir)!r} and no network: download it once "
            f"(torchvision.datasets.{name.upper()}(root, train=False, download=True)) or pass data=(x, y)"
        )
    import_robustbench()
    rb_data = importlib.import_module("robustbench.data")
    fn = rb_data.load_cifar10 if name == "cifar10" else rb_data.load_cifar100
    return fn(n_examples=n_examples, data_dir=str(data_dir))


def load_cifar10(n_examples: int | None = None, data_dir: str | Path = "./data") -> tuple[Tensor, Tensor]:
    """The first ``n_examples`` CIFAR-10 test images in ``[0, 1]`` and labels (RobustBench order, no shuffle)."""
    return _load_cifar("cifar10", n_examples, data_dir)


def load_cifar100(n_examples: int | None = None, data_dir: str | Path = "./data") -> tuple[Tensor, Tensor]:
    """The first ``n_examples`` CIFAR-100 test images in ``[0, 1]`` and labels (RobustBench order)."""
    return _load_cifar("cifar100", n_examples, data_dir)


def load_imagenet(
    n_examples: int = 5000, data_dir: str | Path = "./data", transforms_test: Callable | None = None
) -> tuple[Tensor, Tensor]:
    """RobustBench's 5000-image ImageNet validation subset from ``data_dir/val`` (never downloaded).

    ``transforms_test`` defaults to RobustBench's Resize(256) + CenterCrop(224) + ToTensor.
    """
    if not isinstance(n_examples, int) or not 1 <= n_examples <= 5000:
        raise RobustfastError(f"n_examples={n_examples!r}: RobustBench's ImageNet subset has 1 to 5000 points")
    if not (Path(data_dir) / "val").is_dir():
        raise RobustfastError(f"ImageNet validation images not found in {str(Path(data_dir) / 'val')!r}")
    import_robustbench()
    rb_data = importlib.import_module("robustbench.data")
    kw = {} if transforms_test is None else {"transforms_test": transforms_test}
    return rb_data.load_imagenet(n_examples=n_examples, data_dir=str(data_dir), **kw)


def load_model(
    model_name: str,
    model_dir: str | Path = "./models",
    dataset: str = "cifar10",
    threat_model: str = "Linf",
) -> nn.Module:
    """A RobustBench model-zoo entry (e.g. ``"Wong2020Fast"``, ``"Andriushchenko2020Understanding"``), in eval mode.

    Uses the checkpoint in ``model_dir/dataset/threat_model/<name>.pt`` when present; otherwise downloads it,
    failing fast with a :class:`~robustfast.RobustfastError` when offline or when the download is broken.
    """
    import_robustbench()
    utils = importlib.import_module("robustbench.utils")
    enums = importlib.import_module("robustbench.model_zoo.enums")
    try:
        ds, tm = enums.BenchmarkDataset(dataset), enums.ThreatModel(threat_model)
    except ValueError as e:
        raise RobustfastError(f"RobustBench: {e}") from e
    zoo = importlib.import_module("robustbench.model_zoo").model_dicts[ds][tm]
    if model_name not in zoo:
        close = difflib.get_close_matches(model_name, list(zoo), n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise RobustfastError(f"RobustBench has no {dataset}/{threat_model} model {model_name!r}.{hint}")
    ckpt = Path(model_dir) / ds.value / tm.value / f"{model_name}.pt"
    local = ckpt.is_file() or Path(f"{ckpt}_m0.pt").is_file()
    if not local and not _online("gdrive"):
        raise RobustfastError(
            f"RobustBench model {model_name!r} is not in {str(ckpt)!r} and there is no network; copy the "
            "checkpoint there or run once online"
        )
    try:
        return utils.load_model(model_name, model_dir=str(model_dir), dataset=ds, threat_model=tm)
    except Exception as e:  # requests errors, an HTML page saved as .pt (UnpicklingError), ...
        raise RobustfastError(
            f"RobustBench could not load {model_name!r}: {type(e).__name__}: {e}. If {str(ckpt)!r} is an HTML "
            "page (Google Drive quota), delete it and retry later."
        ) from e


# ---------------------------------------------------------------------------------------------- benchmarking
def benchmark(
    model: nn.Module,
    n_examples: int = 10_000,
    dataset: Literal["cifar10", "cifar100", "imagenet"] = "cifar10",
    threat_model: Literal["Linf", "L2"] = "Linf",
    eps: float | None = None,
    *,
    data: tuple[Tensor, Tensor] | None = None,
    data_dir: str | Path = "./data",
    batch_size: int = 32,
    device: torch.device | str | None = None,
    seed: int | None = 0,
) -> EvaluationReport:
    """RobustBench's protocol: clean accuracy and standard AutoAttack on the first ``n_examples`` test points.

    Equivalent to ``robustbench.eval.benchmark`` (same data order, ``AutoAttack(version='standard')``, accuracy
    of ``x_adv``), but it forces eval mode (RobustBench only warns), fixes the AutoAttack seed, accepts
    preloaded ``data=(x, y)`` (so it runs offline) and returns an :class:`EvaluationReport`.

    Args:
        model: classifier on ``[0, 1]`` inputs. n_examples: points (RobustBench: 10,000 CIFAR, 5,000 ImageNet).
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"`` (ignored with ``data``).
        threat_model: ``"Linf"`` or ``"L2"``. eps: radius (required; 8/255 for the CIFAR L∞ leaderboard).
        data: ``(x, y)`` tensors to use instead of loading ``dataset``.
        data_dir: where the dataset lives. batch_size: RobustBench's default 32. device: default model's device.
        seed: AutoAttack's seed (RobustBench leaves it to the clock).
    """
    if threat_model not in ("Linf", "L2"):
        raise RobustfastError(f"threat_model={threat_model!r}: benchmark supports 'Linf' and 'L2'")
    if eps is None or isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        raise RobustfastError(f"eps={eps!r}: the {threat_model} threat model needs eps in (0, 1], e.g. 8/255")
    if data is None:
        loaders = {"cifar10": load_cifar10, "cifar100": load_cifar100, "imagenet": load_imagenet}
        if dataset not in loaders:
            raise RobustfastError(f"dataset={dataset!r}: choose one of {sorted(loaders)}")
        x, y = loaders[dataset](n_examples, data_dir)
    else:
        x, y = data
        if n_examples > x.shape[0]:
            raise RobustfastError(f"n_examples={n_examples} but data has only {x.shape[0]} points")
        x, y = x[:n_examples], y[:n_examples]
    t0 = time.perf_counter()
    with model_mode(model, "eval"):
        adapter = AutoAttackAdapter(model, eps, norm=threat_model, version="standard", seed=seed, device=device)
        dev = adapter._device()
        correct = predict(model, x, batch_size, dev).to(y.device) == y
        t1 = time.perf_counter()
        res = adapter.run(x, y, batch_size=batch_size)
    t2 = time.perf_counter()
    clean = AttackResult("clean", correct.float().mean().item(), tuple(correct.tolist()), {"attack": "none"}, t1 - t0)
    rob = res.robust.to(correct.device) & correct
    aa = AttackResult("autoattack", rob.float().mean().item(), tuple(rob.tolist()), res.protocol, t2 - t1)
    meta: dict[str, Any] = {"model": type(model).__name__, "device": str(dev), "batch_size": batch_size}
    meta |= {"protocol": "RobustBench benchmark", "threat_model": threat_model}
    meta["dataset"] = dataset if data is None else "given tensors"
    return EvaluationReport((clean, aa), float(eps), x.shape[0], seed, tuple(rob.tolist()), t2 - t0, meta)


def robustbench_benchmark(*args: Any, **kwargs: Any) -> Any:
    """Call the installed ``robustbench.eval.benchmark`` itself (through the shim); returns its ``(clean, robust)``.

    Raises a :class:`~robustfast.RobustfastError` when the installed RobustBench has no ``benchmark`` (the PyPI
    1.1.1 wheel ships it commented out): use :func:`benchmark` instead.
    """
    import_robustbench()
    rb_eval = importlib.import_module("robustbench.eval")
    fn = getattr(rb_eval, "benchmark", None)
    if fn is None:
        raise RobustfastError(
            "the installed robustbench has no robustbench.eval.benchmark (PyPI 1.1.1 ships it commented out); "
            "use robustfast.evaluation.robustbench.benchmark, the equivalent protocol"
        )
    return fn(*args, **kwargs)
