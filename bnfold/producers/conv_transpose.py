"""ConvTranspose → BatchNormalization (any group, output_padding, with or without bias).

The ConvTranspose weight is `[C_in, C_out/group, k...]`: output channel `g·(C_out/group) + j` is
column j of the rows of group g, so the per-channel factors are laid out per group (see
`numerics.scale_grouped_transposed`). Strides, pads, output_padding and output_shape only move
where the outputs land, which the per-channel scale commutes with.
"""

from __future__ import annotations

import onnx

from ..graph_view import GraphView
from ..numerics import ChannelAffine, folded_bias, scale_grouped_transposed
from .base import FoldPlan, attributes, constant_input, constant_weight, rounded_updates


def output_channels(node: onnx.NodeProto, view: GraphView) -> tuple[int, int] | None:
    """`C_out/group` columns of the constant weight per group; the output has its rank."""
    weight = constant_weight(node, view)
    if weight is None or weight.ndim < 3:
        return None
    return weight.shape[1] * int(attributes(node).get("group", 1)), weight.ndim


def plan_conv_transpose(
    node: onnx.NodeProto, view: GraphView, affine: ChannelAffine, opset: int
) -> FoldPlan | str:
    weight, problem = constant_input(node, 1, "weight", view)
    if problem:
        return problem
    if weight is None:
        return "the ConvTranspose has no weight input"
    bias, problem = constant_input(node, 2, "bias", view)
    if problem:
        return problem
    group = int(attributes(node).get("group", 1))
    if weight.ndim < 3 or group < 1 or weight.shape[0] % group:
        return f"the ConvTranspose weight {tuple(weight.shape)} does not fit group={group}"
    out_channels = weight.shape[1] * group
    if out_channels != affine.channels:
        return (
            f"the ConvTranspose has {out_channels} output channels but the BatchNormalization "
            f"has {affine.channels}"
        )
    if bias is not None and bias.shape != (out_channels,):
        return f"the ConvTranspose bias has shape {tuple(bias.shape)}, expected ({out_channels},)"
    new_weight = scale_grouped_transposed(weight, affine.scale, group)
    new_bias = folded_bias(bias, affine)
    bias_dtype = weight.dtype if bias is None else bias.dtype
    updates, problem = rounded_updates(
        [(1, new_weight, weight.dtype, "weight"), (2, new_bias, bias_dtype, "bias")]
    )
    if problem:
        return problem
    verb = "updated" if bias is not None else "added"
    return FoldPlan(updates, f"scaled {out_channels} output channels (group={group}); bias {verb}")
