"""Each producer pattern and attribute combination: folded, valid, and the same function
(onnxruntime, all optimisations off, random weights and non-trivial statistics)."""

from __future__ import annotations

import itertools

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


def conv_bn_model(rng, *, spatial=2, group=1, bias=True, dtype=np.float32, **conv_attrs):
    c_in, c_out = 4 * group if group > 1 else 3, 4 * group if group > 1 else 6
    kernel = [3] * spatial
    weight = rng.normal(0, 0.5, [c_out, c_in // group, *kernel]).astype(dtype)
    inits = [tensor("W", weight), *bn_params(rng, c_out, dtype)]
    inputs = ["x", "W"]
    if bias:
        inits.append(tensor("B", rng.normal(0, 0.5, c_out).astype(dtype)))
        inputs.append("B")
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [
        helper.make_node("Conv", inputs, ["c"], name="conv", group=group, **conv_attrs),
        bn_node("c", "y"),
    ]
    x = value_info("x", elem, [2, c_in, *([9] * spatial)])
    y = helper.make_tensor_value_info("y", elem, symbolic(2 + spatial))
    return make_model(nodes, [x], [y], inits)


CONV_ATTRS = [
    {},
    {"strides": [2, 2], "pads": [1, 0, 2, 1]},
    {"dilations": [2, 1], "pads": [2, 2, 2, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "VALID"},
]


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_dims_groups_bias(rng, spatial, group, bias):
    model = conv_bn_model(rng, spatial=spatial, group=group, bias=bias)
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == ["Conv"] and not result.skipped
    assert op_types(result.model) == ["Conv"]
    check_full(result.model)
    assert_same_function(model, result.model)


@pytest.mark.parametrize("attrs", CONV_ATTRS)
def test_conv_strides_pads_dilations_auto_pad(rng, attrs):
    model = conv_bn_model(rng, **attrs)
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    assert_same_function(model, result.model)


def test_depthwise_conv(rng):
    channels = 8
    weight = rng.normal(0, 0.5, [channels, 1, 3, 3]).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], group=channels, pads=[1, 1, 1, 1]),
        bn_node("c", "y"),
    ]
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, channels, 7, 7])],
        [value_info("y", TensorProto.FLOAT, [1, channels, 7, 7])],
        [tensor("W", weight), *bn_params(rng, channels)],
    )
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    check_full(result.model)
    assert_same_function(model, result.model)


def conv_transpose_model(rng, *, group=1, bias=False, **attrs):
    c_in, c_out_per_group = 4 * group, 3
    weight = rng.normal(0, 0.5, [c_in, c_out_per_group, 3, 3]).astype(np.float32)
    inits = [tensor("W", weight), *bn_params(rng, c_out_per_group * group)]
    inputs = ["x", "W"]
    if bias:
        inits.append(tensor("B", rng.normal(0, 0.5, c_out_per_group * group).astype(np.float32)))
        inputs.append("B")
    nodes = [
        helper.make_node("ConvTranspose", inputs, ["c"], name="deconv", group=group, **attrs),
        bn_node("c", "y"),
    ]
    return make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [2, c_in, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, symbolic(4))],
        inits,
    )


@pytest.mark.parametrize("group", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"strides": [2, 2], "output_padding": [1, 1], "pads": [1, 1, 1, 1]},
        {"dilations": [2, 2]},
    ],
)
def test_conv_transpose(rng, group, bias, attrs):
    model = conv_transpose_model(rng, group=group, bias=bias, **attrs)
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == ["ConvTranspose"], result.skipped
    check_full(result.model)
    assert_same_function(model, result.model)


C_FORMS = {
    "absent": None,
    "scalar": np.array(0.7, dtype=np.float32),
    "vector": "N",
    "row": "1N",
    "column": "M1",
    "full": "MN",
}


