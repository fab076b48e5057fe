"""A MatMul with its constant weight on the left, `W[C, K] · x[B, K, L]` (a 1×1 Conv1d written as
a product, as in point-cloud and graph models): every fold into it.

Output channel i of `[B, C, L]` is row i of the weight, on axis 1; only a rank-3 right operand
puts the rows there (rank 2 makes them axis 0, rank 4 axis 2). The product has no bias input: its
bias, where it has one, is an Add of one constant per row right after it (`bias_add_after`).

- BN after it (`plan_rows`, from `matmul.plan_matmul`): `BN(W·x) = (diag(a)·W)·x + b[:, None]`,
  the rows scaled and the shift added by a new Add after the MatMul (none when it is zero);
- BN after its bias Add (`plan_rows_and_bias`, the rule `backward.into_product_and_bias`):
  `BN(W·x + c) = (diag(a)·W)·x + (a ⊙ c + b)`, the rows and the Add's constant updated (also
  with Transposes between the Add and the BN: `through_reshape.plan_through_layout`);
- BN before it (`plan_columns`, from `forward.into_next_layer`), on a rank-3 x whose channel
  axis 1 is the reduction axis: `W·(a·x + b) = (W·diag(a))·x + (W·b)[:, None]`, the columns
  scaled and `W·b` added to the bias Add's constant, else by a new Add after the MatMul.

Each new value is computed in float64 and rounded once. Before opset 7 no new Add can add a
constant per row (Add-6 broadcasts trailing dimensions only): such folds are left.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph_view import GraphView
from ..graphs import ONNX_DOMAINS, node_label
from ..numerics import ChannelAffine, NotRepresentable, per_channel, round_to, scale_along
from .base import (
    ConstantUpdate,
    FoldPlan,
    SplitPlan,
    constant_matrix,
    constant_weight,
    matmul_and_bias,
    rounded_updates,
    shared_output_reason,
)

# why a fold needs the other operand's rank (`base.constant_matrix`)
_ROWS_NEED = (
    "the MatMul's weight is its left operand and its right operand has rank {rank}; only a "
    "rank-3 one puts the BatchNormalization channel axis on the weight's rows"
)
_REDUCTION_NEED = (
    "it feeds the right operand of the MatMul after it with rank {rank}; only rank 3 puts its "
    "channels on the reduction axis of the weight on the left"
)


def weight_on_the_left(node: onnx.NodeProto, view: GraphView) -> bool:
    """Whether a MatMul's constant weight is its left operand (its right one not constant)."""
    return constant_weight(node, view, 1) is None and constant_weight(node, view, 0) is not None


def output_channels(node: onnx.NodeProto, view: GraphView) -> tuple[int, int] | None:
    """(the weight's rows, 3) where the right operand is provably of rank 3; else None."""
    weight = constant_weight(node, view, 0)
    if weight is not None and weight.ndim == 2 and view.rank(node.input[1]) == 3:
        return weight.shape[0], 3
    return None


def plan_rows(node: onnx.NodeProto, view: GraphView, affine: ChannelAffine) -> FoldPlan | str:
    """BN after the product: the rows scaled, the shift added by a new Add after it (none when
    it is zero); or why not."""
    scaled = scaled_rows(node, view, affine)
    if isinstance(scaled, str):
        return scaled
    how = f"scaled {affine.channels} rows of the weight on the left"
    if not np.any(affine.shift):
        return FoldPlan((scaled,), how)
    bias = row_bias(affine.shift, scaled.value.dtype, view.opset)
    if isinstance(bias, str):
        return bias
    return FoldPlan((scaled,), f"{how}; its shift added by a new Add after it", added_bias=bias)


def plan_rows_and_bias(
    view: GraphView, add_index: int, affine: ChannelAffine
) -> tuple[int, SplitPlan] | str | None:
    """(MatMul index, plan) when the Add at `add_index` is the bias of a product (`W·x + c`):
    the rows scaled and the Add's constant made `a ⊙ c + b`; the reason it cannot; None when
    the Add is no such bias."""
    operands = matmul_and_bias(view, view.nodes[add_index])
    if operands is None or not weight_on_the_left(view.nodes[operands[0]], view):
        return None
    matmul_index, bias_slot = operands
    matmul = view.nodes[matmul_index]
    if view.sole_consumer(matmul.output[0]) != add_index:
        return shared_output_reason(view, matmul.output[0], matmul)
    scaled = scaled_rows(matmul, view, affine)
    if isinstance(scaled, str):
        return f"it follows the bias Add of MatMul '{node_label(matmul)}': {scaled}"
    bias = row_bias_update(view, add_index, bias_slot, affine)
    if isinstance(bias, str):
        return bias
    how = f"scaled {affine.channels} rows of the weight on the left and its bias Add's constant"
    return matmul_index, _with_bias(matmul_index, scaled, add_index, bias, how)


