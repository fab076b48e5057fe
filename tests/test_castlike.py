"""CastLike to the type of a tensor that is not constant, as PyTorch's dynamo exporter (without its
optimizer) writes a Conv without bias: `Conv(x, W, Expand(CastLike(0.0, x), Shape(W)[:1]))`."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from onnx import helper

import bnfold
from tests.builders import (
    TensorProto,
    assert_same_function,
    bn_node,
    bn_params,
    check_full,
    make_model,
    op_types,
    symbolic,
    tensor,
    value_info,
)

C = 4


def dynamo_bias(like: str, variant: str = "expand") -> list:
    """Nodes computing 'bias', a zero [C] vector typed like `like`, as exporters write it."""
    zero = helper.make_node("Constant", [], ["zero"], value=tensor("z", np.array(0.0, np.float32)))
    cast = helper.make_node("CastLike", ["zero", like], ["zero_like"], name="castlike")
    if variant == "expand":  # torchlib's aten_convolution
        return [
            zero,
            cast,
            helper.make_node("Shape", ["W"], ["w_dim0"], start=0, end=1),
            helper.make_node("Constant", [], ["one"], value_ints=[1]),
            helper.make_node("Expand", ["w_dim0", "one"], ["bias_shape"]),
            helper.make_node("Expand", ["zero_like", "bias_shape"], ["bias"]),
        ]
    if variant == "gather":
        return [
            zero,
            cast,
            helper.make_node("Shape", ["W"], ["w_shape"]),
            helper.make_node("Constant", [], ["i0"], value_int=0),
            helper.make_node("Gather", ["w_shape", "i0"], ["w_dim0"], axis=0),
            helper.make_node("Constant", [], ["ax"], value_ints=[0]),
            helper.make_node("Unsqueeze", ["w_dim0", "ax"], ["bias_shape"]),
            helper.make_node("Expand", ["zero_like", "bias_shape"], ["bias"]),
        ]
    # ConstantOfShape(Slice(Shape(W), [0], [1])) in float64, then CastLike
    starts, ends = tensor("starts", np.array([0])), tensor("ends", np.array([1]))
    return [
        helper.make_node("Shape", ["W"], ["w_shape"]),
        helper.make_node("Constant", [], ["starts"], value=starts),
        helper.make_node("Constant", [], ["ends"], value=ends),
        helper.make_node("Slice", ["w_shape", "starts", "ends"], ["bias_shape"]),
        helper.make_node(
            "ConstantOfShape", ["bias_shape"], ["zeros"], value=tensor("v", np.zeros(1))
        ),
        helper.make_node("CastLike", ["zeros", like], ["bias"], name="castlike"),
    ]


def conv_bn(rng, *, dtype=np.float32, variant="expand", before=None, like="x", declare=True):
    """x -> [before] -> Conv(W, dynamo bias typed like `like`) -> BN -> y."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    conv_in = "x"
    nodes = []
    if before is not None:
        nodes.append(before)
        conv_in = before.output[0]
    like = conv_in if like == "x" else like
    nodes += dynamo_bias(like, variant)
    nodes += [
        helper.make_node("Conv", [conv_in, "W", "bias"], ["c"], name="conv"),
        bn_node("c", "y"),
    ]
    inits = [tensor("W", rng.normal(0, 0.5, [C, 3, 3, 3]).astype(dtype)), *bn_params(rng, C)]
    inputs = [value_info("x", elem, [1, 3, 6, 6])] if declare else []
    return make_model(nodes, inputs, [value_info("y", elem, symbolic(4))], inits)


@pytest.fixture
def no_inference(monkeypatch):
    """Shape inference for element types must not be needed (it is lazy)."""

    def refuse(model):
        raise AssertionError("shape inference for element types ran")

    monkeypatch.setattr(importlib.import_module("bnfold.folding"), "inferred_element_types", refuse)


@pytest.mark.parametrize("variant", ["expand", "gather", "constant_of_shape"])
def test_dynamo_zero_bias_typed_like_the_input_folds(rng, variant, no_inference):
    model = conv_bn(rng, variant=variant)
    check_full(model)
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == ["Conv"], result.skipped
    assert op_types(result.model) == ["Conv"]  # the bias subgraph is gone
    check_full(result.model)
    assert_same_function(model, result.model)


def test_fp16_input_gets_an_fp16_bias(rng, no_inference):
    model = conv_bn(rng, dtype=np.float16)
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    bias = next(
        t for t in result.model.graph.initializer if t.name == result.model.graph.node[0].input[2]
    )
    assert bias.data_type == TensorProto.FLOAT16
    assert_same_function(model, result.model, rtol=2e-3)


def test_type_of_an_inner_tensor_found_by_shape_inference(rng):
    """The Conv reads a Relu's output, which no value_info declares."""
    relu = helper.make_node("Relu", ["x"], ["r"], name="relu")
    model = conv_bn(rng, before=relu)
    assert not model.graph.value_info
    result = bnfold.fold(model)
    assert op_types(result.model) == ["Relu", "Conv"]
    assert_same_function(model, result.model)


def test_type_declared_by_value_info_needs_no_inference(rng, no_inference):
    relu = helper.make_node("Relu", ["x"], ["r"], name="relu")
    model = conv_bn(rng, before=relu)
    model.graph.value_info.append(value_info("r", TensorProto.FLOAT, [1, 3, 6, 6]))
    assert op_types(bnfold.fold(model).model) == ["Relu", "Conv"]


def test_no_castlike_no_inference(rng, no_inference):
    model = conv_bn(rng)
    del model.graph.node[:6]
    del model.graph.node[0].input[2]  # Conv without bias
    assert len(bnfold.fold(model).folded) == 1


def test_unknown_type_is_skipped_naming_the_castlike(rng):
    """The Conv input comes from a custom op: nothing declares or infers its type."""
    custom = helper.make_node("Blur", ["x"], ["b"], domain="com.example", name="blur")
    model = conv_bn(rng, before=custom)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    (record,) = bnfold.fold(model).skipped
    assert record.reason == (
        "the bias is not constant: 'zero_like' is computed by CastLike 'castlike', "
        "and the element type of its second input 'b' is unknown"
    )


def test_cast_to_an_integer_type_is_not_evaluated(rng):
    """CastLike(0.0, i) with i int32 is 0 in int32, but bnfold evaluates only float casts."""
    model = conv_bn(rng, like="i")
    model.graph.input.append(value_info("i", TensorProto.INT32, [1]))
    bias = next(n for n in model.graph.node if n.op_type == "Expand" and n.output[0] == "bias")
    bias.output[0] = "int_bias"
    model.graph.node.insert(
        list(model.graph.node).index(bias) + 1,
        helper.make_node("Cast", ["int_bias"], ["bias"], to=TensorProto.FLOAT),
    )
    check_full(model)
    (record,) = bnfold.fold(model).skipped
    assert "CastLike 'castlike', and it casts to int32 (only casts to bfloat16" in record.reason
