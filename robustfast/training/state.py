"""The trainer's state: what a checkpoint holds, how it is checked against the trainer, and how it is restored.

One dictionary of tensors and plain values (``torch.load(weights_only=True)`` reads it): the model, optimizer,
scheduler, scaler, averagers, the guard's running values, every method part's own state (by slot: ``attack``,
``criterion``, ``regularizer0``...), the history, and the random generators (global and the loaders'). Under DDP the
method parts and the generators differ between ranks: a checkpoint gathers every rank's under ``"ranks"`` and each
rank restores its own. A checkpoint records the number of processes and of batches per epoch, so a resume that
would misalign the per-rank streams or the per-iteration schedule is refused with what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..attacks.base import Attack
from ..component import Component
from ..errors import RobustfastError
from .checkpoint import capture_rng, restore_rng
from .distributed import gather, is_distributed, rank, world_size
from .history import History

if TYPE_CHECKING:
    from .trainer import AdversarialTrainer

__all__ = ["FORMAT", "PER_RANK", "check_state", "gather_ranks", "load_trainer_state", "own_rank", "trainer_state"]

#: Version of the checkpoint layout (3: per-rank parts, the number of processes and of batches per epoch).
FORMAT = 3
#: The parts of a trainer state that differ between DDP ranks (each rank saves and restores its own).
PER_RANK = ("components", "rng")


def component_slots(trainer: AdversarialTrainer) -> dict[str, Component | None]:
    """The method's parts by slot name (the checkpoint's keys): attack, criterion, regularizerK, pluginK."""
    slots: dict[str, Component | None] = {"attack": trainer.attack, "criterion": trainer.criterion}
    slots.update({f"regularizer{i}": r for i, r in enumerate(trainer.regularizers)})
    slots.update({f"plugin{i}": p for i, p in enumerate(trainer.plugins)})
    if isinstance(trainer.val_attack, Attack):
        slots["val_attack"] = trainer.val_attack
    return slots


def trainer_state(trainer: AdversarialTrainer, next_epoch: int) -> dict[str, Any]:
    """This rank's state, to resume before epoch ``next_epoch``."""
    comps = {k: None if c is None else {"class": type(c).__name__, "state": c.state_dict()}
             for k, c in component_slots(trainer).items()}  # fmt: skip
    return {
        "format": FORMAT,
        "epoch": next_epoch,
        "step": trainer.step,
        "world_size": world_size(),
        "batches_per_epoch": trainer.batches_per_epoch,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scaler": trainer.scaler.state_dict(),
        "averagers": [{"class": type(a).__name__, "state": a.state_dict()} for a in trainer.averagers],
        "co_guard": trainer.co_guard.state_dict() if trainer.co_guard is not None else None,
        "components": comps,
        "history": trainer.history.state_dict(),
        "rng": capture_rng([trainer.train_loader]),
    }


def gather_ranks(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every rank's own parts under ``"ranks"`` (a collective call under DDP; unchanged without)."""
    if not is_distributed():
        return state
    return {**state, "ranks": gather({k: state[k] for k in PER_RANK})}


def own_rank(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with this rank's own parts in place of rank 0's (``state`` itself when it has no ``"ranks"``)."""
    if "ranks" not in state:
        return state
    return {**{k: v for k, v in state.items() if k != "ranks"}, **state["ranks"][rank()]}


def load_trainer_state(
    trainer: AdversarialTrainer, state: dict[str, Any], *, load_history: bool = True, load_guard: bool = True
) -> None:
    """Restore :func:`trainer_state` into ``trainer`` (after :func:`check_state`)."""
    state = own_rank(check_state(trainer, state))
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError:
        from ..models.factory import weights_mismatch

        why = weights_mismatch(trainer.model, state["model"])
        raise RobustfastError(f"the checkpoint's weights do not fit this model ({why}); resume with the model the "
                              "run was trained with") from None  # fmt: skip
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None and state["lr_scheduler"] is not None:
        trainer.scheduler.load_state_dict(state["lr_scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    for a, s in zip(trainer.averagers, state["averagers"]):
        a.load_state_dict(s["state"], trainer.model)
    if load_guard and trainer.co_guard is not None and state["co_guard"] is not None:
        trainer.co_guard.load_state_dict(state["co_guard"])
    for key, c in component_slots(trainer).items():
        saved = state["components"].get(key)
        if c is not None and saved is not None:
            c.load_state_dict(saved["state"])
    if load_history:
        trainer.history = History(state["history"])
    trainer.epoch, trainer.step = int(state["epoch"]), int(state["step"])
    restore_rng(state["rng"], [trainer.train_loader])


def check_state(trainer: AdversarialTrainer, state: Any) -> dict[str, Any]:
    """Return ``state`` when ``trainer`` can resume from it; otherwise raise, naming the difference and the fix."""
    if not isinstance(state, dict) or "model" not in state or "components" not in state:
        tensors = isinstance(state, dict) and state and all(isinstance(v, Tensor) for v in state.values())
        what = "a plain model state_dict (weights only)" if tensors else "not a trainer checkpoint"
        raise RobustfastError(
            f"this file is {what}; fit(resume=...) needs a checkpoint written by AdversarialTrainer "
            "(checkpoint_dir/last.pt). To start from saved weights, load them into the model first "
            "(robustfast.models.load_weights(model, path)) and call fit() without resume"
        )
    if state.get("format") != FORMAT:
        raise RobustfastError(f"checkpoint format {state.get('format')!r} is not {FORMAT}; it was written by another "
                              "robustfast version: start a new run")  # fmt: skip
    saved_world, world = int(state.get("world_size", 1)), world_size()
    if saved_world != world:
        raise RobustfastError(
            f"the checkpoint was written by a run of {saved_world} process(es) and this run has {world}: each "
            "process's random streams and the per-iteration learning-rate schedule depend on it. Resume with "
            f"{saved_world} process(es) (torchrun --nproc_per_node={saved_world} ...), or start a new run"
        )
    saved_n = int(state.get("batches_per_epoch", 0))
    if saved_n and trainer.batches_per_epoch and saved_n != trainer.batches_per_epoch:
        raise RobustfastError(
            f"the checkpoint's run had {saved_n} training batches per epoch and this loader has "
            f"{trainer.batches_per_epoch} (another batch size, dataset or number of processes): the per-iteration "
            "learning-rate schedule would be misaligned. Resume with the loader the run was trained with"
        )
    mine = {k: None if c is None else type(c).__name__ for k, c in component_slots(trainer).items()}
    saved = {k: None if v is None else v["class"] for k, v in state["components"].items()}
    if mine != saved:

        def fmt(d: dict[str, Any]) -> str:
            return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None) or "none"

        raise RobustfastError(f"the checkpoint was saved by another method set-up ({fmt(saved)}) than this "
                              f"trainer's ({fmt(mine)}); resume with the same attack, loss, regularizers and "
                              "plugins")  # fmt: skip
    names = [type(a).__name__ for a in trainer.averagers]
    if [a["class"] for a in state["averagers"]] != names:
        raise RobustfastError("the checkpoint has different weight averagers than this trainer "
                              f"({[a['class'] for a in state['averagers']]} vs {names})")  # fmt: skip
    return state
