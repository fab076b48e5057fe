"""BatchNormalization before a Gemm/MatMul (BatchNorm1d → Linear), folded forward."""

from __future__ import annotations

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
    tensor,
    value_info,
)

K, N = 5, 3


def bn_then_linear(rng, op="Gemm", *, c_shape=(N,), relu=True, **attrs):
    trans_b = attrs.get("transB", 0)
    inits = [
        tensor("B", rng.normal(0, 1, [N, K] if trans_b else [K, N]).astype(np.float32)),
        *bn_params(rng, K),
    ]
    inputs = ["n", "B"]
    if op == "Gemm" and c_shape is not None:
        inits.append(tensor("C", rng.normal(0, 1, c_shape).astype(np.float32)))
        inputs.append("C")
    nodes = [helper.make_node("Relu", ["x"], ["r"])] if relu else []
    nodes += [
        bn_node("r" if relu else "x", "n"),
        helper.make_node(op, inputs, ["y"], name="fc", **attrs),
    ]
    a_rows = 2 if not attrs.get("transA") else K
    x_shape = [2, K] if not attrs.get("transA") else [K, 2]
    del a_rows
    return make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, x_shape)],
        [value_info("y", TensorProto.FLOAT, [2, N])],
        inits,
    )


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (N,), (1, N), (2, N), ()])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0)])
def test_bn_then_gemm(rng, trans_b, c_shape, alpha, beta):
    model = bn_then_linear(rng, c_shape=c_shape, transB=trans_b, alpha=alpha, beta=beta)
    result = bnfold.fold(model)
    assert [r.into for r in result.folded] == ["fc"], result.skipped
    assert op_types(result.model) == ["Relu", "Gemm"]
    check_full(result.model)
    assert_same_function(model, result.model)


def test_bn_on_graph_input_then_matmul_becomes_gemm(rng):
    model = bn_then_linear(rng, op="MatMul", relu=False)
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == ["Gemm"]
    assert op_types(result.model) == ["Gemm"]
    check_full(result.model)
    assert_same_function(model, result.model)


def test_transposed_input_is_not_folded_forward(rng):
    model = bn_then_linear(rng, transA=1)
    model.graph.node[1].input[0] = "r"
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # x: [2, K], BN on it
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = K
    result = bnfold.fold(model)
    assert not result.folded


def test_bn_output_used_twice_is_not_folded_forward(rng):
    model = bn_then_linear(rng)
    model.graph.node.append(helper.make_node("Relu", ["n"], ["z"]))
    model.graph.output.append(value_info("z", TensorProto.FLOAT, [2, K]))
    result = bnfold.fold(model)
    assert not result.folded


def test_bn_before_conv_is_not_folded_forward(rng):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        bn_node("r", "n"),
        helper.make_node("Conv", ["n", "W"], ["y"], pads=[1, 1, 1, 1]),
    ]
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, K, 4, 4])],
        [value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [tensor("W", rng.normal(0, 1, [2, K, 3, 3]).astype(np.float32)), *bn_params(rng, K)],
    )
    result = bnfold.fold(model)
    assert not result.folded and "follows Relu" in result.skipped[0].reason


def test_mnist_style_bn_then_gemm_then_bn(rng):
    """Forward into a Gemm that is then the producer of another BN: both fold."""
    model = bn_then_linear(rng)
    model.graph.node[-1].output[0] = "g"
    model.graph.initializer.extend(bn_params(rng, N, prefix="bn2"))
    model.graph.node.append(bn_node("g", "y", prefix="bn2"))
    result = bnfold.fold(model)
    assert len(result.folded) == 2 and op_types(result.model) == ["Relu", "Gemm"]
    assert_same_function(model, result.model)


def test_matmul_rank_found_by_shape_inference(rng):
    model = bn_then_linear(rng, op="MatMul", relu=True)  # BN input 'r' has no declared shape
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == ["Gemm"]
    assert_same_function(model, result.model)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_bn_flatten_gemm_maps_each_channel_to_its_block(rng, trans_b):
    c, h, w = 3, 2, 2
    features = c * h * w
    b = rng.normal(0, 1, [N, features] if trans_b else [features, N]).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        bn_node("r", "n"),
        helper.make_node("Flatten", ["n"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "B", "C"], ["y"], transB=trans_b),
    ]
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [2, c, h, w])],
        [value_info("y", TensorProto.FLOAT, [2, N])],
        [tensor("B", b), tensor("C", rng.normal(0, 1, N).astype(np.float32)), *bn_params(rng, c)],
    )
    result = bnfold.fold(model)
    assert len(result.folded) == 1 and op_types(result.model) == ["Relu", "Flatten", "Gemm"]
    check_full(result.model)
    assert_same_function(model, result.model)


def test_bn_flatten_with_other_axis_is_not_folded(rng):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        bn_node("r", "n"),
        helper.make_node("Flatten", ["n"], ["f"], axis=2),
        helper.make_node("MatMul", ["f", "B"], ["y"]),
    ]
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [2, 3, 2, 2])],
        [value_info("y", TensorProto.FLOAT, [6, N])],
        [tensor("B", rng.normal(0, 1, [4, N]).astype(np.float32)), *bn_params(rng, 3)],
    )
    assert not bnfold.fold(model).folded
