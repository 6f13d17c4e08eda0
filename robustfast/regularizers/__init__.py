"""Regularizers: weighted penalties composable with any attack (GradAlign, AdvLC, SEAT, CURE, GradNorm...).

Every module of this package is imported here, so a regularizer registers itself by living in a file of its own
(``@register_regularizer("name")``); its public names are re-exported from this package.
"""

from .._discover import import_submodules
from .base import REGULARIZERS, Regularizer, create_regularizer, list_regularizers, register_regularizer

__all__ = [
    "REGULARIZERS",
    "Regularizer",
    "create_regularizer",
    "list_regularizers",
    "register_regularizer",
]
__all__ += import_submodules(__name__, globals(), skip=("base",))
