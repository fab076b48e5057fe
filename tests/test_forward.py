"""BatchNormalization before a Gemm/MatMul (BatchNorm1d → Linear), folded forward."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

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


# --- BN → Conv (forward) ---------------------------------------------------------------------


def bn_then_conv(
    rng,
    *,
    spatial=2,
    c_in=4,
    c_out=6,
    group=1,
    kernel=3,
    bias=True,
    relu=False,
    size=7,
    dtype=np.float32,
    op="Conv",
    **attrs,
):
    """x → [Relu] → BN(c_in) → Conv(W, [B]) → y; W `[c_out, c_in/group, k...]` (ConvTranspose:
    `[c_in, c_out/group, k...]`)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    kernel_shape = [kernel] * spatial
    w_shape = (
        [c_in, c_out // group, *kernel_shape]
        if op == "ConvTranspose"
        else [c_out, c_in // group, *kernel_shape]
    )
    inits = [tensor("W", rng.normal(0, 0.5, w_shape).astype(dtype)), *bn_params(rng, c_in, dtype)]
    inputs = ["n", "W"]
    if bias:
        inits.append(tensor("B", rng.normal(0, 0.5, c_out).astype(dtype)))
        inputs.append("B")
    nodes = [helper.make_node("Relu", ["x"], ["r"])] if relu else []
    nodes += [
        bn_node("r" if relu else "x", "n"),
        helper.make_node(op, inputs, ["y"], name="conv", group=group, **attrs),
    ]
    return make_model(
        nodes,
        [value_info("x", elem, [2, c_in, *[size] * spatial])],
        [value_info("y", elem, symbolic(2 + spatial))],
        inits,
    )


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize(("c_in", "c_out", "group"), [(4, 6, 1), (4, 6, 2), (4, 4, 4), (4, 8, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_bn_then_conv_folds_forward(rng, spatial, c_in, c_out, group, bias):
    model = bn_then_conv(rng, spatial=spatial, c_in=c_in, c_out=c_out, group=group, bias=bias)
    result = bnfold.fold(model)
    assert [(r.into, r.into_op) for r in result.folded] == [("conv", "Conv")], result.skipped
    assert f"scaled {c_in} input channels (group={group})" in result.folded[0].how
    assert op_types(result.model) == ["Conv"]
    assert len(result.model.graph.node[0].input) == 3  # a bias was added where there was none
    check_full(result.model)
    assert_same_function(model, result.model)


@pytest.mark.parametrize(
    "attrs",
    [
        {"strides": [2, 2]},
        {"dilations": [2, 1]},
        {"strides": [2, 3], "dilations": [1, 2]},
        {"auto_pad": "VALID", "strides": [2, 2]},
        {"pads": [0, 0, 0, 0]},
    ],
)
def test_strides_and_dilations_do_not_matter_without_padding(rng, attrs):
    model = bn_then_conv(rng, relu=True, group=2, size=8, **attrs)
    result = bnfold.fold(model)
    assert len(result.folded) == 1, result.skipped
    assert op_types(result.model) == ["Relu", "Conv"]
    assert_same_function(model, result.model)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize(("size", "stride"), [(7, 2), (8, 2), (6, 3), (5, 1)])
def test_same_padding_with_a_1x1_kernel_pads_nothing(rng, auto_pad, size, stride):
    model = bn_then_conv(rng, kernel=1, size=size, auto_pad=auto_pad, strides=[stride, stride])
    result = bnfold.fold(model)
    assert len(result.folded) == 1, result.skipped
    assert_same_function(model, result.model)


def test_fp16_conv_forward_is_rounded_once(rng):
    model = bn_then_conv(rng, group=2, bias=True, dtype=np.float16)
    result = bnfold.fold(model)
    assert len(result.folded) == 1, result.skipped
    weight = numpy_helper.to_array(result.model.graph.initializer[0])
    assert weight.dtype == np.float16
    check_full(result.model)
    assert_same_function(model, result.model, rtol=5e-3)


def test_fp16_overflow_is_skipped_with_its_reason(rng):
    model = bn_then_conv(rng, dtype=np.float16)
    gamma = next(t for t in model.graph.initializer if t.name == "bn_scale")
    gamma.CopyFrom(tensor("bn_scale", np.full(4, 6e4, np.float16)))  # a ≈ 6e4 / √(σ² + ε)
    result = bnfold.fold(model)
    assert not result.folded
    assert "not representable" in result.skipped[0].reason


def test_conv_bn_conv_prefers_the_backward_fold(rng):
    """Conv → BN → Conv: the BN goes into the Conv before it, the padded Conv after it is left."""
    model = bn_then_conv(rng, pads=[1, 1, 1, 1])
    model.graph.node.insert(0, helper.make_node("Conv", ["x", "W0"], ["r"], name="conv0"))
    model.graph.node[1].input[0] = "r"
    model.graph.initializer.append(
        tensor("W0", rng.normal(0, 0.5, [4, 4, 1, 1]).astype(np.float32))
    )
    result = bnfold.fold(model)
    assert [r.into for r in result.folded] == ["conv0"]
    assert op_types(result.model) == ["Conv", "Conv"]
    assert_same_function(model, result.model)


def test_conv_with_shared_output_then_bn_then_conv_folds_forward(rng):
    model = bn_then_conv(rng)
    model.graph.node.insert(0, helper.make_node("Conv", ["x", "W0"], ["r"], name="conv0"))
    model.graph.node[1].input[0] = "r"
    model.graph.initializer.append(
        tensor("W0", rng.normal(0, 0.5, [4, 4, 1, 1]).astype(np.float32))
    )
    model.graph.output.append(value_info("r", TensorProto.FLOAT, symbolic(4)))
    result = bnfold.fold(model)
    assert [r.into for r in result.folded] == ["conv"], result.skipped
    assert "forward" in result.folded[0].how
    assert_same_function(model, result.model)


def test_bn_conv_bn_folds_both(rng):
    """Forward into a Conv that is then the producer of another BN: both fold."""
    model = bn_then_conv(rng, group=2)
    model.graph.node[-1].output[0] = "c"
    model.graph.initializer.extend(bn_params(rng, 6, prefix="bn2"))
    model.graph.node.append(bn_node("c", "y", prefix="bn2"))
    result = bnfold.fold(model)
    assert len(result.folded) == 2 and op_types(result.model) == ["Conv"]
    check_full(result.model)
    assert_same_function(model, result.model)


def skip_reason(model) -> str:
    result = bnfold.fold(model)
    assert not result.folded and len(result.skipped) == 1
    assert op_types(result.model) == op_types(model)
    return result.skipped[0].reason


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"pads": [1, 1, 1, 1]}, "pads its input (pads=[1, 1, 1, 1]): at the border"),
        ({"pads": [0, 0, 0, 1]}, "pads its input (pads=[0, 0, 0, 1])"),
        ({"auto_pad": "SAME_UPPER"}, "pads its input (auto_pad=SAME_UPPER): at the border"),
        ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, "pads its input (auto_pad=SAME_LOWER)"),
    ],
)
def test_padded_conv_is_not_folded_forward(rng, attrs, expected):
    reason = skip_reason(bn_then_conv(rng, relu=True, **attrs))
    assert "follows Relu" in reason and f"forward: the Conv after it {expected}" in reason


