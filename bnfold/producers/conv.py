"""Conv → BatchNormalization (1-D, 2-D, 3-D, any group, with or without bias).

The Conv weight is `[C_out, C_in/group, k...]` whatever the group, so output channel c is row c
of the weight: `W'[c] = a[c] · W[c]`, `B'[c] = a[c] · B[c] + b[c]`. Strides, pads, dilations and
auto_pad act on the spatial axes only and are unaffected.
"""

from __future__ import annotations

import onnx

from ..graph_view import GraphView
from ..numerics import ChannelAffine, folded_bias, scale_along
from .base import FoldPlan, constant_input, constant_weight, rounded_updates


def plan_conv(
    node: onnx.NodeProto, view: GraphView, affine: ChannelAffine, opset: int
) -> FoldPlan | str:
    weight, problem = constant_input(node, 1, "weight", view)
    if problem:
        return problem
    if weight is None:
        return "the Conv has no weight input"
    bias, problem = constant_input(node, 2, "bias", view)
    if problem:
        return problem
    if weight.ndim < 3:
        return f"the Conv weight has rank {weight.ndim}, expected at least 3"
    if weight.shape[0] != affine.channels:
        return (
            f"the Conv has {weight.shape[0]} output channels but the BatchNormalization "
            f"has {affine.channels}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        return f"the Conv bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)"
    new_weight = scale_along(weight, affine.scale, 0)
    new_bias = folded_bias(bias, affine)
    bias_dtype = weight.dtype if bias is None else bias.dtype
    updates, problem = rounded_updates(
        [(1, new_weight, weight.dtype, "weight"), (2, new_bias, bias_dtype, "bias")]
    )
    if problem:
        return problem
    return FoldPlan(updates, how_folded(weight.shape[0], bias is not None))


def output_channels(node: onnx.NodeProto, view: GraphView) -> tuple[int, int] | None:
    """Row c of the constant weight is output channel c; the output has the weight's rank."""
    weight = constant_weight(node, view)
    if weight is None or weight.ndim < 3:
        return None
    return weight.shape[0], weight.ndim


def how_folded(channels: int, had_bias: bool) -> str:
    """A Conv fold's record (`Folded.how`), here and in the vectorised path (`bnfold.batched`)."""
    return f"scaled {channels} output channels; bias {'updated' if had_bias else 'added'}"
