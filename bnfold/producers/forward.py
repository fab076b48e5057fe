"""BatchNormalization *before* a linear layer (forward fold): BN → Gemm, BN → MatMul, i.e.
BatchNorm1d in front of a Linear layer.

With `x̂ = a·x + b` per input feature k (the BN channel axis 1 of the 2-D input is the Gemm's
reduction axis): `Y = α·x̂·B' + β·C = α·x·(diag(a)·B') + (β·C + α·b·B')`. So row k of B' (column k
of B when transB=1) is scaled by a[k] and the bias becomes `β·C + α·b·B'` with β set to 1. Only
`transA = 0` qualifies (with transA the BN channel axis is not the reduction axis). Convolutions
are not folded forward: with padding, the border would see the BN's shift where the original saw
zeros.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph_view import GraphView, attributes
from ..numerics import ChannelAffine, scale_along
from .base import FoldPlan, constant_input, rounded_updates


def plan_forward(
    consumer: onnx.NodeProto,
    view: GraphView,
    affine: ChannelAffine,
    opset: int,
    data_rank: int | None,
) -> FoldPlan | str:
    """How a Gemm/MatMul reading the BN output as its first input absorbs it, or why not.
    `data_rank` is the rank of the BatchNormalization's data, if known."""
    if consumer.op_type == "Gemm":
        attrs = attributes(consumer)
        if int(attrs.get("transA", 0)):
            return "the Gemm after it transposes its input (transA=1)"
        trans_b = int(attrs.get("transB", 0))
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    else:
        trans_b, alpha, beta = 0, 1.0, 1.0
    weight, problem = constant_input(consumer, 1, "weight of the layer after it", view)
    if problem:
        return problem
    if weight is None or weight.ndim != 2:
        return f"the {consumer.op_type} after it has no constant 2-D weight"
    if consumer.op_type == "MatMul" and data_rank != 2:
        return "the MatMul after it has a left operand that is not provably 2-D"
    rows = weight.T if trans_b else weight  # [K, N]
    if rows.shape[0] != affine.channels:
        return (
            f"the {consumer.op_type} after it reduces over {rows.shape[0]} features but the "
            f"BatchNormalization has {affine.channels} channels"
        )
    c, problem = (None, None)
    if consumer.op_type == "Gemm":
        c, problem = constant_input(consumer, 2, "bias (input C) of the Gemm after it", view)
        if problem:
            return problem
    new_weight = scale_along(weight, affine.scale, 1 if trans_b else 0)
    carried = alpha * (affine.shift @ rows.astype(np.float64))  # [N]
    new_c = carried if c is None else beta * c.astype(np.float64) + carried
    updates, problem = rounded_updates(
        [
            (1, new_weight, weight.dtype, "weight"),
            (2, new_c, weight.dtype if c is None else c.dtype, "bias"),
        ]
    )
    if problem:
        return problem
    new_attributes: dict[str, object] = {"beta": 1.0}
    if opset < 7:
        new_attributes["broadcast"] = 1
    how = f"folded forward: scaled {affine.channels} input features; bias carries the shift"
    return FoldPlan(updates, how, "Gemm" if consumer.op_type == "MatMul" else None, new_attributes)