def test_bn_output_also_read_elsewhere_is_not_folded_into_conv(rng):
    model = bn_then_conv(rng)
    model.graph.node.append(helper.make_node("Neg", ["n"], ["z"]))
    model.graph.output.append(value_info("z", TensorProto.FLOAT, symbolic(4)))
    assert "forward: its output 'n' is read 2 times, not only by the Conv" in skip_reason(model)


def test_bn_output_that_is_a_graph_output_is_not_folded_into_conv(rng):
    model = bn_then_conv(rng)
    model.graph.output.append(value_info("n", TensorProto.FLOAT, symbolic(4)))
    assert "forward: its output 'n' is also a graph output" in skip_reason(model)


def test_bn_feeding_the_conv_weight_is_not_folded(rng):
    w = rng.normal(0, 0.5, [4, 4, 3, 3]).astype(np.float32)
    nodes = [
        bn_node("w_in", "n"),
        helper.make_node("Conv", ["x", "n"], ["y"], name="conv"),
    ]
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [value_info("y", TensorProto.FLOAT, symbolic(4))],
        [tensor("w_in", w), *bn_params(rng, 4)],
    )
    reason = skip_reason(model)
    assert "forward: it feeds the weight side of Conv 'conv'" in reason


def test_conv_with_non_constant_weight_is_not_folded_forward(rng):
    model = bn_then_conv(rng)
    weight = model.graph.initializer[0]
    model.graph.initializer.remove(weight)
    model.graph.input.append(value_info("W", TensorProto.FLOAT, [6, 4, 3, 3]))
    assert "forward: the weight of the Conv after it is not constant" in skip_reason(model)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 2]}])
