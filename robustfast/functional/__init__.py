"""Functional kernels, as ``torch.optim`` pairs ``SGD`` with ``sgd``: each attack's algorithm as a plain function.

``robustfast.functional.fgsm(model, x, y, *, eps)`` returns the perturbation ``δ`` (with ``x + δ ∈ [0, 1]``),
for users with their own loop; the attack classes call these same functions. The model runs in whatever mode
the caller left it in, and no parameter ``.grad`` is written. Kernels are listed by the ``@kernel`` decorator
in their method's file, so a new method's kernel appears here without editing this module.
"""

from __future__ import annotations

from .. import attacks as _attacks  # noqa: F401  (imports every attack file, which registers its kernel)
from .. import methods as _methods  # noqa: F401  (and every multi-part method file)
from ..attacks.base import KERNELS

__all__ = sorted(KERNELS)
globals().update(KERNELS)