def gemm_model(rng, *, trans_a, trans_b, alpha, beta, c_form, opset=17):
    m, k, n = 3, 5, 4
    a_shape = [k, m] if trans_a else [m, k]
    b = rng.normal(0, 0.5, [n, k] if trans_b else [k, n]).astype(np.float32)
    inits = [tensor("B", b), *bn_params(rng, n)]
    inputs = ["a", "B"]
    c = C_FORMS[c_form]
    if isinstance(c, str):
        shape = {"N": [n], "1N": [1, n], "M1": [m, 1], "MN": [m, n]}[c]
        c = rng.normal(0, 0.5, shape).astype(np.float32)
    if c is not None:
        inits.append(tensor("C", c))
        inputs.append("C")
    node = helper.make_node(
        "Gemm", inputs, ["g"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta
    )
    return make_model(
        [node, bn_node("g", "y")],
        [value_info("a", TensorProto.FLOAT, a_shape)],
        [value_info("y", TensorProto.FLOAT, [m, n])],
        inits,
        opset=opset,
    )


@pytest.mark.parametrize(("trans_a", "trans_b"), list(itertools.product([0, 1], [0, 1])))
@pytest.mark.parametrize("c_form", list(C_FORMS))
def test_gemm_transposes_and_bias_forms(rng, trans_a, trans_b, c_form):
    model = gemm_model(rng, trans_a=trans_a, trans_b=trans_b, alpha=1.0, beta=1.0, c_form=c_form)
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == ["Gemm"], result.skipped
    check_full(result.model)
    assert_same_function(model, result.model)


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 1.0), (1.0, 2.5), (-1.5, 0.25)])
@pytest.mark.parametrize("c_form", ["absent", "vector", "full"])
def test_gemm_alpha_beta(rng, alpha, beta, c_form):
    model = gemm_model(rng, trans_a=0, trans_b=1, alpha=alpha, beta=beta, c_form=c_form)
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    assert_same_function(model, result.model)


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_gemm_older_opsets(rng, opset):
    model = gemm_model(rng, trans_a=0, trans_b=1, alpha=1.0, beta=1.0, c_form="vector", opset=opset)
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    check_full(result.model)
    assert_same_function(model, result.model)


def matmul_model(rng, *, declared_rank=True, a_rank=2):
    k, n = 6, 4
    shape = [3, k] if a_rank == 2 else [2, 3, k]
    a = value_info("a", TensorProto.FLOAT, shape if declared_rank else None)
    bn_in = "m"
    nodes = [helper.make_node("MatMul", ["a", "B"], ["m"], name="linear")]
    nodes.append(bn_node(bn_in, "y"))
    channels = n if a_rank == 2 else 3  # rank 3: BN's channel axis is the 3 rows, not N
    return make_model(
        nodes,
        [a],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, symbolic(a_rank))],
        [tensor("B", rng.normal(0, 0.5, [k, n]).astype(np.float32)), *bn_params(rng, channels)],
    )


def test_matmul_becomes_gemm(rng):
    model = matmul_model(rng)
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == ["Gemm"]
    assert op_types(result.model) == ["Gemm"]
    assert result.model.graph.node[0].name == "linear"
    check_full(result.model)
    assert_same_function(model, result.model)


def test_matmul_rank_from_shape_inference(rng):
    """The left operand's rank is not declared on a value_info: shape inference finds it."""
    k, n = 6, 4
    nodes = [
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("MatMul", ["r", "B"], ["m"]),
        bn_node("m", "y"),
    ]
    model = make_model(
        nodes,
        [value_info("a", TensorProto.FLOAT, [3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, symbolic(2))],
        [tensor("B", rng.normal(0, 0.5, [k, n]).astype(np.float32)), *bn_params(rng, n)],
    )
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    assert_same_function(model, result.model)


def test_matmul_with_3d_left_operand_is_skipped(rng):
    model = matmul_model(rng, a_rank=3)
    result = bnfold.fold(model)
    assert not result.folded
    assert "rank 3" in result.skipped[0].reason


def test_matmul_with_unknown_rank_is_skipped(rng):
    model = matmul_model(rng, declared_rank=False)
    result = bnfold.fold(model)
    assert not result.folded
    assert "rank unknown" in result.skipped[0].reason
