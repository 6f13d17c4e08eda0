"""``robustfast`` command line: ``train`` (the main job), ``eval``, ``presets`` and ``list``.

Examples::

    robustfast train --preset demo                     # the main job (make demo): digits, FGSM + GradAlign, CPU
    robustfast train --preset zerograd-cifar10-eps8    # a paper's recipe (GPU machine with internet)
    robustfast train --dataset cifar10 --model preact_resnet18 --attack zerograd --eps 8/255 --epochs 30
    robustfast train --output runs/demo --resume       # continue a run with its own config.yaml
    robustfast eval --checkpoint runs/demo/model.pt    # reads runs/demo/config.yaml; writes runs/demo/eval/
    robustfast presets
    robustfast list attacks
    robustfast list attacks --import my_method.py     # a method of your own (or ROBUSTFAST_IMPORT=my_method.py)

A run folder is never damaged: ``train`` refuses an existing run unless ``--resume`` (same settings, checked
against the run's ``config.yaml`` and checkpoint before anything is written) or ``--overwrite``; ``eval`` writes
its report under ``eval/``, never over the training report, and refuses to replace an earlier one unless
``--overwrite``.

A method of your own is one file that registers its parts (``@register_attack``...). Every command imports, before
anything else, the files and modules given with ``--import`` (repeatable), those in ``ROBUSTFAST_IMPORT`` (separated
by ``:`` or ``,``) and installed packages' ``robustfast.methods`` entry points; ``train`` records them in the run's
``config.yaml``, so ``--resume`` and ``eval`` import them again.

Errors are one line, ``robustfast: error: ...``, exit status 2; Ctrl-C says how to resume (exit status 130).
"""

from __future__ import annotations

import argparse
import errno
import inspect
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ._checks import check_kwargs
from ._discover import IMPORT_ENV, import_entry_points, import_user_methods, split_imports
from ._io import save_torch_file, write_text
from .config import RESUMABLE_KEYS, RunConfig, format_value, list_presets, load_preset, load_yaml, resume_conflicts
from .errors import RobustfastError

__all__ = [
    "RunData",
    "build_averaging",
    "build_data",
    "build_method",
    "build_model",
    "build_parser",
    "config_from_args",
    "main",
    "resolve_train_config",
]

OFFLINE = ("digits", "fashion_mnist")
#: What ``robustfast list`` can show.
LISTS = ("attacks", "regularizers", "losses", "plugins", "models")
#: Files of a training run (``train --overwrite`` removes them, and their presence marks a folder as a run).
RUN_FILES = ("config.yaml", "model.pt", "report.md", "report.json", "history.json", "history.csv", "curves.png")
RUN_DIRS = ("checkpoints", "eval")
#: Files of an evaluation (``eval`` refuses to replace them without ``--overwrite``).
EVAL_FILES = ("report.md", "report.json")
VAL_FRACTION, VAL_MAX = 0.1, 512


