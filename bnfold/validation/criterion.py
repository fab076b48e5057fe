"""When do two outputs agree? The calibrated limit, and explicit tolerances.

A fold changes some weights by their rounding error (at most half a unit in the last place, ULP)
and removes a few roundings of intermediate values. How far that moves an output depends on the
network, not on the fold: a deep net with trained-looking BatchNormalization statistics amplifies
rounding-level changes by orders of magnitude more than a shallow one. So the limit is measured
on the model itself (`calibrated_limits`):

- the *rounding noise* of an element is how far it moves, on the same provider with the same
  inputs, when the original's values entering and leaving the arithmetic the fold replaced
  (the data inputs of the BatchNormalization and of the layer, and the BatchNormalization's
  output) are each moved by one ULP, up or down at random: rounding-level changes of exactly
  what the fold changed, its own rounding included (which matters where its arithmetic
  cancels: a mean close to the values it is subtracted from, inputs with a large common
  offset; and where a large shift dominates its output, which a Softmax or a normalization
  after it turns into relative error). The largest over two independent draws (one draw can
  cancel out where a few weights dominate an output). Where those runs cannot be made (a
  provider without the movers' operator) or move nothing, the candidate's weights that the fold
  wrote are moved by rounding instead (a random quarter of their elements by one ULP each:
  half an ULP root-mean-square, what a correct rounding may do);
- noise is pooled over blocks of `BLOCK` consecutive elements (in memory order) by their maximum,
  because one element's noise is a single random draw, and blocks keep scales apart (an output
  that concatenates boxes in pixels and scores in [0, 1] gets a limit per part, not one for all);
  a value that is not exactly zero is also pooled with the `BLOCK` nonzero values around it
  (`pooled`: after a ReLU, a block may hold a single value), and held to at least the median
  noise relative to magnitude of those values, up to 32 ULP (`relative_median`: a softmax's
  likely class among unlikely ones dominates its block, and its own draws may cancel);
- an element fails when its deviation from the original exceeds `NOISE_FACTOR` times its block's
  noise, plus twice the block's gap between this provider and the CPU (TF32, fp16 engines), plus
  8 ULP of the block's largest value (the original rounds each element a few times more than the
  fold does, independently per element, and outputs of a million elements meet the tail), plus
  4 ULP of 1.0 where a block's values lie on an absolute grid (`on_absolute_grid`: sigmoid and
  tanh compute their outputs to an absolute precision, however small the value: a score of 4e-5
  comes out as a multiple of 2^-25, and moves by a few of 2^-23).

A correct fold stays well below the limit (its own change is rounding-level); a wrong weight or
bias in one channel moves some element an order of magnitude past rounding and fails.

With explicit `rtol`/`atol` an output is compared the classical way instead (`allclose`): an
element fails only if `|candidate − reference|` exceeds both `atol` and `rtol·|reference|`.

All of it in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

BLOCK = 32
# Independent draws of the rounding moves: the noise is their largest (one draw can cancel out
# where a few weights dominate an output).
CALIBRATION_DRAWS = 2
# An output that moves less than this (relative) between two random inputs proves little.
INSENSITIVE = 1e-6
NOISE_FACTOR = 6.0
FLOOR_ROUNDOFFS = 16.0  # 8 ULP of the block's largest value
# Blocks whose values come out on an absolute grid (their median has this share of its mantissa's
# low bits zero: 5 of 23 for float32; ordinary values have about one) may move by 4 ULP of 1.0.
GRID_BITS_SHARE = 0.25
GRID_FLOOR_ROUNDOFFS = 8.0
PROVIDER_GAP_FACTOR = 2.0
# The most noise relative to magnitude a value takes from its neighbours (`relative_median`):
# 32 ULP. More is cancellation among them, which says nothing about a value that dominates them.
RELATIVE_CAP_ROUNDOFFS = 64.0

# Explicit-tolerance defaults, used when only one of rtol/atol is given for an output.
DEFAULT_RTOL = {"float64": 1e-7, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
DEFAULT_ATOL_SCALE = {"float64": 1e-9, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}


@dataclass(frozen=True)
class Tolerance:
    """Explicit tolerances: an element fails only if |candidate − reference| exceeds both `atol`
    and `rtol`·|reference|. Without `atol`, it is `atol_scale`·max|reference|."""

    rtol: float
    atol: float | None = None
    atol_scale: float = 0.0

    def resolved_atol(self, reference: np.ndarray) -> float:
        if self.atol is not None:
            return self.atol
        finite = reference[np.isfinite(reference)]
        return self.atol_scale * (float(np.max(np.abs(finite))) if finite.size else 0.0)


@dataclass(frozen=True)
class PerOutput:
    """An explicit rtol or atol by output name, and one for the outputs not named (`others`;
    None: those keep the calibrated limit). `validate(atol=PerOutput({"logits": 1e-3}, 1e-5))`
    is what `--atol 1e-5 --atol logits:1e-3` asks for; a plain number is `PerOutput({}, value)`,
    a dict `PerOutput(dict)`."""

    named: Mapping[str, float] = field(default_factory=dict)
    others: float | None = None

    @classmethod
    def of(cls, given: float | Mapping[str, float] | PerOutput | None) -> PerOutput:
        """What `validate`'s rtol/atol accepts, as a `PerOutput` (values as given)."""
        if isinstance(given, PerOutput):
            return given
        if isinstance(given, Mapping):
            return cls(dict(given))
        return cls({}, given)

    def value_for(self, name: str) -> float | None:
        found = self.named.get(name, self.others)
        return None if found is None else float(found)

    def values(self) -> list:
        return [*self.named.values(), *([] if self.others is None else [self.others])]


