"""Layers → Concat (on the channel axis) → BatchNormalization, folded slice by slice (MixConv:
timm's MixNet, Inception-style blocks; Keras' Concatenate in NHWC, with tf2onnx's Transposes).

A Concat on axis a writes input i's values to positions `s_i .. s_i + c_i - 1` of axis a of its
output, unchanged. Where the channels of every input are on axis a (each input is a layer's
output, its channel axis 1 moved to a by the Transposes in between, if any) and axis a of the
Concat's output is the BatchNormalization's channel axis (axis 1 of its input, after the
Transposes in between, if any), the BN maps each channel c by `a[c]·x + b[c]`, so

    BN(Concat(y_1, ..., y_k)) = Concat(a[S_1]·y_1 + b[S_1], ..., a[S_k]·y_k + b[S_k])

(S_i the slice `s_i : s_i + c_i`) exactly, element for element, and Transposes only move
elements: folding each slice into the layer that computes `y_i` (the rules of
`bnfold.producers`) and letting the node before the BN write its output computes the same
function. It applies only where every Concat input comes from such a layer, and every node
between a layer and the BN is read by the next alone (and the Concat reads each input once), so
that no other reader sees the folded values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..affine import layer_before, producer_channels
from ..graph_view import GraphView
from ..graphs import ONNX_DOMAINS, attributes, axis_after_transposes, node_label
from ..numerics import ChannelAffine
from ..protobuf_speed import listed
from . import PLANNERS
from .base import SplitPlan, shared_output_reason

LINEAR_LAYERS = "a Conv, ConvTranspose, Gemm or MatMul"
MAX_CHAIN = 16  # Transpose/Identity nodes followed between a Concat and the node folded


@dataclass(frozen=True)
class _Input:
    index: int  # the layer computing this Concat input
    chain: tuple[int, ...]  # the Transpose/Identity nodes from the layer to the Concat
    channels: int
    rank: int


def concat_before(view: GraphView, name: str, reader: int) -> tuple[int, list[int]] | None:
    """(the Concat computing `name`, the Transpose/Identity nodes from it to `name`, Concat
    side first) when only such nodes lie between them, each output read by the next node alone
    (`name` by `reader`; who reads the Concat's output is the caller's to check); else None."""
    chain: list[int] = []
    for _ in range(MAX_CHAIN + 1):
        index = view.producer.get(name)
        if index is None or view.domains[index] not in ONNX_DOMAINS:
            return None
        op = view.op_types[index]
        if op == "Concat":
            return index, chain[::-1]
        if op not in ("Transpose", "Identity") or not view.nodes[index].input:
            return None
        if view.sole_consumer(name) != reader:
            return None
        chain.append(index)
        name, reader = view.nodes[index].input[0], index
    return None


def concat_channels(view: GraphView, concat_index: int) -> tuple[int, int, int] | None:
    """(channels, rank, axis) of a Concat's output when every input comes from a layer with a
    constant weight of known shape whose channels reach the joined axis (their channels add up
    along it; whether the layers may take a slice is for `plan_concat_split` to say); else None."""
    label = f"Concat '{node_label(view.nodes[concat_index])}'"
    inputs = _layers_before(view, concat_index, label, check_readers=False)
    if isinstance(inputs, str):
        return None
    rank = _common_rank(inputs, label)
    if isinstance(rank, str):
        return None
    axis = _joined_axis(view, concat_index, rank)
    if any(_channel_axis(view, part) != axis for part in inputs):
        return None
    return sum(part.channels for part in inputs), rank, axis


def plan_concat_split(
    view: GraphView,
    concat_index: int,
    affine: ChannelAffine,
    opset: int,
    after: Sequence[int] = (),
    target_axis: int = 1,
) -> SplitPlan | str:
    """How to fold `affine` into the layers before the Concat, or why not (naming the input
    that prevents it). `after`: the Transpose/Identity nodes between the Concat and the node
    folded; `target_axis`: that node's channel axis (1 for a BatchNormalization)."""
    concat = view.nodes[concat_index]
    label = f"Concat '{node_label(concat)}'"
    inputs = _layers_before(view, concat_index, label)
    if isinstance(inputs, str):
        return inputs
    rank = _common_rank(inputs, label)
    if isinstance(rank, str):
        return rank
    wanted = _axis_reaching(view, after, target_axis, rank)
    if isinstance(wanted, str):
        return wanted
    axis = _joined_axis(view, concat_index, rank)
    if axis != wanted:
        where = f"axis {wanted}, which reaches its channel axis" if after else "the channel axis 1"
        return f"it follows {label}, which joins on axis {axis}, not {where}"
    total = sum(part.channels for part in inputs)
    if total != affine.channels:
        return f"the {total} channels of {label}'s inputs are not its {affine.channels}"
    parts, start = [], 0
    for part in inputs:
        layer = view.nodes[part.index]
        source = f"{layer.op_type} '{node_label(layer)}'"
        landed = _channel_axis(view, part)
        if isinstance(landed, str):
            return f"it follows {label}; its input from {source}: {landed}"
        if landed != axis:
            return (
                f"it follows {label}; the channels of its input from {source} reach it on "
                f"axis {landed}, not on the joined axis {axis}"
            )
        stop = start + part.channels
        piece = ChannelAffine(affine.scale[start:stop], affine.shift[start:stop])
        plan = PLANNERS[layer.op_type](layer, view, piece, opset)
        if isinstance(plan, str):
            return f"it follows {label}; its input from {source}: {plan}"
        parts.append((part.index, plan))
        start = stop
    return SplitPlan(tuple(parts), _how(view, inputs, label, after))


