"""Catastrophic-overfitting (CO) guard: FGSM vs PGD accuracy of the raw model on held-out points, with rollback.

**Detection.** At every check (each epoch end, or every ``every_steps`` optimizer steps) the *raw* model (never
a weight average, which can hide CO: FastAT_Benchmark picked an averaged model with 49% PGD-10 accuracy whose
AutoAttack accuracy was 3%), in eval mode and fp32, is attacked on the same held-out batch with FGSM (from the
clean point, step ε) and PGD (``pgd_steps`` steps, α = ε/4, seeded random start), by
:func:`robustfast.evaluation.fgsm_pgd_gap`. CO is flagged when

* **a sudden drop**: PGD accuracy fell more than ``drop`` below the best seen (Wong et al.'s rule: 0.2);
* **a large gap**: FGSM accuracy exceeds PGD accuracy by more than ``gap`` (GradAlign §2.5(c): at CO, FGSM
  accuracy jumps while PGD accuracy collapses; before CO both are close);
* **a gradual collapse**: for ``patience`` consecutive checks, PGD accuracy stayed more than ``tolerance`` below
  its best *and* the FGSM−PGD gap stayed more than ``tolerance`` above the gap at the best check. Both together
  are CO's signature; an ordinary dip (a high learning rate, noise) lowers FGSM and PGD accuracy together.

**Policy** (``on_co``): ``"flag"`` records ``co=True`` and continues; ``"rollback"`` restores the **best** state
seen (highest guard PGD accuracy: model, optimizer, scheduler, scaler, averagers, RNGs, every method's own state),
lets the method strengthen itself (:meth:`robustfast.component.Component.strengthen`: a larger λ for GradAlign,
a larger q for ZeroGrad, noise or a smaller step for FGSM...) and continues; ``"stop"`` ends training. Strengthening
accumulates across rollbacks. With nothing to strengthen, training ends on the restored best state. At most
``max_rollbacks`` rollbacks happen; a further CO restores the best state once more and ends training there (a
run never ends collapsed; before any epoch passed a check there is no best state, and CO is only flagged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..component import Component
from ..errors import RobustfastError
from ..losses import TrainingLoss
from ..regularizers.base import Regularizer

__all__ = ["COCheck", "COGuard"]


@dataclass(frozen=True)
class COCheck:
    """One guard measurement.

    Attributes:
        fgsm_acc: FGSM accuracy on the held-out batch. pgd_acc: PGD accuracy.
        best_pgd_acc: best PGD accuracy of the unflagged checks so far (this one included).
        co: whether CO is flagged. reason: which rule fired (``None`` when not flagged).
        improved: this check set a new best PGD accuracy (the trainer snapshots the state).
    """

    fgsm_acc: float
    pgd_acc: float
    best_pgd_acc: float
    co: bool
    reason: str | None = None
    improved: bool = False


StrengthenPolicy = Literal["first", "all"] | Callable[[Sequence[Component]], str | None]


def _number(name: str, v: Any, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
        raise RobustfastError(f"COGuard({name}={v!r}): a number in ({lo:g}, {hi:g}]")


class COGuard:
    """Detect catastrophic overfitting on a fixed held-out batch and optionally roll back (see module docs).

    Args:
        x: held-out images in ``[0, 1]`` (a few hundred suffice; e.g. 256 as in GradAlign's monitoring), disjoint
            from the test points you report.
        y: their labels.
        eps: radius of the FGSM/PGD probes (default ``None``: the training attack's ε).
        drop: CO when PGD accuracy falls this much below its best (default 0.2, Wong et al.).
        gap: CO when FGSM accuracy exceeds PGD accuracy by this much (default 0.3; ``None`` disables).
        tolerance: margin of the gradual-collapse rule (default 0.05; ``None`` disables the rule).
        patience: consecutive checks the gradual-collapse rule needs (default 2).
        every_steps: also check every this many batches, aborting the epoch on CO (only with ``on_co``
            ``"rollback"`` or ``"stop"``; default ``None``: epoch ends only). Use it for long epochs.
        on_co: ``"flag"`` (default), ``"rollback"`` or ``"stop"``.
        strengthen: which parts strengthen on rollback: ``"first"`` (default: the first part that can, in the
            order regularizers, training loss, attack, plugins), ``"all"``, or a callable
            ``(components) -> description | None``.
        max_rollbacks: cap on rollbacks that strengthen and continue (default 3); a CO after them ends training on
            the best state.
        pgd_steps: PGD iterations (default 10, α = ε/4, 1 restart).
        seed: seed of the PGD random start (default 0), so checks are comparable across epochs.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        eps: float | None = None,
        drop: float = 0.2,
        gap: float | None = 0.3,
        tolerance: float | None = 0.05,
        patience: int = 2,
        every_steps: int | None = None,
        on_co: Literal["flag", "rollback", "stop"] = "flag",
        strengthen: StrengthenPolicy = "first",
        max_rollbacks: int = 3,
        pgd_steps: int = 10,
        seed: int = 0,
    ) -> None:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.dim() < 2 or y.shape != x.shape[:1]:
            raise RobustfastError("COGuard(x, y): pass a held-out batch x of shape (N, ...) and labels y of shape (N,)")
        if x.shape[0] == 0:
            raise RobustfastError("COGuard(x, y): the held-out batch is empty")
        if not x.is_floating_point() or not torch.isfinite(x).all() or x.min() < -1e-4 or x.max() > 1 + 1e-4:
            raise RobustfastError("COGuard(x, ...): held-out images must be finite floats in [0, 1]")
        _number("drop", drop, 0.0, 1.0)
        for name, v in (("gap", gap), ("tolerance", tolerance)):
            if v is not None:
                _number(name, v, 0.0, 1.0)
        if on_co not in ("flag", "rollback", "stop"):
            raise RobustfastError(f"COGuard(on_co={on_co!r}): choose 'flag', 'rollback' or 'stop'")
        if every_steps is not None and (
            isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1
        ):
            raise RobustfastError(f"COGuard(every_steps={every_steps!r}): a positive integer or None")
        if strengthen not in ("first", "all") and not callable(strengthen):
            raise RobustfastError("COGuard(strengthen=...): 'first', 'all' or a callable (components) -> str | None")
        for name, v, lo in (
            ("patience", patience, 1),
            ("pgd_steps", pgd_steps, 1),
            ("max_rollbacks", max_rollbacks, 0),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise RobustfastError(f"COGuard({name}={v!r}): an integer >= {lo}")
        self.x, self.y = x.detach(), y.detach().long()
        self.eps, self.drop, self.gap, self.tolerance, self.patience = eps, drop, gap, tolerance, patience
        self.every_steps, self.on_co, self.max_rollbacks = every_steps, on_co, max_rollbacks
        self.strengthen = strengthen
        self.pgd_steps, self.seed = pgd_steps, seed
        self.best_pgd_acc = 0.0
        self.best_gap = 0.0
        self.best_epoch: int | None = None
        self.n_rollbacks = 0
        self.streak = 0
        self.checks: list[COCheck] = []

    def check(
        self, model: nn.Module, eps: float, device: torch.device | None = None, *, update: bool = True
    ) -> COCheck:
        """Measure FGSM and PGD accuracy of ``model`` on the held-out batch and apply the three rules.

        ``update=False`` (the trainer's mid-epoch checks) only detects: the best accuracy, the gap at the best and the
        gradual rule's streak are left alone, so the best state is always one the trainer could snapshot (an epoch
        end).
        """
        from ..evaluation.diagnostics import fgsm_pgd_gap

        eps = self.eps if self.eps is not None else eps
        x = self.x.to(device) if device is not None else self.x
        with torch.autocast(x.device.type, enabled=False):
            m = fgsm_pgd_gap(model, x, self.y.to(x.device), eps, steps=self.pgd_steps, seed=self.seed)
        f, p = m["fgsm_acc"], m["pgd_acc"]
        reason = None
        if p < self.best_pgd_acc - self.drop:
            reason = f"PGD accuracy {p:.3f} fell more than {self.drop:g} below its best {self.best_pgd_acc:.3f}"
        elif self.gap is not None and f - p > self.gap:
            reason = f"FGSM accuracy {f:.3f} exceeds PGD accuracy {p:.3f} by more than {self.gap:g}"
        elif self.tolerance is not None:
            declining = p < self.best_pgd_acc - self.tolerance and f - p > self.best_gap + self.tolerance
            streak = self.streak + 1 if declining else 0
            if update:
                self.streak = streak
            if streak >= self.patience:
                reason = (f"PGD accuracy stayed below its best {self.best_pgd_acc:.3f} and the FGSM-PGD gap above "
                          f"{self.best_gap:.3f} by more than {self.tolerance:g} for {streak} checks")  # fmt: skip
        improved = reason is None and p > self.best_pgd_acc
        if update and improved:
            self.best_pgd_acc, self.best_gap = p, f - p
        if update and reason is not None:
            self.streak = 0
        result = COCheck(f, p, self.best_pgd_acc, reason is not None, reason, improved)
        self.checks.append(result)
        return result

    def strengthen_components(self, components: Sequence[Component]) -> str | None:
        """Apply the ``strengthen`` policy to the method's parts; returns what changed (``None``: nothing)."""
        if callable(self.strengthen):
            return self.strengthen(components)
        kinds = (Regularizer, TrainingLoss)
        ordered = [c for c in components if isinstance(c, Regularizer)]
        ordered += [c for c in components if isinstance(c, TrainingLoss)]
        ordered += [c for c in components if not isinstance(c, kinds)]
        changes = []
        for c in ordered:
            change = c.strengthen()
            if change is not None:
                changes.append(f"{type(c).__name__}: {change}")
                if self.strengthen == "first":
                    break
        return "; ".join(changes) or None

    def state_dict(self) -> dict[str, Any]:
        """The guard's running values (plain values)."""
        return {"best_pgd_acc": self.best_pgd_acc, "best_gap": self.best_gap, "best_epoch": self.best_epoch,
                "n_rollbacks": self.n_rollbacks, "streak": self.streak}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.best_pgd_acc, self.n_rollbacks = float(state["best_pgd_acc"]), int(state["n_rollbacks"])
        self.best_gap, self.streak = float(state.get("best_gap", 0.0)), int(state.get("streak", 0))
        self.best_epoch = state.get("best_epoch")
