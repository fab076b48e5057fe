"""Gemm → BatchNormalization on its 2-D output `[M, N]` (channel axis 1 = the N columns).

`Y = α·A'·B' + β·C`, so `a·Y + b = α·A'·(B'·diag(a)) + (β·a·C + b)`: the columns of B' are
scaled (rows of B when transB=1) and the new C is `β·a·C + b` with β set to 1. C may be absent,
a scalar, `[N]`, `[1, N]`, `[M, 1]` or `[M, N]`; the new C keeps the broadcast shape of C and N.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph_view import GraphView
from ..numerics import ChannelAffine, scale_along
from .base import FoldPlan, attributes, constant_input, constant_weight, rounded_updates


def output_channels(node: onnx.NodeProto, view: GraphView) -> tuple[int, int] | None:
    """The N columns of the constant B (its rows with transB=1); the output is 2-D."""
    weight = constant_weight(node, view)
    if weight is None or weight.ndim != 2:
        return None
    trans_b = int(attributes(node).get("transB", 0))
    return (weight.shape[0] if trans_b else weight.shape[1]), 2


def plan_gemm(
    node: onnx.NodeProto, view: GraphView, affine: ChannelAffine, opset: int
) -> FoldPlan | str:
    attrs = attributes(node)
    weight, problem = constant_input(node, 1, "weight (input B)", view)
    if problem:
        return problem
    if weight is None or weight.ndim != 2:
        return "the Gemm input B is not a 2-D constant"
    c, problem = constant_input(node, 2, "bias (input C)", view)
    if problem:
        return problem
    trans_b = int(attrs.get("transB", 0))
    columns = weight.shape[0] if trans_b else weight.shape[1]
    if columns != affine.channels:
        return (
            f"the Gemm has {columns} output columns but the BatchNormalization "
            f"has {affine.channels}"
        )
    if c is not None and (c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, columns))):
        return (
            f"the Gemm input C has shape {tuple(c.shape)}, "
            f"which does not broadcast to [M, {columns}]"
        )
    beta = float(attrs.get("beta", 1.0))
    new_weight = scale_along(weight, affine.scale, 0 if trans_b else 1)
    if c is None:
        new_c = affine.shift.copy()
        c_dtype = weight.dtype
    else:
        new_c = beta * c.astype(np.float64) * affine.scale + affine.shift
        c_dtype = c.dtype
    updates, problem = rounded_updates(
        [(1, new_weight, weight.dtype, "weight"), (2, new_c, c_dtype, "bias")]
    )
    if problem:
        return problem
    new_attributes: dict[str, object] = {"beta": 1.0}
    if opset < 7:  # Gemm-1/6 broadcast C only when told to
        new_attributes["broadcast"] = 1
    verb = "updated" if c is not None else "added"
    return FoldPlan(
        updates, f"scaled {columns} output columns; bias C {verb}", None, new_attributes
    )
