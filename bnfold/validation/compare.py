"""One output on one provider: the deviation, the limit it is held to, the verdict."""

from __future__ import annotations

from typing import Any

import numpy as np

from .criterion import (
    NOISE_FACTOR,
    Tolerance,
    calibrated_limits,
    deviation,
    finite_part,
    is_floating,
    tolerance_limits,
    worst_ratio,
)
from .report import Criterion, OutputComparison


def compare(
    provider: str,
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    perturbed: list[np.ndarray] | None = None,
    perturbed_reference: list[np.ndarray] | None = None,
    tolerance: Tolerance | None = None,
    provider_gap: np.ndarray | None = None,
    perturbed_base: np.ndarray | None = None,
) -> OutputComparison:
    """Compare one output. With `tolerance`, allclose semantics; else the limit calibrated from
    `perturbed` and `perturbed_reference` (the candidate's and the reference's outputs with what
    the fold wrote or consumed moved by rounding, one per draw; none: nothing changed, so only
    the rounding floor applies; `perturbed_base`: the candidate's unmoved output from the
    session `perturbed` came from, if not `candidate`): for floats
    `criterion.calibrated_limits`, for integers and booleans as many flips as rounding makes
    (`_counted`); strings must match exactly."""
    if reference.shape != candidate.shape or reference.dtype != candidate.dtype:
        return _mismatched(provider, name, reference, candidate)
    if reference.dtype == object or not (
        is_floating(reference.dtype) or reference.dtype.kind in "iub"
    ):
        return _exact(provider, name, reference, candidate)
    if tolerance is None and reference.dtype.kind in "iub":
        draws = [*(perturbed or []), *(perturbed_reference or [])]
        base = candidate if perturbed_base is None else perturbed_base
        bases = [base] * len(perturbed or []) + [reference] * len(perturbed_reference or [])
        return _counted(provider, name, reference, candidate, draws, bases)
    diff = deviation(candidate, reference)
    gap = None if provider_gap is None else finite_part(provider_gap)
    if tolerance is not None:
        limit = tolerance_limits(reference, tolerance, gap)
        details = {
            "criterion": Criterion.TOLERANCE,
            "atol": tolerance.resolved_atol(np.asarray(reference, np.float64)),
            "rtol": tolerance.rtol,
        }
    else:
        limit, noise = calibrated_limits(
            reference, candidate, perturbed or [], perturbed_reference or [], gap, perturbed_base
        )
        details = {"criterion": Criterion.CALIBRATED, "rounding_noise": noise}
        details["noise_factor"] = NOISE_FACTOR
    return _verdict(provider, name, reference, candidate, diff, limit, gap, details)


def _verdict(provider, name, reference, candidate, diff, limit, gap, details) -> OutputComparison:
    ratio, worst = worst_ratio(diff, limit)
    ref_finite = np.isfinite(np.asarray(reference, np.float64))
    nonfinite = int(np.count_nonzero(ref_finite & ~np.isfinite(np.asarray(candidate, np.float64))))
    mismatches = int(np.count_nonzero(diff > limit))
    max_abs = float(diff.max()) if diff.size else 0.0
    magnitude = finite_part(np.abs(np.asarray(reference, np.float64)))
    max_ref = float(magnitude.max()) if magnitude.size else 0.0
    max_rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else float("inf"))
    return OutputComparison(
        provider=provider,
        output=name,
        passed=mismatches == 0 and nonfinite == 0,
        elements=int(diff.size),
        mismatches=mismatches,
        max_abs=max_abs,
        max_rel=max_rel,
        limit_used=ratio,
        worst_index=[int(i) for i in np.unravel_index(worst, diff.shape)] if worst >= 0 else [],
        provider_gap=float(gap.max()) if gap is not None and gap.size else 0.0,
        nonfinite=nonfinite,
        **details,
    )


def _exact(provider, name, reference, candidate) -> OutputComparison:
    """Strings and other objects: equal, or not."""
    equal = np.asarray(reference == candidate)
    mismatches = int(np.size(equal) - np.count_nonzero(equal))
    first: Any = np.argwhere(~equal) if mismatches else []
    return OutputComparison(
        provider=provider,
        output=name,
        passed=mismatches == 0,
        elements=int(reference.size),
        mismatches=mismatches,
        max_abs=0.0,
        max_rel=0.0,
        limit_used=0.0 if mismatches == 0 else float("inf"),
        criterion=Criterion.EXACT,
        worst_index=[int(i) for i in first[0]] if mismatches else [],
    )


def _counted(provider, name, reference, candidate, draws, bases) -> OutputComparison:
    """Integers and booleans (ArgMax, rounded values, masks): equal, except where rounding alone
    flips them. If the runs moved by rounding changed k elements by at most m, the candidate
    may differ in up to `NOISE_FACTOR`·k elements, by at most m; else it must be equal."""
    diff = np.abs(candidate.astype(np.int64) - reference.astype(np.int64))
    flips = [
        np.abs(d.astype(np.int64) - b.astype(np.int64)) for d, b in zip(draws, bases, strict=True)
    ]
    allowed_count = NOISE_FACTOR * max((int(np.count_nonzero(f)) for f in flips), default=0)
    allowed_step = max((int(f.max()) for f in flips if f.size), default=0)
    mismatches = int(np.count_nonzero(diff))
    largest = int(diff.max()) if diff.size else 0
    over = mismatches > allowed_count or largest > allowed_step
    used = _ratio(mismatches, allowed_count) if largest <= allowed_step else float("inf")
    first: Any = np.argwhere(diff == largest) if mismatches else []
    return OutputComparison(
        provider=provider,
        output=name,
        passed=not over,
        elements=int(reference.size),
        mismatches=mismatches if over else 0,
        max_abs=float(largest),
        max_rel=0.0,
        limit_used=used,
        criterion=Criterion.EXACT if not draws else Criterion.FLIPS,
        worst_index=[int(i) for i in first[0]] if mismatches else [],
        rounding_noise=float(allowed_step),
        noise_factor=NOISE_FACTOR,
        note=f"{mismatches} differ; rounding alone flipped up to {allowed_count / NOISE_FACTOR:.0f}"
        if mismatches and draws
        else "",
    )


def _ratio(value: float, allowed: float) -> float:
    if value == 0:
        return 0.0
    return value / allowed if allowed else float("inf")


def _mismatched(provider, name, reference, candidate) -> OutputComparison:
    return OutputComparison(
        provider=provider,
        output=name,
        passed=False,
        elements=int(reference.size),
        mismatches=int(reference.size),
        max_abs=float("inf"),
        max_rel=float("inf"),
        limit_used=float("inf"),
        criterion=Criterion.EXACT,
        note=f"shape/dtype {candidate.shape}/{candidate.dtype} != reference "
        f"{reference.shape}/{reference.dtype}",
    )


def merged(comparisons: list[OutputComparison]) -> OutputComparison:
    """One comparison for an output run on several samples: the worst sample's, with the
    element and mismatch counts of all."""
    worst = max(comparisons, key=lambda c: (not c.passed, c.limit_used))
    if len(comparisons) == 1:
        return worst
    worst.elements = sum(c.elements for c in comparisons)
    worst.mismatches = sum(c.mismatches for c in comparisons)
    worst.nonfinite = sum(c.nonfinite for c in comparisons)
    worst.rounding_noise = max(c.rounding_noise for c in comparisons)
    worst.passed = all(c.passed for c in comparisons)
    return worst
