"""The model's tensors: every one (initializers, attributes, subgraphs, functions), their
data size, and whether they fit in one protobuf."""

from __future__ import annotations

import math

import onnx

from ..graphs import (
    CONTROL_FLOW_OPS,
    ONNX_DOMAINS,
)

PROTOBUF_LIMIT = 2**31 - 1
# Leave room for the graph itself when deciding whether tensors fit in one protobuf.
INLINE_TENSOR_BUDGET = 1_800_000_000
EXTERNAL_THRESHOLD = 1024  # tensors at least this big go to the data file


def all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor of the model: initializers and tensor attributes, in the main graph, its
    subgraphs and the local functions (what `onnx.external_data_helper` walks, in one pass).

    The attributes of a default-domain node are looked at only if its operator's schema has
    tensor or graph attributes (`TENSOR_ATTRIBUTE_OPS`): any other default-domain node that
    carried one would be refused by onnxruntime and `onnx.checker` alike (unrecognized
    attribute), and reading every node's attributes would cost more than the rest of loading."""
    found: list[onnx.TensorProto] = []
    _collect_tensors(model.graph, found, with_initializers=True)
    for function in model.functions:
        _collect_tensors(function, found, with_initializers=False)
    return found


def _collect_tensors(graph, found: list, with_initializers: bool) -> None:
    if with_initializers:
        found.extend(graph.initializer)
    for node in graph.node:
        if node.op_type not in TENSOR_ATTRIBUTE_OPS and node.domain in ONNX_DOMAINS:
            continue
        for attr in node.attribute:
            kind = attr.type
            if kind == _TENSOR:
                found.append(attr.t)
            elif kind == _TENSORS:
                found.extend(attr.tensors)
            elif kind == _GRAPH:
                _collect_tensors(attr.g, found, with_initializers=True)
            elif kind == _GRAPHS:
                for sub in attr.graphs:
                    _collect_tensors(sub, found, with_initializers=True)


# The default-domain operators whose schema (in some version) has a tensor or graph attribute;
# tests/test_model_io.py checks this against onnx.defs
TENSOR_ATTRIBUTE_OPS = CONTROL_FLOW_OPS | {"Constant", "ConstantOfShape"}
_TENSOR, _TENSORS = onnx.AttributeProto.TENSOR, onnx.AttributeProto.TENSORS
_GRAPH, _GRAPHS = onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS


def tensor_data_size(model: onnx.ModelProto) -> int:
    """Bytes of tensor data in the model, from dims and dtypes (cheap: `ByteSize()` walks every
    byte of a big model, and reading `raw_data` copies it)."""
    total = 0
    for tensor in all_tensors(model):
        itemsize = ITEMSIZE.get(tensor.data_type, 8)
        total += itemsize * math.prod(tensor.dims)
    return total


def fits_in_one_protobuf(model: onnx.ModelProto) -> bool:
    """Whether the model can be serialized as one protobuf (under 2 GB with room for the graph)."""
    return tensor_data_size(model) <= INLINE_TENSOR_BUDGET


STRING = onnx.TensorProto.STRING
ITEMSIZE: dict[int, int] = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.BOOL: 1,
}
