"""The method protocol: two methods added here, in this file only, with no edit under robustfast/.

* ``MemoryFGSM``: an attack with per-example memory (each example restarts from its last perturbation, keyed by
  dataset index; a plain ``atk(x, y)`` falls back to a zero start).
* ``WeightNoise``: a trainer-level method wrapping the optimizer step (AWP-like: perturb the weights after the
  attack, restore them after the optimizer step), with its own generator.

They train, resume bit-identically after an interruption and roll back correctly; the core never names them.
Also: regression tests for the two state bugs of the method-protocol issue, hook handles and signatures, the step
phases, the record's input space, functional kernels and keyword-targeted attacks.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SmoothCNN, TinyCNN
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustfast as rf
from robustfast.attacks import Attack, Magnitude
from robustfast.component import Component, ExampleMemory
from robustfast.data import IndexedDataset, load_digits_tensors
from robustfast.models import Normalize
from robustfast.ops import clip_delta
from robustfast.regularizers import REGULARIZERS
from robustfast.rng import SeededRNG
from robustfast.training import AdversarialTrainer, COCheck, COGuard, adversarial_step, load_checkpoint

EPS = 0.1


# ------------------------------------------------------------------------------------------ two methods, here only
class MemoryFGSM(Attack):
    """FGSM from each example's previous perturbation (per-example memory keyed by dataset index)."""

    alpha = Magnitude(0.5)
    state_attrs = ("memory", "alpha")

    def __init__(self, model: nn.Module, eps: float = EPS, alpha: float | None = None, **kw) -> None:
        super().__init__(model, eps, **kw)
        self.alpha = alpha
        self.memory = ExampleMemory()

    def perturb(self, x, y, ctx):
        start = torch.zeros_like(x)
        if ctx.index is not None:  # fallback without indices: a zero start, nothing remembered
            start, _ = self.memory.get(ctx.index, x)
        g = self.grad_fn(x, y, ctx)(start)
        delta = clip_delta(start + self.alpha * g.sign(), x, self.eps)
        if ctx.index is not None:
            self.memory.set(ctx.index, delta)
        return x + delta

    def _strengthen(self):
        old, self.alpha = self.alpha, self.alpha / 2
        return f"alpha {old:.3g} -> {self.alpha:.3g}"


class WeightNoise(Component):
    """Perturb every weight by ``gamma·‖w‖`` along a random unit direction around the update (AWP-like)."""

    state_attrs = ("rng", "gamma")

    def __init__(self, model: nn.Module, gamma: float = 0.01, seed: int = 0) -> None:
        self.model, self.gamma, self.rng = model, gamma, SeededRNG(seed)
        self.perturbed = False

    @contextmanager
    def around_update(self, trainer, ctx):
        params = [p for p in self.model.parameters() if p.dim() > 1]
        gen = self.rng.get(params[0].device)
        diffs = []
        with torch.no_grad():
            for p in params:
                d = torch.randn(p.shape, generator=gen)
                d = self.gamma * p.norm() * d / d.norm()
                p.add_(d)
                diffs.append(d)
        self.perturbed = True
        try:
            yield
        finally:
            with torch.no_grad():
                for p, d in zip(params, diffs):
                    p.sub_(d)
            self.perturbed = False

    def _strengthen(self):
        old, self.gamma = self.gamma, 2 * self.gamma
        return f"gamma {old:g} -> {self.gamma:g}"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def digits():
    return load_digits_tensors(seed=0)


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyCNN(in_ch=1, width=8, dropout=0.1)


def indexed_loader(x, y, bs: int = 64, seed: int = 1) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=bs, shuffle=True, generator=g)


class Interrupt(Exception):
    pass


class ScriptedGuard(COGuard):
    """Reports CO at the listed check indices."""

    def __init__(self, co_at: set[int], **kw):
        super().__init__(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), **kw)
        self.co_at = co_at

    def check(self, model, eps, device=None, update=True):
        co = len(self.checks) in self.co_at
        r = COCheck(0.5, 0.1 if co else 0.4, 0.4, co, "scripted" if co else None, improved=not co)
        self.checks.append(r)
        return r


