"""Methods made of several parts (an attack, a training loss, a regularizer, a trainer plugin), one file each.

Every module of this package is imported here, so a method registers its parts (``@register_attack``,
``@register_loss``, ``@register_regularizer``, ``@register_plugin``, ``@kernel``) by living in a file of its own;
its public names are re-exported from this package and from ``robustfast``. Methods with a single part live with
their kind (``robustfast.attacks``, ``robustfast.regularizers``).
"""

from .._discover import import_submodules

__all__: list[str] = []
__all__ += import_submodules(__name__, globals())