def test_bn_before_conv_transpose_is_not_folded_forward(rng, attrs):
    model = bn_then_conv(rng, op="ConvTranspose", group=2, **attrs)
    reason = skip_reason(model)
    assert "forward: the ConvTranspose after it is not folded forward" in reason
    assert_same_function(model, bnfold.fold(model).model)


def bn_then_left_weight(rng, *, x_shape=(2, K, 7), weight=True):
    """BN → `W[N, K] · x̂` (x̂ the BN's output, of `x_shape`): the weight on the left, or a
    second input in its place."""
    inits = [*bn_params(rng, K)]
    inputs = [value_info("x", TensorProto.FLOAT, list(x_shape))]
    if weight:
        inits.append(tensor("W", rng.normal(0, 1, [N, K]).astype(np.float32)))
    else:
        inputs.append(value_info("W", TensorProto.FLOAT, [N, K]))
    nodes = [bn_node("x", "n"), helper.make_node("MatMul", ["W", "n"], ["y"], name="pointwise")]
    y = value_info("y", TensorProto.FLOAT, symbolic(len(x_shape)))
    return make_model(nodes, inputs, [y], inits)


def test_bn_then_matmul_with_its_weight_on_the_left(rng):
    """W·(a·x + b) = (W·diag(a))·x + (W·b)[:, None]: the columns scaled, a new Add after the
    MatMul (which wrote a graph output: the Add writes it now)."""
    model = bn_then_left_weight(rng)
    result = bnfold.fold(model)
    (record,) = result.folded
    assert record.into == "pointwise" and record.into_op == "MatMul"
    assert record.how == (
        f"folded forward: scaled {K} columns of the weight on the left; a new Add after it "
        "carries the shift"
    )
    assert op_types(result.model) == ["MatMul", "Add"]
    assert result.model.graph.node[1].output[0] == "y"
    check_full(result.model)
    assert_same_function(model, result.model)
    assert not bnfold.fold(result.model).folded


def test_bn_with_no_shift_then_matmul_with_its_weight_on_the_left_gets_no_add(rng):
    model = bn_then_left_weight(rng)
    for init in model.graph.initializer:
        if init.name in ("bn_bias", "bn_mean"):
            init.CopyFrom(numpy_helper.from_array(np.zeros(K, np.float32), init.name))
    result = bnfold.fold(model)
    assert len(result.folded) == 1 and op_types(result.model) == ["MatMul"]
    assert_same_function(model, result.model)


def test_bn_then_matmul_with_its_weight_on_the_left_needs_rank_3(rng):
    model = bn_then_left_weight(rng, x_shape=(K, K))  # (W [N, K] · x̂ [K, K]: rows are axis 0)
    check_full(model)
    result = bnfold.fold(model)
    assert not result.folded
    assert "rank 2; only rank 3 puts its channels on the reduction axis" in result.skipped[0].reason


def test_bn_feeding_the_right_operand_of_a_product_of_two_inputs_is_left(rng):
    result = bnfold.fold(bn_then_left_weight(rng, weight=False))
    assert not result.folded
    assert "left operand (weight) of the MatMul after it is not constant" in (
        result.skipped[0].reason
    )


def test_bn_then_matmul_with_its_weight_on_the_left_and_a_bias_add(rng):
    """`W·x̂ + c`: the shift goes into the bias Add's constant (`c + W·b`), no new Add; a BN
    after the Add then folds into the same product (PointNet-style input BatchNorm1d)."""
    model = bn_then_left_weight(rng)
    model.graph.node[1].output[0] = "p"
    model.graph.initializer.extend(
        [tensor("c", rng.normal(0, 1, [N, 1]).astype(np.float32)), *bn_params(rng, N, prefix="b2")]
    )
    model.graph.node.extend(
        [helper.make_node("Add", ["p", "c"], ["q"], name="bias"), bn_node("q", "y", prefix="b2")]
    )
    result = bnfold.fold(model)
    assert [r.into for r in result.folded] == ["pointwise", "pointwise"]
    assert result.folded[0].how.endswith("; its bias Add carries the shift")
    assert op_types(result.model) == ["MatMul", "Add"]
    check_full(result.model)
    assert_same_function(model, result.model)


