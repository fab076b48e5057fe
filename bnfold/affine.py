"""A BatchNormalization written as arithmetic: `Mul` and/or `Add` (or `Sub`, `Div`) by a constant
right after a linear layer, as TensorFlow/Keras-style exports and some converters write it.

`y = x · k`, `x + k`, `x − k`, `k − x` or `x / k` is a per-channel affine map (`as_affine`; `k / x`
is not) only if `k` broadcasts along the channel
axis (axis 1) alone: `[C, 1, 1]`, `[1, C, 1, 1]`, a scalar. A `[C]` constant broadcasts along the
*last* axis of a 4-D tensor, so it is not per-channel there (it is for the 2-D output of a Gemm).
The constant must not add axes to `x`, so that the output keeps the producer's shape.

Forward (`read_affine_forward`): one or two such nodes on the 2-D input of a Gemm (transA=0) or
MatMul, each read only by the next, are a per-feature map `x·s + b` over the K features the
layer reduces over (Keras writes a BatchNormalization before a Dense layer this way); the layer
absorbs it as it absorbs a BatchNormalization before it (`producers.forward.plan_forward`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import onnx

from .graph_view import GraphView
from .graphs import (
    ONNX_DOMAINS,
    attributes,
    axis_after_transposes,
    node_label,
    reads_as_arithmetic,
)
from .numerics import ChannelAffine, is_float, per_channel
from .producers import LAYERS

AFFINE_OPS = ("Mul", "Add", "Sub", "Div")
# How records name them: (the node, as a noun phrase; the node, as the start of a sentence).
OP_WORDS = {
    "Mul": ("a Mul by", "Mul by"),
    "Add": ("an Add of", "Add of"),
    "Sub": ("a Sub of", "Sub of"),
    "Div": ("a Div by", "Div by"),
}


def producer_channels(producer: onnx.NodeProto, view: GraphView) -> tuple[int, int] | None:
    """(output channels, output rank) of a linear layer with a constant weight, else None."""
    layer = LAYERS.get(producer.op_type)
    return None if layer is None else layer.output_channels(producer, view)


def as_affine(
    op_type: str, values: np.ndarray, constant_first: bool = False
) -> ChannelAffine | None:
    """The per-channel map `x ↦ scale·x + shift` a Mul, Add, Sub or Div of the data `x` and the
    constant `values` computes (`constant_first`: the constant is the first input, which
    matters for Sub and Div): `x·k`, `x + k`, `x − k` (scale 1, shift −k), `k − x` (scale −1,
    shift k), `x / k` (scale 1/k, in float64). None for `k / x` (not affine) and for a Div by a
    value whose reciprocal is not finite."""
    ones, zeros = np.ones_like(values), np.zeros_like(values)
    if op_type == "Mul":
        return ChannelAffine(values, zeros)
    if op_type == "Add":
        return ChannelAffine(ones, values)
    if op_type == "Sub":
        return ChannelAffine(-ones, values) if constant_first else ChannelAffine(ones, -values)
    if op_type == "Div" and not constant_first:
        with np.errstate(divide="ignore", over="ignore"):
            reciprocal = 1.0 / values.astype(np.float64)
        return ChannelAffine(reciprocal, zeros) if np.isfinite(reciprocal).all() else None
    return None


def affine_of(
    node: onnx.NodeProto,
    constant: np.ndarray,
    constant_first: bool,
    channels: int,
    rank: int,
    axis: int,
) -> ChannelAffine | None:
    """The per-channel map of an arithmetic node whose constant broadcasts along `axis` alone of
    a rank-`rank` tensor of `channels` channels there (`per_channel`, `as_affine`); None when
    it does not, when a value is not finite, or when the node is not affine."""
    values = per_channel(constant, channels, rank, axis)
    if values is None or not np.isfinite(values).all():
        return None
    return as_affine(node.op_type, values, constant_first)


def constant_affine(
    view: GraphView,
    node: onnx.NodeProto,
    constant_name: str,
    channels: int,
    rank: int,
    axis: int,
) -> ChannelAffine | None:
    """`affine_of` the node with its input `constant_name`, when that is a float constant."""
    constant = view.constant(constant_name)
    if constant is None or not is_float(constant.dtype):
        return None
    first = constant_name == node.input[0]
    return affine_of(node, constant, first, channels, rank, axis)


def composed(first: ChannelAffine, then: ChannelAffine) -> ChannelAffine:
    """`then ∘ first`: x ↦ then.scale·(first.scale·x + first.shift) + then.shift."""
    return ChannelAffine(then.scale * first.scale, then.scale * first.shift + then.shift)


@dataclass(frozen=True)
class AffineMatch:
    """A Mul/Add by a per-channel constant after a linear layer: the layer, the map, the data
    input, and the node writing it (the layer, or the last Transpose/Identity after it)."""

    layer: int
    affine: ChannelAffine
    data: str
    writer: int
    path: str  # the Transposes/Identity between the layer and the Mul/Add ("" if none)


def read_affine(node: onnx.NodeProto, view: GraphView, producers: dict) -> AffineMatch | None:
    """The match if `node` is a Mul/Add by a constant per channel of the linear layer before it
    (directly, or through Transposes that move the channel axis: the constant must broadcast
    along the axis the channels are on there), else None."""
    if not reads_as_arithmetic(node):
        return None
    for data, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        found = layer_before(view, data, producers)
        if found is None:
            continue
        layer_index, chain = found
        shape = producer_channels(view.nodes[layer_index], view)
        if shape is None:
            return None
        axis = axis_after_transposes((view.nodes[i] for i in chain), 1, shape[1])
        if not isinstance(axis, int):
            return None
        affine = constant_affine(view, node, other, *shape, axis)
        if affine is None:
            return None
        writer = chain[-1] if chain else layer_index
        path = " → ".join(f"{view.op_types[i]} '{node_label(view.nodes[i])}'" for i in chain)
        return AffineMatch(layer_index, affine, data, writer, path)
    return None


MAX_CHAIN = 16  # Transpose/Identity nodes followed back from a Mul/Add to its layer


def layer_before(
    view: GraphView,
    data: str,
    producers: Collection[str],
    through: Collection[str] = ("Transpose", "Identity"),
) -> tuple[int, list[int]] | None:
    """(the node of an op in `producers` computing `data`, the nodes of ops in `through`
    (Transpose/Identity unless told) in between, layer first, each read only by the next) or
    None."""
    chain: list[int] = []
    name = data
    for _ in range(MAX_CHAIN + 1):
        if chain and view.sole_consumer(name) != chain[-1]:
            return None  # (the data itself: its one reader is checked by the caller)
        index = view.producer.get(name)
        if index is None or view.domains[index] not in ONNX_DOMAINS:
            return None
        op = view.op_types[index]
        if op in producers:
            return index, chain[::-1]
        if op not in through:
            return None
        chain.append(index)
        name = view.nodes[index].input[0] if view.nodes[index].input else ""
    return None


FORWARD_LAYERS = ("Gemm", "MatMul", "Conv")


@dataclass(frozen=True)
class ForwardRun:
    """Mul/Add nodes a layer after them can absorb: the nodes (in order), their composed map
    over the features the layer reduces over, the data the first reads, the layer, and the node
    reading the last one (the layer, or a Flatten before it)."""

    run: list[int]
    affine: ChannelAffine
    data: str
    layer: int
    reader: int


def read_affine_forward(start: int, view: GraphView) -> ForwardRun | None:
    """The run when `start` begins one or two Mul/Add by constants that broadcast along the axis
    the layer after them reduces over alone (the last axis of a 2-D input of a Gemm or MatMul;
    axis 1, the channels, of a Conv's input, or of a Flatten(axis=1)'s input before a
    Gemm/MatMul, each channel then a block of features), each read only by the next, the last
    only by the layer's (or the Flatten's) data input; the data's rank and (where a constant
    has several values) its size on that axis must be provable, so that dropping the run
    changes no shape. Else None."""
    found = _run_and_reader(view, start)
    if found is None:
        return None
    run, reader = found
    layer = _flattened_into(view, reader) if view.op_types[reader] == "Flatten" else reader
    if layer is None or view.op_types[layer] not in FORWARD_LAYERS:
        return None
    reads = _layer_reads(view.nodes[layer], view)
    constants = _run_constants(view, run)
    if reads is None or constants is None:
        return None
    features, rank, axis = reads
    data = constants[0][0]  # (the first node's data input)
    if layer != reader:  # through a Flatten: the channels of the data before it
        rank, axis = view.rank(data) or 0, 1
    channels = features if layer == reader else _flattened_channels(view, data, rank, constants)
    if rank < 2 or view.rank(data) != rank or channels is None or features % channels:
        return None  # (the layer must read a tensor of its rank once the run is gone)
    affine = _composed(view, run, constants, channels, rank, axis)
    broadcasts = any(c.size > 1 for _, c, _ in constants)
    if affine is None or (broadcasts and _dim(view, data, axis, rank) != channels):
        return None  # (the run may broadcast its data up to the features: not provably not)
    block = features // channels
    if block > 1:
        affine = ChannelAffine(np.repeat(affine.scale, block), np.repeat(affine.shift, block))
    return ForwardRun(run, affine, data, layer, reader)


def _run_and_reader(view: GraphView, start: int) -> tuple[list[int], int] | None:
    """The Mul/Add from `start` on (one or two, each read only by the next) and the one
    default-domain node reading the last as its first input."""
    run = [start]
    reader = view.sole_consumer(view.nodes[start].output[0])
    if reader is not None and _is_affine_op(view, reader):
        run.append(reader)
        reader = view.sole_consumer(view.nodes[reader].output[0])
    if reader is None or view.domains[reader] not in ONNX_DOMAINS:
        return None
    if view.nodes[reader].input[:1] != [view.nodes[run[-1]].output[0]]:
        return None
    return run, reader


def _flattened_channels(view: GraphView, data: str, rank: int, constants) -> int | None:
    """The channels (axis 1) of the data before a Flatten: provable from the data, else the
    one size the constants have there (1 when all are scalars)."""
    channels = _dim(view, data, 1, rank) if rank >= 2 else None
    if channels is not None:
        return channels
    sizes = {c.size for _, c, _ in constants if c.size > 1}
    if not sizes:
        return 1
    return sizes.pop() if len(sizes) == 1 else None


def _composed(view: GraphView, run, constants, channels: int, rank: int, axis: int):
    """The run's Mul/Add/Sub/Div composed into one per-channel map, or None where a constant does
    not broadcast along `axis` alone, is not finite, or a node is not affine (`k / x`)."""
    affine = ChannelAffine(np.ones(channels), np.zeros(channels))
    for index, (_, constant, first) in zip(run, constants, strict=True):
        step = affine_of(view.nodes[index], constant, first, channels, rank, axis)
        if step is None:
            return None
        affine = composed(affine, step)
    return affine


def _flattened_into(view: GraphView, flatten: int) -> int | None:
    """The Gemm/MatMul that alone reads a Flatten(axis=1)'s output as its data input."""
    if int(attributes(view.nodes[flatten]).get("axis", 1)) != 1:
        return None
    output = view.nodes[flatten].output[0]
    layer = view.sole_consumer(output)
    if layer is None or view.op_types[layer] not in ("Gemm", "MatMul"):
        return None
    if view.domains[layer] not in ONNX_DOMAINS:
        return None
    return layer if view.nodes[layer].input[:1] == [output] else None