def run(digits, ckpt: Path | None, *, crash_at: int | None = None, resume: bool = False, guard=None, epochs=3):
    xtr, ytr, *_ = digits
    model = cnn()
    atk = MemoryFGSM(model, seed=0)
    noise = WeightNoise(model, seed=5)

    class Crash:
        def on_batch_end(self, step):
            if crash_at is not None and step == crash_at:
                raise Interrupt

    tr = AdversarialTrainer(model, atk, [rf.GradAlign(eps=EPS, lam=0.5, seed=2)], plugins=[noise], lr=0.05,
                            checkpoint_dir=ckpt, callbacks=[Crash()], co_guard=guard, val_attack=None,
                            progress=False, verbose=False, seed=0)  # fmt: skip
    tr.fit(indexed_loader(xtr[:320], ytr[:320]), epochs, resume=resume)
    return tr


# ------------------------------------------------------------------------------------------ the two methods
def test_memory_attack_uses_indices_and_falls_back_without_them(digits):
    x, y = digits[0][:16], digits[1][:16]
    atk = MemoryFGSM(cnn())
    plain = atk(x, y)  # no indices: zero start, memory untouched
    assert len(atk.memory) == 0 and (plain - x).abs().max() <= EPS / 2 + 1e-6
    idx = torch.arange(100, 116)
    first = atk(x, y, idx)
    assert len(atk.memory) >= 116 and torch.equal(atk.memory.get(idx, x)[0], first - x)
    second = atk(x, y, idx)  # restarts from the stored perturbation: can reach the full eps
    assert (second - x).abs().max() > EPS / 2 + 1e-4 and (second - x).abs().max() <= EPS + 1e-6


def test_new_methods_train_and_resume_bit_identically(digits, tmp_path: Path):
    ref = run(digits, tmp_path / "a")
    with pytest.raises(Interrupt):
        run(digits, tmp_path / "b", crash_at=12)  # 5 batches per epoch: mid epoch 3
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    res = run(digits, tmp_path / "b", resume=True)
    for (k, a), b in zip(ref.model.state_dict().items(), res.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(ref.attack.memory.data, res.attack.memory.data)
    assert ref.plugins[0].rng.state_dict()["states"]["cpu"].equal(res.plugins[0].rng.state_dict()["states"]["cpu"])
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("time", "ips")} for r in h]  # noqa: E731
    assert strip(ref.history) == strip(res.history)
    assert not res.plugins[0].perturbed  # the wrapper restored the weights after the last step


def test_rollback_restores_every_method_state_and_strengthens_them(digits):
    guard = ScriptedGuard({1}, on_co="rollback", strengthen="all")
    snapshots = {}

    class Snap:
        def on_epoch_end(self, trainer, epoch):
            snapshots[epoch] = trainer.attack.memory.data.clone()

    xtr, ytr, *_ = digits
    model = cnn()
    atk, noise, reg = MemoryFGSM(model, seed=0), WeightNoise(model, seed=5), rf.GradAlign(eps=EPS, lam=0.5, seed=2)
    tr = AdversarialTrainer(model, atk, [reg], plugins=[noise], lr=0.05, co_guard=guard, callbacks=[Snap()],
                            val_attack=None, progress=False, verbose=False, seed=0)  # fmt: skip
    restored = {}

    class OnRollback:
        def on_rollback(self, trainer, epoch):
            restored["memory"] = trainer.attack.memory.data.clone()
            restored["epoch"] = epoch

    tr.add_callback(OnRollback())
    hist = tr.fit(indexed_loader(xtr[:320], ytr[:320]), 3)
    assert hist["co"] == [False, True, False, False] and restored["epoch"] == 1
    assert torch.equal(restored["memory"], snapshots[0])  # the memory as it was at the end of epoch 1
    assert reg.lam == 1.0 and atk.alpha == pytest.approx(EPS / 4) and noise.gamma == 0.02
    assert "GradAlign" in hist[1]["strengthened"] and "WeightNoise" in hist[1]["strengthened"]
    assert [c.strength for c in tr.components] == [1, 0, 1, 1]