@pytest.mark.parametrize("layer", ["Conv", "product", "Gemm"])
def test_bns_in_a_row_before_a_layer_all_fold_forward(rng, layer):
    """BN → BN → layer: the second folds forward first (node order), then the first, which now
    reads into the layer, is asked again: both fold in one pass, and a second pass finds
    nothing."""
    inits = [*bn_params(rng, K, prefix="a"), *bn_params(rng, K, prefix="b")]
    nodes = [bn_node("x", "p", prefix="a"), bn_node("p", "q", prefix="b")]
    x_shape = [2, K] if layer == "Gemm" else [2, K, 5]
    weight = {"Conv": [N, K, 1], "product": [N, K], "Gemm": [K, N]}[layer]
    inits.append(tensor("W", rng.normal(0, 1, weight).astype(np.float32)))
    inputs = ["W", "q"] if layer == "product" else ["q", "W"]
    nodes.append(helper.make_node("MatMul" if layer == "product" else layer, inputs, ["y"]))
    y = value_info("y", TensorProto.FLOAT, symbolic(len(x_shape)))
    model = make_model(nodes, [value_info("x", TensorProto.FLOAT, x_shape)], [y], inits)
    result = bnfold.fold(model)
    assert [r.batchnorm for r in result.folded] == ["b_node", "a_node"] and not result.skipped
    check_full(result.model)
    assert_same_function(model, result.model)
    assert bnfold.fold(result.model).model == result.model


def test_records_name_an_unnamed_product_the_same_before_and_after_its_new_add(rng):
    """BN → `W·x̂` → BN, the MatMul unnamed: the first fold puts a new Add after it (renaming its
    output), the second folds into it through that Add; both records name it as it was."""
    model = bn_then_left_weight(rng)
    model.graph.node[1].name = ""
    model.graph.node[1].output[0] = "p"
    model.graph.initializer.extend(bn_params(rng, N, prefix="b2"))
    model.graph.node.append(bn_node("p", "y", prefix="b2"))
    result = bnfold.fold(model)
    assert [r.into for r in result.folded] == ["<MatMul -> p>", "<MatMul -> p>"]
    assert op_types(result.model) == ["MatMul", "Add"]
    assert_same_function(model, result.model)


def test_arithmetic_before_a_bn_before_a_layer_folds_once_the_bn_has(rng):
    """Mul → Add → BN → Gemm: the Mul and the Add read no layer when they are asked (an ordinary
    Mul/Add, nothing said); once the BN folds forward they do, and are asked again."""
    inits = [
        *bn_params(rng, K),
        tensor("k", rng.uniform(0.5, 1.5, [K]).astype(np.float32)),
        tensor("c", rng.normal(0, 1, [K]).astype(np.float32)),
        tensor("W", rng.normal(0, 1, [K, N]).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["r", "k"], ["s"], name="mul"),
        helper.make_node("Add", ["s", "c"], ["t"], name="add"),
        bn_node("t", "n"),
        helper.make_node("Gemm", ["n", "W"], ["y"], name="fc"),
    ]
    x = value_info("x", TensorProto.FLOAT, [2, K])
    model = make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, [2, N])], inits)
    model.graph.value_info.extend(value_info(name, TensorProto.FLOAT, [2, K]) for name in "rst")
    result = bnfold.fold(model)
    assert [r.into for r in result.folded] == ["fc"]
    assert sorted(r.batchnorm for r in result.folded_affine) == ["add", "mul"]
    assert op_types(result.model) == ["Relu", "Gemm"] and not result.left
    assert_same_function(model, result.model)


def test_bn_then_product_whose_data_rank_only_shape_inference_finds(rng):
    """BN after a Slice (whose rank bnfold does not prove) feeding a product's right operand:
    the BN meets the MatMul at its second input, which also asks for shape inference."""
    model = bn_then_left_weight(rng, x_shape=(2, K + 2, 7))
    model.graph.initializer.extend(
        [tensor(name, np.array([value], np.int64)) for name, value in (("s0", 1), ("s1", 1 + K))]
        + [tensor("axis", np.array([1], np.int64))]
    )
    model.graph.node.insert(0, helper.make_node("Slice", ["x", "s0", "s1", "axis"], ["sliced"]))
    model.graph.node[1].input[0] = "sliced"
    result = bnfold.fold(model)
    assert [r.into for r in result.folded] == ["pointwise"], result.skipped
    assert_same_function(model, result.model)
