"""Evaluate small constant subgraphs (`ConstantOfShape`, `Cast`, `Unsqueeze`, `Reshape`, ...).

Exporters write weights and BatchNormalization parameters through such nodes; a value is constant
when every input of its producing node is constant and the op is a pure tensor function from the
list below. Results are bounded in size (`MAX_ELEMENTS`) so that a hostile file cannot make bnfold
allocate huge arrays. Ops are evaluated with onnx's reference implementation at the model's opset,
except the three most common, which are done directly.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import onnx

from .tensor_data import tensor_to_array

MAX_ELEMENTS = 1 << 24  # 16 Mi elements per evaluated tensor
MAX_TOTAL_ELEMENTS = 1 << 26  # 64 Mi elements evaluated per model, all tensors together
MAX_DEPTH = 150  # longest chain of nodes folded into one constant (all nesting levels together)
# Cast/CastLike are evaluated only to these targets, where numpy's conversion is ONNX's (float8,
# e8m0 and 4-bit types saturate or round differently, integer targets are runtime-defined).
EXACT_CAST_TARGETS = frozenset({"float16", "float32", "float64", "bfloat16"})


class EvaluationBudget:
    """Limits shared by every graph of one model: total elements evaluated and chain depth."""

    def __init__(self, total_elements: int = MAX_TOTAL_ELEMENTS, depth: int = MAX_DEPTH) -> None:
        self.remaining = total_elements
        self.max_depth = depth
        self.depth = 0


# Pure ops whose output size is bounded by their inputs' (or checked in `_output_elements`).
EVALUATED_OPS = frozenset(
    {
        "Cast",
        "CastLike",
        "ConstantOfShape",
        "Concat",
        "Div",
        "Expand",
        "Flatten",
        "Gather",
        "Identity",
        "Mul",
        "Neg",
        "Add",
        "Reciprocal",
        "Reshape",
        "Shape",
        "Size",
        "Slice",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Tile",
        "Transpose",
        "Unsqueeze",
    }
)
BROADCASTING_OPS = frozenset({"Add", "Sub", "Mul", "Div"})


def evaluate(
    node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int, budget: EvaluationBudget
):
    """The node's first output computed from constant `inputs`, or None if it cannot or may not be.

    `inputs` holds None for absent optional inputs (the helpers below take them as present
    where the operator needs them: an absent one fails there, and any failure means "not
    constant"). Counts the result against `budget`.
    """
    if node.op_type not in EVALUATED_OPS or node.domain not in ("", "ai.onnx"):
        return None
    try:
        elements = _output_elements(node, inputs)
        if elements is None or elements > min(MAX_ELEMENTS, budget.remaining):
            return None
        if node.op_type in ("Cast", "CastLike") and _cast_target(node, inputs) is None:
            return None
        result = _evaluate_directly(node, inputs)
        if result is None:
            result = _evaluate_with_reference(node, inputs, opset)
    except Exception:  # malformed nodes are simply not constant-folded
        return None
    budget.remaining -= result.size
    return result


def _cast_target(node: onnx.NodeProto, inputs: list[Any]) -> np.dtype | None:
    """The target dtype of a Cast/CastLike when numpy converts exactly as ONNX does, else None."""
    if node.op_type == "Cast":
        target = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(_attribute(node, "to")))
    else:
        target = inputs[1].dtype
    source = inputs[0].dtype
    exact_source = (
        source.kind in "fiub"
        and source.itemsize >= 1
        and str(source)
        in (
            *EXACT_CAST_TARGETS,
            "int8",
            "int16",
            "int32",
            "int64",
            "uint8",
            "uint16",
            "uint32",
            "uint64",
            "bool",
        )
    )
    return target if str(target) in EXACT_CAST_TARGETS and exact_source else None


def _output_elements(node: onnx.NodeProto, inputs: list[Any]) -> int | None:
    present = [a for a in inputs if a is not None]
    largest = max((a.size for a in present), default=1)
    op = node.op_type
    if op == "ConstantOfShape":
        return math.prod(int(d) for d in inputs[0].reshape(-1))
    if op == "Expand":
        return math.prod(np.broadcast_shapes(inputs[0].shape, tuple(int(d) for d in inputs[1])))
    if op == "Tile":
        return inputs[0].size * math.prod(int(r) for r in inputs[1].reshape(-1))
    if op in BROADCASTING_OPS:
        return math.prod(np.broadcast_shapes(*(a.shape for a in present)))
    if op == "Concat":
        return sum(a.size for a in present)
    if op == "Gather":
        data, indices = inputs[0], inputs[1]
        axis = int(_attribute(node, "axis") or 0)
        along = data.shape[axis]
        return 0 if along == 0 else indices.size * (data.size // along)
    return largest


def _attribute(node: onnx.NodeProto, name: str):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return None


def _evaluate_directly(node: onnx.NodeProto, inputs: list[Any]):
    op = node.op_type
    if op == "Identity":
        return inputs[0]
    if op == "ConstantOfShape":
        value = _attribute(node, "value")
        fill = tensor_to_array(value).reshape(-1) if value is not None else None
        if fill is None or fill.size == 0:
            fill = np.zeros(1, dtype=np.float32)
        shape = tuple(int(d) for d in inputs[0].reshape(-1))
        return np.full(shape, fill[0], dtype=fill.dtype)
    if op in ("Cast", "CastLike"):
        return inputs[0].astype(_cast_target(node, inputs))
    return None


def _evaluate_with_reference(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int):
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.input[:]
    copy.input.extend(names)
    del copy.output[:]
    copy.output.extend(["out"] + [f"extra{i}" for i in range(1, len(node.output))])
    graph_inputs = [
        onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape
        )
        for name, array in zip(names, inputs, strict=True)
        if array is not None
    ]
    graph = onnx.helper.make_graph(
        [copy], "constant", graph_inputs, [onnx.helper.make_empty_tensor_value_info("out")]
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    feeds = {name: array for name, array in zip(names, inputs, strict=True) if array is not None}
    outputs = cast(list, ReferenceEvaluator(model).run(None, feeds))
    return np.asarray(outputs[0])
