"""What every producer rule shares: the plan it returns and reading its weight and bias.

A layer's planner answers *may I, and with which new constants?* by returning a `FoldPlan`, or a
reason string when it may not; the rules (`rule.py`) wrap plans in a `Match`, whose `apply` is
the one place a fold edits the graph.
"""

from __future__ import annotations

__all__ = [
    "ConstantUpdate",
    "FoldPlan",
    "Layer",
    "SplitPlan",
    "attributes",
    "constant_input",
    "constant_matrix",
    "constant_weight",
    "matmul_and_bias",
    "rounded_updates",
    "shared_output_reason",
]

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..graph_view import GraphView
from ..graphs import ONNX_DOMAINS, attributes, node_label, reads_as_arithmetic
from ..numerics import NotRepresentable, is_float, round_to


@dataclass(frozen=True)
class Layer:
    """A kind of linear layer a BatchNormalization folds into: its planner (may I fold, and with
    which new constants), and how to read its output channels and rank from its constant weight
    (None where that weight does not say: what the rules that split a Concat or read arithmetic
    next to a layer ask, `affine.producer_channels`)."""

    plan: Callable[..., FoldPlan | str]
    output_channels: Callable[[onnx.NodeProto, GraphView], tuple[int, int] | None]


@dataclass(frozen=True)
class ConstantUpdate:
    """Input `slot` of the producer becomes the constant `value` (already in its final dtype)."""

    slot: int
    value: np.ndarray
    role: str  # "weight", "bias", ...


@dataclass(frozen=True)
class FoldPlan:
    """How to absorb a BatchNormalization into its producer."""

    updates: tuple[ConstantUpdate, ...]
    how: str
    new_op_type: str | None = None  # e.g. MatMul becomes Gemm
    new_attributes: dict[str, object] = field(default_factory=dict)
    # a layer without a bias input: this constant (in its final dtype) is added to its output by
    # a new Add right after it
    added_bias: np.ndarray | None = None


@dataclass(frozen=True)
class SplitPlan:
    """A fold that changes several nodes: one `FoldPlan` each (the layers before a Concat; a
    MatMul and its bias Add)."""

    parts: tuple[tuple[int, FoldPlan], ...]  # (index of the node, its plan)
    how: str


def constant_input(node: onnx.NodeProto, slot: int, role: str, view: GraphView):
    """(value or None if the input is absent, problem or None)."""
    if len(node.input) <= slot or not node.input[slot]:
        return None, None
    value = view.constant(node.input[slot])
    if value is None:
        return None, f"the {role} is not constant: {view.why_not_constant(node.input[slot])}"
    if not is_float(value.dtype):
        return None, f"the {role} has dtype {value.dtype}, not a float type"
    return value, None


def constant_weight(node: onnx.NodeProto, view: GraphView, slot: int = 1) -> np.ndarray | None:
    """Input `slot` of a layer (its weight) where it is a constant; else None."""
    if len(node.input) <= slot or not node.input[slot]:
        return None
    return view.constant(node.input[slot])


def constant_matrix(
    node: onnx.NodeProto,
    view: GraphView,
    slot: int,
    role: str,
    ranks: tuple[int | None, int],
    wrong_rank: str,
) -> np.ndarray | str:
    """Input `slot` of a MatMul (its `role`) where it is a constant 2-D float matrix and the
    other operand's rank, `ranks[0]` (None: unknown), is the one the fold needs, `ranks[1]`;
    else why not (`wrong_rank` with `{rank}` in it says the rank)."""
    weight, problem = constant_input(node, slot, role, view)
    if problem:
        return problem
    if weight is None or weight.ndim != 2:
        return f"the {role} is not a 2-D constant"
    rank, needed = ranks
    if rank != needed:
        return wrong_rank.format(rank="unknown" if rank is None else rank)
    return weight


def matmul_and_bias(view: GraphView, add: onnx.NodeProto) -> tuple[int, int] | None:
    """(the MatMul index, the slot of the bias constant) of an Add of a default-domain MatMul's
    output and a float constant, broadcasting numpy-style (not with the pre-opset-7
    `broadcast`/`axis` attributes); None otherwise."""
    if not reads_as_arithmetic(add):
        return None
    for data_slot, bias_slot in ((0, 1), (1, 0)):
        index = view.producer.get(add.input[data_slot])
        if index is None or view.op_types[index] != "MatMul":
            continue
        if view.domains[index] not in ONNX_DOMAINS:
            continue
        bias = view.constant(add.input[bias_slot])
        if bias is not None and bias.dtype.kind == "f":
            return index, bias_slot
    return None


def rounded_updates(pairs: list[tuple[int, np.ndarray, np.dtype, str]]):
    """Round each float64 result once to its dtype; (updates, problem)."""
    updates = []
    for slot, value64, dtype, role in pairs:
        try:
            updates.append(ConstantUpdate(slot, round_to(value64, dtype), role))
        except NotRepresentable as exc:
            return None, f"the folded {role} is not representable: {exc}"
    return tuple(updates), None


def shared_output_reason(view: GraphView, name: str, producer: onnx.NodeProto) -> str:
    """Why `producer` cannot absorb a fold: its output `name` is needed unchanged elsewhere."""
    what = f"the output '{name}' of {producer.op_type} '{node_label(producer)}'"
    if name in view.output_names:
        return f"{what} is also a graph output"
    readers = view.consumers.of(name)
    others = len(set(readers)) - 1  # (nodes, not reads: an If may read it in two branches)
    if others == 0:
        return f"{what} is read {len(readers)} times by one node"
    return f"{what} is also read by {others} other node{'s' if others != 1 else ''}"