def explicit_tolerance(dtype: np.dtype, rtol: float | None, atol: float | None) -> Tolerance:
    """The tolerance for an output when the user gave `rtol` and/or `atol` for it."""
    name = str(dtype)
    return Tolerance(
        DEFAULT_RTOL.get(name, 0.0) if rtol is None else rtol,
        atol if atol is not None or name in DEFAULT_ATOL_SCALE else 0.0,
        DEFAULT_ATOL_SCALE.get(name, 0.0),
    )


def is_floating(dtype: np.dtype) -> bool:
    """numpy's floats and ml_dtypes' (bfloat16, float8: numpy calls their kind "V")."""
    return np.dtype(dtype).kind == "f" or str(dtype) in ML_FLOATS


ML_FLOATS = frozenset(
    {"bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"}
)


def unit_roundoff(dtype: np.dtype) -> float:
    """Half the distance from 1.0 to the next value of `dtype` (0 for exact types)."""
    if str(dtype) in ML_FLOATS:
        return float(ml_dtypes.finfo(dtype).eps) / 2
    if np.dtype(dtype).kind == "f":
        return float(np.finfo(dtype).eps) / 2
    return 0.0


def block_max(values: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Each element replaced by the maximum of its block of `block` consecutive elements (in
    C order); same shape as `values`."""
    flat = values.reshape(-1)
    if flat.size == 0:
        return values.copy()
    padded = np.zeros(-(-flat.size // block) * block, dtype=flat.dtype)
    padded[: flat.size] = flat
    maxima = padded.reshape(-1, block).max(axis=1)
    return np.repeat(maxima, block)[: flat.size].reshape(values.shape)


def pooled(values: np.ndarray, reference: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """`block_max` of `values`, and where the reference is not exactly zero at least the
    maximum over its block of `block` consecutive such elements (the zeros between them
    skipped): after a ReLU that zeroes most of a channel, a block of 32 may hold one value, and
    one value's noise, from two draws, can come out as zero (the moves of its inputs cancel
    after rounding); its nonzero neighbours in memory order, the same channel, pool it."""
    result = block_max(values, block)
    kept = np.asarray(reference).reshape(-1) != 0
    if kept.all() or not kept.any():
        return result
    out = result.reshape(-1).copy()
    out[kept] = np.maximum(out[kept], over_kept_blocks(values, kept, np.nanmax, block))
    return out.reshape(values.shape)


def relative_median(noise: np.ndarray, magnitude: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Per nonzero element, the median of noise/magnitude over its block of `block` consecutive
    nonzero elements (0 elsewhere): a value that dominates its block by orders of magnitude (a
    softmax's likely class among unlikely ones) is held to its neighbours' relative noise where
    its own draws happened to cancel (two draws of one-ULP moves can leave it where it was);
    a median, so that a few values near a cancellation do not widen it for all."""
    flat_magnitude = magnitude.reshape(-1)
    kept = flat_magnitude > 0
    result = np.zeros(flat_magnitude.size)
    if kept.any():
        ratios = noise.reshape(-1) / np.where(kept, flat_magnitude, 1.0)
        result[kept] = over_kept_blocks(ratios, kept, np.nanmedian, block)
    return result.reshape(noise.shape)


