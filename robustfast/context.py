"""The step record: what an attack returns, and what the training loss and the regularizers read.

:meth:`robustfast.Attack.craft` returns a :class:`StepContext`: the clean and adversarial inputs in pixel space,
the network view every pass of the step must use, the input space the caller works in, and whatever the attack
computed anyway (the clean logits, the clean input gradient when its gradient was taken at the clean point with
plain cross-entropy). The training loss adds the adversarial logits of the training forward; regularizers read
what they need through the methods below, which reuse a stored value when it is valid and compute it otherwise.
This is how FGSM + GradAlign reuses FGSM's gradient (as the paper's code does) and AdvLC reuses the training
forward, with no extra passes.

All gradients are per-example input gradients, i.e. gradients of the **sum** over the batch of per-sample
losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from .component import REQUESTS, check_requests
from .errors import RobustfastError
from .losses import cross_entropy
from .modes import policy_matches
from .ops import input_grad

__all__ = ["CLEAN_POINT", "CLEAN_POINT_LOGITS", "CLEAN_POINT_NET", "REQUESTS", "StepContext", "check_requests"]

#: ``ctx.extras`` keys read across methods (a method's own keys are constants in its own file):
#: another point that consumers treat as the clean input (FGSM-N's noise-augmented ``x̃``, which AdvLC compares
#: with), the logits there with their graph (when a consumer requested ``"clean_logits"``) and the network that
#: computed them.
CLEAN_POINT, CLEAN_POINT_LOGITS, CLEAN_POINT_NET = "clean_point", "clean_point_logits", "clean_point_net"


Network = Callable[[Tensor], Tensor]


@dataclass
class StepContext:
    """The record of one training (or evaluation) step.

    Attributes:
        x: clean inputs in pixel space ``[0, 1]``.
        y: integer labels ``(N,)``.
        index: dataset indices ``(N,)`` when the loader yields them (``None`` otherwise).
        model: the pixel-space network every pass of the step uses (the attack's model, with the attack's
            normalization applied first when it was set with ``set_normalization_used``).
        space: the space the caller's tensors live in: ``"pixel"`` or ``"normalized"``.
        requests: names from :data:`REQUESTS` that consumers asked the step to keep with their graph.
        x_adv: the adversarial inputs in pixel space (detached), set by the attack.
        clean_logits: logits at the clean ``x`` (attached to the graph when ``"clean_logits"`` was requested).
        clean_grad: per-example ``∇x CE(f(x), y)`` at the clean ``x`` (attached when ``"clean_grad_graph"``
            was requested).
        adv_logits: logits of the training forward at ``x_adv`` (set by the training loss or a regularizer).
        adv_point: the leaf tensor the training forward ran on, when ``"adv_grad_graph"`` was requested.
        loss: the training loss of this step (with its graph), set once the training loss is computed.
        attack_mode: the BatchNorm/dropout policy the attack's forward passes ran under.
        extras: method-specific intermediates. Keys read across methods are the constants :data:`CLEAN_POINT`,
            :data:`CLEAN_POINT_LOGITS` and :data:`CLEAN_POINT_NET`; a method's own keys are constants of its file
            (e.g. FGSM-PGI's ``PRIOR_POINT``).
    """

    x: Tensor
    y: Tensor
    index: Tensor | None = None
    model: Network | None = None
    space: Literal["pixel", "normalized"] = "pixel"
    requests: frozenset[str] | set[str] = field(default_factory=frozenset)
    x_adv: Tensor | None = None
    clean_logits: Tensor | None = None
    clean_grad: Tensor | None = None
    adv_logits: Tensor | None = None
    adv_point: Tensor | None = None
    loss: Tensor | None = None
    attack_mode: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    _checked_mode: bool = field(default=False, repr=False)

    def wants(self, name: str) -> bool:
        """True when a consumer asked for ``name`` (one of :data:`REQUESTS`)."""
        return name in self.requests

    def net(self, model: Network | None = None) -> Network:
        """The network to run: ``model`` when given, else the step's :attr:`model`."""
        net = model if model is not None else self.model
        if net is None:
            raise RobustfastError("StepContext: no model; pass one or set ctx.model")
        return net

    # ------------------------------------------------------------------ reuse
    def detach_attack_values(self) -> None:
        """Keep the attack's clean values only as constants (their graphs are dropped), so consumers that need a
        graph recompute them through the current network (under DDP: through the wrapper that syncs gradients)."""
        if self.clean_logits is not None and self.clean_logits.requires_grad:
            self.clean_logits = self.clean_logits.detach()
        if self.clean_grad is not None and self.clean_grad.requires_grad:
            self.clean_grad = None

    def forget_stale(self, model: Any) -> None:
        """Drop the attack's clean values once per step when its forward passes ran in another mode than the
        model's current one (e.g. an eval-mode attack during training): they are recomputed where needed."""
        if self._checked_mode:
            return
        self._checked_mode = True
        if not policy_matches(model, self.attack_mode):
            self.clean_grad, self.clean_logits = None, None

    def clean_ce_grad(
        self, model: Network | None = None, *, create_graph: bool = False, keep_logits: bool = False
    ) -> Tensor:
        """Per-example ``∇x CE(f(x), y)`` at the clean point, reused when already computed.

        A stored detached gradient is reused when ``create_graph=False``; with ``create_graph=True`` only one that
        kept its graph. Computed here it costs one forward and one backward, and the forward's logits are stored in
        :attr:`clean_logits` (kept attached with ``keep_logits``, or when ``"clean_logits"`` was requested), so a
        second consumer (SEAT, AdvLC, TRADES) reuses them at no extra pass.
        """
        g = self.clean_grad
        if g is not None and (not create_graph or g.requires_grad):
            return g
        point = self.x.detach().requires_grad_(True)
        logits = self.net(model)(point)
        keep = keep_logits or create_graph or self.wants("clean_logits")
        g = input_grad(cross_entropy(logits, self.y), point, create_graph=create_graph, retain_graph=keep)
        self.clean_grad = g if create_graph else g.detach()
        if self.clean_logits is None or (keep and not self.clean_logits.requires_grad):
            self.clean_logits = logits if keep else logits.detach()
        return self.clean_grad

    def clean_logits_graph(self, model: Network | None = None) -> Tensor:
        """Logits at the clean ``x`` with their graph: reused when attached, else one forward."""
        if self.clean_logits is None or not self.clean_logits.requires_grad:
            self.clean_logits = self.net(model)(self.x)
        return self.clean_logits

    def adv_logits_graph(self, model: Network | None = None) -> Tensor:
        """Logits at ``x_adv`` with their graph: the training forward's when it ran, else one forward here."""
        if self.x_adv is None:
            raise RobustfastError("this method needs x_adv; pass it (reg(model, x, y, x_adv))")
        if self.adv_logits is None:
            point = self.x_adv
            if self.wants("adv_grad_graph"):
                point = self.x_adv.detach().requires_grad_(True)
                self.adv_point = point
            self.adv_logits = self.net(model)(point)
        return self.adv_logits

    def adv_ce_grad(self, model: Network | None = None, *, create_graph: bool) -> Tensor:
        """Per-example ``∇x CE(f(x_adv), y)``: from the training forward when it ran on a leaf that requires grad
        (``"adv_grad_graph"``), else from one forward here (whose logits become :attr:`adv_logits`)."""
        if self.x_adv is None:
            raise RobustfastError("this method needs x_adv; pass it (reg(model, x, y, x_adv))")
        if self.adv_point is None or self.adv_logits is None or not self.adv_logits.requires_grad:
            self.adv_point = self.x_adv.detach().requires_grad_(True)
            self.adv_logits = self.net(model)(self.adv_point)
        return input_grad(cross_entropy(self.adv_logits, self.y), self.adv_point, create_graph=create_graph,
                          retain_graph=True)  # fmt: skip
