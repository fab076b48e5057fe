"""MatMul or Gemm → Reshape / Transpose / Identity (any chain) → BatchNormalization, folded into
the layer only where every element's BatchNormalization channel is provably its column. Identity
nodes alone are transparent for every layer (Conv → Identity → BN folds as Conv → BN). Conv or
ConvTranspose → Transpose / Identity (any chain) → BatchNormalization folds where the composed
permutation brings the layer's channel axis 1 back to axis 1 (tf2onnx without its optimizers
writes `Conv → Transpose(0,2,3,1) → Transpose(0,3,1,2) → BatchNormalization`): every element then
keeps its channel, so `BN(x) = a[c]·x + b[c]` folds into channel c of the layer.

The layer's output is `[N, C]` (a Gemm; a MatMul with 2-D operands): element (n, c) is row n,
column c. A Reshape keeps the row-major order of the elements and a Transpose permutes axes, so the
chain is followed symbolically as a `Layout`: which axis holds the C columns, which the N rows, all
other axes having size 1. N stays a symbol (any batch size). A Reshape is followed only when its
constant target provably keeps rows and columns on axes of their own, in their order (`[N, C]` →
`[0, C, 1, 1]`, `[-1, C, 1, 1]`, `[-1, 1, 1, C]`); one that merges or splits them is refused.

The fold is exact when the columns end on axis 1, the BatchNormalization's channel axis: for every
element, `BN(x) = a[c]·x + b[c]` with c its column, which is what folding `a`, `b` into the layer's
columns computes before the unchanged chain moves the values. The layer is folded as if the BN
followed it directly (a MatMul becomes a Gemm) and the chain's last node takes over the BN's output
tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import onnx

from ..graph_view import GraphView
from ..graphs import ONNX_DOMAINS, attributes, axis_after_transposes, node_label
from ..numerics import ChannelAffine
from . import LAYERS, PLANNERS
from .base import FoldPlan, SplitPlan, shared_output_reason
from .linear_nd import plan_linear_nd, plan_linear_nd_unbiased
from .product import plan_rows_and_bias, weight_on_the_left

LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Identity"})
LAYOUT_ROOTS = ("MatMul", "Gemm")  # layers whose output is [N, C], followed through any layout
# layers whose channels are axis 1 of an output of known rank: followed through Transposes
CHANNELS_FIRST_ROOTS = ("Conv", "ConvTranspose")
COLUMNS, CHANNELS = "columns", "channels"  # (how `_followed_as` follows a layer's output)
ROWS = "N"  # the number of rows, unknown: a symbol in `Layout.dims`
MAX_CHAIN = 16  # layout nodes followed between the layer and the BatchNormalization


@dataclass(frozen=True)
class Layout:
    """Where the layer's rows and columns are in a tensor whose other axes all have size 1."""

    dims: tuple[int | str, ...]  # sizes: ints, or ROWS while the row count is unknown
    rows: int | None  # the axis of the rows; None when there is only one row
    columns: int  # the axis of the columns


def plan_through_layout(
    view: GraphView, bn_input: str, bn_index: int, affine: ChannelAffine, opset: int
) -> tuple[int, FoldPlan | SplitPlan] | str | None:
    """(layer index, plan) if the BatchNormalization at `bn_index` reads `bn_input` through
    Identity nodes from a linear layer, or through layout nodes from a Gemm/MatMul whose columns
    reach its channel axis; else the reason. None when `bn_input` is not the output of a layout
    node."""
    chain: list[int] = []  # layout nodes, from the BatchNormalization back
    name, reader = bn_input, bn_index
    for _ in range(MAX_CHAIN + 1):
        index = view.producer.get(name)
        if index is None or view.nodes[index].domain not in ONNX_DOMAINS:
            return None if not chain else _no_layer_reason(view, chain, name)
        node = view.nodes[index]
        if node.op_type == "Add" and chain and view.sole_consumer(name) == reader:
            path = _describe(view, chain[::-1])
            linear = plan_linear_nd(view, index, chain[::-1], affine, path)
            if linear is None:  # (or the bias of a MatMul with its weight on the left)
                linear = _through_product_bias(view, index, chain[::-1], affine, path)
            if linear is not None:
                return linear
        if node.op_type not in LAYOUT_OPS and node.op_type not in PLANNERS:
            return None if not chain else _no_layer_reason(view, chain, name)
        if view.sole_consumer(name) != reader:
            return shared_output_reason(view, name, node)
        if node.op_type in PLANNERS:
            return _plan(view, index, chain[::-1], affine, opset) if chain else None
        chain.append(index)
        name, reader = node.input[0], index
    return f"more than {MAX_CHAIN} Reshape/Transpose/Identity nodes lead to it"


