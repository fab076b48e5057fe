"""All fold arithmetic, in float64, rounded once to the weight's dtype.

Inference-mode BatchNormalization computes, per channel c,

    y = γ · (x − μ) / √(σ² + ε) + β  =  a · x + b,   a = γ / √(σ² + ε),   b = β − μ · a.

Folding it after a linear layer `x = W ∗ u + B` (output channel c) gives

    W'[c] = a[c] · W[c],   B'[c] = a[c] · B[c] + b[c].

Doing this in the model's own (fp16) arithmetic doubles or triples the error; doing it in float64
and rounding once adds at most half an ulp per weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np


class NotRepresentable(ValueError):
    """A folded value does not fit the target dtype (e.g. fp16 overflow)."""


@dataclass(frozen=True)
class ChannelAffine:
    """Per-channel `y = scale · x + shift`, in float64."""

    scale: np.ndarray
    shift: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])


def batchnorm_affine(
    gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, epsilon: float
) -> ChannelAffine:
    """The inference-mode BatchNormalization as a per-channel affine map.

    Raises `NotRepresentable` if √(σ² + ε) is not a positive finite number for some channel.
    """
    affine, representable = batchnorm_affines(gamma, beta, mean, var, epsilon)
    if not representable.all():
        raise NotRepresentable("variance + epsilon is not a positive finite number")
    return affine


def batchnorm_affines(
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    epsilon: float | np.ndarray,
) -> tuple[ChannelAffine, np.ndarray]:
    """`a = γ/√(σ²+ε)`, `b = β − μ·a` per channel in float64, for the channels of one or of
    many BatchNormalizations laid end to end (`epsilon` then per channel), and per channel
    whether σ²+ε is a positive finite number (where it is not, a and b mean nothing)."""
    # epsilon is stored as float32 in the attribute; the runtimes add it in the data dtype.
    epsilon64 = np.asarray(epsilon, dtype=np.float32).astype(np.float64)
    radicand = var.astype(np.float64) + epsilon64
    # NaN fails both comparisons; sqrt of a positive finite float64 is positive and finite
    representable = (radicand > 0) & (radicand < math.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = gamma.astype(np.float64) / np.sqrt(radicand)
    shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
    return ChannelAffine(scale, shift), representable


NATIVE_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def multiply_exactly(
    array: np.ndarray, factors: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """`array · factors` (broadcast), each product computed in float64 and rounded once (into
    `out` when given: an array of `array`'s shape and dtype).

    For float16/32/64 arrays numpy does this in buffered chunks straight into the array's dtype,
    so no float64 copy of a big weight is ever made; other dtypes (bfloat16) get a float64
    result for `round_to`.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        if array.dtype in NATIVE_FLOATS:
            out = np.empty(array.shape, dtype=array.dtype) if out is None else out
            np.multiply(array, factors, out=out, dtype=np.float64, casting="unsafe")
            return out
        if out is not None:
            raise TypeError(f"multiply_exactly cannot round into {array.dtype} itself")
        return array.astype(np.float64) * factors


def scale_along(array: np.ndarray, factors: np.ndarray, axis: int) -> np.ndarray:
    """`array · factors`, with `factors` laid along `axis` of `array` (see `multiply_exactly`)."""
    shape = [1] * array.ndim
    shape[axis] = factors.shape[0]
    return multiply_exactly(array, factors.reshape(shape))


def scale_grouped_transposed(weight: np.ndarray, factors: np.ndarray, group: int) -> np.ndarray:
    """Scale a ConvTranspose weight `[C_in, C_out/group, k...]` per output channel.

    Output channel `g · (C_out/group) + j` is computed from rows `g · (C_in/group) ...` of the
    weight at column `j`, so the factors are laid out as `[group, 1, C_out/group, 1...]` over the
    weight viewed as `[group, C_in/group, C_out/group, k...]`.
    """
    c_in, c_out_per_group = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:]
    grouped = weight.reshape(group, c_in // group, c_out_per_group, *kernel)
    laid = factors.reshape(group, 1, c_out_per_group, *([1] * len(kernel)))
    return multiply_exactly(grouped, laid).reshape(weight.shape)


def folded_bias(bias: np.ndarray | None, affine: ChannelAffine) -> np.ndarray:
    """`B' = a · B + b` for a per-output-channel bias (absent bias counts as zero)."""
    if bias is None:
        return affine.shift.copy()
    return bias.astype(np.float64) * affine.scale + affine.shift


def round_to(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round a float64 result once to `dtype` (a result already in `dtype` is kept); raise
    `NotRepresentable` on overflow or NaN."""
    rounded = rounded_once(value, dtype)
    if not all(finite_by_fold(rounded, [0])):
        limit = _finfo(dtype).max
        raise NotRepresentable(
            f"the folded values overflow {np.dtype(dtype).name} (max {float(limit):.3g}) "
            "or are not finite"
        )
    return rounded


def rounded_once(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A float64 result rounded once to `dtype` (kept where it is in `dtype` already); values
    beyond the dtype's range become infinite (`finite_by_fold` finds them)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return value if value.dtype == dtype else value.astype(dtype)


def finite_by_fold(rounded: np.ndarray, starts: list[int]) -> list[bool]:
    """For the rounded values of many folds laid end to end (a fold's start at each of `starts`,
    in order), whether all of each fold's values are finite: the check `round_to` makes for one,
    vectorised (`bnfold.batched` rounds thousands of folds' biases at once)."""
    check = rounded if rounded.dtype.kind == "f" else rounded.astype(np.float32)
    if check.size == 0:
        return [True] * len(starts)
    return np.logical_and.reduceat(np.isfinite(check.reshape(-1)), starts).tolist()


def is_float(dtype: np.dtype) -> bool:
    """float16/32/64 or bfloat16: the dtypes a fold can write."""
    return dtype in FOLDABLE_FLOATS or np.dtype(dtype) in FOLDABLE_FLOATS


FOLDABLE_FLOATS = frozenset(
    np.dtype(d).newbyteorder(order)
    for d in (np.float16, np.float32, np.float64)
    for order in ("<", ">")
) | {np.dtype(ml_dtypes.bfloat16)}


def _finfo(dtype: np.dtype):
    if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16):
        return ml_dtypes.finfo(ml_dtypes.bfloat16)
    return np.finfo(dtype)


def scale_conv_inputs(weight: np.ndarray, factors: np.ndarray, group: int) -> np.ndarray:
    """Scale a Conv weight `[C_out, C_in/group, k...]` per *input* channel (forward fold).

    Input channel `c = g · (C_in/group) + j` is read only by the output channels of group g
    (rows `g · (C_out/group) ...`), at column j. So the factors are laid out as
    `[group, 1, C_in/group, 1...]` over the weight viewed as `[group, C_out/group, C_in/group,
    k...]`. Each product is computed in float64 and rounded once (see `multiply_exactly`).
    """
    c_out, c_in_per_group = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:]
    grouped = weight.reshape(group, c_out // group, c_in_per_group, *kernel)
    laid = factors.reshape(group, 1, c_in_per_group, *([1] * len(kernel)))
    return multiply_exactly(grouped, laid).reshape(weight.shape)


def conv_input_shift(weight: np.ndarray, shift: np.ndarray, group: int) -> np.ndarray:
    """What a per-input-channel shift `b` adds to each Conv output channel, in float64 `[C_out]`.

    With no padding every output position reads every kernel tap from real input, so output
    channel `o` of group `g` gains the constant `Σ_j Σ_k W[o, j, k] · b[g · (C_in/group) + j]`.
    """
    c_out, c_in_per_group = weight.shape[0], weight.shape[1]
    per_column = weight.astype(np.float64).reshape(group, c_out // group, c_in_per_group, -1)
    per_column = per_column.sum(axis=3)  # [group, C_out/group, C_in/group]
    shifts = shift.astype(np.float64).reshape(group, c_in_per_group)
    return np.einsum("goj,gj->go", per_column, shifts).reshape(c_out)


def per_channel(constant: np.ndarray, channels: int, rank: int, axis: int = 1) -> np.ndarray | None:
    """The constant as C per-channel float64 values, if it broadcasts along `axis` only."""
    if constant.ndim > rank:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(size != 1 for at, size in enumerate(shape) if at != axis):
        return None
    if shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,)).copy()