def _run_constants(view: GraphView, run: list[int]) -> list[tuple[str, np.ndarray, bool]] | None:
    """(data input, constant, constant first) of each Mul/Add/Sub/Div of the run (each node's
    data the previous one's output), or None."""
    found, flowing = [], None
    for index in run:
        operands = _operands(view.nodes[index], view, flowing)
        if operands is None:
            return None
        found.append(operands)
        flowing = view.nodes[index].output[0]
    return found


def _layer_reads(layer: onnx.NodeProto, view: GraphView) -> tuple[int, int, int] | None:
    """(features, rank of the data input, their axis) a layer reduces over: the rows of a
    Gemm's or MatMul's constant 2-D weight (on the last axis of a 2-D input), the input
    channels of a Conv's constant weight (axis 1)."""
    if layer.op_type == "Conv":
        weight = view.constant(layer.input[1]) if len(layer.input) > 1 else None
        if weight is None or weight.ndim < 3:
            return None
        group = int(attributes(layer).get("group", 1))
        return weight.shape[1] * group, weight.ndim, 1
    matrix = _weight_matrix(layer, view)
    return None if matrix is None else (matrix[0], 2, 1)


def _is_affine_op(view: GraphView, index: int) -> bool:
    return view.op_types[index] in AFFINE_OPS and view.domains[index] in ONNX_DOMAINS


