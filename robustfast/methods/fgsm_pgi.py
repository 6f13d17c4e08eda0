r"""FGSM-PGI, prior-guided initialization (Jia et al., "Prior-Guided Adversarial Initialization for Fast Adversarial
Training", ECCV 2022, arXiv:2207.08859; official code ``jiaxiaojunQAQ/FGSM-PGI``, ``FGSM_MEP.py``).

The released code is the paper's **MEP** variant (momentum of all previous epochs): each example keeps a stored
perturbation :math:`\delta_0` (its *prior*) and a momentum :math:`m`, both reset every 40 epochs to a random corner
:math:`\pm\epsilon` and zero. Per step, with :math:`g = \nabla_\delta \tilde\ell(f(x+\delta_0), y)` the gradient of
the label-smoothed cross-entropy at the prior:

.. math:: \delta = \Pi\big(\delta_0 + \alpha\,\mathrm{sign}\, g\big),\qquad
   m \leftarrow \frac{g}{\lVert g\rVert_1} + \mu\, m,\qquad
   \delta_0 \leftarrow \Pi\big(\delta_0 + \alpha\,\mathrm{sign}\, m\big)

(:math:`\lVert g\rVert_1` over the whole batch, :math:`\mu = 0.3`, :math:`\alpha = \epsilon`, :math:`\Pi` the ε-box then
the image box), and the training loss is

.. math:: L = \tilde\ell\big(f(x+\delta), y\big) + \lambda\,\frac{1}{BC}\sum_{i,c}\big(f_c(x_i+\delta_i)
   - f_c(x_i + \delta_{0,i})\big)^2,\qquad \lambda = 10,

with :math:`\tilde\ell` the cross-entropy against soft labels 0.6 on the true class and 0.4/(C−1) on each other class,
and neither logit tensor detached.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..attacks.base import Attack, GradFn, LossFn, Magnitude, kernel, loss_grad_fn, register_attack
from ..component import ExampleMemory, register_request
from ..context import StepContext
from ..errors import RobustfastError
from ..losses import TrainingLoss, at_least_fp32, register_loss
from ..modes import policy_matches
from ..ops import bcast, clip_delta, input_grad, random_sign_like

__all__ = ["FGSMPGI", "PGILoss", "fgsm_pgi", "pgi_smoothed_ce"]

#: ``ctx.extras`` keys FGSMPGI publishes and PGILoss reads.
PRIOR_POINT, PRIOR_NET = "prior_point", "prior_net"
#: A request of this method's own: the attack keeps the logits at the prior point with their graph (PGILoss).
PRIOR_LOGITS = register_request("prior_logits", "FGSM-PGI's logits at the prior point x + δ0, with their graph")


def _check_factor(owner: str, factor: Any) -> float:
    ok = isinstance(factor, (int, float)) and not isinstance(factor, bool) and math.isfinite(factor)
    if not ok or not 0.0 < factor <= 1.0:
        raise RobustfastError(f"{owner}(factor={factor!r}): factor is the probability put on the true class, in "
                              "(0, 1] (official: 0.6; 1 = no smoothing)")  # fmt: skip
    return float(factor)


def pgi_smoothed_ce(logits: Tensor, labels: Tensor, factor: float = 0.6) -> Tensor:
    """Per-sample cross-entropy against FGSM-PGI's soft labels: ``factor`` on the true class and
    ``(1 − factor)/(C − 1)`` on each other class (official ``_label_smoothing``; ``factor = 0.6`` equals PyTorch's
    ``label_smoothing = 0.4·C/(C−1)``, not ``0.4``), computed in fp32 at least."""
    z = at_least_fp32(logits)
    n_classes = z.shape[1]
    if n_classes < 2:
        raise RobustfastError(f"pgi_smoothed_ce: need at least 2 classes, got logits of shape {tuple(z.shape)}")
    target = torch.full_like(z, (1.0 - factor) / (n_classes - 1))
    target.scatter_(1, labels[:, None].long(), factor)
    return -(target * z.log_softmax(1)).sum(1)


def _pgi_momentum(grad: Tensor, momentum: Tensor, decay: float) -> Tensor:
    """``g / ‖g‖₁ + decay·m`` with the L1 norm over the whole batch tensor (official); a zero gradient adds 0."""
    return grad / grad.abs().sum().clamp_min(torch.finfo(grad.dtype).tiny) + decay * momentum


@kernel
def fgsm_pgi(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    prior: Tensor | None = None,
    factor: float = 0.6,
    loss_fn: LossFn | None = None,
    generator: Any = None,
    grad_fn: GradFn | None = None,
) -> Tensor:
    """FGSM-PGI's training perturbation: one signed step of ``alpha`` (default ``eps``) from ``prior``.

    ``prior`` defaults to a random corner ``±min(alpha, eps)`` (the official initialization, what every example starts
    from after a reset). The step ascends :func:`pgi_smoothed_ce` (``loss_fn`` overrides it) at ``x + prior`` and is
    projected onto the ε-box and the image box. The prior update (momentum) is the class's job: see
    :class:`FGSMPGI`.
    """
    a = eps if alpha is None else alpha
    grad = grad_fn or loss_grad_fn(model, x, y, loss_fn or (lambda z, t: pgi_smoothed_ce(z, t, factor)))
    d0 = min(a, eps) * random_sign_like(x, generator) if prior is None else prior
    return clip_delta(d0 + a * grad(d0).sign(), x, eps)


def _sync_rows(index: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Under torch.distributed: every rank's ``(index, values...)`` rows concatenated (identity otherwise), so that
    per-example memories stay identical on all ranks whichever rank sees an example next epoch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return (index, *values)
    world = dist.get_world_size()
    n = torch.tensor([index.shape[0]], device=index.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    top = max(counts)
    out = []
    for t in (index, *values):
        padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)]))
    return tuple(out)


@register_attack("fgsm_pgi", "pgi", "fgsm_mep", "fgsmpgi")
class FGSMPGI(Attack):
    r"""FGSM from each example's prior-guided initialization (the released MEP variant of FGSM-PGI).

    Follows ``FGSM_MEP.py``: the example's stored prior ``δ0`` is the start; one forward at ``x + δ0`` gives the
    label-smoothed cross-entropy's gradient ``g``; the training perturbation is ``Π(δ0 + α·sign g)``; the stored
    momentum becomes ``g/‖g‖₁ + 0.3·m`` (L1 norm over the whole batch) and the stored prior ``Π(δ0 + α·sign m)``,
    used the next time the example comes (next epoch). Only the stored prior uses the momentum; the trained-on
    perturbation uses the raw gradient. Cost: 1 forward + 1 backward, like FGSM-RS.

    **Memory** (two :class:`~robustfast.component.ExampleMemory`, part of the attack's state), keyed by the dataset
    indices loaders yield as a third element (:class:`robustfast.data.IndexedDataset`). The official code permutes
    its memory arrays together with the data each epoch, so each example meets its own prior; keying by index is the
    same. Rows never written (first epoch, after a reset) start from a random corner ``±min(α, ε)`` and zero
    momentum. **Reset** every ``reset_every`` epochs (official 40) in the trainer's ``on_epoch_start`` hook
    (epochs 0, 40, 80, ...); call :meth:`reset` yourself in your own loop. Under DDP the rows written on every rank
    are gathered, so all ranks hold the same memory.

    **Without indices** (a plain ``atk(x, y)``, or a loader without them) every batch is treated as after a reset:
    it starts from a random corner and nothing is remembered (the trainer warns once per epoch).

    **What it publishes** in ``ctx.extras``: ``"prior_point"`` (``x + δ0``, detached) and, when a consumer requests
    ``"prior_logits"`` (:class:`PGILoss` does), ``"prior_logits"`` (the logits at ``x + δ0`` with their graph) and
    ``"prior_net"`` (the network that computed them), so the training loss's MSE term reuses this forward, as the
    official code does (2F + 2B per step in all).

    Deviations: the official code does not clamp ``x + δ0`` to the image box before the first forward (priors are
    stored against an earlier random crop); neither do we by default (``clamp_start=True`` does, as FastAT_Benchmark).
    The official random corner is drawn once for the whole dataset at each reset; here when an example is first
    seen (same distribution).

    Strengthening after catastrophic overfitting: none here; :class:`PGILoss` doubles its λ (the prior-consistency
    term is the method's defence against catastrophic overfitting).

    Args:
        model: classifier returning ``(N, C)`` logits for ``[0, 1]`` inputs.
        eps: L∞ radius (default ``8/255``).
        alpha: step size; ``None`` (default) means ``eps`` (official ``--alpha 8``).
        factor: probability on the true class in the attack's smoothed cross-entropy (default 0.6, official
            ``--factor``); see :func:`pgi_smoothed_ce`.
        momentum_decay: μ (default 0.3, official ``--momentum_decay``).
        reset_every: reset the memory every this many epochs (default 40, official ``--epochs_reset``); 0 never.
        clamp_start: clamp ``x + δ0`` to ``[0, 1]`` before the first forward (default False, official).
        **kwargs: ``loss_fn``, ``bn_mode``, ``seed``, ``generator``, ``check_range``, ``targeted``,
            ``target_fn`` (see :class:`Attack`).
    """

    alpha = Magnitude(1.0)
    default_loss_is_ce: ClassVar[bool] = False
    #: The attack keys per-example memory by dataset index (the loader should yield ``(x, y, index)``).
    uses_index: ClassVar[bool] = True
    _repr_params: ClassVar[tuple[str, ...]] = ("eps", "alpha", "factor", "momentum_decay", "reset_every")
    state_attrs: ClassVar[tuple[str, ...]] = ("prior", "momentum")

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        *,
        factor: float = 0.6,
        momentum_decay: float = 0.3,
        reset_every: int = 40,
        clamp_start: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, eps, **kwargs)
        self.alpha = alpha
        self.factor = _check_factor("FGSMPGI", factor)
        ok = isinstance(momentum_decay, (int, float)) and not isinstance(momentum_decay, bool)
        if not ok or not math.isfinite(momentum_decay) or momentum_decay < 0:
            raise RobustfastError(f"FGSMPGI(momentum_decay={momentum_decay!r}): a finite number >= 0 (official: 0.3)")
        if isinstance(reset_every, bool) or not isinstance(reset_every, int) or reset_every < 0:
            raise RobustfastError(f"FGSMPGI(reset_every={reset_every!r}): epochs between memory resets, an integer "
                                  ">= 0 (official: 40; 0 = never)")  # fmt: skip
        if not isinstance(clamp_start, bool):
            raise RobustfastError(f"FGSMPGI(clamp_start={clamp_start!r}): True or False")
        self.momentum_decay, self.reset_every, self.clamp_start = float(momentum_decay), reset_every, clamp_start
        self.prior = ExampleMemory()
        self.momentum = ExampleMemory()
        self._no_index = False

    def default_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The official attack objective: :func:`pgi_smoothed_ce` with ``factor``."""
        return pgi_smoothed_ce(logits, labels, self.factor)

    def reset(self) -> None:
        """Forget every stored prior and momentum (the official reset every ``reset_every`` epochs)."""
        self.prior.clear()
        self.momentum.clear()

    def on_epoch_start(self, epoch: int) -> None:
        """Trainer hook: reset the memory at epochs 0, ``reset_every``, ``2·reset_every``, ..."""
        if self.reset_every and epoch % self.reset_every == 0:
            self.reset()
        self._no_index = False

    def on_epoch_end(self, epoch: int) -> None:
        """Trainer hook: warn when the epoch's batches came without dataset indices (no prior was remembered)."""
        if self._no_index:
            warnings.warn(f"FGSMPGI: epoch {epoch + 1} was trained without dataset indices, so no prior was "
                          "remembered (every batch started from a random corner); make the loader yield "
                          "(x, y, index), e.g. with robustfast.data.IndexedDataset", stacklevel=2)  # fmt: skip

    def perturb(self, x: Tensor, y: Tensor, ctx: StepContext) -> Tensor:
        """One signed step from the stored prior; updates the memory and publishes the prior point."""
        a, eps, index = self.alpha, self.eps, ctx.index
        corner = min(a, eps) * random_sign_like(x, self.rng.get(x.device))  # drawn every step: reproducible streams
        if index is not None:
            d0, seen = self.prior.get(index, x)
            m0, _ = self.momentum.get(index, x)
            d0 = torch.where(bcast(seen, x), d0, corner)
        else:
            self._no_index = True
            d0, m0 = corner, torch.zeros_like(x)
        if self.clamp_start:
            d0 = clip_delta(d0, x, None)
        keep = ctx.wants(PRIOR_LOGITS)
        grads: list[Tensor] = []

        def grad(delta: Tensor | None) -> Tensor:
            assert delta is not None
            point = (x + delta).detach().requires_grad_(True)
            logits = self.get_logits(point)
            g = input_grad(self.objective(logits, y), point, retain_graph=keep).detach()
            ctx.extras[PRIOR_POINT] = point.detach()
            if keep:
                ctx.extras[PRIOR_LOGITS], ctx.extras[PRIOR_NET] = logits, ctx.model
            grads.append(g)
            return g

        delta = fgsm_pgi(self.get_logits, x, y, eps=eps, alpha=a, prior=d0, grad_fn=grad)
        if index is not None:
            m1 = _pgi_momentum(grads[0], m0, self.momentum_decay)
            d1 = clip_delta(d0 + a * m1.sign(), x, eps)
            idx, d1, m1 = _sync_rows(index, d1, m1)
            self.prior.set(idx, d1)
            self.momentum.set(idx, m1)
        return x + delta


@register_loss("fgsm_pgi", "pgi")
class PGILoss(TrainingLoss):
    r"""FGSM-PGI's training loss: label-smoothed cross-entropy at ``x_adv`` plus ``λ·MSE`` of the logits at ``x_adv``
    and at the prior point ``x + δ0``.

    ``L = mean_i ℓ̃(f(x_adv_i), y_i) + λ · mean_{i,c} (f_c(x_adv_i) − f_c(x_i + δ0_i))²`` with ``ℓ̃`` =
    :func:`pgi_smoothed_ce` (official ``LabelSmoothLoss`` with ``_label_smoothing``) and the MSE over all ``B·C``
    logits (``nn.MSELoss``, mean); neither logit tensor is detached (official).

    The prior logits: those :class:`FGSMPGI` computed with their graph (it publishes them because this loss requests
    ``"prior_logits"``), reused when the step's network is the one that computed them and the model's mode matches
    the attack's; otherwise one forward at ``ctx.extras["prior_point"]`` through the step's network (under DDP, the
    wrapper). **After another attack** (no ``"prior_point"``) the prior is the clean ``x``: the term becomes the
    consistency between clean and adversarial logits (one clean forward, or the attack's clean logits when they were
    kept with their graph).

    Strengthening after catastrophic overfitting: λ doubles, at most twice (4× its start).

    Args:
        lam: λ (default 10, official ``--lamda``).
        factor: probability on the true class (default 0.6, official ``--factor``).
    """

    requests = frozenset({PRIOR_LOGITS})
    _repr_params: ClassVar[tuple[str, ...]] = ("lam", "factor")
    state_attrs: ClassVar[tuple[str, ...]] = ("lam",)

    def __init__(self, lam: float = 10.0, factor: float = 0.6) -> None:
        ok = isinstance(lam, (int, float)) and not isinstance(lam, bool) and math.isfinite(lam)
        if not ok or lam < 0:
            raise RobustfastError(f"PGILoss(lam={lam!r}): lam must be a finite number >= 0 (official: 10)")
        self.lam = float(lam)
        self.factor = _check_factor("PGILoss", factor)

    @property
    def name(self) -> str:
        """Short name used in logs."""
        return "pgi"

    def prior_logits(self, ctx: StepContext) -> Tensor:
        """The logits at the prior point with their graph (reused from the attack when valid; see the class docs)."""
        net = ctx.net()
        z0 = ctx.extras.get(PRIOR_LOGITS)
        valid = ctx.extras.get(PRIOR_NET) is net and policy_matches(net, ctx.attack_mode)  # type: ignore[arg-type]
        if isinstance(z0, Tensor) and z0.requires_grad and valid:
            return z0
        point = ctx.extras.get(PRIOR_POINT)
        if point is None:
            return ctx.clean_logits_graph()
        z0 = net(point)
        ctx.extras[PRIOR_LOGITS], ctx.extras[PRIOR_NET] = z0, net
        return z0

    def forward(self, ctx: StepContext) -> Tensor:
        """``mean ℓ̃(f(x_adv)) + λ·mean (f(x_adv) − f(x + δ0))²``."""
        z = ctx.adv_logits_graph()
        ce = pgi_smoothed_ce(z, ctx.y, self.factor).mean()
        if self.lam == 0:
            return ce
        z0 = self.prior_logits(ctx)
        return ce + self.lam * (at_least_fp32(z) - at_least_fp32(z0)).pow(2).mean()

    def _strengthen(self) -> str | None:
        old, self.lam = self.lam, 2 * self.lam if self.lam > 0 else 1.0
        return f"lam {old:g} -> {self.lam:g}"
