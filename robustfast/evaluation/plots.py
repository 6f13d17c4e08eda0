"""Training curves with catastrophic-overfitting epochs marked (GradAlign Fig. 1 style), saved as PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import RobustfastError

__all__ = ["co_epochs", "plot_training_curves"]

_CURVES = (("clean_acc", "clean"), ("fgsm_acc", "FGSM"), ("pgd_acc", "PGD"))
# AdversarialTrainer's history keys, read when the generic ones are absent (validation set first, then the
# CO guard's held-out batch).
_ALIASES = {
    "clean_acc": ("val_acc",),
    "fgsm_acc": ("co_fgsm_acc",),
    "pgd_acc": ("val_robust_acc", "co_pgd_acc"),
}


def _canonical(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copy each record, filling ``clean_acc``/``fgsm_acc``/``pgd_acc`` from the trainer's keys when missing."""
    out = []
    for h in history:
        rec = dict(h)
        for key, aliases in _ALIASES.items():
            if key not in rec:
                for a in aliases:
                    if rec.get(a) is not None:
                        rec[key] = rec[a]
                        break
        out.append(rec)
    return out


def co_epochs(history: Sequence[Mapping[str, Any]], drop: float = 0.2, key: str = "pgd_acc") -> list[int]:
    """Epochs where ``key`` fell by more than ``drop`` from the previous epoch (Wong et al.'s CO rule: 0.2).

    An entry may also flag itself with ``"co": True``.
    """
    out: list[int] = []
    for i, h in enumerate(history):
        ep = int(h.get("epoch", i))
        prev = history[i - 1].get(key) if i > 0 else None
        if h.get("co") or (prev is not None and h.get(key) is not None and prev - h[key] > drop):
            out.append(ep)
    return out


def plot_training_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str | None = None,
    co_drop: float = 0.2,
    dpi: int = 120,
) -> Path:
    """Draw clean/FGSM/PGD accuracy per epoch and mark catastrophic-overfitting epochs; save a PNG.

    Args:
        history: one dict per epoch with any of ``clean_acc``, ``fgsm_acc``, ``pgd_acc`` (in [0, 1] or percent;
            ``None`` = not measured) and optionally ``epoch`` (the x label, as the history numbers it; default: the
            record's index) and ``co`` (bool). An :class:`~robustfast.training.AdversarialTrainer`
            history works as is (``val_acc``, ``co_fgsm_acc``, ``val_pgd_acc``/``co_pgd_acc`` are read).
        path: output file (``.png`` appended when missing).
        title: figure title.
        co_drop: PGD accuracy drop that marks an epoch as CO (default 0.2, in the units of ``pgd_acc`` / 100
            when accuracies are percentages).
        dpi: resolution.

    Returns:
        The path written. Renders with matplotlib's Agg canvas (no pyplot, no display needed).
    """
    if not history or not all(isinstance(h, Mapping) for h in history):
        raise RobustfastError("plot_training_curves: history must be a non-empty list of dicts (one per epoch)")
    history = _canonical(history)
    present = [(k, label) for k, label in _CURVES if any(k in h for h in history)]
    if not present:
        raise RobustfastError(f"plot_training_curves: history has none of {[k for k, _ in _CURVES]}")
    from matplotlib.figure import Figure  # no pyplot: renders with the Agg canvas, global backend untouched

    percent = any(float(h[k]) > 1 for h in history for k, _ in present if h.get(k) is not None)
    scale = 100 if percent else 1
    epochs = [int(h.get("epoch", i)) for i, h in enumerate(history)]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for k, label in present:
        pts = [(e, float(h[k])) for e, h in zip(epochs, history) if h.get(k) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    for i, ep in enumerate(co_epochs(history, co_drop * scale)):
        ax.axvline(ep, color="red", ls="--", lw=1, label="catastrophic overfitting" if i == 0 else None)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs as the history numbers them
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)" if percent else "accuracy")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(path)
    if out.suffix.lower() != ".png":
        out = out.with_name(out.name + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return out
