"""A BatchNormalization written as arithmetic: `Mul` and/or `Add` by a constant right after a
linear layer, as TensorFlow/Keras-style exports and some converters write it.

`y = x · k` or `y = x + k` is a per-channel affine map only if `k` broadcasts along the channel
axis (axis 1) alone: `[C, 1, 1]`, `[1, C, 1, 1]`, a scalar. A `[C]` constant broadcasts along the
*last* axis of a 4-D tensor, so it is not per-channel there (it is for the 2-D output of a Gemm).
The constant must not add axes to `x`, so that the output keeps the producer's shape.

Forward (`read_affine_forward`): one or two such nodes on the 2-D input of a Gemm (transA=0) or
MatMul, each read only by the next, are a per-feature map `x·s + b` over the K features the
layer reduces over (Keras writes a BatchNormalization before a Dense layer this way); the layer
absorbs it as it absorbs a BatchNormalization before it (`producers.forward.plan_forward`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .graph_view import GraphView
from .graphs import ONNX_DOMAINS, attributes, axis_after_transposes, node_label
from .numerics import ChannelAffine, is_float

AFFINE_OPS = ("Mul", "Add")


def producer_channels(producer: onnx.NodeProto, view: GraphView) -> tuple[int, int] | None:
    """(output channels, output rank) of a linear layer with a constant weight, else None."""
    weight = view.constant(producer.input[1]) if len(producer.input) > 1 else None
    if weight is None or weight.ndim < 2:
        return None
    op = producer.op_type
    if op == "Conv" and weight.ndim >= 3:
        return weight.shape[0], weight.ndim
    if op == "ConvTranspose" and weight.ndim >= 3:
        return weight.shape[1] * int(attributes(producer).get("group", 1)), weight.ndim
    if op == "Gemm" and weight.ndim == 2:
        trans_b = int(attributes(producer).get("transB", 0))
        return (weight.shape[0] if trans_b else weight.shape[1]), 2
    if op == "MatMul" and weight.ndim == 2 and view.rank(producer.input[0]) == 2:
        return weight.shape[1], 2
    return None


def per_channel(constant: np.ndarray, channels: int, rank: int, axis: int = 1) -> np.ndarray | None:
    """The constant as C per-channel float64 values, if it broadcasts along `axis` only."""
    if constant.ndim > rank:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(size != 1 for at, size in enumerate(shape) if at != axis):
        return None
    if shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,)).copy()


def as_affine(op_type: str, values: np.ndarray) -> ChannelAffine:
    """A Mul by `values` (scale, no shift) or an Add of them (shift) as a per-channel map."""
    if op_type == "Mul":
        return ChannelAffine(values, np.zeros_like(values))
    return ChannelAffine(np.ones_like(values), values)


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
    if len(node.input) != 2 or len(node.output) != 1 or not node.output[0]:
        return None
    for data, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        found = layer_before(view, data, producers)
        if found is None:
            continue
        layer_index, chain = found
        constant = view.constant(other)
        if constant is None or not is_float(constant.dtype):
            return None
        shape = producer_channels(view.nodes[layer_index], view)
        if shape is None:
            return None
        axis = axis_after_transposes((view.nodes[i] for i in chain), 1, shape[1])
        values = per_channel(constant, *shape, axis=axis) if isinstance(axis, int) else None
        if values is None or not np.isfinite(values).all():
            return None
        affine = as_affine(node.op_type, values)
        writer = chain[-1] if chain else layer_index
        path = " → ".join(f"{view.op_types[i]} '{node_label(view.nodes[i])}'" for i in chain)
        return AffineMatch(layer_index, affine, data, writer, path)
    return None


MAX_CHAIN = 16  # Transpose/Identity nodes followed back from a Mul/Add to its layer


def layer_before(view: GraphView, data: str, producers: dict) -> tuple[int, list[int]] | None:
    """(the linear layer computing `data`, the Transpose/Identity nodes in between, layer
    first, each read only by the next) or None."""
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
        if op not in ("Transpose", "Identity"):
            return None
        chain.append(index)
        name = view.nodes[index].input[0] if view.nodes[index].input else ""
    return None


FORWARD_LAYERS = ("Gemm", "MatMul", "Conv")


def read_affine_forward(
    start: int, view: GraphView
) -> tuple[list[int], ChannelAffine, str, int] | None:
    """(the Mul/Add nodes from `start` on, their composed per-feature map, the data they read,
    the layer reading them) when `start` begins a run of one or two Mul/Add by constants that
    broadcast along the axis the layer reduces over alone (the last axis of a 2-D input of a
    Gemm or MatMul; axis 1, the channels, of a Conv's input), each read only by the next, the
    last only by the layer's data input; the data's rank and (where a constant has several
    values) its size on that axis must be provable, so that dropping the run changes no shape.
    Else None."""
    run = [start]
    reader = view.sole_consumer(view.nodes[start].output[0])
    if reader is not None and _is_affine_op(view, reader):
        run.append(reader)
        reader = view.sole_consumer(view.nodes[reader].output[0])
    if reader is None or view.nodes[reader].op_type not in FORWARD_LAYERS:
        return None
    layer = view.nodes[reader]
    if view.domains[reader] not in ONNX_DOMAINS or layer.input[0] != view.nodes[run[-1]].output[0]:
        return None
    reads = _layer_reads(layer, view)
    if reads is None:
        return None
    features, rank, axis = reads
    affine = ChannelAffine(np.ones(features), np.zeros(features))
    data, flowing = None, None
    for index in run:
        node = view.nodes[index]
        operands = _operands(node, view, flowing)
        if operands is None:
            return None
        source, constant = operands
        values = per_channel(constant, features, rank, axis)
        if values is None or not np.isfinite(values).all():
            return None
        if node.op_type == "Mul":
            affine = ChannelAffine(affine.scale * values, affine.shift * values)
        else:
            affine = ChannelAffine(affine.scale, affine.shift + values)
        data = source if data is None else data
        flowing = node.output[0]
    assert data is not None
    if view.rank(data) != rank:
        return None  # (the layer must read a tensor of its rank once the run is gone)
    constants = [view.constant(name) for i in run for name in view.nodes[i].input]
    broadcasts = any(c is not None and c.size > 1 for c in constants)
    if broadcasts and _dim(view, data, axis, rank) != features:
        return None  # (the run may broadcast its data up to the features: not provably not)
    return run, affine, data, reader


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
    """(data, float constant) of a two-input Mul/Add: the data is `flowing` (the previous
    node's output) when given, else the input that is not constant; None if neither works."""
    if len(node.input) != 2 or len(node.output) != 1 or not node.output[0]:
        return None
    for data, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        if flowing is not None and data != flowing:
            continue
        if view.constant(data) is not None:
            continue
        constant = view.constant(other)
        if constant is not None and is_float(constant.dtype):
            return data, constant
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