def _operands(node: onnx.NodeProto, view: GraphView, flowing: str | None):
    """(data, float constant, whether the constant is the first input) of a two-input
    Mul/Add/Sub/Div: the data is `flowing` (the previous node's output) when given, else the
    input that is not constant; None if neither works."""
    if not reads_as_arithmetic(node):
        return None
    for data, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        if flowing is not None and data != flowing:
            continue
        if view.constant(data) is not None:
            continue
        constant = view.constant(other)
        if constant is not None and is_float(constant.dtype):
            return data, constant, other == node.input[0]
    return None


def _weight_matrix(layer: onnx.NodeProto, view: GraphView) -> tuple[int, int] | None:
    """(features reduced over, output columns) of a Gemm/MatMul with a constant 2-D weight."""
    weight = view.constant(layer.input[1]) if len(layer.input) > 1 else None
    if weight is None or weight.ndim != 2:
        return None
    trans_b = layer.op_type == "Gemm" and int(attributes(layer).get("transB", 0))
    rows, columns = weight.shape[::-1] if trans_b else weight.shape
    return int(rows), int(columns)


def _dim(view: GraphView, name: str, axis: int, rank: int) -> int | None:
    """The size of axis `axis` of a rank-`rank` tensor, if declared, or if it is the output of a
    layer with a constant weight and `axis` holds its output channels or columns; else None."""
    for infos in (view.graph.input, view.graph.value_info, view.graph.output):
        for info in infos:
            if info.name == name and info.type.tensor_type.HasField("shape"):
                dims = info.type.tensor_type.shape.dim
                if len(dims) == rank and dims[axis].HasField("dim_value"):
                    return int(dims[axis].dim_value) or None
    index = view.producer.get(name)
    if index is None or view.domains[index] not in ONNX_DOMAINS:
        return None
    shape = producer_channels(view.nodes[index], view)
    if shape is None or shape[1] != rank or axis != 1:
        return None
    return shape[0]
