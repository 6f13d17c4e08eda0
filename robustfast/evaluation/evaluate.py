"""``robustfast.evaluate``: clean, PGD-K-R, FGSM, APGD and AutoAttack accuracy of a model in one call.

Protocol (methods spec §1.4, §2.5, §6.3): fp32, model in eval mode (flags restored afterwards), points taken in
data order, only correctly classified points are attacked. PGD-K-R starts every restart from ``U([-ε, ε])``,
uses step ``ε/4`` (= 2/255 at ε = 8/255, GradAlign/AdvLC/ZeroGrad/SEAT agree there), freezes each example once
misclassified and counts a point as broken when any restart breaks it (the per-example worst case).
``pgd-K-R-official`` is the papers' own protocol (GradAlign's and AdvLC's code): every restart runs all K
steps, and per example only the restart with the highest final loss counts. It is weaker than ours, never
stronger in expectation; report which one you used (the report's protocol says it).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._checks import check_logits
from ..attacks import FGSM, PGD, PGDL2, Attack
from ..errors import RobustfastError
from ..modes import model_mode
from ._predict import output_width, predict
from .autoattack import AA_ATTACKS, AutoAttackAdapter
from .report import AttackResult, EvaluationReport

__all__ = ["DEFAULT_ATTACKS", "evaluate", "parse_attack"]

DEFAULT_ATTACKS = ("clean", "pgd-50-10", "autoattack")
_PGD = re.compile(r"pgd-?(\d+)(?:-(\d+))?(-official)?")
_AA_VERSIONS = {"autoattack": "standard", "aa": "standard", "autoattack-standard": "standard"}
_AA_VERSIONS |= {"autoattack-plus": "plus", "autoattack-rand": "rand"}
_FORMS = "'clean', 'fgsm', 'pgd-K', 'pgd-K-R' (e.g. 'pgd-50-10') or 'pgd-K-R-official', "
_FORMS += ", ".join(repr(a) for a in AA_ATTACKS)
_FORMS += ", 'autoattack', 'autoattack-plus', 'autoattack-rand', or an Attack / AutoAttackAdapter instance"


@dataclass(frozen=True)
class _Plan:
    """One parsed entry of the attack list."""

    name: str
    kind: str  # "clean" | "attack" | "pgd" | "pgd-official" | "autoattack"
    obj: Any
    protocol: dict[str, Any]
    restarts: int = 1


def _eps_str(eps: float) -> str:
    return f"{eps:.4g} (= {eps * 255:.3g}/255)"


def _check_instance(
    spec: Attack | AutoAttackAdapter, model: nn.Module, eps: float, allow_smaller_eps: bool, norm: str = "Linf"
) -> None:
    """An attack instance must target the evaluated model, at the evaluation's ε (smaller only when allowed)."""
    what = f"{type(spec).__name__}(eps={spec.eps:.4g})"
    spec_norm = getattr(spec, "norm", "Linf")
    if spec_norm != norm:
        raise RobustfastError(
            f"evaluate: {what} attacks in the {spec_norm} norm but the evaluation is in {norm}; pass "
            f"norm={spec_norm!r} to evaluate, or use an attack of the {norm} threat model"
        )
    if spec.model is not model:
        raise RobustfastError(
            f"evaluate: the attack {what} was built on another model ({type(spec.model).__name__} at "
            f"{id(spec.model):#x}) than the evaluated one ({type(model).__name__} at {id(model):#x}); its "
            f"perturbations would not target this model. Build it on the evaluated model: "
            f"{type(spec).__name__}(model, ...)."
        )
    if spec.eps > eps * (1 + 1e-6):
        raise RobustfastError(
            f"evaluate: {what}: perturbation larger than eps={_eps_str(eps)}; build the attack with eps <= {eps:.4g}"
        )
    if spec.eps < eps * (1 - 1e-6) and not allow_smaller_eps:
        raise RobustfastError(
            f"evaluate: {what} has eps={_eps_str(spec.eps)}, smaller than the evaluation's eps={_eps_str(eps)}; its "
            f"accuracy would overstate robustness at eps={eps:.4g}. Build it with eps={eps:.4g}, or pass "
            "allow_smaller_eps=True to evaluate it anyway (the report shows each attack's eps)."
        )


