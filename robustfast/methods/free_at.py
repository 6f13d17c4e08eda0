r"""Free adversarial training, "Free-AT" (Shafahi et al., "Adversarial Training for Free!", NeurIPS 2019,
arXiv:1904.12843; official TF code ``ashafahi/free_adv_train``; PyTorch re-implementation by the FGSM-RS authors,
``locuslab/fast_adversarial``, ``CIFAR10/train_free.py``).

Each minibatch is replayed ``m`` times. One forward/backward per replay gives both the weight gradient (for the
optimizer step) and the input gradient :math:`g`, which updates a perturbation :math:`\delta` that is **never
reset**: it is carried across replays, minibatches and epochs (one buffer shaped like the batch):

.. math:: x_{adv} = \mathrm{clip}_{[0,1]}(x + \delta),\qquad
   \theta \leftarrow \theta - \eta\,\nabla_\theta \ell(x_{adv}, y),\qquad
   \delta \leftarrow \Pi\big(\delta + \epsilon\,\mathrm{sign}\,\nabla_x \ell(x_{adv}, y)\big)

where :math:`\Pi` clamps to the ε-box and then to the image box of the current :math:`x` (locuslab's code). Training
for :math:`E` passes over the data makes :math:`E\cdot m` optimizer steps per example: the papers divide the number
of epochs by ``m``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..attacks.base import Attack, GradFn, LossFn, Magnitude, kernel, loss_grad_fn, register_attack
from ..context import StepContext
from ..ops import clip_delta

__all__ = ["FreeAT", "free_at"]


def _free_update(delta: Tensor, grad: Tensor, x: Tensor, eps: float, step: float) -> Tensor:
    """Free-AT's δ update: ``Π(δ + step·sign g)``, clamped to the ε-box, then to the image box around ``x``."""
    return clip_delta(delta + step * grad.sign(), x, eps)