def over_kept_blocks(values: np.ndarray, kept: np.ndarray, reduce, block: int = BLOCK):
    """The elements of `values` where the flat mask `kept` holds, in blocks of `block`
    consecutive such elements (the others skipped), each given `reduce` (a NaN-ignoring
    reduction such as `np.nanmax`) of its block: a float64 array, one value per kept element."""
    count = int(np.count_nonzero(kept))
    padded = np.full(-(-count // block) * block, np.nan)
    padded[:count] = values.reshape(-1)[kept]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (a last block of padding only: none)
        reduced = reduce(padded.reshape(-1, block), axis=1)
    return np.repeat(reduced, block)[:count]


# (mantissa bits, exponent mask) by element type
_LAYOUT = {
    "float16": (10, 0x1F),
    "bfloat16": (7, 0xFF),
    "float32": (23, 0xFF),
    "float64": (52, 0x7FF),
}


def trailing_zero_bits(values: np.ndarray) -> np.ndarray:
    """Per element, how many of the mantissa's low bits are zero (a value computed to an
    absolute precision, like 1 − x, has many; an ordinary one about one); NaN for zeros,
    non-finite values and types without a known layout."""
    layout = _LAYOUT.get(str(values.dtype))
    if layout is None:
        return np.full(values.shape, np.nan)
    mantissa_bits, exponent_mask = layout
    unsigned = np.dtype(f"u{values.dtype.itemsize}")
    bits = np.ascontiguousarray(values).view(unsigned).astype(np.uint64)
    exponent = (bits >> np.uint64(mantissa_bits)) & np.uint64(exponent_mask)
    mantissa = bits & np.uint64((1 << mantissa_bits) - 1)
    lowest = (mantissa & (~mantissa + np.uint64(1))).astype(np.float64)
    with np.errstate(divide="ignore"):
        zeros = np.where(mantissa == 0, float(mantissa_bits), np.log2(lowest))
    usable = (exponent != exponent_mask) & ((exponent != 0) | (mantissa != 0))
    return np.where(usable, zeros, np.nan)


def on_absolute_grid(values: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Per element, whether its block's values lie on an absolute grid: the block's median
    `trailing_zero_bits` is at least `GRID_BITS_SHARE` of the mantissa."""
    layout = _LAYOUT.get(str(values.dtype))
    flat = trailing_zero_bits(values).reshape(-1)
    if layout is None or flat.size == 0:
        return np.zeros(values.shape, dtype=bool)
    padded = np.full(-(-flat.size // block) * block, np.nan)
    padded[: flat.size] = flat
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (a block of zeros: all NaN)
        medians = np.nanmedian(padded.reshape(-1, block), axis=1)
    gridded = np.nan_to_num(medians, nan=0.0) >= GRID_BITS_SHARE * layout[0]
    return np.repeat(gridded, block)[: flat.size].reshape(values.shape)


def deviation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a − b| in float64; 0 where both hold the same non-finite value, inf where one is NaN
    or where only one is non-finite."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    same_special = ~np.isfinite(a64) & ((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
    with np.errstate(invalid="ignore"):
        diff = np.abs(a64 - b64)
    diff = np.where(same_special, 0.0, diff)
    return np.where(np.isnan(diff), np.inf, diff)


def finite_part(values: np.ndarray) -> np.ndarray:
    """`values` with non-finite entries replaced by 0 (noise and gaps of inf mean nothing)."""
    return np.where(np.isfinite(values), values, 0.0)


def calibrated_limits(
    reference: np.ndarray,
    candidate: np.ndarray,
    perturbed: list[np.ndarray],
    perturbed_reference: list[np.ndarray] = (),  # type: ignore[assignment]
    provider_gap: np.ndarray | None = None,
    perturbed_base: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """(limit per element, largest rounding noise) for the calibrated criterion (module doc).

    `perturbed` holds the candidate's outputs with the weights the fold wrote moved by rounding,
    one per independent draw, and `perturbed_base` the unmoved output of the session they came
    from where that is not `candidate`'s (weights fed as inputs take other kernel paths than
    constant ones); `perturbed_reference` the original's with the weights the fold consumed
    moved likewise; `provider_gap` the original on this provider against the original on the
    CPU (None on the CPU itself)."""
    noise = np.zeros(candidate.shape, dtype=np.float64)
    base = candidate if perturbed_base is None else perturbed_base
    for draw in perturbed:
        noise = np.maximum(noise, finite_part(deviation(draw, base)))
    for draw in perturbed_reference:
        noise = np.maximum(noise, finite_part(deviation(draw, reference)))
    magnitude = finite_part(np.abs(np.asarray(reference, dtype=np.float64)))
    roundoff = unit_roundoff(reference.dtype)
    relative = np.minimum(relative_median(noise, magnitude), RELATIVE_CAP_ROUNDOFFS * roundoff)
    limit = NOISE_FACTOR * np.maximum(pooled(noise, reference), relative * magnitude)
    if provider_gap is not None:
        limit = limit + PROVIDER_GAP_FACTOR * pooled(finite_part(provider_gap), reference)
    on_grid = on_absolute_grid(reference)
    limit = limit + FLOOR_ROUNDOFFS * roundoff * block_max(magnitude)
    limit = limit + np.where(on_grid, GRID_FLOOR_ROUNDOFFS * roundoff, 0.0)
    return limit, float(noise.max()) if noise.size else 0.0


def tolerance_limits(
    reference: np.ndarray, tolerance: Tolerance, provider_gap: np.ndarray | None = None
) -> np.ndarray:
    """The allclose limit per element: max(atol, rtol·|reference|), plus twice the provider's
    own gap to the CPU (pooled by blocks) on providers other than the CPU."""
    magnitude = finite_part(np.abs(np.asarray(reference, dtype=np.float64)))
    limit = np.maximum(tolerance.resolved_atol(reference), tolerance.rtol * magnitude)
    if provider_gap is not None:
        limit = limit + PROVIDER_GAP_FACTOR * block_max(finite_part(provider_gap))
    return limit


def worst_ratio(diff: np.ndarray, limit: np.ndarray) -> tuple[float, int]:
    """(max diff/limit, flat index of that element); 0 over 0 counts as 0, x over 0 as inf."""
    if diff.size == 0:
        return 0.0, -1
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / limit)
    index = int(np.argmax(ratio))
    return float(ratio.reshape(-1)[index]), index
