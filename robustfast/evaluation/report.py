"""The result of :func:`robustfast.evaluate`: accuracies, the exact protocol, timings and per-example masks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import save_torch_file
from ..errors import RobustfastError

__all__ = ["AttackResult", "EvaluationReport", "summarize_protocol"]

_FORMAT = "robustfast.evaluation/1"


def _mask_str(mask: tuple[bool, ...]) -> str:
    return "".join("1" if m else "0" for m in mask)


def _px(eps: float) -> str:
    """A radius for people: ``0.0314`` -> ``"8/255"`` (whole 255ths), ``0.1`` -> ``"0.1"``."""
    k = eps * 255
    if k > 0.5 and abs(k - round(k)) < 1e-6 * k:
        return f"{round(k)}/255"
    return f"{eps:.4g}"


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def summarize_protocol(protocol: dict[str, Any]) -> str:
    """A one-line summary of an attack's protocol for tables (ε and steps have their own columns).

    Example: ``"10 restarts, step 2/255, early exit, any restart breaks"``; the full protocol is in
    :attr:`AttackResult.protocol` (and below the table of :meth:`EvaluationReport.to_markdown`).
    """
    kind = str(protocol.get("attack", ""))
    if kind == "none":
        return "no attack"
    if kind == "fgsm":
        return f"FGSM, step {_px(protocol['step_size'])}" if "step_size" in protocol else "FGSM"
    if kind == "pgd":
        n = protocol.get("restarts", 1)
        parts = [f"{n} restart{'s' if n != 1 else ''}"]
        if "step_size" in protocol:
            parts.append(f"step {_px(protocol['step_size'])}")
        rule = str(protocol.get("per_example", ""))
        parts.append("max-loss restart, no early exit (papers' code)" if "max-loss" in rule else "any restart breaks")
        return ", ".join(parts)
    if kind == "autoattack":
        comps = "+".join(protocol.get("components", ()))
        package = f"{protocol.get('package')} {protocol.get('package_version')}"
        return _short(f"{protocol.get('version')}: {comps} ({package})")
    return _short(kind)


def _mask_tuple(s: str) -> tuple[bool, ...]:
    if set(s) - {"0", "1"}:
        raise RobustfastError("EvaluationReport.from_json: robust masks must be strings of 0/1")
    return tuple(c == "1" for c in s)


@dataclass(frozen=True)
class AttackResult:
    """One entry of the attack list.

    Attributes:
        name: the name used in the report (``"clean"``, ``"pgd-50-10"``, ``"autoattack"``, a custom attack's repr).
        accuracy: fraction of the evaluated points still classified correctly.
        robust: per-example mask (True = correct under this attack), in data order.
        protocol: the exact settings (steps, restarts, step size, package and version, seed, ...).
        time_s: wall-clock seconds spent on this attack.
    """

    name: str
    accuracy: float
    robust: tuple[bool, ...]
    protocol: dict[str, Any] = field(default_factory=dict)
    time_s: float = 0.0


@dataclass(frozen=True)
class EvaluationReport:
    """Robust accuracy of one model under a list of attacks (see :func:`robustfast.evaluate`).

    Attributes:
        results: one :class:`AttackResult` per requested attack, in order.
        eps: the L∞ radius in pixel units.
        n_examples: number of evaluated points.
        seed: the seed every attack was built with.
        worst_case: per-example mask, True where the point survives *every* attack of the list.
        time_s: total wall-clock seconds.
        meta: model class, device, library and package versions, batch size.
        adversarial: with ``evaluate(..., keep_adversarial=True)``: each attack's adversarial inputs ``(N, ...)`` on
            the CPU, by attack name (clean inputs where a point was not attacked); ``None`` otherwise. Not saved by
            :meth:`to_json`; see :meth:`save_adversarial`.
        labels: the evaluated labels ``(N,)`` when ``adversarial`` is kept, else ``None``.
    """

    results: tuple[AttackResult, ...]
    eps: float
    n_examples: int
    seed: int | None
    worst_case: tuple[bool, ...]
    time_s: float
    meta: dict[str, Any] = field(default_factory=dict)
    adversarial: dict[str, Tensor] | None = field(default=None, repr=False, compare=False)
    labels: Tensor | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ access
    @property
    def accuracy(self) -> dict[str, float]:
        """Per-attack accuracy, ``{name: accuracy}``."""
        return {r.name: r.accuracy for r in self.results}

    @property
    def worst_case_accuracy(self) -> float:
        """Fraction of points that survive every attack of the list (the per-example minimum)."""
        return sum(self.worst_case) / max(len(self.worst_case), 1)

    @property
    def cumulative(self) -> dict[str, float]:
        """Accuracy against the union of the attacks up to and including each entry (AutoAttack-style)."""
        alive = [True] * self.n_examples
        out = {}
        for r in self.results:
            alive = [a and b for a, b in zip(alive, r.robust)]
            out[r.name] = sum(alive) / max(self.n_examples, 1)
        return out

    def __getitem__(self, name: str) -> AttackResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no attack {name!r} in this report; have {[r.name for r in self.results]}")

    def robust_mask(self, name: str | None = None) -> Tensor:
        """Per-example mask as a bool tensor: of attack ``name``, or the worst case when ``None``."""
        return torch.tensor(self.worst_case if name is None else self[name].robust, dtype=torch.bool)

    # ------------------------------------------------------------------ formatting
    def _radius(self, eps: float) -> str:
        """``8/255`` for L∞ radii, the plain number with its norm for L2 ones."""
        norm = (self.meta or {}).get("norm", "Linf")
        return _px(eps) if norm == "Linf" else f"{eps:.4g} (L2)"

    def to_markdown(self) -> str:
        """Markdown: a table (attack, ε, steps, accuracy, cumulative, short protocol, time), then full protocols."""
        lines = [
            f"Evaluation at eps = {self._radius(self.eps)} on {self.n_examples} points (seed {self.seed})",
            "",
            "| attack | ε | steps | accuracy (%) | cumulative (%) | protocol | time (s) |",
            "|---|---|---:|---:|---:|---|---:|",
        ]
        cum = self.cumulative
        for r in self.results:
            p = r.protocol
            eps = "–" if p.get("attack") == "none" else self._radius(float(p.get("eps", self.eps)))
            steps = p.get("steps", p.get("n_iter", ""))
            lines.append(
                f"| {r.name} | {eps} | {steps} | {100 * r.accuracy:.2f} | {100 * cum[r.name]:.2f} | "
                f"{summarize_protocol(p)} | {r.time_s:.1f} |"
            )
        lines += ["", f"Worst case over all attacks: {100 * self.worst_case_accuracy:.2f}% ({self.time_s:.1f} s)", ""]
        lines.append("Protocols (exact settings):")
        for r in self.results:
            proto = ", ".join(f"{k}={v}" for k, v in r.protocol.items())
            lines.append(f"- {r.name}: `{proto}`")
        return "\n".join(lines)

    def save_adversarial(self, path: str | Path, name: str | None = None) -> Path:
        """Save one attack's adversarial inputs with ``torch.save``, in torchattacks' layout.

        The file holds ``adv_inputs`` ``(N, ...)`` and ``labels`` ``(N,)`` (the keys torchattacks' ``Attack.save``
        writes and ``Attack.load`` reads), plus ``robust`` (bool mask), ``attack``, ``eps`` and ``protocol``. It
        loads with ``torch.load(path, weights_only=True)``.

        Args:
            path: output file (parent folders are created).
            name: the attack's name in this report (default: the only attack with adversarial inputs).

        Returns:
            The path written.

        Raises:
            RobustfastError: the report kept no adversarial inputs (``evaluate(..., keep_adversarial=True)``), or
                ``name`` is missing or ambiguous.
        """
        if not self.adversarial or self.labels is None:
            raise RobustfastError(
                "save_adversarial: this report kept no adversarial inputs; evaluate with keep_adversarial=True "
                "(reports read back with from_json never have them)"
            )
        if name is None:
            if len(self.adversarial) != 1:
                raise RobustfastError(
                    f"save_adversarial: the report has adversarial inputs of {sorted(self.adversarial)}; pass name="
                )
            name = next(iter(self.adversarial))
        if name not in self.adversarial:
            have = sorted(self.adversarial)
            raise RobustfastError(f"save_adversarial: no adversarial inputs for {name!r}; have {have}")
        result = self[name]
        payload = {
            "adv_inputs": self.adversarial[name],
            "labels": self.labels,
            "robust": torch.tensor(result.robust, dtype=torch.bool),
            "attack": name,
            "eps": self.eps,
            "protocol": json.loads(json.dumps(result.protocol, default=str)),
        }
        out = save_torch_file(payload, path, what="adversarial examples")
        return out

    def to_json(self, **kwargs: Any) -> str:
        """Serialize (masks as strings of 0/1); ``kwargs`` go to :func:`json.dumps`."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("adversarial", "labels")}
        d["results"] = [asdict(r) for r in self.results]
        d["format"] = _FORMAT
        d["worst_case"] = _mask_str(self.worst_case)
        for r in d["results"]:
            r["robust"] = _mask_str(r["robust"])
        return json.dumps(d, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> EvaluationReport:
        """Inverse of :meth:`to_json`."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise RobustfastError(f"EvaluationReport.from_json: not JSON ({e})") from e
        if not isinstance(d, dict) or d.pop("format", None) != _FORMAT:
            raise RobustfastError(f"EvaluationReport.from_json: not a {_FORMAT} document")
        results = tuple(AttackResult(**{**r, "robust": _mask_tuple(r["robust"])}) for r in d.pop("results"))
        return cls(results=results, **{**d, "worst_case": _mask_tuple(d["worst_case"])})