def test_strengthening_accumulates_across_rollbacks(digits):
    xtr, ytr, *_ = digits
    model = cnn()
    atk = rf.ZeroGrad(model, EPS, q=0.2, seed=0)
    guard = ScriptedGuard({1, 2}, on_co="rollback")  # the second CO happens before any new best state
    hist = AdversarialTrainer(model, atk, co_guard=guard, val_attack=None, progress=False, verbose=False).fit(
        indexed_loader(xtr[:128], ytr[:128]), 3
    )
    assert atk.q == pytest.approx(0.4) and atk.strength == 2
    assert [h.get("strengthened") for h in hist if h["co"]] == ["ZeroGrad: q 0.2 -> 0.3", "ZeroGrad: q 0.3 -> 0.4"]


# ------------------------------------------------------------------------------------------ regression tests
def _gradalign_run(digits, ckpt: Path, crash_at: int | None = None, resume: bool = False) -> nn.Module:
    xtr, ytr, *_ = digits
    model = cnn()

    class Crash:
        def on_batch_end(self, step):
            if crash_at is not None and step == crash_at:
                raise Interrupt

    tr = AdversarialTrainer(model, rf.FGSM(model, EPS), [rf.GradAlign(eps=EPS, seed=0)], lr=0.05, checkpoint_dir=ckpt,
                            callbacks=[Crash()], val_attack=None, progress=False, verbose=False, seed=0)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    tr.fit(DataLoader(TensorDataset(xtr[:256], ytr[:256]), 64, shuffle=True, generator=g), 2, resume=resume)
    return model


def test_bug1_gradalign_generator_is_checkpointed(digits, tmp_path: Path):
    """A resumed GradAlign(seed=0) run equals an uninterrupted one (its generator is part of its state)."""
    ref = _gradalign_run(digits, tmp_path / "a")
    with pytest.raises(Interrupt):
        _gradalign_run(digits, tmp_path / "b", crash_at=6)
    res = _gradalign_run(digits, tmp_path / "b", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), res.state_dict().values()))


def test_bug2_normalized_attack_and_penalties_share_one_space() -> None:
    """With set_normalization_used the step's penalties are in pixel space, like the attack's gradient and ε."""
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    torch.manual_seed(0)
    net = SmoothCNN().eval()
    g = torch.Generator().manual_seed(0)
    x_pix, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    norm = Normalize(mean, std)
    x_norm = norm(x_pix)
    atk = rf.FGSM(net, EPS, bn_mode="eval")
    atk.set_normalization_used(mean, std)
    out = adversarial_step(net, atk, [rf.GradNorm(), rf.GradAlign(eps=EPS, seed=0)], x_norm, y)
    assert out.context.space == "normalized"
    pixel_net = nn.Sequential(norm, net)
    assert torch.allclose(out.penalties["gradnorm"], rf.GradNorm()(pixel_net, x_pix, y).detach(), rtol=1e-4)
    assert torch.allclose(out.penalties["gradalign"], rf.GradAlign(eps=EPS, seed=0)(pixel_net, x_pix, y).detach(),
                          atol=1e-6)  # fmt: skip
    x_adv_pix = rf.FGSM(pixel_net, EPS, bn_mode="eval")(x_pix, y)
    assert torch.allclose(out.context.x_adv, x_adv_pix, atol=1e-6)
    assert torch.allclose(out.criterion, F.cross_entropy(pixel_net(x_adv_pix), y), atol=1e-5)


def test_inconsistent_normalization_is_refused_when_built() -> None:
    net = nn.Sequential(Normalize((0.5,), (0.5,)), TinyCNN(in_ch=1))
    with pytest.raises(rf.RobustfastError, match="already normalizes"):
        rf.FGSM(net, EPS).set_normalization_used((0.5,), (0.5,))
    plain = TinyCNN(in_ch=1)
    atk = rf.FGSM(plain, EPS)
    atk.set_normalization_used((0.5,), (0.5,))
    with pytest.raises(rf.RobustfastError, match="Normalize"):
        AdversarialTrainer(plain, atk, progress=False)


