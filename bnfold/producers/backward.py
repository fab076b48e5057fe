"""The backward rules: a BatchNormalization folded into what computes its input. Each has the
rule protocol's shape (`rule.py`),

    rule(view, bn_index, bn, opset) -> Match | Skip | None

with `bn` the node read as a `BatchNorm`. A Match folds the BN's scale and shift into the layer
(or the layers before a Concat) and the node writing the BN's input takes over its output.
`BACKWARD_RULES` is the order they are asked in; the last always answers (why no layer before it
can take the BN).
"""

from __future__ import annotations

from ..batchnorm import BatchNorm
from ..graph_view import GraphView
from ..graphs import ONNX_DOMAINS, node_label
from . import PLANNERS
from .base import shared_output_reason
from .concat import LINEAR_LAYERS, concat_before, plan_concat_split
from .product import plan_rows_and_bias
from .rule import (
    Match,
    Rule,
    Skip,
    about_producers,
    bypassing,
    infers_ranks_near,
    never_folds,
)
from .through_reshape import LAYOUT_OPS, plan_through_layout


@about_producers(*LAYOUT_OPS)
@infers_ranks_near("MatMul", through=LAYOUT_OPS)  # (whether the MatMul's input is 2-D)
def through_layout(
    view: GraphView, bn_index: int, bn: BatchNorm, opset: int
) -> Match | Skip | None:
    """Reshape/Transpose/Identity between a layer and the BN (`through_reshape.py`,
    `linear_nd.py`)."""
    if _producer_op(view, bn) not in LAYOUT_OPS:
        return None
    decision = plan_through_layout(view, bn.input, bn_index, bn.affine, opset)
    if decision is None:
        return None
    if isinstance(decision, str):
        return Skip(decision)
    layer_index, plan = decision
    return bypassing(bn_index, view.producer[bn.input], layer_index, plan)


@about_producers("Concat", "Transpose", "Identity")
def concat_split(view: GraphView, bn_index: int, bn: BatchNorm, opset: int) -> Match | Skip | None:
    """A Concat of layers before the BN, directly or through Transposes/Identity, split per
    input (`concat.py`); the node before the BN takes over its output."""
    found = concat_before(view, bn.input, bn_index)
    if found is None:
        return None
    concat_index, after = found
    split = plan_concat_split(view, concat_index, bn.affine, opset, after)
    if isinstance(split, str):  # (said first: the layers before it are the usual obstacle)
        return Skip(split)
    concat = view.nodes[concat_index]
    if view.sole_consumer(concat.output[0]) != (after[0] if after else bn_index):
        return Skip(shared_output_reason(view, concat.output[0], concat))
    return bypassing(bn_index, view.producer[bn.input], concat_index, split)


@about_producers(*PLANNERS)
@infers_ranks_near("MatMul")  # (`matmul.py`: whether its input is 2-D)
def into_layer(view: GraphView, bn_index: int, bn: BatchNorm, opset: int) -> Match | Skip | None:
    """The layer right before the BN (one planner per layer kind: `PLANNERS`)."""
    op = _producer_op(view, bn)
    if op not in PLANNERS:
        return None
    layer_index = view.producer[bn.input]
    layer = view.nodes[layer_index]
    if view.sole_consumer(bn.input) != bn_index:
        return Skip(shared_output_reason(view, bn.input, layer))
    plan = PLANNERS[op](layer, view, bn.affine, opset)
    if isinstance(plan, str):
        return Skip(plan)
    return bypassing(bn_index, layer_index, layer_index, plan)


@about_producers("Add", reaching=("MatMul",))
@infers_ranks_near("MatMul", through=("Add",))  # (whether the product's right operand is 3-D)
def into_product_and_bias(
    view: GraphView, bn_index: int, bn: BatchNorm, opset: int
) -> Match | Skip | None:
    """A MatMul with its weight on the left and the Add of its bias before the BN (`W·x + c`, a
    Conv1d written as a product: `product.plan_rows_and_bias`); the Add takes over the
    BN's output."""
    if _producer_op(view, bn) != "Add":
        return None
    add_index = view.producer[bn.input]
    decision = plan_rows_and_bias(view, add_index, bn.affine)
    if decision is None:
        return None
    if view.sole_consumer(bn.input) != bn_index:
        return Skip(shared_output_reason(view, bn.input, view.nodes[add_index]))
    if isinstance(decision, str):
        return Skip(decision)
    matmul_index, plan = decision
    return bypassing(bn_index, add_index, matmul_index, plan)


@never_folds
def no_layer_before(view: GraphView, bn_index: int, bn: BatchNorm, opset: int) -> Skip:
    """Why nothing before the BN can take it (asked last: every other rule passed)."""
    producer_index = view.producer.get(bn.input)
    if producer_index is None:
        if bn.input in view.input_names:
            where = "a graph input"
        elif bn.input in view.initializers:
            where = "an initializer"
        else:
            where = "a value of the enclosing graph"
        return Skip(f"its input '{bn.input}' is {where}: no layer before it to fold into")
    producer = view.nodes[producer_index]
    return Skip(f"it follows {producer.op_type} '{node_label(producer)}', not {LINEAR_LAYERS}")


BACKWARD_RULES: tuple[Rule, ...] = (
    concat_split,
    through_layout,
    into_layer,
    into_product_and_bias,
    no_layer_before,
)


def _producer_op(view: GraphView, bn: BatchNorm) -> str | None:
    """The op type of the default-domain node computing the BN's input (None otherwise)."""
    index = view.producer.get(bn.input)
    if index is None or view.domains[index] not in ONNX_DOMAINS:
        return None
    return view.op_types[index]
