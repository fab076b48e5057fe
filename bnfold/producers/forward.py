"""BatchNormalization *before* a linear layer (forward fold): BN → Gemm, BN → MatMul, i.e.
BatchNorm1d in front of a Linear layer, and BN → Conv without padding.

With `x̂ = a·x + b` per input feature k (the BN channel axis 1 of the 2-D input is the Gemm's
reduction axis): `Y = α·x̂·B' + β·C = α·x·(diag(a)·B') + (β·C + α·b·B')`. So row k of B' (column k
of B when transB=1) is scaled by a[k] and the bias becomes `β·C + α·b·B'` with β set to 1. Only
`transA = 0` qualifies (with transA the BN channel axis is not the reduction axis).

BN → MatMul with the weight on the left, `W[C, K] · x̂[B, K, L]`: `product.plan_columns`.

BN → Conv (weight `[C_out, C_in/group, k...]`, any group): without padding every output position
reads every kernel tap from real input, so `Conv(W, a·x + b) = Conv(W', x) + s` where column j of
the rows of group g is scaled by `a[g·(C_in/group) + j]` and output channel o of group g gains
`s[o] = Σ_j Σ_k W[o, j, k] · b[g·(C_in/group) + j]` in its bias (`numerics.scale_conv_inputs`,
`numerics.conv_input_shift`). Strides and dilations only choose which real positions are read.
A padded Conv is not folded: it pads the BN's *output* with zeros, the folded one would pad x with
zeros, so at the border the two differ by the shift (auto_pad SAME with a 1×1… kernel pads
nothing, so it is folded). ConvTranspose is not folded forward: outputs
near the border (and, with strides, between inputs) receive different numbers of kernel taps, so
the shift does not add one constant per channel.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..batchnorm import BatchNorm
from ..graph_view import GraphView
from ..graphs import ONNX_DOMAINS, attributes, node_label
from ..numerics import ChannelAffine, conv_input_shift, scale_along, scale_conv_inputs
from .base import FoldPlan, SplitPlan, constant_input, rounded_updates
from .product import plan_columns
from .rule import Absorb, Match, Rule, Skip, infers_ranks_near


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


def plan_forward_conv(
    consumer: onnx.NodeProto, view: GraphView, affine: ChannelAffine
) -> FoldPlan | str:
    """How a Conv reading the BN output as its data input X absorbs it, or why not."""
    if consumer.op_type == "ConvTranspose":
        return (
            "the ConvTranspose after it is not folded forward: its outputs near the border "
            "receive fewer kernel taps, so the shift would not add one constant per channel"
        )
    attrs = attributes(consumer)
    weight, problem = constant_input(consumer, 1, "weight of the Conv after it", view)
    if problem:
        return problem
    if weight is None or weight.ndim < 3:
        return "the Conv after it has no constant weight of rank 3 or more"
    bias, problem = constant_input(consumer, 2, "bias of the Conv after it", view)
    if problem:
        return problem
    group = int(attrs.get("group", 1))
    c_out, c_in = weight.shape[0], weight.shape[1] * group
    if group < 1 or c_out % group:
        return f"the Conv weight {tuple(weight.shape)} after it does not fit group={group}"
    if c_in != affine.channels:
        return (
            f"the Conv after it reads {c_in} input channels but the BatchNormalization "
            f"has {affine.channels}"
        )
    if bias is not None and bias.shape != (c_out,):
        return f"the Conv after it has a bias of shape {tuple(bias.shape)}, expected ({c_out},)"
    problem = _padding_problem(attrs, weight.shape[2:])
    if problem:
        return problem
    new_weight = scale_conv_inputs(weight, affine.scale, group)
    carried = conv_input_shift(weight, affine.shift, group)
    new_bias = carried if bias is None else bias.astype(np.float64) + carried
    updates, problem = rounded_updates(
        [
            (1, new_weight, weight.dtype, "weight"),
            (2, new_bias, weight.dtype if bias is None else bias.dtype, "bias"),
        ]
    )
    if problem:
        return problem
    verb = "updated" if bias is not None else "added"
    how = (
        f"folded forward: scaled {c_in} input channels (group={group}); bias {verb} with the shift"
    )
    return FoldPlan(updates, how)


def _padding_problem(attrs: dict, kernel: tuple[int, ...]) -> str | None:
    """Why the Conv's padding makes a forward fold inexact, or None if it pads nothing.

    The original pads the BN output with zeros; after folding the Conv would pad x with zeros,
    which the BN would have mapped to its shift, not to zero.
    """
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    pads = [int(p) for p in attrs.get("pads", [])]
    where = "at the border the folded model would differ"
    if any(pads):
        return f"the Conv after it pads its input (pads={pads}): {where}"
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # SAME pads (ceil(L/s) - 1)·s + (k - 1)·d + 1 - L in total: never positive when k = 1.
        if all(k == 1 for k in kernel):
            return None
        return f"the Conv after it pads its input (auto_pad={auto_pad}): {where}"
    if auto_pad not in ("NOTSET", "VALID"):
        return f"the Conv after it has an unknown auto_pad {auto_pad!r}"
    return None


# ----- the forward rules: the rule protocol's shape (`rule.py`), one ordered list -------------
#
#     rule(view, bn_index, bn, opset) -> Match | Skip | None
#
# A Match folds the BN into the layer after it; the node reading the BN's output (the layer, or a
# Flatten before it) reads the BN's input instead.

FORWARD_LAYERS = ("Gemm", "MatMul", "Conv", "ConvTranspose")  # ConvTranspose: to say why not


def read_elsewhere(view: GraphView, bn_index: int, bn: BatchNorm, opset: int) -> Skip | None:
    """A linear layer reads the BN's output, and so does something else (or it is a graph
    output): the layer cannot absorb it. None when the output has one reader, or no linear
    layer among its readers."""
    if view.sole_consumer(bn.output) is not None:
        return None
    output = bn.output
    readers = [view.nodes[i] for i in view.consumers.of(output)]
    linear = [r.op_type for r in readers if r.op_type in FORWARD_LAYERS]
    if not linear:
        return None
    if output in view.output_names:
        return Skip(f"its output '{output}' is also a graph output")
    times = len(readers)
    return Skip(
        f"its output '{output}' is read {times} times, not only by the {linear[0]} after it"
    )


def through_flatten(view: GraphView, bn_index: int, bn: BatchNorm, opset: int):
    """BN → Flatten(axis=1) → Gemm/MatMul: channel c becomes the block of features c·HW ..
    c·HW + HW - 1 of the 2-D input."""
    reader_index = _sole_reader(view, bn)
    if reader_index is None:
        return None
    flatten = view.nodes[reader_index]
    if flatten.op_type != "Flatten" or int(attributes(flatten).get("axis", 1)) != 1:
        return None
    linear_index = view.sole_consumer(flatten.output[0])
    if linear_index is None:
        return None
    linear = view.nodes[linear_index]
    if linear.op_type not in ("Gemm", "MatMul") or linear.input[0] != flatten.output[0]:
        return None
    if view.domains[linear_index] not in ONNX_DOMAINS:
        return None
    affine = _repeat_per_block(bn.affine, linear, view)
    if affine is None:
        return Skip(
            "the layer after its Flatten does not take a whole block of features per channel"
        )
    plan = plan_forward(linear, view, affine, opset, 2)  # Flatten's output is 2-D
    return _absorbed(bn_index, reader_index, linear_index, plan)


@infers_ranks_near("MatMul")  # (a BN's data: 2-D into x·W, 3-D into W·x)
def into_next_layer(view: GraphView, bn_index: int, bn: BatchNorm, opset: int):
    """BN → Gemm/MatMul (its first input), BN → Conv without padding."""
    reader_index = _sole_reader(view, bn)
    if reader_index is None:
        return None
    layer = view.nodes[reader_index]
    if layer.op_type not in FORWARD_LAYERS:
        return None
    rank = view.rank(bn.input)
    rank = rank if rank is not None else view.rank(bn.output)
    feeds_right_operand_only = layer.input[0] != bn.output and layer.input[1] == bn.output
    if layer.op_type == "MatMul" and feeds_right_operand_only:
        plan = plan_columns(view, reader_index, bn.affine, rank)
        return _absorbed(bn_index, reader_index, reader_index, plan)
    if layer.input[0] != bn.output:
        return Skip(f"it feeds the weight side of {layer.op_type} '{node_label(layer)}'")
    if layer.op_type in ("Conv", "ConvTranspose"):
        plan = plan_forward_conv(layer, view, bn.affine)
    else:
        plan = plan_forward(layer, view, bn.affine, opset, rank)
    return _absorbed(bn_index, reader_index, reader_index, plan)


FORWARD_RULES: tuple[Rule, ...] = (read_elsewhere, through_flatten, into_next_layer)


def _sole_reader(view: GraphView, bn: BatchNorm) -> int | None:
    """The one default-domain node reading the BN's output, if it has exactly one reader."""
    reader = view.sole_consumer(bn.output)
    if reader is None or view.domains[reader] not in ONNX_DOMAINS:
        return None
    return reader


def _absorbed(
    bn_index: int, reader: int, layer: int, plan: FoldPlan | SplitPlan | str
) -> Match | Skip:
    if isinstance(plan, str):
        return Skip(plan)
    layers = plan.parts if isinstance(plan, SplitPlan) else ((layer, plan),)
    return Match(layers, (Absorb(bn_index, reader, plan.how),), layer)


def _repeat_per_block(affine: ChannelAffine, linear: onnx.NodeProto, view: GraphView):
    """The per-channel affine repeated over each channel's block of flattened features."""
    weight = view.constant(linear.input[1]) if len(linear.input) > 1 else None
    if weight is None or weight.ndim != 2:
        return None
    trans_b = linear.op_type == "Gemm" and int(attributes(linear).get("transB", 0))
    features = weight.shape[1] if trans_b else weight.shape[0]
    if features % affine.channels:
        return None
    block = features // affine.channels
    return ChannelAffine(np.repeat(affine.scale, block), np.repeat(affine.shift, block))