# ------------------------------------------------------------------------------------------ hooks and phases
def test_phases_run_in_order_with_hooks_around_them(digits):
    xtr, ytr, *_ = digits
    model = cnn()
    order: list[str] = []

    class Recorder(Component):
        def on_batch_start(self):
            order.append("batch_start")

        def on_after_attack(self, ctx):
            assert ctx.x_adv is not None and ctx.adv_logits is None  # crafted, not yet trained on
            order.append("after_attack")

        @contextmanager
        def around_update(self):
            order.append("enter")
            yield
            order.append("exit")

        def on_before_backward(self, out):
            assert out.loss.requires_grad
            order.append("before_backward")

        def on_after_backward(self, trainer):
            assert any(p.grad is not None for p in trainer.model.parameters())
            order.append("after_backward")

        def on_before_optimizer_step(self):
            order.append("before_step")

        def on_after_optimizer_step(self, step):
            order.append(f"after_step:{step}")

        def on_batch_end(self):
            order.append("batch_end")

    tr = AdversarialTrainer(model, rf.FGSM(model, EPS), plugins=[Recorder()], val_attack=None, progress=False,
                            verbose=False)  # fmt: skip
    tr.fit(DataLoader(TensorDataset(xtr[:64], ytr[:64]), 64), 1)
    assert order == ["batch_start", "after_attack", "enter", "before_backward", "after_backward", "before_step",
                     "after_step:1", "exit", "batch_end"]  # fmt: skip


def test_hook_signatures_are_resolved_once_and_handles_remove(digits, monkeypatch):
    xtr, ytr, *_ = digits
    model = cnn()
    calls = []

    class CB:
        def on_batch_end(self, step):
            calls.append(step)

    tr = AdversarialTrainer(model, rf.FGSM(model, EPS), val_attack=None, progress=False, verbose=False)
    handle = tr.add_callback(CB())
    n = {"signature": 0}
    real = inspect.signature

    def counting(*a, **k):
        n["signature"] += 1
        return real(*a, **k)

    monkeypatch.setattr(inspect, "signature", counting)
    loader = DataLoader(TensorDataset(xtr[:256], ytr[:256]), 32)
    tr.fit(loader, 1)
    assert calls == list(range(1, 9)) and n["signature"] == 0
    handle.remove()
    tr.fit(loader, 2)
    assert len(calls) == 8  # removed: not called in the second epoch


def test_callback_without_any_hook_is_an_error():
    model = cnn()
    with pytest.raises(rf.RobustfastError, match="implements none of the hook points"):
        AdversarialTrainer(model, None, callbacks=[object()], progress=False)


def test_training_loss_on_the_clean_input(digits):
    """A criterion reading the clean logits (TRADES/MART/GAT style) reuses the attack's clean forward."""
    xtr, ytr, *_ = digits
    model = cnn()
    crit = rf.CleanCrossEntropy()
    out = adversarial_step(model.train(), rf.FGSM(model, EPS, bn_mode="train"), [], xtr[:32], ytr[:32],
                           criterion=crit)  # fmt: skip
    assert out.logits is None and out.context.clean_logits.requires_grad
    assert torch.allclose(out.criterion, F.cross_entropy(out.context.clean_logits, ytr[:32]).detach())


# ------------------------------------------------------------------------------------------ state, for every method
def _attack_state_roundtrip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    g = torch.Generator().manual_seed(0)
    x, y, idx = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g), torch.arange(8)
    a = rf.create_attack(name, model, eps=8 / 255, seed=0)
    a(x, y, idx)
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = rf.create_attack(name, model, eps=8 / 255, seed=123)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert torch.equal(a(x, y, idx), b(x, y, idx))


