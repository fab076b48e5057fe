"""The verdict of a validation, per provider and per output, as lines and as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum

from .providers import short_name


class Criterion(str, Enum):
    """How an output's limit was set."""

    CALIBRATED = "calibrated"  # noise_factor × the rounding noise measured on this model
    FLIPS = "flips"  # integers and booleans: as many flips as rounding makes
    TOLERANCE = "tolerance"  # explicit rtol/atol
    EXACT = "exact"  # nothing may differ


class Status(str, Enum):
    """What happened on one provider."""

    PASSED = "passed"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"  # named explicitly and cannot be used: validation fails
    NOT_USED = "not used"  # tried by auto and cannot be used: reported, not a failure


@dataclass(kw_only=True)
class OutputComparison:
    """One output on one provider. `limit_used` is the largest deviation over its limit (below
    1 passes); `criterion` says how the limit was set (`Criterion`)."""

    provider: str
    output: str
    passed: bool
    elements: int
    mismatches: int  # elements over their limit
    max_abs: float
    max_rel: float  # max |diff| / max |reference|
    limit_used: float
    criterion: Criterion
    worst_index: list[int] = field(default_factory=list)
    rounding_noise: float = 0.0  # calibrated: largest move of the runs moved by rounding
    noise_factor: float = 0.0
    atol: float = 0.0  # tolerance: the absolute and relative tolerances applied
    rtol: float = 0.0
    provider_gap: float = 0.0  # other providers: the original's largest deviation from the CPU
    nonfinite: int = 0  # non-finite candidate values where the reference is finite
    note: str = ""

    def line(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        stats = f"max abs {self.max_abs:.2g}, max rel {self.max_rel:.2g}"
        text = f"{verdict} | {short_name(self.provider)} | output '{self.output}' | {stats}"
        if self.note and self.elements == self.mismatches and self.max_abs == float("inf"):
            return f"{text} | {self.note}"
        text += f" | {_fraction(self.limit_used)} ({self._limit_text()})"
        if not self.passed:
            text += f" | {self.mismatches} of {self.elements} elements off"
            if self.worst_index:
                text += f", worst at {self.worst_index}"
            if self.nonfinite:
                text += f", {self.nonfinite} non-finite where the reference is finite"
        if self.note:
            text += f" | {self.note}"
        return text

    def _limit_text(self) -> str:
        if self.criterion is Criterion.CALIBRATED:
            text = f"limit {self.noise_factor:g} × rounding noise {self.rounding_noise:.2g}"
        elif self.criterion is Criterion.FLIPS:
            text = f"as many flips as rounding makes, × {self.noise_factor:g}"
        elif self.criterion is Criterion.TOLERANCE:
            text = f"atol {self.atol:.2g}, rtol {self.rtol:.2g}"
        else:
            text = "exact"
        if self.provider_gap:
            text += f", + 2 × the original's gap to the CPU {self.provider_gap:.2g}"
        return text


def _fraction(value: float) -> str:
    if value <= 1:
        return f"{value:.2g} of the limit"
    return f"{value:.3g} × the limit"


@dataclass(kw_only=True)
class ProviderOutcome:
    """What happened on one execution provider: `reason` holds onnxruntime's full message."""

    provider: str
    status: Status
    reason: str = ""
    options: dict = field(default_factory=dict)
    outputs: list[OutputComparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in (Status.PASSED, Status.NOT_USED)

    @property
    def ran(self) -> bool:
        return self.status in (Status.PASSED, Status.FAILED)

    def lines(self, verbose: bool = False) -> list[str]:
        name = short_name(self.provider)
        reason = self.reason if verbose else (self.reason.strip().splitlines() or [""])[0]
        if self.status == Status.NOT_USED:
            return [f"NOT USED | {name} | {reason}"]
        if self.status == Status.UNAVAILABLE:
            return [f"FAILED | {name} | required but unavailable: {reason}"]
        lines = [f"NOTE | {name} | {note}" for note in self.notes]
        lines += [comparison.line() for comparison in self.outputs]
        if self.reason:
            lines.append(f"FAILED | {name} | {reason}")
        return lines

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "outputs"}
        data["status"] = self.status.value
        data["outputs"] = [{**asdict(o), "criterion": o.criterion.value} for o in self.outputs]
        return data


@dataclass(kw_only=True)
class ValidationReport:
    """The verdict of `validate`: passed when every provider that had to run ran and passed,
    and at least one ran."""

    providers: list[ProviderOutcome]
    inputs: dict[str, dict]
    seed: int
    settings: dict
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return any(p.ran for p in self.providers) and all(p.ok for p in self.providers)

    def names(self, *statuses: Status) -> list[str]:
        return [short_name(p.provider) for p in self.providers if p.status in statuses]

    def verdict(self) -> str:
        """`validation PASSED | passed on cpu | not used: cuda (...)`, naming every provider."""
        parts = [f"validation {'PASSED' if self.passed else 'FAILED'}"]
        for label, status in (
            ("passed on", Status.PASSED),
            ("failed on", Status.FAILED),
            ("required but unavailable:", Status.UNAVAILABLE),
            ("not used:", Status.NOT_USED),
        ):
            names = self.names(status)
            if names:
                parts.append(f"{label} {', '.join(names)}")
        if len(parts) == 1:
            parts.append("no provider ran")
        return " | ".join(parts)

    def lines(self, verbose: bool = False) -> list[str]:
        lines = [f"WARNING | {text}" for text in self.warnings]
        if verbose:
            lines.extend(f"NOTE | {text}" for text in self.notes)
        for outcome in self.providers:
            lines.extend(outcome.lines(verbose))
        lines.append(self.verdict())
        return lines

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "providers_requested": self.settings.get("providers_requested"),
            "providers_used": self.names(Status.PASSED, Status.FAILED),
            "providers_passed": self.names(Status.PASSED),
            "providers_failed": self.names(Status.FAILED, Status.UNAVAILABLE),
            "providers_not_used": self.names(Status.NOT_USED),
            "providers": [p.to_dict() for p in self.providers],
            "inputs": self.inputs,
            "seed": self.seed,
            "settings": self.settings,
            "warnings": self.warnings,
            "notes": self.notes,
        }