def _plan(
    view: GraphView, layer_index: int, chain: list[int], affine: ChannelAffine, opset: int
) -> tuple[int, FoldPlan] | str:
    layer = view.nodes[layer_index]
    path = _describe(view, chain)
    moves = any(view.nodes[index].op_type != "Identity" for index in chain)
    followed = _followed_as(view, layer, chain) if moves else None
    if moves and followed is None:
        return (
            f"it follows {path} after {layer.op_type} '{node_label(layer)}'; only a Gemm or "
            "MatMul (its weight on the right) is followed through a Reshape, a Conv, "
            "ConvTranspose or MatMul with its weight on the left through Transposes"
        )
    if followed == COLUMNS and layer.op_type == "MatMul" and view.rank(layer.input[0]) != 2:
        unbiased = plan_linear_nd_unbiased(view, layer_index, chain, affine, path)
        return unbiased if isinstance(unbiased, str) else (layer_index, unbiased)
    plan = PLANNERS[layer.op_type](layer, view, affine, opset)
    if isinstance(plan, str):
        return plan
    # The plan has checked that the layer has as many columns (channels) as the BN has channels.
    # With one channel every element gets the same affine map, whatever the layout.
    problem = None
    if followed == CHANNELS and affine.channels > 1:
        problem = _channel_axis_problem(view, layer, chain, affine.channels, path)
    elif followed == COLUMNS and affine.channels > 1:
        problem = _columns_problem(view, layer, chain, affine.channels, opset, path)
    return problem or (layer_index, replace(plan, how=f"{plan.how}; through {path}, unchanged"))


def _through_product_bias(
    view: GraphView, add_index: int, chain: list[int], affine: ChannelAffine, path: str
) -> tuple[int, SplitPlan] | str | None:
    """`product.plan_rows_and_bias` where the layout nodes of `chain` (from the bias Add on;
    `path` names them) lie between the bias Add and the BN: followed as the product's own output
    is (`_followed_as`, `_channel_axis_problem`); the reason they are not; None when the Add is
    no product's bias."""
    found = plan_rows_and_bias(view, add_index, affine)
    if found is None or isinstance(found, str):
        return found
    matmul_index, split = found
    matmul = view.nodes[matmul_index]
    if _followed_as(view, matmul, chain) != CHANNELS:
        return (
            f"it follows {path} after the bias Add of MatMul '{node_label(matmul)}' (its weight "
            "on the left); only Transposes are followed there"
        )
    problem = _channel_axis_problem(view, matmul, chain, affine.channels, path)
    return problem or (matmul_index, replace(split, how=f"{split.how}; through {path}, unchanged"))


def _followed_as(view: GraphView, layer: onnx.NodeProto, chain: list[int]) -> str | None:
    """How the layout nodes of `chain` after `layer` are followed: COLUMNS for a Gemm or a
    MatMul with its weight on the right (its 2-D output's columns, through any of them),
    CHANNELS for a Conv, ConvTranspose or MatMul with its weight on the left (axis 1 of its
    output, through Transposes and Identity only); None when they are not."""
    left = layer.op_type == "MatMul" and weight_on_the_left(layer, view)
    if layer.op_type in LAYOUT_ROOTS and not left:
        return COLUMNS
    reshapes = any(view.nodes[index].op_type == "Reshape" for index in chain)
    if (layer.op_type in CHANNELS_FIRST_ROOTS or left) and not reshapes:
        return CHANNELS
    return None


def _columns_problem(
    view: GraphView, layer: onnx.NodeProto, chain: list[int], channels: int, opset: int, path: str
) -> str | None:
    """Why the `channels` columns of a Gemm or MatMul (axis 1 of its 2-D output) do not reach
    axis 1 of the BatchNormalization's input through the Reshapes/Transposes of `chain`, for
    every row count (`follow`); None when they do."""
    layout = Layout((ROWS, channels), rows=0, columns=1)
    for index in chain:
        followed = follow(view.nodes[index], layout, view, opset)
        if isinstance(followed, str):
            return followed
        layout = followed
    if layout.columns != 1:
        return (
            f"the {channels} columns of {layer.op_type} '{node_label(layer)}' reach it "
            f"through {path} on axis {layout.columns}, not on its channel axis 1"
        )
    return None


def _channel_axis_problem(
    view: GraphView, layer: onnx.NodeProto, chain: list[int], channels: int, path: str
) -> str | None:
    """Why the output channels of a Conv, ConvTranspose or MatMul with its weight on the left
    (axis 1 of its output, whose rank its weight and inputs give) do not reach axis 1 of the
    BatchNormalization's input through the Transposes of `chain`; None when they do. Each
    element then keeps its channel, so the BN's map for channel c applies to exactly the values
    the layer wrote to channel c."""
    found = LAYERS[layer.op_type].output_channels(layer, view)
    if found is None:
        return f"the rank of {layer.op_type} '{node_label(layer)}''s output is not known"
    _, rank = found
    axis = axis_after_transposes((view.nodes[i] for i in chain), 1, rank)
    if isinstance(axis, str):
        return f"{axis} of {layer.op_type} '{node_label(layer)}''s output"
    if axis != 1:
        return (
            f"the {channels} output channels of {layer.op_type} '{node_label(layer)}' reach it "
            f"through {path} on axis {axis}, not on its channel axis 1"
        )
    return None