@pytest.mark.parametrize("name", rf.list_attacks())
def test_every_attack_saves_and_restores_its_state(name, tmp_path: Path):
    _attack_state_roundtrip(name, tmp_path)


@pytest.mark.parametrize("name", rf.list_regularizers())
def test_every_regularizer_saves_and_restores_its_state(name, tmp_path: Path):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    x_adv = rf.FGSM(model)(x, y)
    seeded = "seed" in inspect.signature(REGULARIZERS.get(name)).parameters
    a = rf.create_regularizer(name, seed=0) if seeded else rf.create_regularizer(name)
    a(model, x, y, x_adv)
    a.strengthen()
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = rf.create_regularizer(name)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert b.lam == a.lam and b.strength == 1
    assert torch.equal(a(model, x, y, x_adv), b(model, x, y, x_adv))


def test_loading_a_foreign_state_names_the_problem():
    with pytest.raises(rf.RobustfastError, match="lacks"):
        rf.ZeroGrad(TinyCNN()).load_state_dict({"strength": 0})


# ------------------------------------------------------------------------------------------ kernels and targets
@pytest.mark.parametrize(
    ("cls", "kernel", "kw"),
    [
        (rf.FGSM, "fgsm", {}),
        (rf.RS, "fgsm_rs", {}),
        (rf.NFGSM, "nfgsm", {}),
        (rf.ZeroGrad, "zerograd", {"q": 0.35}),
        (rf.MultiGrad, "multigrad", {"n_samples": 3}),
        (rf.PGD, "pgd", {"steps": 3}),
    ],
)
def test_class_and_functional_kernel_agree(cls, kernel, kw, model, batch):
    x, y = batch
    adv = cls(model, 8 / 255, seed=0, **kw)(x, y)
    with rf.model_mode(model, "eval"):
        delta = getattr(rf.functional, kernel)(model, x, y, eps=8 / 255, generator=torch.Generator().manual_seed(0),
                                               **kw)  # fmt: skip
    assert torch.allclose(adv, x + delta, atol=1e-6)


def test_torchattacks_positional_order_and_scalar_tensor_eps(model, batch):
    x, y = batch
    a = rf.PGD(model, 8 / 255, 2 / 255, 5, False)(x, y)
    b = rf.PGD(model, eps=torch.tensor(8 / 255), alpha=2 / 255, steps=5, random_start=False)(x, y)
    assert torch.equal(a, b)
    assert torch.equal(
        rf.RS(model, 8 / 255, 6 / 255, seed=0)(x, y), rf.RS(model, eps=8 / 255, alpha=6 / 255, seed=0)(x, y)
    )


def test_targeted_keyword_arguments(batch):
    x, y = batch
    m = SmoothCNN().eval()
    target = (y + 3) % 10
    ce = lambda z, t: F.cross_entropy(m(z), t).item()  # noqa: E731
    atk = rf.PGD(m, 8 / 255, targeted=True)
    assert atk.targeted and ce(atk(x, target), target) < ce(x, target)
    fn = lambda xx, yy: (yy + 3) % 10  # noqa: E731
    assert torch.equal(
        rf.PGD(m, 8 / 255, target_fn=fn, seed=0)(x, y), rf.PGD(m, 8 / 255, targeted=True, seed=0)(x, target)
    )
    ll = rf.PGD(m, 8 / 255, target_fn=rf.least_likely(2))
    assert ll.targeted and ll.get_mode() == "least_likely"
    assert rf.PGD(m, 8 / 255, target_fn="random").get_mode() == "random"
    with pytest.raises(rf.RobustfastError, match="target_fn"):
        rf.PGD(m, 8 / 255, target_fn="nearest")
    old = rf.PGD(m, 8 / 255)
    old.set_mode_targeted_least_likely(2)  # torchattacks' setter: a thin layer over the keyword
    assert old.targeted and old.target_fn.k == 2


