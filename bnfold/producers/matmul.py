"""MatMul → BatchNormalization, with the constant weight on either side.

Weight on the right (`A[B, K] · W[K, N]`, a Linear layer without bias followed by BatchNorm1d):
the pair becomes one Gemm, `Gemm(A, W·diag(a), b)`. Only a 2-D left operand is exact: with `A` of
rank 3 (`[B, T, K]`) the MatMul output is `[B, T, N]` and BatchNormalization's channel axis 1 is
T, not the N columns the weight holds.

Weight on the left (`W[C, K] · X[B, K, L]`, a 1×1 Conv1d written as a product, as in point-cloud
and graph models): output channel c of `[B, C, L]` is row c of the weight, so
`BN(W·X) = (diag(a)·W)·X + b[:, None]`, exactly: the rows are scaled and the shift is added by a
new Add after the MatMul (none when it is zero). Only a rank-3 right operand puts the rows on the
BatchNormalization's channel axis 1 (rank 2 makes them axis 0; rank 4 puts them on axis 2).
With a bias Add between the product and the BN, `linear_nd.plan_left_weight_and_bias`; a BN
before the product, `forward.plan_forward_left_weight`. Both use this module's helpers: the
weight checks (`constant_matrix`), the scaled rows (`scaled_rows`) and a new Add's constant
(`row_bias`).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph_view import GraphView
from ..numerics import ChannelAffine, NotRepresentable, round_to, scale_along
from .base import ConstantUpdate, FoldPlan, constant_input, constant_weight, rounded_updates

# why a fold needs the other operand's rank (`constant_matrix`)
_COLUMNS_NEED = (
    "the MatMul left operand has rank {rank}; only a 2-D left operand puts the "
    "BatchNormalization channel axis on the weight's columns"
)
_ROWS_NEED = (
    "the MatMul's weight is its left operand and its right operand has rank {rank}; only a "
    "rank-3 one puts the BatchNormalization channel axis on the weight's rows"
)


def weight_on_the_left(node: onnx.NodeProto, view: GraphView) -> bool:
    """Whether a MatMul's constant weight is its left operand (its right one not constant)."""
    return constant_weight(node, view, 1) is None and constant_weight(node, view, 0) is not None


def output_channels(node: onnx.NodeProto, view: GraphView) -> tuple[int, int] | None:
    """The weight's columns, where the left operand is provably 2-D; a left weight's rows,
    where the right operand is provably of rank 3 (else the channel axis 1 is not theirs)."""
    right = constant_weight(node, view, 1)
    if right is not None:
        return (right.shape[1], 2) if right.ndim == 2 and view.rank(node.input[0]) == 2 else None
    left = constant_weight(node, view, 0)
    if left is not None and left.ndim == 2 and view.rank(node.input[1]) == 3:
        return left.shape[0], 3
    return None


def plan_matmul(
    node: onnx.NodeProto, view: GraphView, affine: ChannelAffine, opset: int
) -> FoldPlan | str:
    if weight_on_the_left(node, view):
        return plan_weight_on_the_left(node, view, affine)
    if constant_weight(node, view, 1) is None:
        left, right = (view.why_not_constant(name) for name in node.input[:2])
        return f"neither MatMul operand is a constant weight (left: {left}; right: {right})"
    ranks = (view.rank(node.input[0]), 2)
    weight = constant_matrix(node, view, 1, "MatMul right operand (weight)", ranks, _COLUMNS_NEED)
    if isinstance(weight, str):
        return weight
    if weight.shape[1] != affine.channels:
        return (
            f"the MatMul has {weight.shape[1]} output columns but the BatchNormalization "
            f"has {affine.channels}"
        )
    new_weight = scale_along(weight, affine.scale, 1)
    updates, problem = rounded_updates(
        [(1, new_weight, weight.dtype, "weight"), (2, affine.shift.copy(), weight.dtype, "bias")]
    )
    if problem:
        return problem
    # Gemm-1/6 broadcast C only when told to
    new_attributes: dict[str, object] = {"broadcast": 1} if opset < 7 else {}
    how = f"scaled {weight.shape[1]} output columns; became Gemm with bias"
    return FoldPlan(updates, how, "Gemm", new_attributes)


def plan_weight_on_the_left(
    node: onnx.NodeProto, view: GraphView, affine: ChannelAffine
) -> FoldPlan | str:
    """`W[C, K] · X[B, K, L]`: the rows scaled, the shift added by a new Add after it (none
    when it is zero); or why not."""
    scaled = scaled_rows(node, view, affine)
    if isinstance(scaled, str):
        return scaled
    how = f"scaled {affine.channels} rows of the weight on the left"
    if not np.any(affine.shift):
        return FoldPlan((scaled,), how)
    weight_dtype = scaled.value.dtype
    bias = row_bias(affine.shift, weight_dtype, view.opset)
    if isinstance(bias, str):
        return bias
    return FoldPlan((scaled,), f"{how}; its shift added by a new Add after it", added_bias=bias)


def scaled_rows(
    node: onnx.NodeProto, view: GraphView, affine: ChannelAffine
) -> ConstantUpdate | str:
    """The weight on the left of `W[C, K] · X[B, K, L]` with its rows scaled by the affine's
    scale, rounded once (its shift is the caller's); or why not."""
    ranks = (view.rank(node.input[1]), 3)
    weight = constant_matrix(node, view, 0, "MatMul left operand (weight)", ranks, _ROWS_NEED)
    if isinstance(weight, str):
        return weight
    rows = weight.shape[0]
    if rows != affine.channels:
        return f"the MatMul has {rows} output rows but the BatchNormalization has {affine.channels}"
    updates, problem = rounded_updates(
        [(0, scale_along(weight, affine.scale, 0), weight.dtype, "weight")]
    )
    if problem:
        return problem
    assert updates is not None
    return updates[0]


def row_bias(shift: np.ndarray, dtype: np.dtype, opset: int) -> np.ndarray | str:
    """The constant `[C, 1]` of a new Add that adds `shift[c]` to row c of a `[B, C, L]`
    product, rounded once to `dtype`; or why there can be none: not representable, or an opset
    before 7, whose Add broadcasts only a suffix of the other input's shape."""
    if opset < 7:
        return (
            f"at opset {opset} an Add cannot add a constant per row of the MatMul's output "
            "(Add-6 broadcasts only trailing dimensions)"
        )
    try:
        return round_to(shift.reshape(-1, 1), dtype)
    except NotRepresentable as exc:
        return f"the folded bias is not representable: {exc}"


def constant_matrix(
    node: onnx.NodeProto,
    view: GraphView,
    slot: int,
    role: str,
    ranks: tuple[int | None, int],
    wrong_rank: str,
) -> np.ndarray | str:
    """Input `slot` of a MatMul (its `role`) where it is a constant 2-D float matrix and the
    other operand's rank, `ranks[0]` (None: unknown), is the one the fold needs, `ranks[1]`;
    else why not (`wrong_rank` with `{rank}` in it says the rank)."""
    weight, problem = constant_input(node, slot, role, view)
    if problem:
        return problem
    if weight is None or weight.ndim != 2:
        return f"the {role} is not a 2-D constant"
    rank, needed = ranks
    if rank != needed:
        return wrong_rank.format(rank="unknown" if rank is None else rank)
    return weight