def parse_attack(
    spec: str | Attack | AutoAttackAdapter,
    model: nn.Module,
    eps: float,
    seed: int | None = 0,
    *,
    allow_smaller_eps: bool = False,
    pgd_step_size: float | None = None,
    norm: str = "Linf",
) -> _Plan:
    """Turn an attack name (``"pgd-50-10"``, ``"pgd-50-10-official"``, ``"autoattack"``...) or instance into a plan.

    Args:
        spec: an attack name (see :func:`evaluate`) or an :class:`~robustfast.Attack` / :class:`AutoAttackAdapter`
            built on ``model``.
        model: the evaluated model.
        eps: the evaluation's L∞ radius.
        seed: seed of the attacks built from names (default 0).
        allow_smaller_eps: accept instances whose ``eps`` is below ``eps`` (default ``False``: refused).
        pgd_step_size: step of the named PGD attacks (default ``None``: ``eps / 4``).
        norm: the threat model, ``"Linf"`` (default) or ``"L2"`` (named PGD attacks are then :class:`PGDL2`).

    Raises:
        RobustfastError: unknown name, bad PGD budget, or an instance on another model or at another ε.
    """
    if isinstance(spec, AutoAttackAdapter):
        _check_instance(spec, model, eps, allow_smaller_eps, norm)
        return _Plan(f"autoattack-{spec.version}", "autoattack", spec, spec.protocol())
    if isinstance(spec, Attack):
        _check_instance(spec, model, eps, allow_smaller_eps, norm)
        proto = {"attack": repr(spec), "eps": spec.eps, "steps": getattr(spec, "steps", 1), "seed": spec.seed}
        if hasattr(spec, "step_size"):
            proto["step_size"] = spec.step_size
        return _Plan(type(spec).__name__.lower(), "attack", spec, proto)
    if not isinstance(spec, str):
        raise RobustfastError(f"attack {spec!r} not understood; use {_FORMS}")
    key = spec.strip().lower().replace("_", "-")
    if key == "clean":
        return _Plan("clean", "clean", None, {"attack": "none", "steps": 0})
    if key == "fgsm":
        if norm != "Linf":
            raise RobustfastError(f"'fgsm' is an L∞ attack; under norm={norm!r} use a PGD budget such as 'pgd-20'")
        atk = FGSM(model, eps, seed=seed)
        return _Plan(key, "attack", atk, {"attack": "fgsm", "steps": 1, "step_size": eps, "random_start": False})
    m = _PGD.fullmatch(key)
    if m:
        steps, restarts, official = int(m.group(1)), int(m.group(2) or 1), bool(m.group(3))
        if steps < 1 or restarts < 1:
            raise RobustfastError(f"{spec!r}: PGD needs steps >= 1 and restarts >= 1")
        name = (f"pgd-{steps}-{restarts}" if m.group(2) else f"pgd-{steps}") + ("-official" if official else "")
        alpha = eps / 4 if pgd_step_size is None else pgd_step_size
        proto = {"attack": "pgd" if norm == "Linf" else "pgd-l2", "steps": steps, "restarts": restarts,
                 "step_size": alpha, "seed": seed, "norm": norm}  # fmt: skip
        proto |= {"random_start": "uniform", "restart_seeds": "seed + restart index"}
        if official:  # the papers' code: all steps, per example the restart with the highest final loss counts
            proto["per_example"] = "no early exit; the max-loss restart counts"
        else:
            proto["per_example"] = "early exit; broken by any restart"
        kw = {"alpha": alpha, "steps": steps, "random_start": True, "early_stop": not official}
        return _Plan(name, "pgd-official" if official else "pgd", kw, proto, restarts)
    if key in AA_ATTACKS:
        adapter = AutoAttackAdapter(model, eps, norm=norm, version="custom", attacks=[key], seed=seed)
        return _Plan(key, "autoattack", adapter, adapter.protocol())
    if key in _AA_VERSIONS:
        adapter = AutoAttackAdapter(model, eps, norm=norm, version=_AA_VERSIONS[key], seed=seed)
        return _Plan(key, "autoattack", adapter, adapter.protocol())
    raise RobustfastError(f"unknown attack {spec!r}; use {_FORMS}")


