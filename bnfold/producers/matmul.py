"""MatMul → BatchNormalization.

Weight on the right (`A[B, K] · W[K, N]`, a Linear layer without bias followed by BatchNorm1d):
the pair becomes one Gemm, `Gemm(A, W·diag(a), b)`. Only a 2-D left operand is exact: with `A` of
rank 3 (`[B, T, K]`) the MatMul output is `[B, T, N]` and BatchNormalization's channel axis 1 is
T, not the N columns the weight holds.

Weight on the left (`W[C, K] · X[B, K, L]`, a 1×1 Conv1d written as a product): `product.py`.
"""

from __future__ import annotations

import onnx

from ..graph_view import GraphView
from ..numerics import ChannelAffine, scale_along
from . import product
from .base import FoldPlan, constant_matrix, constant_weight, rounded_updates

# why a fold needs the other operand's rank (`base.constant_matrix`)
_COLUMNS_NEED = (
    "the MatMul left operand has rank {rank}; only a 2-D left operand puts the "
    "BatchNormalization channel axis on the weight's columns"
)


def output_channels(node: onnx.NodeProto, view: GraphView) -> tuple[int, int] | None:
    """The weight's columns, where the left operand is provably 2-D; a left weight's rows,
    where the right operand is provably of rank 3 (else the channel axis 1 is not theirs)."""
    right = constant_weight(node, view, 1)
    if right is None:
        return product.output_channels(node, view)
    return (right.shape[1], 2) if right.ndim == 2 and view.rank(node.input[0]) == 2 else None


def plan_matmul(
    node: onnx.NodeProto, view: GraphView, affine: ChannelAffine, opset: int
) -> FoldPlan | str:
    if product.weight_on_the_left(node, view):
        return product.plan_rows(node, view, affine)
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