def _layers_before(
    view: GraphView, concat_index: int, label: str, check_readers: bool = True
) -> list[_Input] | str:
    """Each Concat input's layer (through Transposes/Identity) and channels, or why one cannot
    take its slice (`check_readers`: also when something else reads an input)."""
    names = listed(view.nodes[concat_index].input)
    if not names or not all(names) or len(set(names)) != len(names):
        return f"it follows {label}, which reads an input twice or has an empty one"
    inputs: list[_Input] = []
    for name in names:
        index = view.producer.get(name)
        if index is None:
            return f"it follows {label}, whose input '{name}' is not computed by a layer"
        found = layer_before(view, name, PLANNERS)
        if found is None:
            node = view.nodes[index]
            return (
                f"it follows {label}, whose input '{name}' comes from {node.op_type} "
                f"'{node_label(node)}', not {LINEAR_LAYERS}"
            )
        layer_index, chain = found
        layer = view.nodes[layer_index]
        if check_readers and view.sole_consumer(name) != concat_index:
            return f"it follows {label}: {shared_output_reason(view, name, view.nodes[index])}"
        shape = producer_channels(layer, view)
        if shape is None:
            return (
                f"it follows {label}, whose input from {layer.op_type} '{node_label(layer)}' "
                "has no constant weight of known shape"
            )
        inputs.append(_Input(layer_index, tuple(chain), *shape))
    return inputs


def _common_rank(inputs: list[_Input], label: str) -> int | str:
    ranks = {part.rank for part in inputs}
    if len(ranks) != 1:
        return f"it follows {label}, whose inputs have different ranks {sorted(ranks)}"
    return ranks.pop()


def _joined_axis(view: GraphView, concat_index: int, rank: int) -> int:
    axis = int(attributes(view.nodes[concat_index]).get("axis", 1))  # (opset 1's default)
    return axis + rank if axis < 0 else axis


def _channel_axis(view: GraphView, part: _Input) -> int | str:
    """The axis a layer's channels (axis 1 of its output) are on where the Concat reads them."""
    return axis_after_transposes((view.nodes[i] for i in part.chain), 1, part.rank)


def _axis_reaching(view: GraphView, after: Sequence[int], target: int, rank: int) -> int | str:
    """The axis of the Concat's output that the nodes `after` it move to `target`."""
    for axis in range(rank):
        landed = axis_after_transposes((view.nodes[i] for i in after), axis, rank)
        if isinstance(landed, str):
            return landed
        if landed == target:
            return axis
    return f"no axis of the Concat's output reaches axis {target}"  # (rank ≤ target)


def _how(view: GraphView, inputs: list[_Input], label: str, after: Sequence[int]) -> str:
    slices, start = [], 0
    for part in inputs:
        layer = view.nodes[part.index]
        slices.append(f"{layer.op_type} '{node_label(layer)}' {start}..{start + part.channels - 1}")
        start += part.channels
    how = f"split over the {len(inputs)} inputs of {label} by channel ({', '.join(slices)})"
    moved = [i for part in inputs for i in part.chain] + list(after)
    if moved:
        nodes = ", ".join(f"{view.op_types[i]} '{node_label(view.nodes[i])}'" for i in moved)
        how += f"; through {nodes}, unchanged"
    return how