def _check_eps(eps: Any, norm: str = "Linf") -> float:
    """ε as a float in (0, 1]; the same messages as the attacks' (no silent /255)."""
    if isinstance(eps, Tensor) and eps.numel() == 1 and not eps.dtype.is_complex:
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise RobustfastError(f"evaluate(eps={eps!r}): eps must be a finite number in pixel units, e.g. 8/255")
    if eps < 0:
        raise RobustfastError(f"evaluate(eps={eps:g}): eps must be >= 0 (an L∞ radius in pixel units, e.g. 8/255)")
    if eps == 0:
        raise RobustfastError("evaluate(eps=0): eps must be > 0 (an L∞ radius in pixel units, e.g. 8/255)")
    if eps > 1 and norm == "Linf":
        raise RobustfastError(
            f"evaluate(eps={eps:g}): eps={eps:g} looks like a 0-255 scale but inputs are in [0, 1]; "
            f"did you mean eps={eps:g}/255?"
        )
    return float(eps)


def _collect(data: Any, n_examples: int | None) -> tuple[Tensor, Tensor]:
    """First ``n_examples`` points of ``(x, y)`` tensors or of an iterable of ``(x, y)`` batches (a DataLoader)."""
    if n_examples is not None and (isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1):
        raise RobustfastError(f"n_examples={n_examples!r}: must be a positive integer or None (all points)")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise RobustfastError(f"data: {x.shape[0]} inputs but {y.shape[0]} labels")
    elif isinstance(data, Iterable) and not isinstance(data, Tensor):
        xs, ys, have = [], [], 0
        for item in data:
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise RobustfastError("data: a DataLoader must yield (inputs, labels) batches")
            xs.append(item[0])
            ys.append(torch.as_tensor(item[1]))
            have += item[0].shape[0]
            if n_examples is not None and have >= n_examples:
                break
        if not xs:
            raise RobustfastError("data is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise RobustfastError(f"data must be a DataLoader or an (x, y) pair of tensors, got {type(data).__name__}")
    if n_examples is not None and n_examples > x.shape[0]:
        raise RobustfastError(f"n_examples={n_examples} but the data has only {x.shape[0]} points")
    x, y = (x, y) if n_examples is None else (x[:n_examples], y[:n_examples])
    if x.shape[0] == 0:
        raise RobustfastError("data is empty")
    if not x.is_floating_point() or y.is_floating_point() or y.dim() != 1:
        raise RobustfastError("data: inputs must be float images in [0, 1] and labels integer class indices (N,)")
    finite = torch.isfinite(x)
    if not finite.all():  # NaN compares false with everything: the range check below would let it through
        bad = (~finite).flatten(1).any(1)
        first = int(bad.nonzero()[0])
        raise RobustfastError(
            f"evaluate: data holds {int((~finite).sum())} NaN/inf input values in {int(bad.sum())} of {x.shape[0]} "
            f"examples (the first at index {first}); accuracies on them mean nothing. Fix the data (its loading or "
            "transforms) or drop those examples."
        )
    lo, hi = torch.aminmax(x)
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise RobustfastError(
            f"data: inputs must be in [0, 1], got [{lo.item():.3g}, {hi.item():.3g}]; move normalization into the "
            "model (robustfast.models.Normalize)"
        )
    return x.float(), y.long()


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _run_plan(
    plan: _Plan,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    correct: Tensor,
    bs: int,
    dev: torch.device,
    eps: float,
    bar: Any,
    keep: bool,
) -> tuple[Tensor, dict[str, Any], Tensor | None]:
    """Per-example robustness mask, protocol and (when ``keep``) the adversarial inputs of one plan.

    Only points in ``correct`` are attacked; the others keep their clean input in the returned ``x_adv``.
    """
    if plan.kind == "clean":
        bar.update(1)
        return correct.clone(), plan.protocol, None
    if plan.kind == "autoattack":
        res = plan.obj.run(x, y, batch_size=bs)
        bar.update(1)
        kept = res.x_adv.detach().to("cpu", copy=True) if keep else None
        return res.robust.to(correct.device) & correct, {"steps": res.protocol.get("n_iter"), **res.protocol}, kept
    if plan.kind == "attack":
        return _run_attack(plan, model, x, y, correct, bs, dev, eps, bar, keep)
    return _run_pgd(plan, model, x, y, correct, bs, dev, eps, bar, keep)


def _check_ball(name: str, x_adv: Tensor, x: Tensor, eps: float, norm: str = "Linf") -> None:
    d = (x_adv - x).flatten(1)
    size = d.abs().amax() if norm == "Linf" else d.norm(dim=1).amax()
    if size > eps * (1 + 1e-5) + 1e-5:
        raise RobustfastError(f"{name}: perturbation larger than eps={eps:.4g} in the {norm} norm")


def _run_attack(
    plan: _Plan, model: nn.Module, x: Tensor, y: Tensor, correct: Tensor, bs: int, dev: torch.device, eps: float,
    bar: Any, keep: bool,
) -> tuple[Tensor, dict[str, Any], Tensor | None]:  # fmt: skip
    """An attack instance (or FGSM) once over the correctly classified points."""
    robust = correct.clone()
    kept = x.detach().to("cpu", copy=True) if keep else None
    idx = correct.nonzero().squeeze(1)
    for i in range(0, idx.numel(), bs):
        j = idx[i : i + bs]
        xb, yb = x[j].to(dev), y[j].to(dev)
        x_adv = plan.obj(xb, yb)
        _check_ball(plan.name, x_adv, xb, eps, plan.protocol.get("norm", "Linf"))
        robust[j] = predict(model, x_adv, bs, dev).to(robust.device) == y[j]
        if kept is not None:
            kept[j.cpu()] = x_adv.detach().to("cpu", kept.dtype)
    bar.update(1)
    return robust, plan.protocol, kept


def _run_pgd(
    plan: _Plan, model: nn.Module, x: Tensor, y: Tensor, correct: Tensor, bs: int, dev: torch.device, eps: float,
    bar: Any, keep: bool,
) -> tuple[Tensor, dict[str, Any], Tensor | None]:  # fmt: skip
    """PGD-K-R, ours or the papers' official rule, on the correctly classified points.

    Every restart ``r`` attacks all of them, in the same batches, from starts drawn with ``seed + r``: so both
    rules see the same starts per example and ours (a point is broken when any restart's trajectory misclassifies
    it) breaks every point the official rule (the restart with the highest final loss) breaks. With early exit,
    points that were already broken cost ours only the steps until they are misclassified again.
    """
    official = plan.kind == "pgd-official"
    seed = plan.protocol.get("seed")
    robust = correct.clone()
    kept = x.detach().to("cpu", copy=True) if keep else None
    idx = correct.nonzero().squeeze(1)
    best_loss = torch.full((x.shape[0],), -math.inf, device=correct.device)
    best_ok = correct.clone()
    for r in range(plan.restarts):
        cls = PGDL2 if plan.protocol.get("norm") == "L2" else PGD
        atk = cls(model, eps, seed=None if seed is None else seed + r, **plan.obj)
        for i in range(0, idx.numel(), bs):
            j = idx[i : i + bs]
            xb, yb = x[j].to(dev), y[j].to(dev)
            x_adv = atk(xb, yb)
            _check_ball(plan.name, x_adv, xb, eps, plan.protocol.get("norm", "Linf"))
            with torch.no_grad():
                logits = check_logits("evaluate", model(x_adv), x_adv.shape[0]).float()
            ok = (logits.argmax(1) == yb).to(robust.device)
            if official:  # GradAlign's attack_pgd: max_delta[loss >= max_loss] = delta
                loss = F.cross_entropy(logits, yb, reduction="none").to(robust.device)
                take = loss >= best_loss[j]
                best_loss[j] = torch.where(take, loss, best_loss[j])
                best_ok[j] = torch.where(take, ok, best_ok[j])
            else:
                take = robust[j].clone()  # not broken before this restart: keep its latest x_adv
                robust[j] &= ok
            if kept is not None:
                kept[j[take].cpu()] = x_adv[take.to(x_adv.device)].detach().to("cpu", kept.dtype)
        bar.update(1)  # one unit per restart
    if official:
        robust = correct & best_ok
    return robust, plan.protocol, kept


def evaluate(
    model: nn.Module,
    data: Any,
    eps: float,
    attacks: Sequence[str | Attack | AutoAttackAdapter] = DEFAULT_ATTACKS,
    *,
    n_examples: int | None = None,
    batch_size: int = 256,
    seed: int | None = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    keep_adversarial: bool = False,
    allow_smaller_eps: bool = False,
    pgd_step_size: float | None = None,
    norm: Literal["Linf", "L2"] = "Linf",
) -> EvaluationReport:
    """Accuracy of ``model`` under each attack of a list, the per-example worst case, and the exact protocol.

    Args:
        model: classifier on ``[0, 1]`` inputs returning ``(N, C)`` logits (a tuple or dict output is an error: wrap
            the model); runs in eval mode, flags restored.
        data: a DataLoader of ``(x, y)`` batches, or an ``(x, y)`` pair of tensors; NaN/inf inputs are an error.
        eps: radius in pixel units: L∞ ``8/255`` in ``(0, 1]`` (``8`` is an error that suggests ``8/255``); under
            ``norm="L2"`` any positive L2 radius (e.g. 0.5).
        attacks: names (``"clean"``, ``"fgsm"``, ``"pgd-20"``, ``"pgd-50-10"``, ``"pgd-50-10-official"``,
            ``"apgd-ce"``, ``"apgd-t"``, ``"fab-t"``, ``"square"``, ``"autoattack"``, ``"autoattack-plus"``,
            ``"autoattack-rand"``) or :class:`~robustfast.Attack` / :class:`AutoAttackAdapter` instances built on
            ``model``. Default: clean, PGD-50-10 (step ε/4, GradAlign's main metric, with our stronger per-example
            rule) and standard AutoAttack (RobustBench).
        n_examples: evaluate the first ``n_examples`` points (default: all); more than the data holds is an error.
        batch_size: points per forward/backward (default 256).
        seed: seed of every attack's randomness (default 0), so a report is reproducible.
        device: where to run; default: the model's device.
        progress: show a tqdm progress bar (default ``True``).
        keep_adversarial: keep each attack's adversarial inputs on the report (CPU, default ``False``), for
            :meth:`EvaluationReport.save_adversarial`.
        allow_smaller_eps: accept attack instances whose ``eps`` is below ``eps`` (default ``False``: refused, since
            they overstate robustness); the report shows each attack's ε either way.
        pgd_step_size: step size of the named PGD attacks (default ``None``: ``eps / 4``, GradAlign/AdvLC; ZeroGrad
            and SEAT evaluate with ``2/255``).
        norm: the threat model: ``"Linf"`` (default) or ``"L2"`` (named PGD attacks become
            :class:`~robustfast.PGDL2`, AutoAttack runs with ``norm="L2"``, ``"fgsm"`` is refused, and attack instances
            must declare the same norm).

    Returns:
        An :class:`EvaluationReport` (``report.accuracy``, ``report.worst_case_accuracy``, ``to_markdown()``).

    Raises:
        RobustfastError: bad ``eps``, data, attack names or instances (another model, another ε), or a model
            that does not return ``(N, C)`` logits.
    """
    t0 = time.perf_counter()
    if norm not in ("Linf", "L2"):
        raise RobustfastError(f"evaluate(norm={norm!r}): choose 'Linf' or 'L2'")
    eps = _check_eps(eps, norm)
    if not isinstance(model, nn.Module):
        raise RobustfastError(f"evaluate: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(attacks, (str, Attack, AutoAttackAdapter)):
        attacks = [attacks]
    if not attacks:
        raise RobustfastError("evaluate: attacks is empty")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise RobustfastError(f"batch_size={batch_size!r}: must be a positive integer")
    if pgd_step_size is not None:
        if (
            isinstance(pgd_step_size, bool)
            or not isinstance(pgd_step_size, (int, float))
            or not 0 < pgd_step_size <= eps
        ):
            raise RobustfastError(f"pgd_step_size={pgd_step_size!r}: must be in (0, eps={eps:.4g}]")
        pgd_step_size = float(pgd_step_size)
    kw = {"allow_smaller_eps": allow_smaller_eps, "pgd_step_size": pgd_step_size, "norm": norm}
    plans = [parse_attack(a, model, eps, seed, **kw) for a in attacks]
    seen: dict[str, int] = {}
    for i, p in enumerate(plans):  # make names unique: "pgd-20", "pgd-20#2"
        seen[p.name] = seen.get(p.name, 0) + 1
        if seen[p.name] > 1:
            plans[i] = replace(p, name=f"{p.name}#{seen[p.name]}")
    x, y = _collect(data, n_examples)
    dev = _model_device(model, device)
    results, adversarial = [], {}
    with model_mode(model, "eval"), torch.autocast(dev.type, enabled=False):
        n_classes = output_width(model, x[:1].to(dev))
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            raise RobustfastError(
                f"evaluate: labels must be class indices in [0, {n_classes}) for a model with {n_classes} outputs, "
                f"got labels in [{lo}, {hi}]"
            )
        correct = predict(model, x, batch_size, dev) == y
        units = sum(p.restarts if p.kind.startswith("pgd") else 1 for p in plans)
        bar = tqdm(total=units, desc="evaluate", disable=not progress, leave=False)
        with bar:
            for plan in plans:
                bar.set_postfix_str(plan.name)
                t = time.perf_counter()
                robust, proto, x_adv = _run_plan(
                    plan, model, x, y, correct, batch_size, dev, eps, bar, keep_adversarial
                )
                results.append(AttackResult(plan.name, robust.float().mean().item(), tuple(robust.tolist()),
                                            {"eps": eps, **proto}, time.perf_counter() - t))  # fmt: skip
                if x_adv is not None:
                    adversarial[plan.name] = x_adv
    worst = correct.clone()
    for r in results:
        worst &= torch.tensor(r.robust)
    elapsed = time.perf_counter() - t0
    meta = {**_meta(model, dev, batch_size), "norm": norm}
    return EvaluationReport(
        tuple(results), eps, x.shape[0], seed, tuple(worst.tolist()), elapsed, meta,
        adversarial=adversarial if keep_adversarial else None, labels=y.detach().cpu() if keep_adversarial else None,
    )  # fmt: skip


def _meta(model: nn.Module, dev: torch.device, batch_size: int) -> dict[str, Any]:
    from .. import __version__

    return {
        "model": type(model).__name__,
        "device": str(dev),
        "batch_size": batch_size,
        "dtype": "float32",
        "torch": torch.__version__,
        "robustfast": __version__,
        "subset": "first n_examples points in data order",
    }
