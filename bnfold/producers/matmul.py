"""MatMul (2-D left operand, constant 2-D right operand) → BatchNormalization, i.e. a Linear
layer without bias followed by BatchNorm1d. The pair becomes one Gemm: `Gemm(A, B·diag(a), b)`.

Only a 2-D left operand is exact: with `A` of rank 3 (`[B, T, K]`) the MatMul output is
`[B, T, N]` and BatchNormalization's channel axis 1 is T, not the N columns the weight holds.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph_view import GraphView
from ..numerics import ChannelAffine, scale_along
from .base import FoldPlan, constant_input, rounded_updates


def output_channels(
    node: onnx.NodeProto, weight: np.ndarray, view: GraphView
) -> tuple[int, int] | None:
    """The weight's columns, where the left operand is provably 2-D (else its channel axis 1 is
    not theirs)."""
    if weight.ndim != 2 or view.rank(node.input[0]) != 2:
        return None
    return weight.shape[1], 2


def plan_matmul(
    node: onnx.NodeProto, view: GraphView, affine: ChannelAffine, opset: int
) -> FoldPlan | str:
    weight, problem = constant_input(node, 1, "right operand (weight)", view)
    if problem:
        return problem
    if weight is None or weight.ndim != 2:
        return "the MatMul right operand is not a 2-D constant"
    rank = view.rank(node.input[0])
    if rank != 2:
        shown = "unknown" if rank is None else str(rank)
        return (
            f"the MatMul left operand has rank {shown}; only a 2-D left operand puts the "
            "BatchNormalization channel axis on the weight's columns"
        )
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
