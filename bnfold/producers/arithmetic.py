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
    constant_affine,
    layer_before,
    producer_channels,
    read_affine,
    read_affine_forward,
    reads_as_arithmetic,
)
from ..graph_view import GraphView
from ..graphs import ONNX_DOMAINS, node_label
from ..numerics import ChannelAffine
from . import PLANNERS
from .base import FoldPlan, SplitPlan, shared_output_reason
from .concat import concat_channels, plan_concat_split
from .forward import plan_forward, plan_forward_conv
from .rule import Absorb, Bypass, Match, Rule, Skip, about_producers, bypassing
from .through_reshape import LAYOUT_OPS, ROWS, Layout, follow


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
    return _into_layer(
        view, index, node, found.data, found.layer, found.writer, found.path, found.affine, opset
    )


def only_moves_a_shift(affine: ChannelAffine, plan: FoldPlan | SplitPlan) -> bool:
    """Whether folding a pure shift (every scale 1: an Add, a Sub of a constant) would only put
    a new bias Add after layers that have no bias (MatMuls with their weight on the left): that
    shift is their bias, written after them, not a BatchNormalization written as arithmetic;
    nothing to fold (and folding it again would move it again)."""
    parts = plan.parts if isinstance(plan, SplitPlan) else ((0, plan),)
    added = any(part.added_bias is not None for _, part in parts)
    return added and bool(np.all(affine.scale == 1))


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
    if not reads_as_arithmetic(node):
        return None
    for data, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        concat_index = view.producer.get(data)
        if concat_index is None or view.op_types[concat_index] != "Concat":
            continue
        if view.domains[concat_index] not in ONNX_DOMAINS:
            continue
        shape = concat_channels(view, concat_index)
        if shape is None:
            return None
        affine = constant_affine(view, node, other, *shape)
        if affine is None:
            return None
        axis = shape[2]
        concat = view.nodes[concat_index]
        what, verb = OP_WORDS[node.op_type]
        split = plan_concat_split(view, concat_index, affine, opset, target_axis=axis)
        if not isinstance(split, str) and only_moves_a_shift(affine, split):
            return None
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
    if not reads_as_arithmetic(node):
        return None
    for data, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        found = layer_before(view, data, ("Gemm", "MatMul"), through=LAYOUT_OPS)
        if found is None or not any(view.op_types[i] == "Reshape" for i in found[1]):
            continue
        layer_index, chain = found
        found_channels = producer_channels(view.nodes[layer_index], view)
        if found_channels is None or found_channels[1] != 2:  # (the columns of a 2-D output)
            return None
        columns = found_channels[0]
        layout = Layout((ROWS, columns), rows=0, columns=1)
        for at in chain:
            followed = follow(view.nodes[at], layout, view, opset)
            if isinstance(followed, str):
                return None  # (where the columns go is not provable: no BN-like constant)
            layout = followed
        affine = constant_affine(view, node, other, columns, len(layout.dims), layout.columns)
        if affine is None:
            return None
        path = " → ".join(f"{view.op_types[i]} '{node_label(view.nodes[i])}'" for i in chain)
        return _into_layer(view, index, node, data, layer_index, chain[-1], path, affine, opset)
    return None


def _into_layer(
    view: GraphView,
    index: int,
    node: onnx.NodeProto,
    data: str,
    layer_index: int,
    writer: int,
    path: str,
    affine: ChannelAffine,
    opset: int,
) -> Match | Skip | None:
    """The Mul/Add/Sub/Div at `index` (its per-channel map `affine`) folded into the layer
    before it, `writer` (the layer, or the last layout node of `path` after it) taking over its
    output; or why not; None when it is that layer's bias (`only_moves_a_shift`)."""
    producer = view.nodes[layer_index]
    what, verb = OP_WORDS[node.op_type]
    shift_only = bool(np.all(affine.scale == 1))
    shared = view.sole_consumer(data) != index
    plan: FoldPlan | str | None = None
    if shift_only or not shared:  # (a shared output needs a plan only to tell a bias: below)
        plan = PLANNERS[producer.op_type](producer, view, affine, opset)
        if not isinstance(plan, str) and only_moves_a_shift(affine, plan):
            return None
    if shared:
        plan = shared_output_reason(view, data, view.nodes[writer])
    if isinstance(plan, str):
        return Skip(f"{what} a per-channel constant after {producer.op_type}: {plan}")
    assert plan is not None
    if shift_only:
        how = f"{verb} a per-channel constant, moved into the bias"
    else:
        how = f"{verb} a per-channel constant; {plan.how}"
    if path:
        how += f"; through {path}, unchanged"
    return Match(((layer_index, plan),), (Bypass(index, writer, how),), layer_index)


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
