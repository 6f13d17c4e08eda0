"""Attacks: torchattacks-style classes for fast adversarial training and evaluation.

Every module of this package is imported here, so an attack registers itself by living in a file of its own
(``@register_attack("name")``); its class and functional kernel are re-exported from this package.
"""

from .._discover import import_submodules
from .base import (
    ATTACKS,
    KERNELS,
    Attack,
    GradFn,
    Magnitude,
    create_attack,
    kernel,
    least_likely,
    list_attacks,
    loss_grad_fn,
    register_attack,
)

__all__ = [
    "ATTACKS",
    "KERNELS",
    "Attack",
    "GradFn",
    "Magnitude",
    "create_attack",
    "kernel",
    "least_likely",
    "list_attacks",
    "loss_grad_fn",
    "register_attack",
]
__all__ += import_submodules(__name__, globals(), skip=("base",))