def _note(msg: str) -> None:
    print(f"robustfast: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------- parsing
def _kv(items: list[str] | None) -> dict[str, Any]:
    """``["q=0.35", "alpha=16/255"]`` -> ``{"q": 0.35, "alpha": "16/255"}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise RobustfastError(f"{item!r}: expected key=value, e.g. q=0.35")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = v if "/" in v else yaml.safe_load(v)
    return out


def _reg_spec(text: str) -> dict[str, Any]:
    """``gradalign:lam=0.2`` -> ``{"name": "gradalign", "lam": 0.2}`` (also for ``--loss`` and ``--plugin``)."""
    name, _, rest = text.partition(":")
    return {"name": name, **_kv([p for p in rest.split(",") if p])}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags override ``--config`` which overrides ``--preset``)."""

    def importer(dest: str) -> argparse.ArgumentParser:
        parent = argparse.ArgumentParser(add_help=False)
        parent.add_argument("--import", dest=dest, action="append", default=[], metavar="FILE_OR_MODULE",
                            help=f"import a method file (path/to/file.py) or module first, so its registered parts "
                                 f"can be named (repeatable; also ${IMPORT_ENV})")  # fmt: skip
        return parent

    imp = importer("imports")  # on each command; the top-level flag has its own dest (a subcommand's default would
    p = argparse.ArgumentParser(prog="robustfast", description="Fast, reliable adversarial training.",
                                parents=[importer("imports_before")])  # override it)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", parents=[imp], help="train (then evaluate) a model; defaults run offline in minutes")
    t.add_argument("--preset", help=f"a paper recipe: {', '.join(list_presets())}")
    t.add_argument("--config", help="a YAML file with RunConfig keys")
    t.add_argument("--dataset", help="digits, fashion_mnist, cifar10, cifar100, svhn, imagenet")
    t.add_argument("--data-dir")
    t.add_argument("--model", help="e.g. small_cnn, preact_resnet18, wrn_28_10, timm:vit_base_patch16_224")
    t.add_argument("--normalize", help="dataset whose mean/std go inside the model (cifar10, ...), or 'none'")
    t.add_argument("--eps", help="radius in pixel units, e.g. 8/255")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", help="peak learning rate")
    t.add_argument("--schedule", choices=["cyclic", "onecycle", "piecewise", "constant"])
    t.add_argument("--attack", help="training attack (`robustfast list attacks`), or none")
    t.add_argument("--attack-arg", action="append", metavar="K=V", help="attack keyword, e.g. q=0.35 (repeatable)")
    t.add_argument("--reg", action="append", metavar="NAME[:K=V,...]", help="regularizer, e.g. gradalign:lam=0.2")
    t.add_argument("--loss", metavar="NAME[:K=V,...]", help="training loss, e.g. trades:beta=6")
    t.add_argument("--plugin", action="append", metavar="NAME[:K=V,...]", help="training plugin, e.g. awp:gamma=0.005")
    t.add_argument("--amp", choices=["bf16", "fp16"])
    t.add_argument("--eps-warmup", type=int, help="epochs of linear eps ramp")
    t.add_argument("--co-action", choices=["flag", "rollback", "stop"])
    t.add_argument("--no-co-guard", action="store_true")
    t.add_argument("--val-examples", type=int, help="training points held out for validation and the CO guard")
    t.add_argument("--eval-attacks", nargs="+", metavar="ATTACK")
    t.add_argument("--n-eval", type=int, help="test points for the adversarial evaluation")
    t.add_argument("--output", help="output directory (default runs/demo)")
    t.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the GPU when available, else the CPU)")
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", type=int)
    t.add_argument("--no-download", action="store_true", help="never download datasets")
    run = t.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue the run in OUTPUT (same settings)")
    run.add_argument("--overwrite", action="store_true", help="replace the run in OUTPUT")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("eval", parents=[imp], help="evaluate saved weights (clean, PGD-50-10, AutoAttack...)")
    e.add_argument("--checkpoint", required=True, help="weights saved by `robustfast train` (model.pt)")
    e.add_argument("--preset")
    e.add_argument("--config", help="a RunConfig YAML (default: the run's config.yaml next to the checkpoint)")
    e.add_argument("--dataset")
    e.add_argument("--data-dir")
    e.add_argument("--model")
    e.add_argument("--normalize")
    e.add_argument("--eps")
    e.add_argument("--attacks", nargs="+", metavar="ATTACK", help="e.g. clean pgd-50-10 pgd-50-10-official autoattack")
    e.add_argument("--n-eval", type=int)
    e.add_argument("--output", help="where to write report.md/report.json (default: RUN/eval/)")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier report in OUTPUT")
    e.add_argument("--save-adversarial", action="store_true", help="also write OUTPUT/adversarial/<attack>.pt")
    e.add_argument("--device")
    e.add_argument("--quiet", action="store_true")

    sub.add_parser("presets", parents=[imp], help="list the bundled paper presets (data, model, eps, attack, ...)")
    ls = sub.add_parser(
        "list", parents=[imp], help="list the registered attacks, regularizers, losses, plugins, models"
    )
    ls.add_argument("what", nargs="?", choices=LISTS, help="one list (default: all)")
    return p


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """Defaults (or ``base``, e.g. a resumed run's config) < preset < config file < flags."""
    cfg = base if base is not None else RunConfig()
    if getattr(args, "preset", None):
        cfg = RunConfig.from_dict(load_preset(args.preset), cfg)
    if getattr(args, "config", None):
        cfg = RunConfig.from_dict(load_yaml(args.config), cfg)
    flags: dict[str, Any] = {}
    simple = ["dataset", "data_dir", "model", "eps", "epochs", "batch_size", "lr", "schedule", "amp", "eps_warmup",
              "co_action", "output", "device", "seed", "workers", "val_examples"]  # fmt: skip
    for key in simple:
        v = getattr(args, key, None)
        if v is not None:
            flags[key] = v
    if getattr(args, "normalize", None) is not None:
        flags["normalize"] = None if args.normalize.lower() == "none" else args.normalize
    if getattr(args, "attack", None):
        flags["attack"] = {"name": args.attack, **_kv(args.attack_arg)}
    elif getattr(args, "attack_arg", None):
        flags["attack"] = {**cfg.attack, **_kv(args.attack_arg)}
    if getattr(args, "reg", None):
        flags["regularizers"] = [_reg_spec(r) for r in args.reg]
    if getattr(args, "loss", None):
        flags["loss"] = _reg_spec(args.loss)
    if getattr(args, "plugin", None):
        flags["plugins"] = [_reg_spec(r) for r in args.plugin]
    if getattr(args, "no_co_guard", False):
        flags["co_guard"] = False
    if getattr(args, "no_download", False):
        flags["download"] = False
    ev: dict[str, Any] = {}
    attacks = getattr(args, "eval_attacks", None) or getattr(args, "attacks", None)
    if attacks:
        ev["attacks"] = attacks
    if getattr(args, "n_eval", None) is not None:
        ev["n_examples"] = args.n_eval
    if ev:
        flags["eval"] = ev
    return RunConfig.from_dict(flags, cfg)