def follow(node: onnx.NodeProto, layout: Layout, view: GraphView, opset: int) -> Layout | str:
    """The layout after a layout node, or why it cannot be followed."""
    if node.op_type == "Identity":
        return layout
    if node.op_type == "Transpose":
        return _transpose(node, layout)
    target: np.ndarray | None
    if opset < 5:  # Reshape-1: the target is an attribute
        target = np.asarray(attributes(node).get("shape", []), dtype=np.int64)
    else:
        target = view.constant(node.input[1]) if len(node.input) > 1 else None
    if target is None:
        return f"the target shape of Reshape '{node_label(node)}' is not constant"
    if target.ndim != 1 or target.dtype.kind not in "iu":
        return f"Reshape '{node_label(node)}' has a target that is not a 1-D integer tensor"
    allow_zero = bool(attributes(node).get("allowzero", 0))
    result = reshape(layout, [int(v) for v in target], allow_zero)
    if result is None:
        columns = layout.dims[layout.columns]
        return (
            f"Reshape '{node_label(node)}' to {[int(v) for v in target]} does not provably keep "
            f"the {columns} columns and the rows on axes of their own"
        )
    return result


def _transpose(node: onnx.NodeProto, layout: Layout) -> Layout | str:
    rank = len(layout.dims)
    perm = [int(p) for p in attributes(node).get("perm", range(rank - 1, -1, -1))]
    if sorted(perm) != list(range(rank)):
        return f"Transpose '{node_label(node)}' has perm {perm}, not a permutation of {rank} axes"
    rows = perm.index(layout.rows) if layout.rows is not None else None
    return Layout(tuple(layout.dims[p] for p in perm), rows, perm.index(layout.columns))


def reshape(layout: Layout, target: list[int], allow_zero: bool) -> Layout | None:
    """The layout after a Reshape to `target` (0 copies an input size unless `allow_zero`, -1 is
    inferred), or None unless rows and columns provably stay on axes of their own, in order.

    Every size is derived from the equation the Reshape itself enforces (same element count), so
    the result holds for every row count with which the original model runs.
    """
    columns = layout.dims[layout.columns]
    assert isinstance(columns, int)  # (only the row count may be unknown)
    rows = layout.dims[layout.rows] if layout.rows is not None else 1
    sizes: list[int | str | None] = []  # None: the -1 entry
    for axis, entry in enumerate(target):
        if entry == 0 and not allow_zero and axis < len(layout.dims):
            sizes.append(layout.dims[axis])
        elif entry == -1:
            sizes.append(None)
        elif entry > 0:
            sizes.append(entry)
        else:
            return None
    solved = _solve(sizes, rows, columns)
    if solved is None:
        return None
    filled, rows = solved
    in_order = [("rows", rows), ("columns", columns)]
    if layout.rows is not None and layout.rows > layout.columns:
        in_order.reverse()
    expected = [(role, size) for role, size in in_order if size != 1]
    placed = [(axis, size) for axis, size in enumerate(filled) if size != 1]
    if [size for _, size in placed] != [size for _, size in expected]:
        return None
    axes = {role: axis for (role, _), (axis, _) in zip(expected, placed, strict=True)}
    return Layout(tuple(filled), axes.get("rows"), axes["columns"])


def _solve(sizes: list, rows: int | str, columns: int) -> tuple[list, int | str] | None:
    """(sizes with the -1 entry filled in, row count) from `product(sizes) = rows · columns`;
    None if that does not determine them as sizes of whole rows and columns."""
    symbols = sizes.count(ROWS)
    known = math.prod(size for size in sizes if isinstance(size, int))
    free = sizes.count(None)
    if free > 1 or symbols > 1:
        return None
    value: int | str | None
    if rows == ROWS and not symbols:  # known (· free) = N · C
        if not free:  # (the row count is now known)
            return (sizes, known // columns) if known % columns == 0 else None
        value = ROWS if known == columns else None
    else:  # N · known (· free) = N · C; or rows known, plain numbers: known (· free) = rows · C
        total = rows * columns if isinstance(rows, int) else columns
        if not free:
            return (sizes, rows) if known == total else None
        value = total // known if total % known == 0 else None
    if value is None:
        return None
    return [value if size is None else size for size in sizes], rows


def _describe(view: GraphView, chain: list[int]) -> str:
    """The layout nodes, in the order the data flows through them."""
    return " → ".join(f"{view.nodes[i].op_type} '{node_label(view.nodes[i])}'" for i in chain)


def _no_layer_reason(view: GraphView, chain: list[int], name: str) -> str:
    index = view.producer.get(name)
    if index is not None:
        node = view.nodes[index]
        domain = f"{node.domain}:" if node.domain not in ONNX_DOMAINS else ""
        source = f"{domain}{node.op_type} '{node_label(node)}'"
    elif name in view.input_names or name in view.initializers:
        source = f"{'graph input' if name in view.input_names else 'initializer'} '{name}'"
    else:
        source = f"'{name}' of an enclosing graph"
    moves = any(view.nodes[index].op_type != "Identity" for index in chain)
    layers = "a Gemm or MatMul" if moves else "a Conv, ConvTranspose, Gemm or MatMul"
    return f"it follows {_describe(view, chain[::-1])} after {source}, not {layers}"