def test_warmup_can_scale_the_radius_or_the_step_only():
    m = TinyCNN()
    pgd = rf.PGD(m, 0.1)  # alpha follows eps by default (eps / 4)
    with pgd.scaled(0.5, "eps"):
        assert pgd.eps == pytest.approx(0.05) and pgd.alpha == pytest.approx(0.025)
    with pgd.scaled(0.5):
        assert pgd.eps == pytest.approx(0.05) and pgd.alpha == pytest.approx(0.0125)
    fgsm = rf.FGSM(m, 0.1, 0.08)
    with fgsm.scaled(0.5, "step"):
        assert fgsm.eps == pytest.approx(0.1) and fgsm.alpha == pytest.approx(0.04)
    assert fgsm.alpha == pytest.approx(0.08) and pgd.alpha == pytest.approx(0.025)
    with pytest.raises(rf.RobustfastError, match="what"):
        with pgd.scaled(0.5, "noise"):
            pass


def _every_part() -> list[tuple[str, Component]]:
    model = cnn()
    parts: list[tuple[str, Component]] = [
        (f"attack {n}", rf.create_attack(n, model, eps=8 / 255)) for n in rf.list_attacks()
    ]
    parts += [(f"regularizer {n}", rf.create_regularizer(n)) for n in rf.list_regularizers()]
    parts += [(f"loss {n}", rf.create_loss(n)) for n in rf.list_losses()]
    parts += [(f"plugin {n}", rf.create_plugin(n, model)) for n in rf.list_plugins()]
    return parts


@pytest.mark.parametrize(("what", "part"), _every_part(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_part_strengthens_a_bounded_number_of_times(what: str, part: Component) -> None:
    """The guard never strengthens past a part's documented cap: at most ``max_strength`` changes, and a weight
    that doubles ends at most 4× its start."""
    weights = {n: getattr(part, n) for n in ("lam", "beta", "gamma", "grad_ratio", "lam_max")
               if isinstance(getattr(part, n, None), float)}  # fmt: skip
    changes = [part.strengthen() for _ in range(12)]
    done = [c for c in changes if c is not None]
    assert len(done) == part.strength <= part.max_strength, what
    assert changes[len(done) :] == [None] * (12 - len(done)), f"{what}: a change after a refusal"
    for n, start in weights.items():
        if start > 0:
            assert getattr(part, n) <= 4 * start + 1e-12, f"{what}: {n} {start} -> {getattr(part, n)}"
    doc = type(part).__doc__ or ""
    if done:  # a part that strengthens says how, and its cap, in its docstring (or its base class's)
        text = " ".join((k.__doc__ or "") for k in type(part).__mro__)
        assert "Strengthening" in text and ("at most" in text or "cap" in text or "up to" in text), what
    assert doc, what


def test_a_misnamed_hook_on_a_method_part_is_an_error() -> None:
    class Typo(rf.FGSM):
        def on_after_atack(self, ctx):  # meant on_after_attack: would never be called
            pass

    model = cnn()
    with pytest.raises(
        rf.RobustfastError,
        match=r"Typo\.on_after_atack is named like a hook but is not one; did you mean 'on_after_attack'",
    ):
        AdversarialTrainer(model, Typo(model, EPS), progress=False)


def test_the_typed_callback_base_calls_only_what_a_subclass_overrides(digits) -> None:
    from robustfast.training import Callback, HookSet

    seen = []

    class EndsOnly(Callback):
        def on_epoch_end(self, epoch: int) -> None:
            seen.append(epoch)

    hooks = HookSet()
    hooks.add(EndsOnly(), strict=True)
    assert [h for h, fns in hooks._table().items() if fns] == ["on_epoch_end"]  # the no-op hooks are not bound
    with pytest.raises(rf.RobustfastError, match="implements none of the hook points"):
        hooks.add(Callback(), strict=True)
    xtr, ytr, *_ = digits
    model = cnn()
    AdversarialTrainer(model, rf.FGSM(model, EPS), callbacks=[EndsOnly()], val_attack=None, progress=False,
                       verbose=False).fit(indexed_loader(xtr[:128], ytr[:128]), 2)  # fmt: skip
    assert seen == [0, 1]
