"""robustfast: fast, reliable adversarial training for PyTorch.

>>> from robustfast import ZeroGrad, GradAlign

Every attack, regularizer, training loss and plugin registered by a method file is exported here under its class name,
so a new method needs no edit of this module; functional kernels live in :mod:`robustfast.functional`.
"""

from . import attacks as _attacks
from . import data, functional, losses, models
from . import methods as _methods
from . import regularizers as _regularizers
from .attacks import Attack, create_attack, least_likely, list_attacks
from .component import Component, ExampleMemory, create_plugin, list_plugins
from .context import StepContext
from .errors import GradientMaskingWarning, RobustfastError
from .evaluation import EvaluationReport, evaluate
from .losses import TrainingLoss, create_loss, list_losses
from .modes import ModePolicy, model_mode
from .regularizers import Regularizer, create_regularizer, list_regularizers
from .rng import SeededRNG
from .training import EMA, SWA, AdversarialTrainer, COGuard, Cyclic, OneCycle, Piecewise, adversarial_step

__version__ = "0.1.0"


def _method_classes() -> dict[str, type]:
    """Every registered attack, regularizer, training loss and plugin class, by class name."""
    from .attacks.base import ATTACKS
    from .component import PLUGINS
    from .losses import LOSSES
    from .regularizers.base import REGULARIZERS

    out: dict[str, type] = {}
    for registry in (ATTACKS, REGULARIZERS, LOSSES, PLUGINS):
        for name in registry.list():
            obj = registry.get(name)
            out[obj.__name__] = obj
    return out


_METHODS = _method_classes()
globals().update(_METHODS)

__all__ = [
    "EMA",
    "SWA",
    "AdversarialTrainer",
    "Attack",
    "COGuard",
    "Component",
    "Cyclic",
    "EvaluationReport",
    "ExampleMemory",
    "GradientMaskingWarning",
    "ModePolicy",
    "OneCycle",
    "Piecewise",
    "Regularizer",
    "RobustfastError",
    "SeededRNG",
    "StepContext",
    "TrainingLoss",
    "__version__",
    "adversarial_step",
    "create_attack",
    "create_loss",
    "create_plugin",
    "create_regularizer",
    "data",
    "evaluate",
    "functional",
    "least_likely",
    "list_attacks",
    "list_losses",
    "list_plugins",
    "list_regularizers",
    "losses",
    "model_mode",
    "models",
]
__all__ += sorted(set(_METHODS) - set(__all__))
del _attacks, _methods, _regularizers
