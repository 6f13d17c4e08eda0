r"""AWP: adversarial weight perturbation (Wu, Xia & Wang, "Adversarial Weight Perturbation Helps Robust
Generalization", NeurIPS 2020).

arXiv: https://arxiv.org/abs/2004.05884 · official code: https://github.com/csdongxian/AWP
(``AT_AWP/utils_awp.py``, ``AT_AWP/train_cifar10.py``, ``trades_AWP/utils_awp.py``,
``trades_AWP/train_trades_cifar.py``; read at commit a7acf5d).

After the attack, a proxy copy of the network takes one SGD step *up* the training loss at ``x_adv``; the
difference to the model, rescaled layer by layer to the size of each weight tensor, is the weight perturbation.
The update's gradient is taken at the perturbed weights, then the perturbation is removed:

.. math::
   g_l = \nabla_{w_l} \mathcal L(w; x_{adv}, y),\qquad
   v_l = \gamma\,\frac{\lVert w_l\rVert}{\lVert g_l\rVert}\,g_l \quad(\text{tensors with } \dim > 1),

.. math::
   w \leftarrow \big(w + v\big) - \eta\,\mathrm{update}\big(\nabla_w \mathcal L(w + v; x_{adv}, y)\big) - v .

Only the parameters with more than one dimension whose name contains ``weight`` are perturbed (convolution and
linear weights; no biases, no BatchNorm affine parameters), as the official ``diff_in_weights``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._checks import check_number
from ..component import Component, register_plugin
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import CrossEntropy, TrainingLoss, as_training_loss, at_least_fp32, create_loss
from ..ops import grads

__all__ = ["AWP", "awp_perturbation"]

#: The official ``EPS`` added to the norm of the proxy's step.
_EPS = 1e-20


def _perturbed_names(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The official selection: trainable parameters with ``dim > 1`` whose name contains ``weight``."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1 and "weight" in n]


def awp_perturbation(weights: list[Tensor], gradients: list[Tensor | None], gamma: float) -> list[Tensor]:
    r"""Layer-wise rescaled ascent direction: ``v_l = γ · ‖w_l‖ / (‖g_l‖ + 1e-20) · g_l`` (zero where ``g_l`` is None).

    ``g_l`` is the gradient of the loss to *increase*; the official code obtains it as the difference of one SGD
    step on ``−loss`` (``lr · g_l``), which the rescaling makes independent of the proxy's learning rate.
    Computed in fp32 at least.
    """
    out = []
    for w, g in zip(weights, gradients):
        if g is None:
            out.append(torch.zeros_like(w))
            continue
        g32 = g.float() if g.element_size() < 4 else g
        w32 = w.detach().float() if w.element_size() < 4 else w.detach()
        v = gamma * w32.norm() / (g32.norm() + _EPS) * g32
        out.append(v.to(w.dtype))
    return out


def _check_gamma(name: str, value: Any) -> float:
    return check_number("AWP", name, value, 0.0, hint="official: 0.01 for AT, 0.005 for TRADES")  # type: ignore[return-value]


@register_plugin("awp")
class AWP(Component):
    r"""Adversarial weight perturbation as a trainer plugin (``plugins=[AWP(model)]``).

    Per training step (from epoch ``warmup_epochs`` on): after the attack, the gradient ``g`` of the proxy loss at
    ``x_adv`` is taken with respect to the perturbed weights, ``v_l = γ‖w_l‖ g_l/‖g_l‖`` is added to each of them
    (:func:`awp_perturbation`), the training loss, backward and optimizer step run at ``w + v``, and ``v`` is
    subtracted right after the optimizer step (before weight averaging sees the weights). The weights are restored
    also when the step raises.

    **Proxy.** The official code copies the model (parameters and BatchNorm buffers) into a proxy, takes one
    plain-SGD step on ``−loss`` there and rescales the difference. Here the proxy pass runs on the model's own
    parameters with *copies* of its buffers (``torch.func.functional_call``), so the model's BatchNorm running
    statistics are untouched, as with the proxy, without a second copy of the network; the SGD step is replaced
    by its gradient, which the layer-wise rescaling makes equivalent (and free of the float32 round-off of
    ``(w + lr·g) − w``). The model is in the mode the trainer left it (``train()``, as the official proxy).

    Values the attack kept with their graph (e.g. the clean logits that TRADES's loss would reuse) are of the
    unperturbed weights: they are dropped, and the training loss recomputes them at ``w + v``, as the official
    loops do.

    **Proxy loss** (``loss``): ``"training"`` (default) evaluates the trainer's own training loss on a fresh step
    record (same ``x``, ``x_adv``, ``y``) through the proxy: cross-entropy at ``x_adv`` for AT-AWP,
    :class:`~robustfast.TRADESLoss` for TRADES-AWP, as each official script does (``−CE`` and ``−(CE + β·KL)``).
    Penalties (regularizers) are not included. A registered loss name (``"ce"``, ``"trades"``, ``"mart"``) or a
    :class:`~robustfast.TrainingLoss` fixes it instead.

    **DDP.** The proxy gradients are averaged over the ranks, so every rank applies the same perturbation (the
    official DataParallel code computes it on the whole batch). **AMP.** The proxy pass runs under the trainer's
    autocast; a non-finite proxy gradient (fp16 overflow) skips the perturbation for that step.

    Cost per step: one more forward and backward for ``"ce"`` (two forwards for TRADES's proxy loss), plus the
    in-place add and subtract. Saved state: ``gamma``.

    Strengthening after catastrophic overfitting: γ doubles, up to ``max_gamma`` (and at most twice). AWP targets
    robust overfitting, not catastrophic overfitting, and no paper or official code uses it against CO: a larger γ
    only asks for a flatter weight-loss landscape; too large a γ stops the network from fitting the adversarial
    examples (Yu et al., "Robust Weight Perturbation for Adversarial Training", IJCAI 2022), hence the cap.

    Example:
        ```python
        model = rf.models.create("preact_resnet18", normalize="cifar10")
        atk = rf.PGD(model, 8/255, alpha=2/255, steps=10)                    # AT-AWP (train-mode attack)
        trainer = AdversarialTrainer(model, atk, plugins=[rf.AWP(model, gamma=0.01)],
                                     lr_schedule=Piecewise(0.1, (100, 150)), lr=0.1)
        ```

    Args:
        model: the network being trained (the trainer's ``model``, unwrapped).
        gamma: relative size γ of the perturbation, ``‖v_l‖ = γ‖w_l‖`` (default 0.01: AT-AWP; TRADES-AWP
            uses 0.005). 0 disables it.
        warmup_epochs: number of epochs trained without AWP (default 0: AT-AWP). The official TRADES-AWP script
            applies AWP ``if epoch >= 10`` with epochs counted from 1, i.e. after 9 epochs: ``warmup_epochs=9``.
        loss: the proxy objective: ``"training"`` (default), a registered loss name, or a
            :class:`~robustfast.TrainingLoss`.
        max_gamma: the cap of strengthening (default ``max(2γ, 0.02)``).
    """

    state_attrs: ClassVar[tuple[str, ...]] = ("gamma",)

    def __init__(
        self,
        model: nn.Module,
        gamma: float = 0.01,
        *,
        warmup_epochs: int = 0,
        loss: str | TrainingLoss = "training",
        max_gamma: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise RobustfastError(f"AWP(model): expected the nn.Module being trained, got {type(model).__name__}")
        self.model = model
        self.gamma = _check_gamma("gamma", gamma)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise RobustfastError(f"AWP(warmup_epochs={warmup_epochs!r}): must be an integer >= 0 "
                                  "(TRADES-AWP: 9, i.e. AWP from the 10th epoch)")  # fmt: skip
        self.warmup_epochs = warmup_epochs
        if isinstance(loss, str):
            self.loss: TrainingLoss | None = None if loss == "training" else create_loss(loss)
        elif isinstance(loss, TrainingLoss):
            self.loss = loss
        else:
            raise RobustfastError(f"AWP(loss={loss!r}): use 'training', a registered loss name (e.g. 'ce', 'trades') "
                                  "or a TrainingLoss")  # fmt: skip
        self.max_gamma = _check_gamma("max_gamma", max(2 * self.gamma, 0.02) if max_gamma is None else max_gamma)
        self.skipped = 0  # steps whose proxy gradient was not finite (not saved: diagnostics only)
        self._pending: list[tuple[Tensor, Tensor]] | None = None
        if not _perturbed_names(model):
            raise RobustfastError("AWP(model): the model has no trainable weight with more than one dimension to "
                                  "perturb (AWP perturbs convolution and linear weights)")  # fmt: skip

    def __repr__(self) -> str:
        loss = "training" if self.loss is None else repr(self.loss)
        return f"AWP(gamma={self.gamma:g}, warmup_epochs={self.warmup_epochs}, loss={loss})"

    # ------------------------------------------------------------------ the perturbation
    def _proxy(self) -> Any:
        """The model as a function of its input, with copies of its buffers (BatchNorm statistics untouched)."""
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        model = self.model

        def net(x: Tensor) -> Tensor:
            return torch.func.functional_call(model, buffers, (x,), strict=False)

        return net

    def perturbation(
        self, ctx: StepContext, criterion: TrainingLoss | Any = None, *, amp: str | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """The weight perturbation for this step: ``[(parameter, v), ...]`` (nothing is applied).

        Args:
            ctx: the step record (``x``, ``y``, ``x_adv``).
            criterion: the training loss to ascend when ``loss="training"`` (default: cross-entropy at ``x_adv``).
            amp: ``"bf16"`` / ``"fp16"`` to run the proxy pass under autocast (the trainer passes its own).
        """
        if ctx.x_adv is None:
            raise RobustfastError("AWP: the step record has no x_adv; run the attack first (atk.craft(x, y))")
        loss_fn = self.loss if self.loss is not None else as_training_loss(criterion or CrossEntropy())
        named = _perturbed_names(self.model)
        params = [p for _, p in named]
        proxy_ctx = StepContext(x=ctx.x, y=ctx.y, index=ctx.index, model=self._proxy(), x_adv=ctx.x_adv,
                                requests=frozenset(loss_fn.requests), extras=dict(ctx.extras))  # fmt: skip
        device = ctx.x.device
        cast = (torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
                if amp in ("bf16", "fp16") else nullcontext())  # fmt: skip
        with torch.enable_grad(), cast:
            loss = loss_fn(proxy_ctx)
            gs = grads(at_least_fp32(loss), params, allow_unused=True)  # fp16: scaled against underflow
        gs = _all_reduce_mean(gs)
        if not all(g is None or bool(torch.isfinite(g).all()) for g in gs):
            self.skipped += 1
            return []
        return list(zip(params, awp_perturbation(params, gs, self.gamma)))

    def perturb(self, diff: list[tuple[Tensor, Tensor]]) -> None:
        """Add the perturbation to the weights (``w += v``); :meth:`restore` undoes it."""
        if self._pending is not None:
            raise RobustfastError("AWP.perturb: the weights are already perturbed; call restore() first")
        with torch.no_grad():
            for p, v in diff:
                p.add_(v)
        self._pending = diff

    def restore(self) -> None:
        """Subtract the pending perturbation (``w −= v``); nothing to do when none is applied."""
        diff, self._pending = self._pending, None
        if diff:
            with torch.no_grad():
                for p, v in diff:
                    p.sub_(v)

    @contextmanager
    def perturbed(self, ctx: StepContext, criterion: TrainingLoss | Any = None) -> Iterator[None]:
        """For your own loop: perturb the weights for ``ctx`` and restore them when the block ends.

        ```python
        ctx = atk.craft(x, y)
        with awp.perturbed(ctx, criterion):
            loss = criterion(ctx); opt.zero_grad(); loss.backward(); opt.step()
        ```
        """
        self.perturb(self.perturbation(ctx, criterion))
        ctx.detach_attack_values()
        try:
            yield
        finally:
            self.restore()

    # ------------------------------------------------------------------ trainer hooks
    @contextmanager
    def around_update(self, trainer: Any, ctx: StepContext) -> Iterator[None]:
        """Perturb the weights before the training loss (from epoch ``warmup_epochs`` on)."""
        if getattr(trainer, "model", self.model) is not self.model:
            raise RobustfastError("AWP(model): built on another model than the trainer's; pass the trainer's model")
        if self.gamma == 0 or int(getattr(trainer, "epoch", 0)) < self.warmup_epochs:
            yield
            return
        criterion = getattr(trainer, "criterion", None)
        self.perturb(self.perturbation(ctx, criterion, amp=getattr(trainer, "amp", None)))
        ctx.detach_attack_values()  # graphs the attack kept (e.g. TRADES's clean logits) are of the unperturbed w
        try:
            yield
        finally:
            self.restore()  # a no-op after on_after_optimizer_step; restores the weights when the step raised

    def on_after_optimizer_step(self) -> None:
        """Remove the perturbation right after the optimizer step (before weight averaging reads the weights)."""
        self.restore()

    def _strengthen(self) -> str | None:
        """γ doubles (0 → 0.005), up to ``max_gamma``."""
        if self.gamma >= self.max_gamma:
            return None
        old = self.gamma
        self.gamma = min(2 * old if old > 0 else 0.005, self.max_gamma)
        return f"gamma {old:g} -> {self.gamma:g}"


def _all_reduce_mean(gs: list[Tensor | None]) -> list[Tensor | None]:
    """Average the proxy gradients over the ranks in one all-reduce (identity without a process group).

    Which gradients are ``None`` depends only on the graph, the same on every rank.
    """
    from ..training.distributed import is_distributed, world_size

    present = [g for g in gs if g is not None]
    if not present or not is_distributed() or world_size() == 1:
        return gs
    import torch.distributed as dist

    flat = torch.cat([g.detach().reshape(-1) for g in present])
    dist.all_reduce(flat)
    flat /= world_size()
    out: list[Tensor | None] = []
    offset = 0
    for g in gs:
        if g is None:
            out.append(None)
            continue
        out.append(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return out
