"""Catastrophic-overfitting (CO) guard: FGSM vs PGD accuracy of the raw model on held-out points, with rollback.

**Detection.** At every check (each epoch end, or every ``every_steps`` optimizer steps) the *raw* model (never
a weight average, which can hide CO: FastAT_Benchmark picked an averaged model with 49% PGD-10 accuracy whose
AutoAttack accuracy was 3%), in eval mode and fp32, is attacked on the same held-out batch with FGSM (from the
clean point, step ε) and PGD (``pgd_steps`` steps, α = ε/4, seeded random start), by
:func:`robustfast.evaluation.fgsm_pgd_gap`. CO is flagged when

* **a sudden drop**: PGD accuracy fell more than ``drop`` below the best seen (Wong et al.'s rule: 0.2);
* **a large gap while PGD accuracy falls**: FGSM accuracy exceeds PGD accuracy by more than ``gap`` (GradAlign
  §2.5(c): at CO, FGSM accuracy jumps while PGD accuracy collapses) *and* PGD accuracy is more than ``tolerance``
  (0 when ``None``) below its best, or nothing robust was checked yet (CO from the start, e.g. FGSM at a large ε
  right after the warm-up). Otherwise a large gap alone is not CO: at a large ε a healthy single-step run (RS on
  Fashion-MNIST at ε = 0.3) keeps FGSM accuracy 0.3–0.5 above PGD accuracy while PGD accuracy still rises
  every epoch, and rolling it back to an earlier, less robust state can only lose;
* **a gradual collapse**: for ``patience`` consecutive checks, PGD accuracy stayed more than ``tolerance`` below
  its best *and* the FGSM−PGD gap stayed more than ``tolerance`` above the gap at the best check. Both together
  are CO's signature; an ordinary dip (a high learning rate, noise) lowers FGSM and PGD accuracy together. The best
  is the maximum of many noisy checks (a standard error of about 3 points on 256 points), so a healthy long run
  often sits 5 points below it for two checks in a row: ``patience`` is 3 (with 2, 4 of 10 healthy N-FGSM and
  PGD-10 runs of 100 epochs on digits16 were flagged; with 3 none, and each collapsed run of the guard benchmark
  that 2 flagged is still flagged; ``docs/benchmarks.md``).

**Policy** (``on_co``; carried out by :class:`robustfast.training.rollback.GuardPolicy`): ``"flag"`` records
``co=True`` and continues; ``"rollback"`` restores the **best** state seen (highest guard PGD accuracy: model,
optimizer, scheduler, scaler, averagers, RNGs, every method's own state), lets the method strengthen itself
(:meth:`robustfast.component.Component.strengthen`: a larger λ for GradAlign, a larger q for ZeroGrad, noise or a
smaller step for FGSM...) and continues; ``"stop"`` ends training. Strengthening accumulates across rollbacks and is
bounded (each part's ``max_strength``: a doubled λ reaches at most 4× its start). With nothing (left) to strengthen,
training ends on the restored best state. At most ``max_rollbacks`` rollbacks happen; a further CO restores the
best state once more and ends training there (a run never ends collapsed; before any epoch passed a check there is
no best state, and CO is only flagged).

**Ending on the best checked state** (``restore_best``, on by default with ``"rollback"``): when training ends with
the last check more than ``restore_tolerance`` below the best one (a decline without CO's signature, e.g. an
over-regularized run), the best checked weights (and weight averages) are restored, recorded in the history
(``restored_best_epoch``) and announced. The default tolerance is 0: a run ends on its best checked state (early
stopping on the held-out PGD accuracy, as Rice et al. 2020 recommend). A tolerance lets a last check that is
within noise of the best stand, but the held-out measurement cannot tell a 3-point decline from noise: with 0.03,
guarded runs ended up to 6.4 points (test PGD-20) below their best checked epoch; with 0 none ends more than 3 below
(the worst, −2.2, is a last check level with the best), and against the *best epoch of the test curve* runs end
slightly higher on average (−1.1 against −1.3 points, 120 runs, replayed).

**Under DDP** every rank gets rank 0's BatchNorm statistics before a check, measures its share of the held-out
batch and the counts are summed over ranks, so every rank takes the same decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._checks import as_magnitude, check_choice, check_int, check_number
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


class COGuard:
    """Detect catastrophic overfitting on a fixed held-out batch and optionally roll back (see module docs).

    Args:
        x: held-out images in ``[0, 1]`` (a few hundred suffice; e.g. 256 as in GradAlign's monitoring), disjoint
            from the test points you report.
        y: their labels.
        eps: radius of the FGSM/PGD probes (default ``None``: the training attack's ε).
        drop: CO when PGD accuracy falls this much below its best (default 0.2, Wong et al.).
        gap: CO when FGSM accuracy exceeds PGD accuracy by this much while PGD accuracy is more than ``tolerance``
            below its best or no check has had PGD accuracy above 0 yet (default 0.3; ``None`` disables).
        tolerance: margin of the gradual-collapse rule (default 0.05; ``None`` disables the rule).
        patience: consecutive checks the gradual-collapse rule needs (default 3; 2 raises false alarms on long runs,
            module docs).
        every_steps: also check every this many batches, aborting the epoch on CO (only with ``on_co``
            ``"rollback"`` or ``"stop"``; default ``None``: epoch ends only). Use it for long epochs.
        on_co: ``"flag"`` (default), ``"rollback"`` or ``"stop"``.
        strengthen: which parts strengthen on rollback: ``"first"`` (default: the first part that can, in the
            order regularizers, training loss, attack, plugins), ``"all"``, or a callable
            ``(components) -> description | None``.
        max_rollbacks: cap on rollbacks that strengthen and continue (default 3); a CO after them ends training on
            the best state.
        restore_best: at the end of training, restore the best checked state when the last check is more than
            ``restore_tolerance`` below it (default ``None``: on with ``on_co="rollback"``, off otherwise).
        restore_tolerance: how far (in PGD accuracy on the held-out batch) the last check may fall below the best
            before ``restore_best`` acts (default 0: any fall restores the best checked state; module docs).
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
        patience: int = 3,
        every_steps: int | None = None,
        on_co: Literal["flag", "rollback", "stop"] = "flag",
        strengthen: StrengthenPolicy = "first",
        max_rollbacks: int = 3,
        restore_best: bool | None = None,
        restore_tolerance: float = 0.0,
        pgd_steps: int = 10,
        seed: int = 0,
    ) -> None:
        name = "COGuard"
        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.dim() < 2 or y.shape != x.shape[:1]:
            raise RobustfastError("COGuard(x, y): pass a held-out batch x of shape (N, ...) and labels y of shape (N,)")
        if x.shape[0] == 0:
            raise RobustfastError("COGuard(x, y): the held-out batch is empty")
        if not x.is_floating_point() or not torch.isfinite(x).all() or x.min() < -1e-4 or x.max() > 1 + 1e-4:
            raise RobustfastError("COGuard(x, ...): held-out images must be finite floats in [0, 1]")
        if y.is_floating_point() or y.dtype == torch.bool or (y.numel() and int(y.min()) < 0):
            raise RobustfastError("COGuard(..., y): labels must be integer class indices >= 0")
        eps = as_magnitude(name, "eps", eps)
        if eps == 0:
            raise RobustfastError("COGuard(eps=0): the probes need a radius > 0 (or None: the training attack's ε)")
        check_number(name, "drop", drop, 0.0, 1.0, lo_open=True)
        check_number(name, "gap", gap, 0.0, 1.0, lo_open=True, allow_none=True)
        check_number(name, "tolerance", tolerance, 0.0, 1.0, lo_open=True, allow_none=True)
        check_number(name, "restore_tolerance", restore_tolerance, 0.0, 1.0)
        check_choice(name, "on_co", on_co, ("flag", "rollback", "stop"))
        check_int(name, "every_steps", every_steps, 1, allow_none=True)
        if strengthen not in ("first", "all") and not callable(strengthen):
            raise RobustfastError("COGuard(strengthen=...): 'first', 'all' or a callable (components) -> str | None")
        check_int(name, "patience", patience, 1)
        check_int(name, "pgd_steps", pgd_steps, 1)
        check_int(name, "max_rollbacks", max_rollbacks, 0)
        check_int(name, "seed", seed)
        if restore_best is not None and not isinstance(restore_best, bool):
            raise RobustfastError(f"COGuard(restore_best={restore_best!r}): True, False or None")
        self.x, self.y = x.detach(), y.detach().long()
        self.eps, self.drop, self.gap, self.tolerance, self.patience = eps, drop, gap, tolerance, patience
        self.every_steps, self.on_co, self.max_rollbacks = every_steps, on_co, max_rollbacks
        self.restore_best = on_co == "rollback" if restore_best is None else restore_best
        self.restore_tolerance = float(restore_tolerance)
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
        eps = self.eps if self.eps is not None else eps
        f, p = self._measure(model, eps, device)
        return self.judge(f, p, update=update)

    def judge(self, fgsm_acc: float, pgd_acc: float, *, update: bool = True) -> COCheck:
        """Apply the three rules to one measurement (FGSM and PGD accuracy on the held-out batch) and record it.

        :meth:`check` measures, then judges; calling ``judge`` on recorded measurements replays the guard's
        decisions exactly (the benchmarks replay flag-mode runs this way). ``update`` as in :meth:`check`.
        """
        f, p = float(fgsm_acc), float(pgd_acc)
        falling = p < self.best_pgd_acc - (self.tolerance or 0.0)
        no_best = self.best_pgd_acc <= 0.0  # nothing robust checked yet: a large gap alone is CO from the start
        reason = None
        if p < self.best_pgd_acc - self.drop:
            reason = f"PGD accuracy {p:.3f} fell more than {self.drop:g} below its best {self.best_pgd_acc:.3f}"
        elif self.gap is not None and f - p > self.gap and (falling or no_best):
            reason = (f"FGSM accuracy {f:.3f} exceeds PGD accuracy {p:.3f} by more than {self.gap:g} while PGD "
                      f"accuracy is below its best {self.best_pgd_acc:.3f}")  # fmt: skip
        elif self.tolerance is not None:
            declining = falling and f - p > self.best_gap + self.tolerance
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

    def _measure(self, model: nn.Module, eps: float, device: torch.device | None) -> tuple[float, float]:
        """FGSM and PGD accuracy on the held-out batch; under DDP each rank takes every ``world``-th point and the
        counts are summed, so every rank gets the same numbers (the model's buffers are synced by the caller)."""
        from ..evaluation.diagnostics import fgsm_pgd_gap
        from .distributed import all_reduce_sum, is_distributed, rank, world_size

        x = self.x.to(device) if device is not None else self.x
        y = self.y.to(x.device)
        if is_distributed():
            x, y = x[rank() :: world_size()], y[rank() :: world_size()]
        n = x.shape[0]
        f = p = 0.0
        if n:
            with torch.autocast(x.device.type, enabled=False):
                m = fgsm_pgd_gap(model, x, y, eps, steps=self.pgd_steps, seed=self.seed)
            f, p = m["fgsm_acc"], m["pgd_acc"]
        if not is_distributed():
            return f, p
        fc, pc, total = all_reduce_sum([round(f * n), round(p * n), n], x.device)
        return fc / total, pc / total

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
        """The guard's running values (plain values; the best state itself is the trainer's ``best.pt``)."""
        return {"best_pgd_acc": self.best_pgd_acc, "best_gap": self.best_gap, "best_epoch": self.best_epoch,
                "n_rollbacks": self.n_rollbacks, "streak": self.streak}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.best_pgd_acc, self.n_rollbacks = float(state["best_pgd_acc"]), int(state["n_rollbacks"])
        self.best_gap, self.streak = float(state.get("best_gap", 0.0)), int(state.get("streak", 0))
        self.best_epoch = state.get("best_epoch")