@kernel
def free_at(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    delta: Tensor | None = None,
    step: float | None = None,
    loss_fn: LossFn | None = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """One Free-AT replay's update of ``delta`` without the weight update (``step`` defaults to ``eps``).

    ``delta`` (default zeros) is first clamped to the image box around ``x``; the gradient is taken at
    ``x + delta`` and the new ``delta`` returned (``‖δ‖∞ ≤ eps``). From zeros this is FGSM with step ``step``;
    called ``k`` times on the same batch it is PGD-``k`` with step ``step`` and no random start. In training, the
    input gradient comes from the training backward instead (see :class:`FreeAT`).
    """
    grad = grad_fn or loss_grad_fn(model, x, y, loss_fn)
    d = clip_delta(torch.zeros_like(x) if delta is None else delta, x, eps)
    return _free_update(d, grad(d), x, eps, eps if step is None else step)


@register_attack("free_at", "free", "freeat", "free_adv")
class FreeAT(Attack):
    r"""Free adversarial training: a persistent δ updated from the training backward, each minibatch replayed ``m``
    times.

    **In the trainer** (``AdversarialTrainer``), ``replays = m`` makes each minibatch give ``m`` optimizer steps. Each
    replay, ``craft`` returns ``clamp01(x + δ)`` and asks for ``"adv_grad_graph"`` (it adds the request to the step
    record itself), so the training forward runs on a leaf tensor; after the training backward, the
    ``on_after_backward`` hook reads the input gradient of that same backward from ``ctx.adv_point.grad`` and updates
    ``δ ← clamp_box(clip_ε(δ + step·sign g))``. One forward and one backward per replay, as the official code: the
    input gradient is that of the whole training loss (criterion + penalties). In your own loop with
    :func:`~robustfast.training.adversarial_step`, call :meth:`update` with the step record after ``loss.backward()``.

    **The buffer** ``δ`` has the shape of the largest batch seen; it is never reset (official TF and locuslab code),
    so a new minibatch starts from the previous minibatch's perturbation. A smaller batch (the last one of an epoch)
    uses and updates the first ``n`` rows and leaves the others for the next batch (locuslab's ``delta[:n]``); a
    larger one extends the buffer with zeros; inputs of another shape reset it. ``δ`` is part of the attack's state
    (checkpoints, rollback). Under DDP each rank keeps its own ``δ`` (checkpoints store rank 0's).

    **Standalone** (``atk(x, y)``), there is no training backward: a call takes one gradient step from the stored
    ``δ`` (clamped to the new images' box) and returns ``x + δ``: FGSM with step ``step`` on the first call, and
    ``k`` calls on the same batch are PGD-``k`` without random start (the :func:`free_at` kernel).

    Deviations from the official code: the input is ``clamp01(x + δ)`` (the TF code clamps the input too; locuslab's
    first replay of a new minibatch can feed ``x + δ`` slightly outside the image box, since δ was clamped against
    the previous images); ``δ`` is clamped to the image box after each update, as in locuslab. FastAT_Benchmark's
    ``free_at`` resets δ for every minibatch, uses m = 4 and never anneals its learning rate (see
    docs/methods/free_at.md).

    Strengthening after catastrophic overfitting (Free-AT overfits at ε = 16/255, GradAlign's Table 4): the step
    shrinks by 0.8 per rollback, down to ε/2, by analogy with FGSM-RS (a smaller step keeps δ off the corners of
    the ε-box for longer, closer to PGD with small steps); ``m`` is left unchanged; cap: 3 steps (0.512× the step).

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``).
        m: replays per minibatch (default 8, both official codes' CIFAR-10 setting); the trainer's ``epochs`` are
            passes over the data, so the papers' ``N_ep / m`` rule applies (e.g. 10 passes at m = 8, locuslab).
        step: the δ step; ``None`` (default) means ``eps`` (official).
        **kwargs: ``loss_fn`` (standalone only: in training the gradient is the training loss's), ``bn_mode``,
            ``seed``, ``generator``, ``check_range``, ``targeted``, ``target_fn`` (see :class:`Attack`).
    """

    step = Magnitude(1.0, step=True)
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "m", "step")
    state_attrs: ClassVar[tuple[str, ...]] = ("delta", "step")
    max_strength: ClassVar[int] = 3

    def __init__(self, model: nn.Module, eps: float = 8 / 255, m: int = 8, *, step: float | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(model, eps, **kwargs)
        check_int("FreeAT", "m", m, 1, hint="m is the number of replays per minibatch; official: 8")
        self.m, self.step = m, step
        self.delta: Tensor | None = None
        self._standalone = False

    @property
    def replays(self) -> int:
        """Optimizer steps per minibatch (``m``), read by the trainer."""
        return self.m

    @property
    def randomized(self) -> bool:
        """Free-AT draws no random numbers (δ starts at zero)."""
        return False

    def __call__(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor:
        """Standalone use: one gradient step from the stored δ (see the class docs); returns ``x + δ``."""
        self._standalone = True
        try:
            return super().__call__(x, y, index)
        finally:
            self._standalone = False

    forward = __call__

    def _rows(self, x: Tensor) -> Tensor:
        """The first ``len(x)`` rows of the buffer, (re)allocated or extended as needed."""
        d, n = self.delta, x.shape[0]
        if d is None or d.shape[1:] != x.shape[1:]:
            d = torch.zeros_like(x)
        d = d.to(x.device, x.dtype)
        if d.shape[0] < n:
            d = torch.cat([d, torch.zeros_like(x[: n - d.shape[0]])])
        self.delta = d
        return d[:n]

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """Training: ``clamp01(x + δ)``, with ``"adv_grad_graph"`` requested; standalone: one step from ``δ``."""
        d = self._rows(x)
        if self._standalone:
            new = free_at(self.get_logits, x, y, eps=self.eps, delta=d, step=self.step, grad_fn=self.grad_fn(x, y, ctx))
            assert self.delta is not None
            self.delta[: x.shape[0]] = new
            return x + new
        ctx.requests = frozenset(ctx.requests) | {"adv_grad_graph"}
        ctx.extras["free_at"] = (self, self.eps, self.step)  # the radius and step in force (ε warm-up)
        return (x + d.clamp(-self.eps, self.eps)).clamp(0.0, 1.0)

    def update(self, ctx: StepContext) -> bool:
        """Update ``δ`` from the input gradient the training backward left in ``ctx.adv_point.grad``.

        Returns ``False`` (``δ`` unchanged) when there is none: the training loss never ran a forward at ``x_adv``
        (e.g. a clean-input criterion), or ``backward`` has not run.
        """
        point = ctx.adv_point
        if point is None or point.grad is None or self.delta is None:
            return False
        _, eps, step = ctx.extras.get("free_at", (self, self.eps, self.step))
        n = point.shape[0]
        rows = self.delta[:n]
        g = torch.nan_to_num(point.grad.to(rows.dtype), nan=0.0)  # an fp16 overflow step must not poison δ
        self.delta[:n] = _free_update(rows, g, ctx.x.to(rows.dtype), eps, step)
        return True

    def on_after_backward(self, out: Any) -> None:
        """Trainer hook: :meth:`update` from this step's record (only for records this attack crafted)."""
        ctx = out.context
        mine = ctx.extras.get("free_at")
        if mine is not None and mine[0] is self:
            self.update(ctx)

    def _strengthen(self) -> str | None:
        if self.step > self.eps / 2 + 1e-12:
            old, self.step = self.step, max(0.8 * self.step, self.eps / 2)
            return f"step {old:.4g} -> {self.step:.4g}"
        return None
