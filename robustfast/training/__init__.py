"""Training: the phased adversarial step and the ``AdversarialTrainer`` with its schedules, hooks and guard."""

from .averaging import EMA, SWA, recompute_bn
from .callbacks import HOOKS, HookSet, TensorBoardLogger
from .checkpoint import load_checkpoint, save_checkpoint
from .co_guard import COCheck, COGuard
from .history import History
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
    "Constant",
    "Cyclic",
    "History",
    "HookSet",
    "LinearWarmup",
    "OneCycle",
    "Piecewise",
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
