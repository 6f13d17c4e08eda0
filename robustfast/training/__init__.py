"""Training: the phased adversarial step and the ``AdversarialTrainer`` with its schedules, hooks and guard."""

from .averaging import EMA, SWA, recompute_bn
from .callbacks import HOOKS, Callback, HookSet
from .checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from .co_guard import COCheck, COGuard
from .history import History
from .loggers import EpochLogger, HistoryWriter, ProgressBar, TensorBoardLogger
from .rollback import GuardPolicy
from .schedules import Constant, Cyclic, LinearWarmup, OneCycle, Piecewise, Schedule
from .step import StepOutput, adversarial_step, craft, step_losses
from .trainer import AdversarialTrainer

__all__ = [
    "EMA",
    "HOOKS",
    "SWA",
    "AdversarialTrainer",
    "COCheck",
    "COGuard",
    "Callback",
    "Checkpointer",
    "Constant",
    "Cyclic",
    "EpochLogger",
    "GuardPolicy",
    "History",
    "HistoryWriter",
    "HookSet",
    "LinearWarmup",
    "OneCycle",
    "Piecewise",
    "ProgressBar",
    "Schedule",
    "StepOutput",
    "TensorBoardLogger",
    "adversarial_step",
    "craft",
    "load_checkpoint",
    "recompute_bn",
    "save_checkpoint",
    "step_losses",
]
