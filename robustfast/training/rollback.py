"""What the trainer does with the CO guard's verdicts: keep the best checked state, roll back, restore at the end.

:class:`~robustfast.training.co_guard.COGuard` measures and judges; :class:`GuardPolicy` acts on the trainer:

* it keeps a copy of the **best checked state** (the trainer's whole state at the epoch end with the best guard
  PGD accuracy; before the first check, the state training started from), which the checkpointer writes as
  ``best.pt`` so a resumed run rolls back exactly as the uninterrupted one would;
* **mid-epoch checks** (``every_steps``) only detect: they end the epoch early, and the verdict is taken at its end;
* on catastrophic overfitting with ``on_co="rollback"`` it **restores** the best state, replays the strengthening
  the parts had reached (strengthening accumulates across rollbacks), strengthens once more and lets the trainer
  redo the epochs from there; with nothing left to strengthen or no rollback left, training ends on the best state;
* when training ends with the last check more than ``restore_tolerance`` below the best (``restore_best``), it
  restores the best checked weights and weight averages.

Every decision is taken on numbers the guard summed over ranks, so under DDP every rank does the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .co_guard import COGuard
from .distributed import sync_buffers

if TYPE_CHECKING:
    from .trainer import AdversarialTrainer

__all__ = ["GuardPolicy"]


class GuardPolicy:
    """Carry out a :class:`COGuard`'s policy on an :class:`~robustfast.training.AdversarialTrainer` (see module docs).

    Attributes:
        guard: the guard (its rules, settings and running values).
        best_state: the trainer state (:meth:`AdversarialTrainer.state_dict`) at the best checked epoch end.
        best_changed: ``best_state`` changed since the checkpointer last wrote it.
        restored_at_end: the epoch restored by the end-of-training restore (``None``: none happened).
    """

    def __init__(self, guard: COGuard) -> None:
        self.guard = guard
        self.best_state: dict[str, Any] | None = None
        self.best_changed = False
        self.restored_at_end: int | None = None
        self._last: tuple[int, float] | None = None  # (epoch, PGD accuracy) of the last epoch-end check
        self._ended_on_best = False

    # ------------------------------------------------------------------ the trainer's calls
    def start_epoch(self, trainer: AdversarialTrainer) -> None:
        """Before an epoch: make sure there is a state to roll back to (the first one is the starting state)."""
        if self.best_state is None:
            self._keep(trainer, trainer.epoch)

    def mid_epoch(self, trainer: AdversarialTrainer, t: float, epochs: int) -> bool:
        """A check after some steps (``every_steps``); returns True when CO is seen (the epoch is then ended early).

        Only detects: the best state is always an epoch end, and the verdict is taken there.
        """
        if trainer.warming_up(t, epochs):
            return False
        res = self._check(trainer, update=False)
        if res.co:
            trainer.say(f"catastrophic overfitting detected mid-epoch {trainer.epoch + 1} at step {trainer.step} "
                        f"({res.reason}); ending the epoch early")  # fmt: skip
        return res.co

    def end_epoch(self, trainer: AdversarialTrainer, record: dict[str, Any], aborted: bool, epochs: int) -> bool:
        """The epoch-end check; records it in ``record`` and applies the policy. True: rolled back (redo epochs)."""
        g = self.guard
        if trainer.warming_up(trainer.epoch + 1, epochs):  # the guard probes at the full ε: it waits for the ramp
            record["co_skipped"] = "eps warm-up"
            return False
        res = self._check(trainer, update=True)
        co = res.co or aborted
        record.update(co_fgsm_acc=res.fgsm_acc, co_pgd_acc=res.pgd_acc, co=co)
        self._last = (trainer.epoch + 1, res.pgd_acc)
        if not co:
            if res.improved:
                self._keep(trainer, trainer.epoch + 1)
                g.best_epoch = trainer.epoch + 1
            return False
        record["co_reason"] = res.reason or "flagged mid-epoch"
        spare = g.n_rollbacks < g.max_rollbacks
        # without a spare rollback, ending on the best state needs one that passed a check (not the untrained start)
        if g.on_co == "rollback" and self.best_state is not None and (spare or g.best_epoch is not None):
            return self._roll_back(trainer, record)
        trainer.say(f"catastrophic overfitting at epoch {record['epoch']} ({record['co_reason']})"
                    + ("; stopping" if g.on_co == "stop" else ""))  # fmt: skip
        if g.on_co == "stop":
            trainer.should_stop = True
        return False

    def end_fit(self, trainer: AdversarialTrainer) -> None:
        """After the last epoch: restore the best checked weights when the run ended too far below them."""
        g = self.guard
        if not g.restore_best or self._ended_on_best or self.best_state is None or g.best_epoch is None:
            return
        if self._last is None or self._last[0] == g.best_epoch or not trainer.history:
            return
        last = self._last[1]
        if g.best_pgd_acc - last <= g.restore_tolerance:
            return
        state = self.best_state
        trainer.model.load_state_dict(state["model"])
        for a, s in zip(trainer.averagers, state["averagers"]):
            a.load_state_dict(s["state"], trainer.model)
        self.restored_at_end = g.best_epoch
        trainer.history[-1].update(restored_best_epoch=g.best_epoch)
        trainer.say(f"training ended {last:.3f} PGD accuracy on the held-out batch, more than {g.restore_tolerance:g} "
                    f"below the best check ({g.best_pgd_acc:.3f} after epoch {g.best_epoch}): restored the weights of "
                    f"epoch {g.best_epoch}")  # fmt: skip

    # ------------------------------------------------------------------ helpers
    def _check(self, trainer: AdversarialTrainer, *, update: bool) -> Any:
        sync_buffers(trainer.model)
        eps = trainer.attack.eps if trainer.attack is not None else 8 / 255
        return self.guard.check(trainer.model, eps, trainer.device, update=update)

    def _keep(self, trainer: AdversarialTrainer, next_epoch: int) -> None:
        self.best_state = trainer.snapshot(next_epoch)
        self.best_changed = True

    def _roll_back(self, trainer: AdversarialTrainer, record: dict[str, Any]) -> bool:
        """Restore the best state; strengthen while rollbacks remain, else end there. Returns True."""
        g = self.guard
        assert self.best_state is not None
        spare = g.n_rollbacks < g.max_rollbacks
        components = trainer.components
        levels = [c.strength for c in components]  # strengthening accumulates over rollbacks
        trainer.load_state_dict(self.best_state, load_history=False, load_guard=False)
        change = None
        if spare:
            for c, level in zip(components, levels):
                while c.strength < level and c.strengthen() is not None:
                    pass
            change = g.strengthen_components(components)
            g.n_rollbacks += 1
        record.update(rolled_back_to=trainer.epoch, strengthened=change)
        trainer.history.append(record)
        if not spare:
            what = f"max_rollbacks={g.max_rollbacks} used up: stopping on the best state"
        else:
            what = f"strengthened: {change}" if change else "nothing (left) to strengthen; stopping on the best state"
        if change is None:  # nothing (more) to strengthen: end with the restored best state
            trainer.should_stop = True
            self._ended_on_best = True
        else:
            self._keep(trainer, trainer.epoch)
        trainer.hooks.call("on_rollback", trainer=trainer, epoch=trainer.epoch, record=record)
        trainer.say(f"catastrophic overfitting at epoch {record['epoch']} ({record['co_reason']}): rolled back to "
                    f"epoch {trainer.epoch}, {what}")  # fmt: skip
        return True