def plan_columns(
    view: GraphView, matmul_index: int, affine: ChannelAffine, data_rank: int | None
) -> FoldPlan | SplitPlan | str:
    """BN before the product, on its right operand (of rank `data_rank`): the columns scaled,
    `W·b` added to the constant of the product's bias Add where it has one per row, else by a
    new Add after it (none when `W·b` is zero); or why not."""
    role = "left operand (weight) of the MatMul after it"
    ranks = (data_rank, 3)
    weight = constant_matrix(view.nodes[matmul_index], view, 0, role, ranks, _REDUCTION_NEED)
    if isinstance(weight, str):
        return weight
    if weight.shape[1] != affine.channels:
        return (
            f"the MatMul after it reduces over {weight.shape[1]} features but the "
            f"BatchNormalization has {affine.channels} channels"
        )
    updates, problem = rounded_updates(
        [(0, scale_along(weight, affine.scale, 1), weight.dtype, "weight")]
    )
    if problem:
        return problem
    assert updates is not None
    how = f"folded forward: scaled {affine.channels} columns of the weight on the left"
    carried = weight.astype(np.float64) @ affine.shift  # [C]
    bias_add = bias_add_after(view, matmul_index)
    if bias_add is not None:
        carry = ChannelAffine(np.ones_like(carried), carried)
        update = row_bias_update(view, *bias_add, carry)
        if not isinstance(update, str):  # (else a new Add after the MatMul, before that one)
            how = f"{how}; its bias Add carries the shift"
            return _with_bias(matmul_index, updates[0], bias_add[0], update, how)
    if not np.any(carried):
        return FoldPlan(updates, how)
    bias = row_bias(carried, weight.dtype, view.opset)
    if isinstance(bias, str):
        return bias
    return FoldPlan(updates, f"{how}; a new Add after it carries the shift", added_bias=bias)


def scaled_rows(
    node: onnx.NodeProto, view: GraphView, affine: ChannelAffine
) -> ConstantUpdate | str:
    """The weight with its rows scaled by the affine's scale, rounded once (its shift is the
    caller's); or why not."""
    ranks = (view.rank(node.input[1]), 3)
    weight = constant_matrix(node, view, 0, "MatMul left operand (weight)", ranks, _ROWS_NEED)
    if isinstance(weight, str):
        return weight
    rows = weight.shape[0]
    if rows != affine.channels:
        return f"the MatMul has {rows} output rows but the BatchNormalization has {affine.channels}"
    updates, problem = rounded_updates(
        [(0, scale_along(weight, affine.scale, 0), weight.dtype, "weight")]
    )
    if problem:
        return problem
    assert updates is not None
    return updates[0]


def row_bias(shift: np.ndarray, dtype: np.dtype, opset: int) -> np.ndarray | str:
    """The constant `[C, 1]` of a new Add that adds `shift[i]` to row i of the product, rounded
    once to `dtype`; or why there can be none: not representable, or an opset before 7."""
    if opset < 7:
        return (
            f"at opset {opset} an Add cannot add a constant per row of the MatMul's output "
            "(Add-6 broadcasts only trailing dimensions)"
        )
    try:
        return round_to(shift.reshape(-1, 1), dtype)
    except NotRepresentable as exc:
        return f"the folded bias is not representable: {exc}"


def bias_add_after(view: GraphView, matmul_index: int) -> tuple[int, int] | None:
    """(the Add's index, the slot of its constant) where an Add alone reads the MatMul's output
    and adds a float constant to it (the product's bias, if it is one per row); else None."""
    add_index = view.sole_consumer(view.nodes[matmul_index].output[0])
    if add_index is None or view.op_types[add_index] != "Add":
        return None
    if view.domains[add_index] not in ONNX_DOMAINS:
        return None
    operands = matmul_and_bias(view, view.nodes[add_index])
    return (add_index, operands[1]) if operands and operands[0] == matmul_index else None


def row_bias_update(
    view: GraphView, add_index: int, slot: int, affine: ChannelAffine
) -> ConstantUpdate | str:
    """The bias Add's constant `c` (one per row of a `[B, C, L]` output) mapped by `affine`:
    `a ⊙ c + b`, in float64, rounded once, in c's shape (a scalar one becomes `[C, 1]`); or why
    not."""
    add = view.nodes[add_index]
    bias = view.constant(add.input[slot])
    assert bias is not None  # (a constant, found by `base.matmul_and_bias`)
    rows = affine.channels
    values = per_channel(bias, rows, 3)
    if values is None:
        return f"the Add '{node_label(add)}' does not add one bias per row"
    shape = bias.shape if bias.size == rows else (rows, 1)
    new_bias = (affine.scale * values + affine.shift).reshape(shape)
    updates, problem = rounded_updates([(slot, new_bias, bias.dtype, "bias")])
    if problem:
        return problem
    assert updates is not None
    return updates[0]


def _with_bias(
    matmul_index: int, weight: ConstantUpdate, add_index: int, bias: ConstantUpdate, how: str
) -> SplitPlan:
    """The fold's two parts: the product's new weight, its bias Add's new constant."""
    parts = ((matmul_index, FoldPlan((weight,), how)), (add_index, FoldPlan((bias,), how)))
    return SplitPlan(parts, how)