# --------------------------------------------------------------------------------------------- building blocks
def _check_device(device: str | None) -> torch.device:
    """The run's device; ``None`` picks the GPU when one is available. An unavailable device is a clear error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RobustfastError(
                f"device={device!r} but no CUDA GPU is available (torch.cuda.is_available() is False; torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu, or leave --device "
                "unset to use the GPU only when there is one"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RobustfastError(
                f"device={device!r} but only {torch.cuda.device_count()} GPU(s) are visible (cuda:0 ... "
                f"cuda:{torch.cuda.device_count() - 1}); pick one of those"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RobustfastError(f"device={device!r} but Apple's MPS backend is not available here; use --device cpu")
    return dev


def _dataset_shape(name: str) -> tuple[int, int]:
    """``(n_classes, in_chans)`` of a dataset, without loading it."""
    if name in OFFLINE:
        return 10, 1
    from .data import VISION_DATASETS

    info = VISION_DATASETS[name]
    return info.num_classes, info.in_chans


@dataclass
class RunData:
    """The data of a run: training loader, held-out validation points, test loader and the dataset's shape.

    Attributes:
        train: shuffled training loader (the training split minus the held-out points); ``None`` for ``eval``.
        val: ``(x, y)`` held out of the training split for the per-epoch validation and the CO guard (never test
            points); ``None`` for ``eval``.
        test: the test split, in order (the report's points are its first ``eval.n_examples``).
        n_classes: number of classes.
        in_chans: input channels.
    """

    train: DataLoader | None
    val: tuple[Tensor, Tensor] | None
    test: DataLoader
    n_classes: int
    in_chans: int


def _val_size(cfg: RunConfig, n_train: int) -> int:
    n = cfg.val_examples if cfg.val_examples is not None else min(VAL_MAX, max(1, int(VAL_FRACTION * n_train)))
    if n >= n_train:
        raise RobustfastError(
            f"val_examples={n} but the {cfg.dataset} training split has only {n_train} points; validation points are "
            f"held out of it, so choose fewer (the default is 10% of the split, at most {VAL_MAX})"
        )
    return n


def build_data(cfg: RunConfig, *, train: bool = True) -> RunData:
    """Loaders for ``cfg.dataset``; with ``train``, validation points are held out of the training split.

    The test split is only used for the final report, so the points the report attacks are never seen by the
    validation or the CO guard.
    """
    from .data import IndexedDataset, holdout_split, load_digits_tensors, load_fashion_mnist_tensors, vision_dataset

    name = cfg.dataset
    n_classes, in_chans = _dataset_shape(name)
    plain_train: Dataset | None = None
    if name in OFFLINE:
        if name == "digits":
            xtr, ytr, xte, yte = load_digits_tensors(cfg.seed)
        else:
            xtr, ytr, xte, yte = load_fashion_mnist_tensors(seed=cfg.seed)
        train_set: Dataset = TensorDataset(xtr, ytr)
        test_set: Dataset = TensorDataset(xte, yte)
        common: dict[str, Any] = {}
    else:
        test_set = vision_dataset(name, cfg.data_dir, False, download=cfg.download)
        if train:
            train_set = vision_dataset(name, cfg.data_dir, True, download=cfg.download)
            plain_train = vision_dataset(name, cfg.data_dir, True, augment=False)  # held-out points: no augmentation
        common = {"num_workers": cfg.workers, "pin_memory": torch.cuda.is_available()}
    test = DataLoader(test_set, batch_size=max(cfg.batch_size, cfg.eval.batch_size), shuffle=False, **common)
    if not train:
        return RunData(None, None, test, n_classes, in_chans)
    n_val = _val_size(cfg, len(train_set))  # type: ignore[arg-type]
    subset, x_val, y_val = holdout_split(train_set, n_val, seed=cfg.seed, eval_dataset=plain_train)
    # batches carry dataset indices, for methods with per-example memory (FGSM-PGI); the others ignore them
    loader = DataLoader(IndexedDataset(subset), batch_size=cfg.batch_size, shuffle=True, drop_last=cfg.drop_last,
                        generator=torch.Generator().manual_seed(cfg.seed), **common)  # fmt: skip
    return RunData(loader, (x_val, y_val), test, n_classes, in_chans)


def build_model(cfg: RunConfig, n_classes: int, in_chans: int, checkpoint: str | None = None) -> nn.Module:
    """The model from the factory, with normalization inside when ``cfg.normalize`` is set."""
    from .models import create

    return create(cfg.model, num_classes=n_classes, in_chans=in_chans, normalize=cfg.normalize,
                  checkpoint=checkpoint, **cfg.model_kwargs)  # fmt: skip


def _construct(
    kind: str,
    cls: Any,
    kwargs: dict[str, Any],
    *,
    args: tuple[Any, ...] = (),
    reserved: tuple[str, ...] = (),
    renames: dict[str, str] | None = None,
) -> Any:
    """``cls(*args, **kwargs)`` with unknown keywords named, close matches suggested and the valid ones listed.

    Args:
        kind: what the message calls the object, e.g. ``"attack 'fgsm'"``.
        cls: the class to build.
        kwargs: keywords from the configuration or the flags.
        args: positional arguments the command line supplies (e.g. the model).
        reserved: keywords the command line sets itself (refused in ``kwargs``).
        renames: configuration key -> keyword of ``cls`` (e.g. SWA's ``every`` -> ``every_steps``).
    """
    renames = renames or {}
    check_kwargs(cls, kwargs, f"{kind} ({getattr(cls, '__name__', cls)})", reserved=reserved,
                 reserved_by="the command line", renames=renames)  # fmt: skip
    kwargs = {renames.get(k, k): v for k, v in kwargs.items()}
    try:
        return cls(*args, **kwargs)
    except TypeError as e:  # a value of the wrong type deep inside
        text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise RobustfastError(f"{kind}: {getattr(cls, '__name__', cls)}({text}) failed: {e}") from None


def build_parts(cfg: RunConfig, model: nn.Module) -> tuple[Any, list[Any]]:
    """The training loss and the trainer plugins of ``cfg`` (``None`` / ``[]`` when not set).

    Raises:
        RobustfastError: unknown names or keywords (with close matches and the valid keywords), or bad values.
    """
    from .component import PLUGINS
    from .losses import LOSSES

    loss = None
    if cfg.loss is not None:
        spec = dict(cfg.loss)
        name = str(spec.pop("name"))
        loss = _construct(f"loss {name!r}", LOSSES.get(name), spec)
    plugins = []
    for p in cfg.plugins:
        spec = dict(p)
        name = str(spec.pop("name"))
        plugins.append(_construct(f"plugin {name!r}", PLUGINS.get(name), spec, args=(model,), reserved=("model",)))
    return loss, plugins


def build_method(cfg: RunConfig, model: nn.Module) -> tuple[Any, list[Any]]:
    """The attack and regularizers; they get the run's ε unless given their own ``eps``.

    Raises:
        RobustfastError: unknown names or keywords (with close matches and the valid keywords), or bad values.
    """
    from .attacks import ATTACKS
    from .regularizers import REGULARIZERS

    spec = dict(cfg.attack)
    name = str(spec.pop("name"))
    attack = None
    if name.lower() != "none":
        spec.setdefault("eps", cfg.eps)
        attack = _construct(f"attack {name!r}", ATTACKS.get(name), spec, args=(model,), reserved=("model",))
    regs = []
    for r in cfg.regularizers:
        r = dict(r)
        rname = str(r.pop("name"))
        cls = REGULARIZERS.get(rname)
        if "eps" in inspect.signature(cls).parameters and "eps" not in r:
            r["eps"] = cfg.eps
        regs.append(_construct(f"regularizer {rname!r}", cls, r))
    return attack, regs


def build_averaging(cfg: RunConfig, n_batches: int) -> list[Any]:
    """EMA / SWA averagers of ``cfg``; an SWA that would average no weights in this run is an error, up front.

    Args:
        cfg: the run's configuration (``ema``, ``swa``; SWA's ``every`` is ``every_steps``).
        n_batches: optimizer steps per epoch.
    """
    from .training import EMA, SWA

    averaging: list[Any] = []
    if cfg.ema is not None:
        averaging.append(_construct("ema", EMA, dict(cfg.ema)))
    if cfg.swa is not None:
        swa = _construct("swa", SWA, dict(cfg.swa), renames={"every": "every_steps"})
        start, every, total = swa.start_epoch, swa.every_steps, cfg.epochs * n_batches
        first = (start * n_batches // every + 1) * every  # first averaged optimizer step
        if start >= cfg.epochs:
            raise RobustfastError(
                f"swa.start_epoch={start} but the run trains {cfg.epochs} epochs (counted from 0): SWA would average "
                f"no weights, and the run would fail at its end. Set swa.start_epoch below {cfg.epochs}, raise epochs, "
                "or remove swa."
            )
        if first > total:
            raise RobustfastError(
                f"swa: from epoch {start} on, averaging every {every} steps never happens: the run has {total} steps "
                f"({n_batches} per epoch) and the first averaged one would be step {first}. Lower swa.every (e.g. "
                f"{max(1, n_batches)}: once per epoch) or swa.start_epoch."
            )
        averaging.append(swa)
    return averaging


def _check_names(cfg: RunConfig) -> None:
    """Unknown attack, regularizer, loss, plugin or model names fail first (with suggestions), before anything
    else is looked at."""
    from .attacks import ATTACKS
    from .component import PLUGINS
    from .losses import LOSSES
    from .models import MODELS
    from .regularizers import REGULARIZERS

    try:
        if str(cfg.attack["name"]).lower() != "none":
            ATTACKS.get(str(cfg.attack["name"]))
        for r in cfg.regularizers:
            REGULARIZERS.get(str(r["name"]))
        if cfg.loss is not None:
            LOSSES.get(str(cfg.loss["name"]))
        for r in cfg.plugins:
            PLUGINS.get(str(r["name"]))
        if not cfg.model.startswith("timm:"):
            MODELS.get(cfg.model)
    except RobustfastError as e:
        raise RobustfastError(f"{e} A method of your own? Name its file with --import path/to/file.py (or set "
                              f"{IMPORT_ENV}).") from None  # fmt: skip


def _check_writable(out: Path) -> None:
    """Fail before training when ``out`` (or, when it does not exist yet, its nearest existing parent folder) cannot be
    written: a read-only file system, no permission, a file in the way. Leaves nothing behind."""
    folder = out.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    probe = folder / f".robustfast-write-test-{os.getpid()}"
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file stands where the folder would be", str(folder))
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RobustfastError(
            f"cannot write to the output folder {str(out)!r}: {e.strerror or e}; choose another --output (nothing "
            "was trained)"
        ) from None


def _is_run(out: Path) -> list[str]:
    """The run files already in ``out`` (empty when it is not a run folder)."""
    return [n for n in (*RUN_FILES, *RUN_DIRS) if (out / n).exists()]


def _remove_run(out: Path) -> None:
    """Delete the outputs of an earlier run in ``out`` (``train --overwrite``); other files are left alone."""
    for n in RUN_FILES:
        (out / n).unlink(missing_ok=True)
    for n in RUN_DIRS:
        if (out / n).is_dir():
            shutil.rmtree(out / n)


def _check_resume_checkpoint(path: Path, model: nn.Module, n_averagers: int) -> int:
    """Read ``last.pt`` and load its weights into ``model`` before anything is written; returns its next epoch."""
    from ._io import read_torch_file

    try:
        state = read_torch_file(path, "cpu", what="checkpoint")
    except RobustfastError as e:
        raise RobustfastError(f"train --resume: {e}. Restore a good copy, or start the run again with --overwrite "
                              "(nothing was written).") from None  # fmt: skip
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "epoch" not in state:
        raise RobustfastError(
            f"train --resume: {path} is not a training checkpoint written by `robustfast train` (it needs 'model' and "
            "'epoch' entries; a model.pt holds weights only). Start the run again with --overwrite."
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise RobustfastError(
            f"train --resume: the weights in {path} do not fit the model of this run: {str(e).splitlines()[0]} ..."
        ) from None
    saved = state.get("averagers")
    if isinstance(saved, list) and len(saved) != n_averagers:
        raise RobustfastError(
            f"train --resume: {path} holds {len(saved)} weight averager(s) (ema/swa) but this run has {n_averagers}"
        )
    return int(state["epoch"])


def _evaluate(model: nn.Module, test: DataLoader, cfg: RunConfig, progress: bool, keep: bool = False) -> Any:
    from .evaluation import evaluate

    attacks = list(cfg.eval.attacks)
    if cfg.norm != "Linf":  # FGSM and the L∞ AutoAttack defaults have L2 counterparts only for PGD and AutoAttack
        attacks = [a for a in attacks if str(a).lower() != "fgsm"]
    return evaluate(model, test, cfg.eps, attacks, n_examples=cfg.eval.n_examples, batch_size=cfg.eval.batch_size,
                    seed=cfg.seed, progress=progress, pgd_step_size=cfg.eval.pgd_alpha, keep_adversarial=keep,
                    norm=cfg.norm)  # fmt: skip


def _write_report(report: Any, out: Path) -> None:
    write_text(out / "report.md", report.to_markdown() + "\n", what="report")
    write_text(out / "report.json", report.to_json(), what="report")


# --------------------------------------------------------------------------------------------- commands
def resolve_train_config(args: argparse.Namespace) -> RunConfig:
    """The configuration of ``train``; on ``--resume``, the run's own ``config.yaml`` is the base layer.

    The result must agree with the saved configuration except for
    :data:`~robustfast.config.RESUMABLE_KEYS`; changed resumable keys are reported on stderr.

    Raises:
        RobustfastError: unreadable saved configuration, or settings that differ from the run's.
    """
    cfg = config_from_args(args)
    saved_path = Path(cfg.output) / "config.yaml"
    if not getattr(args, "resume", False) or not saved_path.is_file():
        return cfg
    try:
        saved = RunConfig.from_dict(load_yaml(saved_path))
    except RobustfastError as e:
        raise RobustfastError(f"train --resume: the run's {saved_path} is unreadable: {e}") from None
    cfg = config_from_args(args, base=saved)
    conflicts = resume_conflicts(saved, cfg)
    if conflicts:
        raise RobustfastError(
            f"train --resume: {cfg.output} was trained with other settings; {'; '.join(conflicts)}. Resume with the "
            f"run's own settings (`robustfast train --output {cfg.output} --resume` reads them from its "
            f"config.yaml; only {', '.join(k for k in RESUMABLE_KEYS if k != 'output')} may change), or start a new "
            "run with another --output or --overwrite. Nothing was written."
        )
    a, b = saved.to_dict(), cfg.to_dict()
    changed = [f"{k} {a[k]!r} -> {b[k]!r}" for k in RESUMABLE_KEYS if k != "output" and a[k] != b[k]]
    if changed:
        _note(f"resuming {cfg.output} with changed settings: {'; '.join(changed)}")
    return cfg


def cmd_train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Train with ``cfg``, then evaluate; writes config, history, curves, report and weights to ``cfg.output``.

    Everything that can fail is checked before the first file is written: the output folder (an existing run
    needs ``resume`` or ``overwrite``), the device, the data, the method's keywords, SWA's window and, when
    resuming, that the checkpoint reads and fits.
    """
    from .evaluation import plot_training_curves
    from .training import AdversarialTrainer, COGuard

    _check_names(cfg)
    out = Path(cfg.output)
    existing = _is_run(out)
    if existing and not (resume or overwrite):
        raise RobustfastError(
            f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it, --overwrite to replace "
            "it, or choose another --output"
        )
    device = _check_device(cfg.device)
    _check_writable(out)  # nothing is created: a read-only or full disk fails here, before the data is loaded
    torch.manual_seed(cfg.seed)
    data = build_data(cfg)
    assert data.train is not None and data.val is not None
    model = build_model(cfg, data.n_classes, data.in_chans).to(device)
    attack, regs = build_method(cfg, model)
    criterion, plugins = build_parts(cfg, model)
    averaging = build_averaging(cfg, len(data.train))
    last = out / "checkpoints" / "last.pt"
    if resume and last.is_file():
        done = _check_resume_checkpoint(last, model, len(averaging))
        _note(f"resuming {out} after epoch {done} of {cfg.epochs}")
    elif resume:
        _note(f"nothing to resume in {out} (no checkpoints/last.pt): starting a new run")
    x_val, y_val = data.val
    use_guard = cfg.co_guard and attack is not None and getattr(attack, "norm", "Linf") == "Linf"
    if cfg.co_guard and attack is not None and not use_guard:
        _note("the catastrophic-overfitting guard compares FGSM and PGD in L∞: off for this L2 run")
    guard = COGuard(x_val, y_val, eps=cfg.eps, on_co=cfg.co_action) if use_guard else None
    trainer = AdversarialTrainer(
        model, attack, regs, criterion=criterion, plugins=plugins, averaging=averaging, co_guard=guard,
        checkpoint_dir=out / "checkpoints", log_dir=out, progress=progress, device=device,
        **cfg.trainer_kwargs(custom_criterion=criterion is not None),
    )  # fmt: skip
    # ---- all checks passed: from here on, files are written
    if overwrite and existing:
        _remove_run(out)
        _note(f"--overwrite: removed the earlier run's files in {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False), what="run configuration")
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=cfg.eval.batch_size)
    history = trainer.fit(data.train, cfg.epochs, val_loader=val, resume=resume)
    history.to_json(out / "history.json")
    history.to_csv(out / "history.csv")
    method = "+".join([cfg.attack["name"], *(r["name"] for r in cfg.regularizers)])
    title = f"{cfg.model}, {method}, {cfg.dataset}, eps={format_value('eps', cfg.eps)}"
    plot_training_curves(list(history), out / "curves.png", title=title)
    final = model
    if averaging:
        if averaging[-1].model is not None:
            final = averaging[-1].model
        else:  # e.g. the CO guard stopped the run before SWA started
            _note(f"{type(averaging[-1]).__name__} averaged no weights (training ended early); model.pt holds the "
                  "trained weights")  # fmt: skip
    save_torch_file(final.state_dict(), out / "model.pt", what="model weights")
    report = _evaluate(final, data.test, cfg, progress)
    _write_report(report, out)
    print(report.to_markdown())
    print(
        f"\nwrote {out}/: config.yaml history.json history.csv curves.png report.md report.json model.pt checkpoints/"
    )
    return {"history": history, "report": report}


def _run_config_for(checkpoint: Path) -> Path | None:
    """The ``config.yaml`` of the run a checkpoint belongs to (``RUN/model.pt`` or ``RUN/checkpoints/last.pt``)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def cmd_eval(args: argparse.Namespace) -> Any:
    """Evaluate saved weights; writes ``report.md``/``report.json`` to ``--output`` (default ``RUN/eval/``).

    Without ``--config``, the run's own ``config.yaml`` (next to the checkpoint) gives the dataset, model,
    normalization, ε and seed; flags still override it.
    """
    checkpoint = Path(args.checkpoint)
    run_config = None if args.config else _run_config_for(checkpoint)
    if run_config is not None:
        args.config = str(run_config)
    cfg = config_from_args(args)
    import_user_methods(cfg.imports)  # the run's own method files (its model may be one of them)
    eps = format_value("eps", cfg.eps)
    if run_config is not None:
        _note(f"settings from {run_config} (dataset={cfg.dataset}, model={cfg.model}, eps={eps}); --config overrides")
    elif not args.config:
        _note(f"no config.yaml next to {checkpoint}: using dataset={cfg.dataset}, model={cfg.model}, eps={eps} "
              "(pass --config RUN/config.yaml or --dataset/--model/--eps)")  # fmt: skip
    default_out = (run_config.parent if run_config is not None else checkpoint.parent) / "eval"
    out = Path(args.output) if args.output else default_out
    clash = [n for n in EVAL_FILES if (out / n).exists()]
    if clash and not args.overwrite:
        raise RobustfastError(
            f"{out} already holds {', '.join(clash)}; pass --overwrite to replace them, or --output DIR for a new "
            "report (the training report next to model.pt is never touched by default)"
        )
    device = _check_device(cfg.device)
    n_classes, in_chans = _dataset_shape(cfg.dataset)
    model = build_model(cfg, n_classes, in_chans, checkpoint=args.checkpoint).to(device)
    data = build_data(cfg, train=False)
    report = _evaluate(model, data.test, cfg, not args.quiet, keep=args.save_adversarial)
    _write_report(report, out)
    if args.save_adversarial:
        for name in report.adversarial:
            report.save_adversarial(out / "adversarial" / f"{name.replace('#', '_')}.pt", name)
    print(report.to_markdown())
    print(f"\nwrote {out}/report.md and report.json" + (" and adversarial/" if args.save_adversarial else ""))
    return report


def _preset_line(name: str) -> list[str]:
    cfg = RunConfig.from_dict(load_preset(name))

    def call(spec: dict[str, Any]) -> str:
        kw = ", ".join(f"{k}={format_value(k, v)}" for k, v in spec.items() if k != "name")
        return f"{spec['name']}({kw})" if kw else str(spec["name"])

    regs = " + ".join(call(r) for r in cfg.regularizers) or "-"
    loss = call(cfg.loss) if cfg.loss is not None else "-"
    plugins = " + ".join(call(r) for r in cfg.plugins) or "-"
    return [name, f"{cfg.dataset}/{cfg.model}", format_value("eps", cfg.eps), str(cfg.epochs), call(cfg.attack), regs,
            loss, plugins]  # fmt: skip


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_presets() -> None:
    """Print every bundled preset: data/model, ε, epochs, training attack, regularizers, loss and plugins."""
    rows = [["preset", "data/model", "eps", "epochs", "attack", "regularizers", "loss", "plugins"]]
    rows += [_preset_line(n) for n in list_presets()]
    print(_table(rows))
    print("\nrobustfast train --preset NAME [flags]; each file: robustfast/presets/NAME.yaml (with its sources)")


def _summary(obj: Any) -> str:
    """First line of a docstring, without reStructuredText markup."""
    doc = (inspect.getdoc(obj) or "").strip()
    line = doc.splitlines()[0] if doc else ""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", line).replace("``", "")


def cmd_list(what: str | None = None) -> None:
    """Print the registered attacks, regularizers, losses, plugins and models (read from the registries, so new
    ones appear)."""
    from .attacks import ATTACKS
    from .component import PLUGINS
    from .losses import LOSSES
    from .models import MODELS
    from .regularizers import REGULARIZERS

    registries = {"attacks": ATTACKS, "regularizers": REGULARIZERS, "losses": LOSSES, "plugins": PLUGINS,
                  "models": MODELS}  # fmt: skip
    usage = {
        "attacks": "train --attack NAME [--attack-arg K=V]",
        "regularizers": "train --reg NAME[:K=V,...]",
        "losses": "train --loss NAME[:K=V,...]",
        "plugins": "train --plugin NAME[:K=V,...]",
        "models": "train --model NAME (or timm:NAME)",
    }
    for i, key in enumerate([what] if what else LISTS):
        reg = registries[key]
        if i:
            print()
        print(f"{key} ({usage[key]}):")
        print(_table([["  " + n, _summary(reg.get(n))] for n in reg.list()]))


def import_methods(specs: list[str]) -> list[str]:
    """Import installed packages' ``robustfast.methods`` entry points, then ``$ROBUSTFAST_IMPORT`` and ``specs``
    (``--import``); returns the user's imports as a run records them (files as absolute paths, modules as named)."""
    import_entry_points()
    wanted = [*split_imports(os.environ.get(IMPORT_ENV)), *specs]
    import_user_methods(wanted)
    recorded = [str(Path(s).expanduser().resolve()) if s.endswith(".py") else s for s in wanted]
    return list(dict.fromkeys(recorded))


def _resume_hint(cfg: RunConfig | None) -> str:
    if cfg is None:
        return ""
    last = Path(cfg.output) / "checkpoints" / "last.pt"
    if not last.is_file():
        return " (no checkpoint was saved yet: nothing to resume)"
    return f"; the last finished epoch is saved: continue with `robustfast train --output {cfg.output} --resume`"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``robustfast`` console script.

    Errors print one line, ``robustfast: error: ...``, and return 2 (also for the operating system's: a read-only
    output folder, a full disk); Ctrl-C prints how to resume and returns 130.
    """
    args = build_parser().parse_args(argv)
    cfg: RunConfig | None = None
    try:
        imported = import_methods([*args.imports_before, *args.imports])
        if args.command == "presets":
            cmd_presets()
        elif args.command == "list":
            cmd_list(args.what)
        elif args.command == "train":
            cfg = resolve_train_config(args)
            cfg.imports = list(dict.fromkeys([*cfg.imports, *imported]))
            import_user_methods(cfg.imports)  # those a resumed run's config.yaml names
            cmd_train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
        else:
            cmd_eval(args)
    except RobustfastError as e:
        hint = _resume_hint(cfg) if cfg is not None and str(e).startswith("could not write") else ""
        print(f"robustfast: error: {e}{hint}", file=sys.stderr)
        return 2
    except OSError as e:  # the operating system's (a read-only folder, a full disk...) without a traceback
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        full = " (the disk is full)" if e.errno == errno.ENOSPC else ""
        print(f"robustfast: error: cannot write{where}: {e.strerror or e}{full}; choose a folder you can write to, "
              f"or free some space{_resume_hint(cfg)}", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print(f"\nrobustfast: interrupted{_resume_hint(cfg)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
