"""The rules for a BatchNormalization written as arithmetic: a Mul and/or Add by per-channel
constants (`bnfold.affine` reads them). Each has the rule protocol's shape (`rule.py`),

    rule(view, index, node, opset) -> Match | Skip | None

with `node` the Mul/Add itself. An ordinary Mul/Add (no constant per channel of a layer next
to it) gets None from every rule, and no record.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from ..affine import (
    OP_WORDS,
    as_affine,
    per_channel,
    producer_channels,
    read_affine,
    read_affine_forward,
)
from ..graph_view import GraphView
from ..graphs import ONNX_DOMAINS, node_label
from ..numerics import is_float
from . import PLANNERS
from .base import FoldPlan, shared_output_reason
from .concat import concat_channels, plan_concat_split
from .forward import plan_forward, plan_forward_conv
from .rule import Absorb, Bypass, Match, Rule, Skip, about_producers, bypassing
from .through_reshape import LAYOUT_OPS, MAX_CHAIN, ROWS, Layout, follow


@about_producers(*PLANNERS, "Transpose", "Identity")
def into_layer_before(
    view: GraphView, index: int, node: onnx.NodeProto, opset: int
) -> Match | Skip | None:
    """A Mul/Add/Sub/Div by a per-channel constant after a linear layer (directly, or through
    Transposes/Identity that keep track of the channel axis): folded into the layer as a
    BatchNormalization with the map it computes (`affine.as_affine`: scale k and shift 0 for a
    Mul, scale 1 and shift k for an Add, ...) is."""
    found = read_affine(node, view, PLANNERS)
    if found is None:
        return None
    producer = view.nodes[found.layer]
    plan: FoldPlan | str
    if view.sole_consumer(found.data) != index:
        plan = shared_output_reason(view, found.data, producer)
    else:
        plan = PLANNERS[producer.op_type](producer, view, found.affine, opset)
    what, verb = OP_WORDS[node.op_type]
    if isinstance(plan, str):
        return Skip(f"{what} a per-channel constant after {producer.op_type}: {plan}")
    if np.all(found.affine.scale == 1):
        how = f"{verb} a per-channel constant, moved into the bias"
    else:
        how = f"{verb} a per-channel constant; {plan.how}"
    if found.path:
        how += f"; through {found.path}, unchanged"
    return Match(((found.layer, plan),), (Bypass(index, found.writer, how),), found.layer)


@about_producers("Concat")
def split_after_concat(
    view: GraphView, index: int, node: onnx.NodeProto, opset: int
) -> Match | Skip | None:
    """A Mul/Add by a per-channel constant after a Concat of layers that joins on the axis their
    channels are on (axis 1; the last axis in NHWC, behind Transposes): split by channel and
    folded slice by slice into the layers, as a BatchNormalization there is (`concat.py`). The
    constant is per-channel if it broadcasts along that axis alone of the Concat's output, whose
    channels, rank and channel axis the layers before it give (else the Mul/Add is left
    unrecorded)."""
    if len(node.input) != 2 or len(node.output) != 1 or not node.output[0]:
        return None
    for data, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        concat_index = view.producer.get(data)
        if concat_index is None or view.op_types[concat_index] != "Concat":
            continue
        if view.domains[concat_index] not in ONNX_DOMAINS:
            continue
        constant = view.constant(other)
        shape = concat_channels(view, concat_index)
        if constant is None or not is_float(constant.dtype) or shape is None:
            return None
        channels, rank, axis = shape
        values = per_channel(constant, channels, rank, axis)
        if values is None or not np.isfinite(values).all():
            return None
        affine = as_affine(node.op_type, values, constant_first=other == node.input[0])
        if affine is None:
            return None
        concat = view.nodes[concat_index]
        what, verb = OP_WORDS[node.op_type]
        split = plan_concat_split(view, concat_index, affine, opset, target_axis=axis)
        if isinstance(split, str):
            return Skip(f"{what} a per-channel constant after Concat: {split}")
        if view.sole_consumer(data) != index:
            reason = shared_output_reason(view, data, concat)
            return Skip(f"{what} a per-channel constant after Concat: {reason}")
        how = f"{verb} a per-channel constant; {split.how}"
        return bypassing(index, concat_index, concat_index, replace(split, how=how))
    return None


@about_producers("Reshape", "Transpose", "Identity")
def into_dense_through_reshape(
    view: GraphView, index: int, node: onnx.NodeProto, opset: int
) -> Match | Skip | None:
    """A Mul/Add by a constant per column of a Gemm or MatMul (2-D) behind layout nodes with a
    Reshape among them (Transposes and Identity alone are `into_layer_before`'s), each read by
    the next alone, that provably keep the columns whole on one axis (`through_reshape.follow`,
    as for a BatchNormalization there), the constant broadcasting along that axis alone: folded
    into the layer's columns and bias; the layout nodes stay and carry the folded values."""
    if len(node.input) != 2 or len(node.output) != 1 or not node.output[0]:
        return None
    for data, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        found = _dense_behind_layout(view, data)
        if found is None:
            continue
        layer_index, chain = found
        constant = view.constant(other)
        shape = producer_channels(view.nodes[layer_index], view)
        if constant is None or not is_float(constant.dtype) or shape is None:
            return None
        layout = Layout((ROWS, shape[0]), rows=0, columns=1)
        for at in chain:
            followed = follow(view.nodes[at], layout, view, opset)
            if isinstance(followed, str):
                return None  # (where the columns go is not provable: no BN-like constant)
            layout = followed
        values = per_channel(constant, shape[0], len(layout.dims), layout.columns)
        if values is None or not np.isfinite(values).all():
            return None
        affine = as_affine(node.op_type, values, constant_first=other == node.input[0])
        if affine is None:
            return None
        return _into_layer(view, index, node, data, layer_index, chain, affine, opset)
    return None


def _dense_behind_layout(view: GraphView, data: str) -> tuple[int, list[int]] | None:
    """(the Gemm/MatMul computing `data`, the layout nodes in between, layer first) when a
    Reshape is among them and each output is read by the next node alone."""
    chain: list[int] = []
    name = data
    for _ in range(MAX_CHAIN + 1):
        at = view.producer.get(name)
        if at is None or view.domains[at] not in ONNX_DOMAINS:
            return None
        if chain and view.sole_consumer(name) != chain[-1]:
            return None
        op = view.op_types[at]
        if op in ("Gemm", "MatMul"):
            reshaped = any(view.op_types[i] == "Reshape" for i in chain)
            return (at, chain[::-1]) if reshaped else None
        if op not in LAYOUT_OPS or not view.nodes[at].input:
            return None
        chain.append(at)
        name = view.nodes[at].input[0]
    return None


def _into_layer(view, index, node, data, layer_index, chain, affine, opset) -> Match | Skip:
    """The Mul/Add/Sub/Div at `index` (its per-column map `affine`) folded into the layer."""
    producer = view.nodes[layer_index]
    what, verb = OP_WORDS[node.op_type]
    plan: FoldPlan | str
    if view.sole_consumer(data) != index:
        plan = shared_output_reason(view, data, view.nodes[view.producer[data]])
    else:
        plan = PLANNERS[producer.op_type](producer, view, affine, opset)
    if isinstance(plan, str):
        return Skip(f"{what} a per-channel constant after {producer.op_type}: {plan}")
    path = " → ".join(f"{view.op_types[i]} '{node_label(view.nodes[i])}'" for i in chain)
    if np.all(affine.scale == 1):
        how = f"{verb} a per-channel constant, moved into the bias; through {path}, unchanged"
    else:
        how = f"{verb} a per-channel constant; {plan.how}; through {path}, unchanged"
    return Match(((layer_index, plan),), (Bypass(index, chain[-1], how),), layer_index)


def forward_into_layer(
    view: GraphView, index: int, node: onnx.NodeProto, opset: int
) -> Match | None:
    """A run of one or two Mul/Add by per-feature constants on the input of a Gemm/MatMul (2-D),
    per-channel constants on the input of a Conv, or on the input of a Flatten(axis=1) before a
    Gemm/MatMul (`affine.read_affine_forward`): folded forward as a BatchNormalization before
    the layer is (`forward.plan_forward`, `forward.plan_forward_conv`: a Conv only without
    padding; through a Flatten each channel's values over its block of features); one record
    per node. Where the layer cannot absorb it, nothing is said (the Mul/Add may be
    anything)."""
    found = read_affine_forward(index, view)
    if found is None:
        return None
    layer = view.nodes[found.layer]
    if layer.op_type == "Conv":
        plan = plan_forward_conv(layer, view, found.affine)
    else:  # (a Flatten's output is 2-D)
        rank = 2 if found.reader != found.layer else view.rank(found.data)
        plan = plan_forward(layer, view, found.affine, opset, rank)
    if isinstance(plan, str):
        return None
    kind = "feature" if layer.op_type != "Conv" and found.reader == found.layer else "channel"
    through = "" if found.reader == found.layer else " through its Flatten"
    removals = []
    run = found.run
    for at, position in reversed(list(enumerate(run))):  # the reader reads the run's last node
        source = found.data if at == 0 else view.nodes[run[at - 1]].output[0]
        verb = OP_WORDS[view.op_types[position]][1]
        how = f"{verb} a per-{kind} constant before it, folded forward{through}; {plan.how}"
        removals.append(Absorb(position, found.reader, how, source))
    return Match(((found.layer, plan),), tuple(removals), found.layer)


BACKWARD_AFFINE_RULES: tuple[Rule, ...] = (
    into_layer_before,
    split_after_concat,
    into_dense_through_reshape,
)
FORWARD_AFFINE_RULES: tuple[Rule, ...] = (forward_into_layer,)
