"""Element types of tensors that are not constant, for `CastLike(a, b)`, which reads only the
element type of `b`.

PyTorch's dynamo exporter (without its optimizer) writes a Conv without bias as
`Conv(x, W, Expand(CastLike(0.0, x), Expand(Shape(W, end=1), [1])))`: a zero bias typed like the
Conv's input `x`, which is not constant. Such a CastLike is evaluated when `x`'s element type is
declared (graph inputs, outputs, value_info, initializers, here or in an enclosing graph) or found
by onnx shape inference, which runs at most once per model and only when such a CastLike is met.
"""

from __future__ import annotations

import numpy as np
import onnx

from .constant_eval import EXACT_CAST_TARGETS
from .graphs import all_graphs


def declared_element_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element types (TensorProto data types) that `graph` declares for its tensors."""
    types = {t.name: t.data_type for t in graph.initializer if t.data_type}
    for info in (*graph.value_info, *graph.input, *graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    return types


def inferred_element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of every tensor onnx shape inference types, in all graphs (empty if it
    cannot run, e.g. for a model over 2 GB)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # a hint only: without it such a CastLike is not evaluated
        return {}
    types: dict[str, int] = {}
    for _, graph in all_graphs(inferred.graph):
        types.update(declared_element_types(graph))
    return types


def type_witness(element_type: int | None) -> np.ndarray | None:
    """An empty array of the numpy dtype of an ONNX element type (what CastLike's evaluation
    reads of its second input), or None if the type is unknown or has no numpy dtype."""
    if not element_type:
        return None
    try:
        return np.empty(0, dtype=onnx.helper.tensor_dtype_to_np_dtype(element_type))
    except (KeyError, TypeError, ValueError):
        return None


def castlike_target_problem(element_type: int | None, like: str) -> str | None:
    """Why a CastLike to the element type of `like` is not evaluated, or None if that is not
    the reason."""
    if not element_type:
        return f"the element type of its second input '{like}' is unknown"
    name = onnx.helper.tensor_dtype_to_string(element_type).removeprefix("TensorProto.").lower()
    witness = type_witness(element_type)
    if witness is None or str(witness.dtype) not in EXACT_CAST_TARGETS:
        exact = ", ".join(sorted(EXACT_CAST_TARGETS))
        return f"it casts to {name} (only casts to {exact} are evaluated)"
    return None
