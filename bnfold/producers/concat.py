"""Layers → Concat (on the channel axis) → BatchNormalization, folded slice by slice (MixConv:
timm's MixNet, Inception-style blocks).

A Concat on axis 1 writes input i's channels to channels `s_i .. s_i + c_i - 1` of its output,
unchanged. The BatchNormalization maps each channel c by `a[c]·x + b[c]`, so

    BN(Concat(y_1, ..., y_k)) = Concat(a[S_1]·y_1 + b[S_1], ..., a[S_k]·y_k + b[S_k])

(S_i the slice `s_i : s_i + c_i`) exactly, element for element: folding each slice into the
layer that computes `y_i` (the rules of `bnfold.producers`) and letting the Concat write the BN's
output computes the same function. It applies only where every Concat input comes from such a layer,
read by the Concat alone (and only once), so that no other reader sees the folded values.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..affine import producer_channels
from ..graph_view import GraphView
from ..graphs import ONNX_DOMAINS, attributes, node_label
from ..numerics import ChannelAffine
from . import PLANNERS
from .base import SplitPlan, shared_output_reason

LINEAR_LAYERS = "a Conv, ConvTranspose, Gemm or MatMul"


@dataclass(frozen=True)
class _Input:
    index: int  # the layer computing this Concat input
    start: int  # its first channel in the Concat's output
    channels: int


def plan_concat_split(
    view: GraphView, concat_index: int, affine: ChannelAffine, opset: int
) -> SplitPlan | str:
    """How to fold `affine` (a BatchNormalization reading the Concat's output) into the layers
    before the Concat, or why not (naming the input that prevents it)."""
    concat = view.nodes[concat_index]
    label = f"Concat '{node_label(concat)}'"
    inputs = _layers_before(view, concat_index, label)
    if isinstance(inputs, str):
        return inputs
    rank = _common_rank(view, inputs, label)
    if isinstance(rank, str):
        return rank
    axis = int(attributes(concat).get("axis", 1))  # (opset 1's default; required from opset 4)
    if (axis + rank if axis < 0 else axis) != 1:
        return f"it follows {label}, which joins on axis {axis}, not the channel axis 1"
    total = sum(part.channels for part in inputs)
    if total != affine.channels:
        return f"the {total} channels of {label}'s inputs are not its {affine.channels}"
    parts = []
    for part in inputs:
        layer = view.nodes[part.index]
        stop = part.start + part.channels
        piece = ChannelAffine(affine.scale[part.start : stop], affine.shift[part.start : stop])
        plan = PLANNERS[layer.op_type](layer, view, piece, opset)
        if isinstance(plan, str):
            source = f"{layer.op_type} '{node_label(layer)}'"
            return f"it follows {label}; its input from {source}: {plan}"
        parts.append((part.index, plan))
    return SplitPlan(tuple(parts), _how(view, inputs, label))


def _layers_before(view: GraphView, concat_index: int, label: str) -> list[_Input] | str:
    """Each Concat input's layer and channel slice, or why one cannot take its slice."""
    names = view.nodes[concat_index].input[:]
    if not names or not all(names) or len(set(names)) != len(names):
        return f"it follows {label}, which reads an input twice or has an empty one"
    inputs: list[_Input] = []
    start = 0
    for name in names:
        index = view.producer.get(name)
        if index is None:
            return f"it follows {label}, whose input '{name}' is not computed by a layer"
        layer = view.nodes[index]
        if layer.domain not in ONNX_DOMAINS or layer.op_type not in PLANNERS:
            return (
                f"it follows {label}, whose input '{name}' comes from {layer.op_type} "
                f"'{node_label(layer)}', not {LINEAR_LAYERS}"
            )
        if view.sole_consumer(name) != concat_index:
            return f"it follows {label}: {shared_output_reason(view, name, layer)}"
        found = producer_channels(layer, view)
        if found is None:
            return (
                f"it follows {label}, whose input from {layer.op_type} '{node_label(layer)}' "
                "has no constant weight of known shape"
            )
        inputs.append(_Input(index, start, found[0]))
        start += found[0]
    return inputs


def _common_rank(view: GraphView, inputs: list[_Input], label: str) -> int | str:
    ranks = set()
    for part in inputs:
        found = producer_channels(view.nodes[part.index], view)
        assert found is not None  # (checked by `_layers_before`)
        ranks.add(found[1])
    if len(ranks) != 1:
        return f"it follows {label}, whose inputs have different ranks {sorted(ranks)}"
    return ranks.pop()


def _how(view: GraphView, inputs: list[_Input], label: str) -> str:
    slices = ", ".join(
        f"{view.nodes[p.index].op_type} '{node_label(view.nodes[p.index])}' "
        f"{p.start}..{p.start + p.channels - 1}"
        for p in inputs
    )
    return f"split over the {len(inputs)} inputs of {label} by channel ({slices})"
