"""The backward rules: a BatchNormalization folded into what computes its input. Each rule has
one shape,

    rule(view, bn_index, bn, opset) -> (layer index, plan) | reason | None

None: the rule does not apply to this BatchNormalization (the next one is asked); a reason: it
applies, and the fold is not exact (that is the BN's record); a plan (`FoldPlan`, or `SplitPlan`
for several nodes): the pass applies it and the node writing the BN's input takes over its
output. `BACKWARD_RULES` is the order they are asked in: a new rule is a function (in its own
module) and one line there.
"""

from __future__ import annotations

from collections.abc import Callable

from ..batchnorm import BatchNorm
from ..graph_view import GraphView
from ..graphs import ONNX_DOMAINS
from . import PLANNERS
from .base import FoldPlan, SplitPlan, shared_output_reason
from .concat import plan_concat_split
from .through_reshape import LAYOUT_OPS, plan_through_layout

Decision = tuple[int, FoldPlan | SplitPlan]
BackwardRule = Callable[[GraphView, int, BatchNorm, int], Decision | str | None]


def through_layout(view: GraphView, bn_index: int, bn: BatchNorm, opset: int):
    """Reshape/Transpose/Identity between a layer and the BN (`through_reshape.py`,
    `linear_nd.py`)."""
    if _producer_op(view, bn) not in LAYOUT_OPS:
        return None
    return plan_through_layout(view, bn.input, bn_index, bn.affine, opset)


def concat_split(view: GraphView, bn_index: int, bn: BatchNorm, opset: int):
    """A channel Concat of layers before the BN, split per input (`concat.py`)."""
    if _producer_op(view, bn) != "Concat":
        return None
    concat_index = view.producer[bn.input]
    split = plan_concat_split(view, concat_index, bn.affine, opset)
    if isinstance(split, str):  # (said first: the layers before it are the usual obstacle)
        return split
    if view.sole_consumer(bn.input) != bn_index:
        return shared_output_reason(view, bn.input, view.nodes[concat_index])
    return concat_index, split


def into_layer(view: GraphView, bn_index: int, bn: BatchNorm, opset: int):
    """The layer right before the BN (one rule per layer kind: `PLANNERS`)."""
    op = _producer_op(view, bn)
    if op not in PLANNERS:
        return None
    layer_index = view.producer[bn.input]
    layer = view.nodes[layer_index]
    if view.sole_consumer(bn.input) != bn_index:
        return shared_output_reason(view, bn.input, layer)
    plan = PLANNERS[op](layer, view, bn.affine, opset)
    return plan if isinstance(plan, str) else (layer_index, plan)


BACKWARD_RULES: tuple[BackwardRule, ...] = (through_layout, concat_split, into_layer)


def _producer_op(view: GraphView, bn: BatchNorm) -> str | None:
    """The op type of the default-domain node computing the BN's input (None otherwise)."""
    index = view.producer.get(bn.input)
    if index is None or view.domains[index] not in ONNX_DOMAINS:
        return None
    return view.op_types[index]
