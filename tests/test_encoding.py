"""The piecewise encoding: byte for byte `SerializeToString()`, in pieces of bounded size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import bnfold
from bnfold.encoding import Encoding, EncodingError
from tests.builders import MODELS, tensor

RESNET = MODELS / "resnet_tiny.onnx"


def encoded(model) -> bytes:
    pieces = list(Encoding(model).pieces())
    return b"".join(pieces)


def everything_model() -> onnx.ModelProto:
    """Every field of ModelProto and GraphProto that a model may set, with a subgraph and a
    local function: their order in the encoding is what is being checked."""
    model = onnx.parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17, "local" : 1], producer_name: "p",
            producer_version: "1", domain: "d", model_version: 3, doc_string: "doc">
        g (float[2] x, bool c) => (float[2] y) {
            t = local.Twice(x)
            y = If(c) <then_branch = g1 () => (float[2] a) { a = Abs(t) },
                       else_branch = g2 () => (float[2] b) { b = Neg(t) }>
        }
        <domain: "local", opset_import: ["" : 17]>
        Twice (u) => (v) { v = Add(u, u) }"""
    )
    graph = model.graph
    graph.doc_string = "graph doc"
    graph.initializer.extend([tensor("w", np.arange(6, dtype=np.float32)), tensor("k", [1, 2])])
    graph.value_info.append(helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2]))
    sparse = helper.make_sparse_tensor(
        tensor("s_values", np.array([1.0], np.float32)), tensor("s_indices", [0]), [3]
    )
    graph.sparse_initializer.append(sparse)
    helper.set_metadata_props(model, {"author": "bnfold"})
    entry = graph.metadata_props.add()
    entry.key, entry.value = "graph", "meta"
    annotation = graph.quantization_annotation.add()
    annotation.tensor_name = "t"
    model.training_info.add().algorithm.node.add(op_type="Identity", input=["x"], output=["z"])
    return model


@pytest.mark.parametrize("chunk", [1, 64, 1 << 22])
def test_pieces_are_serialize_to_string_byte_for_byte(chunk):
    for model in (everything_model(), onnx.load(RESNET), bnfold.fold(RESNET).model):
        reference = model.SerializeToString()
        plan = Encoding(model, chunk_bytes=chunk)
        assert b"".join(plan.pieces()) == reference
        assert plan.size == len(reference)


def test_pieces_are_bounded_and_big_items_come_alone():
    model = onnx.load(RESNET)
    pieces = list(Encoding(model, chunk_bytes=4096).pieces())
    assert b"".join(pieces) == model.SerializeToString()
    alone = {t.SerializeToString() for t in model.graph.initializer if t.ByteSize() > 4096}
    assert alone and alone <= set(pieces)  # not joined with others (no second copy)
    assert all(len(piece) <= 2 * 4096 for piece in pieces if piece not in alone)


def test_empty_graph_and_no_graph():
    model = helper.make_model(helper.make_graph([], "empty", [], []))
    assert encoded(model) == model.SerializeToString()
    bare = onnx.ModelProto(ir_version=10)
    assert encoded(bare) == bare.SerializeToString()


def test_unknown_fields_are_kept_in_one_piece():
    model = onnx.load(RESNET)
    model.graph.MergeFromString(bytes([0xF8, 0x7F, 0x05]))  # field 2047 (varint 5), unknown
    plan = Encoding(model)
    assert plan.whole
    assert encoded(model) == model.SerializeToString()
    assert bytes([0xF8, 0x7F, 0x05]) in encoded(model)


def test_a_length_that_does_not_add_up_is_an_error_not_a_file(monkeypatch):
    model = onnx.load(RESNET)
    plan = Encoding(model)
    plan.graph_size += 1
    with pytest.raises(EncodingError, match="not the"):
        b"".join(plan.pieces())
