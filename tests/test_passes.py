"""Forward / backward / second-order pass counts per training step, for every attack × regularizer.

Counts are taken by :class:`counting.PassCounter`: ``F`` model forwards, ``B`` backward traversals of a
forward's graph, ``D`` second-order traversals (double backprop through a gradient's graph). A step is
:func:`~robustfast.training.adversarial_step` followed by ``loss.backward()``, with the model in
``train()`` mode and the attack in ``bn_mode="train"`` (the papers' setting), so the attack's clean
gradient and logits are reusable.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyCNN
from counting import PassCounter

import robustfast as rf
from robustfast.training import adversarial_step

EPS = 8 / 255

# Attack-only step: attack passes + the training forward + the final backward through it.
# "shares": the attack's first gradient is ∇x CE at the clean x, published in the step context.
ATTACKS = {
    "fgsm": ({}, (2, 2), True),
    "rs": ({}, (2, 2), False),
    "nfgsm": ({}, (2, 2), False),
    "zerograd": ({}, (2, 2), False),
    "multigrad": ({}, (4, 4), False),  # N = 3 random starts
    "pgd": ({"steps": 2, "random_start": False}, (3, 3), True),  # GradAlign's PGD-2 training preset
    "seat": ({}, (3, 3), True),  # SEATAttack: clean pass + corner
}

# Extra (F, B, D) over the attack-only step when the attack shares its clean pass; otherwise the
# regularizer runs that clean pass itself: one more forward and one more backward (AdvLC needs only the
# clean logits: one more forward).
REGS = {
    # η forward; ∇x ℓ(x+η) with graph; final backward through the η forward + one second-order pass
    "gradalign": (lambda: rf.GradAlign(seed=0), (1, 2, 1)),
    # finite differences: η forward and one backward for ∇x and ∇θ of ℓ(x+η) (nothing retained); a forward at
    # x+η+t·c, whose graph the final backward runs through; first order only
    "gradalign_fd": (lambda: rf.GradAlign(seed=0, estimator="fd"), (2, 2, 0)),
    # ... and through g1's graph too (second-order pass + backward through the clean forward)
    "gradalign_sym": (lambda: rf.GradAlign(seed=0, symmetric=True), (1, 3, 2)),
    # clean logits reused; the final backward runs through the clean forward
    "advlc": (lambda: rf.AdvLC(), (0, 1, 0)),
    "seat": (lambda: rf.SEAT(), (0, 1, 0)),
    "seat_fl": (lambda: rf.SEAT(flood=0.5), (0, 1, 0)),
    # ∇x ℓ(x_adv) read off the training forward; second-order passes through both gradients
    "cure": (lambda: rf.CURE(), (0, 2, 2)),
    # neighbour x + h·sign(g) needs its own forward
    "cure_sign": (lambda: rf.CURE(neighbour="sign"), (1, 3, 2)),
    "gradnorm": (lambda: rf.GradNorm(), (0, 1, 1)),
}


def expected(attack: str, reg: str | None) -> tuple[int, int, int]:
    _, (f, b), shares = ATTACKS[attack]
    if reg is None:
        return f, b, 0
    ef, eb, ed = REGS[reg][1]
    clean = 0 if shares else 1
    return f + ef + clean, b + eb + (0 if reg == "advlc" else clean), ed


def run_step(attack: str, reg: str | None) -> tuple[int, int, int]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = PassCounter(TinyCNN()).train()
    kw = ATTACKS[attack][0]
    atk = rf.create_attack(attack, model, eps=EPS, bn_mode="train", seed=0, **kw)
    out = adversarial_step(model, atk, [REGS[reg][0]()] if reg else [], x, y)
    out.loss.backward()
    return model.counts()


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("reg", [None, *REGS])
def test_pass_counts(attack, reg) -> None:
    assert run_step(attack, reg) == expected(attack, reg)


def test_attack_in_other_mode_is_not_reused() -> None:
    """An eval-mode FGSM gradient is not a train-mode one: the regularizer recomputes (one more F and B)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    model = PassCounter(TinyCNN()).train()
    out = adversarial_step(model, rf.FGSM(model, bn_mode="eval"), [rf.AdvLC()], x, y)
    out.loss.backward()
    assert model.counts() == (3, 3, 0)


@pytest.mark.parametrize(
    ("reg", "counts"),
    [
        # user's forward + the regularizer's own forward at x_adv (standalone cannot see the user's logits)
        ("advlc", (3, 3, 0)),
        ("seat", (3, 4, 0)),
        ("gradalign", (3, 4, 1)),
        ("cure", (3, 5, 2)),
        ("gradnorm", (2, 3, 1)),
    ],
)
def test_standalone_pass_counts(reg, counts) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    model = PassCounter(TinyCNN()).train()
    x_adv = rf.FGSM(model, bn_mode="train")(x, y)
    model.reset()
    r = rf.create_regularizer(reg)
    (F.cross_entropy(model(x_adv), y) + r(model, x, y, x_adv)).backward()
    assert model.counts() == counts
