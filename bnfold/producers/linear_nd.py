"""A Linear layer on a rank ≥ 3 input, then Transposes, then a BatchNormalization over its
features (point-cloud and audio models: `MatMul(x[B, N, K], W[K, D]) → Add(bias[D]) →
Transpose(0, 2, 1) → BatchNormalization`), folded into the weight's columns and the bias.

The MatMul writes feature d on the last axis of its output and the Add adds `bias[d]` there. When
the Transposes bring that axis to axis 1, the BatchNormalization maps feature d by
`a[d]·y + b[d]`, so

    BN(T(x·W + bias)) = T(x·(W·diag(a)) + (a ⊙ bias + b))

exactly, element for element: the MatMul's columns are scaled and the Add's constant becomes
`a ⊙ bias + b`, each computed in float64 and rounded once; the Transposes stay and write the BN's
output. A MatMul on such an input cannot become a Gemm to carry the shift: without a bias Add,
a new Add of `b` is put right after the MatMul (where a Linear with a bias has it; none when `b`
is zero), `BN(T(x·W)) = T(x·(W·diag(a)) + b)`.
(A MatMul with its weight on the left and its bias Add: `product.py`.)
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph_view import GraphView
from ..graphs import axis_after_transposes, node_label
from ..numerics import ChannelAffine, NotRepresentable, per_channel, round_to
from .base import (
    FoldPlan,
    SplitPlan,
    constant_input,
    matmul_and_bias,
    rounded_updates,
    shared_output_reason,
)


def plan_linear_nd(
    view: GraphView, add_index: int, chain: list[int], affine: ChannelAffine, path: str
) -> tuple[int, SplitPlan] | str | None:
    """(MatMul index, plan) when the Add at `add_index` adds a per-feature bias to a MatMul on a
    rank ≥ 3 input and the Transposes of `chain` (layer first) bring its features to axis 1;
    the reason it cannot; None when the Add is no such bias."""
    add = view.nodes[add_index]
    operands = matmul_and_bias(view, add)
    if operands is None:
        return None
    matmul_index, bias_slot = operands
    matmul = view.nodes[matmul_index]
    label = f"MatMul '{node_label(matmul)}'"
    rank = view.rank(matmul.input[0])
    if rank is None or rank < 3:
        return None  # (2-D: the Gemm rules; unknown: not provable)
    if view.sole_consumer(matmul.output[0]) != add_index:
        return shared_output_reason(view, matmul.output[0], matmul)
    weight = _columns_reaching_axis_1(
        view, matmul, chain, affine, path, rank, " (through its bias Add)"
    )
    if isinstance(weight, str):
        return weight
    features = weight.shape[1]
    bias = view.constant(add.input[bias_slot])
    assert bias is not None  # (found constant by `matmul_and_bias`)
    bias_values = per_channel(bias, features, rank, axis=rank - 1)
    if bias_values is None:
        return f"the Add after {label} does not add one bias per output feature"
    new_weight = weight.astype(np.float64) * affine.scale[None, :]
    new_bias = affine.scale * bias_values + affine.shift
    # (a bias of one value per feature keeps its shape; a scalar one becomes [D])
    bias_shape = bias.shape if bias.size == features else (features,)
    updates, problem = rounded_updates(
        [
            (1, new_weight, weight.dtype, "weight"),
            (bias_slot, new_bias.reshape(bias_shape), bias.dtype, "bias"),
        ]
    )
    if problem:
        return problem
    assert updates is not None
    how = f"scaled {features} columns of {label} and its bias; through {path}, unchanged"
    parts = (
        (matmul_index, FoldPlan(updates[:1], how)),
        (add_index, FoldPlan(updates[1:], how)),
    )
    return matmul_index, SplitPlan(parts, how)


def plan_linear_nd_unbiased(
    view: GraphView, matmul_index: int, chain: list[int], affine: ChannelAffine, path: str
) -> FoldPlan | str:
    """The plan for a MatMul on a rank ≥ 3 input without a bias Add, whose features the
    Transposes of `chain` (layer first; each read by the next alone) bring to axis 1 of the
    BatchNormalization: its columns scaled, and the shift added by a new Add after it (none
    when the shift is zero), `BN(T(x·W)) = T(x·(W·diag(a)) + b)`; or the reason it cannot."""
    matmul = view.nodes[matmul_index]
    rank = view.rank(matmul.input[0])
    if rank is None or rank < 3:
        shown = "unknown" if rank is None else str(rank)
        return (
            f"it follows {path} after MatMul '{node_label(matmul)}', whose left operand has "
            f"rank {shown}; only a 2-D one can become a Gemm with the folded bias, and only one "
            "of rank 3 or more is followed with its features"
        )
    weight = _columns_reaching_axis_1(view, matmul, chain, affine, path, rank, "")
    if isinstance(weight, str):
        return weight
    new_weight = weight.astype(np.float64) * affine.scale[None, :]
    updates, problem = rounded_updates([(1, new_weight, weight.dtype, "weight")])
    if problem:
        return problem
    assert updates is not None
    label = f"MatMul '{node_label(matmul)}'"
    if not np.any(affine.shift):
        return FoldPlan(
            updates, f"scaled {affine.channels} columns of {label}; through {path}, unchanged"
        )
    try:
        bias = round_to(affine.shift, weight.dtype)
    except NotRepresentable as exc:
        return f"the folded bias is not representable: {exc}"
    how = (
        f"scaled {affine.channels} columns of {label}; its shift added by a new Add after it "
        f"(it had no bias); through {path}, unchanged"
    )
    return FoldPlan(updates, how, added_bias=bias)


def _columns_reaching_axis_1(
    view: GraphView,
    matmul: onnx.NodeProto,
    chain: list[int],
    affine: ChannelAffine,
    path: str,
    rank: int,
    via: str,
) -> np.ndarray | str:
    """The MatMul's constant weight matrix when its columns are the BN's channels and the
    chain's Transposes bring them to axis 1; else the reason."""
    label = f"MatMul '{node_label(matmul)}'"
    weight, problem = constant_input(matmul, 1, "weight", view)
    if problem or weight is None or weight.ndim != 2:
        return f"it follows {label}{via}, whose weight is not a constant matrix"
    features = weight.shape[1]
    if features != affine.channels:
        return f"{label} has {features} output features, the BatchNormalization {affine.channels}"
    axis = _feature_axis(view, chain, rank)
    if isinstance(axis, str):
        return axis
    if axis != 1:
        return (
            f"the {features} output features of {label} reach it through {path} on axis {axis}, "
            "not on its channel axis 1"
        )
    return weight


def _feature_axis(view: GraphView, chain: list[int], rank: int) -> int | str:
    """Where the features (the last axis) end after the chain's Transposes (Identity keeps
    them); why not followed for anything else."""
    for index in chain:
        node = view.nodes[index]
        if node.op_type not in ("Transpose", "Identity"):
            return (
                f"{node.op_type} '{node_label(node)}' reshapes the output of a MatMul on a "
                f"rank-{rank} input; only Transposes are followed there"
            )
    return axis_after_transposes((view.nodes[i] for i in chain), rank - 1, rank)
