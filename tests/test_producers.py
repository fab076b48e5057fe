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
    only_skip,
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


def left_weight_model(rng, *, x_rank=3, dtype=np.float32, after=None, bias=False):
    """`W[C, K] · relu(x)` (`+ c` with `bias`) → BN, or the nodes `after` builds from the
    product 'm' to 'y': a 1×1 Conv1d written as a product. x's dims are declared symbolic; the
    product's operand's rank is only proven through the Relu."""
    c, k = 6, 4
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [tensor("W", rng.normal(0, 0.5, [c, k]).astype(dtype)), *bn_params(rng, c, dtype)]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MatMul", ["W", "r"], ["p" if bias else "m"], name="pointwise"),
    ]
    if bias:
        inits.append(tensor("c", rng.normal(0, 0.5, [c, 1]).astype(dtype)))
        nodes.append(helper.make_node("Add", ["p", "c"], ["m"], name="bias"))
    nodes += after(inits) if after else [bn_node("m", "y")]
    dims = ["n", k, "l"] if x_rank == 3 else ["l", k] if x_rank == 2 else ["n", 3, k, "l"]
    y = helper.make_tensor_value_info("y", elem, symbolic(x_rank))
    return make_model(nodes, [value_info("x", elem, dims)], [y], inits)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_with_its_weight_on_the_left_scales_its_rows_and_adds_the_shift(rng, dtype):
    """BN(W·x) = (diag(a)·W)·x + b[:, None] for x of rank 3: the rows scaled, a new Add after it
    writing the BN's output."""
    model = left_weight_model(rng, dtype=dtype)
    result = bnfold.fold(model)
    (record,) = result.folded
    assert record.into == "pointwise" and record.into_op == "MatMul"
    assert record.how == (
        "scaled 6 rows of the weight on the left; its shift added by a new Add after it"
    )
    assert op_types(result.model) == ["Relu", "MatMul", "Add"]
    add = result.model.graph.node[2]
    assert add.output[0] == "y" and add.input[0] == result.model.graph.node[1].output[0]
    check_full(result.model)
    assert_same_function(model, result.model, rtol=1e-5 if dtype == np.float32 else 1e-12)
    again = bnfold.fold(result.model)
    assert not again.folded and not again.skipped and not again.skipped_affine


def test_matmul_with_its_weight_on_the_left_and_a_zero_shift_gets_no_add(rng):
    model = left_weight_model(rng)
    for name in ("bn_bias", "bn_mean"):
        (init,) = (t for t in model.graph.initializer if t.name == name)
        init.CopyFrom(tensor(name, np.zeros(6, np.float32)))
    result = bnfold.fold(model)
    assert len(result.folded) == 1 and op_types(result.model) == ["Relu", "MatMul"]
    assert_same_function(model, result.model)


@pytest.mark.parametrize("x_rank", [2, 4])
def test_matmul_with_its_weight_on_the_left_needs_a_rank_3_right_operand(rng, x_rank):
    """Rank 2 puts the weight's rows on axis 0, rank 4 on axis 2: left, naming the rank."""
    model = left_weight_model(rng, x_rank=x_rank)
    if x_rank == 2:  # (BN's channels are then the l columns: 6 of them)
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 6
    reason = only_skip(model)
    assert f"its right operand has rank {x_rank}" in reason and "weight's rows" in reason


def test_matmul_with_its_weight_on_the_left_and_its_bias_add(rng):
    """BN(W·x + c) = (diag(a)·W)·x + (a ⊙ c + b): the rows and the Add's constant updated, the
    Add writing the BN's output; the Add itself is the layer's bias, not a BN to fold."""
    model = left_weight_model(rng, bias=True)
    result = bnfold.fold(model)
    (record,) = result.folded
    assert record.into == "pointwise" and "rows of the weight on the left" in record.how
    assert record.how.endswith("and its bias Add's constant")
    assert op_types(result.model) == ["Relu", "MatMul", "Add"]
    assert result.model.graph.node[2].output[0] == "y"
    check_full(result.model)
    assert_same_function(model, result.model)
    again = bnfold.fold(result.model)
    assert not again.folded and not again.skipped and not again.skipped_affine


def test_matmul_with_its_weight_on_the_left_and_a_bias_read_elsewhere_is_left(rng):
    model = left_weight_model(rng, bias=True)
    model.graph.output.append(value_info("m", TensorProto.FLOAT, symbolic(3)))
    assert "the output 'm' of Add 'bias' is also a graph output" in only_skip(model)


def test_mul_and_add_after_a_matmul_with_its_weight_on_the_left_fold(rng):
    """BN written as Mul/Add per row after `W·x`: the Mul into the rows; the Add, then right
    after the product, is its bias."""

    def mul_add(inits):
        inits += [
            tensor("k", rng.uniform(0.5, 1.5, [6, 1]).astype(np.float32)),
            tensor("c", rng.normal(0, 0.5, [6, 1]).astype(np.float32)),
        ]
        return [
            helper.make_node("Mul", ["m", "k"], ["s"]),
            helper.make_node("Add", ["s", "c"], ["y"]),
        ]

    model = left_weight_model(rng, after=mul_add)
    result = bnfold.fold(model)
    (record,) = result.folded_affine  # (the Add is then the product's bias)
    assert record.batchnorm == "<Mul -> s>" and "rows of the weight on the left" in record.how
    assert op_types(result.model) == ["Relu", "MatMul", "Add"] and not result.skipped_affine
    assert_same_function(model, result.model)


def test_an_add_after_a_matmul_with_its_weight_on_the_left_is_its_bias(rng):
    """Only a shift, right after the product: the layer's own bias, not folded, not reported."""

    def add(inits):
        inits.append(tensor("c", rng.normal(0, 0.5, [6, 1]).astype(np.float32)))
        return [helper.make_node("Add", ["m", "c"], ["y"])]

    result = bnfold.fold(left_weight_model(rng, after=add))
    assert not result.folded and not result.skipped and not result.skipped_affine


def test_a_transpose_after_a_matmul_with_its_weight_on_the_left_is_followed_as_channels(rng):
    """`W·x` writes [B, C, L]; Transposes are followed like a Conv1d's: a BN over the moved
    axis 1 (L, equal to C here) is left, one that gets the channels back folds; a Reshape is
    not followed."""

    def transposed(perms):
        def after(inits):
            names = ["m", *[f"t{i}" for i in range(len(perms))]]
            nodes = [
                helper.make_node("Transpose", [a], [b], perm=perm)
                for a, b, perm in zip(names, names[1:], perms, strict=False)
            ]
            return [*nodes, bn_node(names[-1], "y")]

        return after

    model = left_weight_model(rng, after=transposed([[0, 2, 1]]))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 6  # (L = C: BN fits)
    assert "on axis 2, not on its channel axis 1" in only_skip(model)
    model = left_weight_model(rng, after=transposed([[0, 2, 1], [0, 2, 1]]))
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    assert_same_function(model, result.model)

    def reshaped(inits):
        inits.append(tensor("shape", np.array([0, 6, -1], np.int64)))
        return [helper.make_node("Reshape", ["m", "shape"], ["t"]), bn_node("t", "y")]

    reason = only_skip(left_weight_model(rng, after=reshaped))
    assert "MatMul with its weight on the left through Transposes" in reason


def test_a_matmul_with_its_weight_on_the_left_before_opset_7_takes_no_shift(rng):
    """Add-6 broadcasts only trailing dimensions: no new Add can add a bias per row; and an Add
    with the old `broadcast`/`axis` attributes is not read as the product's bias."""
    model = left_weight_model(rng)
    model.opset_import[0].version = 6
    model.graph.node[-1].attribute.append(helper.make_attribute("is_test", 1))
    assert "at opset 6 an Add cannot add a constant per row" in only_skip(model)
    model = left_weight_model(rng, bias=True)
    model.opset_import[0].version = 6
    model.graph.node[-1].attribute.append(helper.make_attribute("is_test", 1))
    model.graph.node[2].attribute.extend(
        [helper.make_attribute("broadcast", 1), helper.make_attribute("axis", 1)]
    )
    assert "it follows Add 'bias', not a Conv" in only_skip(model)


@pytest.mark.parametrize("where", ["transposed", "sub", "concat"])
def test_a_shift_after_products_without_a_bias_is_their_bias_not_a_bn(rng, where):
    """A pure shift (Add, Sub of a constant) that could only become a new Add after products
    with their weight on the left, behind Transposes, as a Sub, or after a Concat of them: not
    BN-like arithmetic, not folded, not reported."""

    def after(inits):
        inits.append(tensor("c", rng.normal(0, 0.5, [6, 1]).astype(np.float32)))
        if where == "transposed":
            inits[-1] = tensor("c", rng.normal(0, 0.5, [6]).astype(np.float32))
            return [
                helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
                helper.make_node("Add", ["t", "c"], ["u"]),
                helper.make_node("Transpose", ["u"], ["y"], perm=[0, 2, 1]),
            ]
        if where == "sub":
            return [helper.make_node("Sub", ["m", "c"], ["y"])]
        inits[-1] = tensor("c", rng.normal(0, 0.5, [12, 1]).astype(np.float32))
        inits.append(tensor("W2", rng.normal(0, 0.5, [6, 4]).astype(np.float32)))
        return [
            helper.make_node("MatMul", ["W2", "r"], ["m2"]),
            helper.make_node("Concat", ["m", "m2"], ["j"], axis=1),
            helper.make_node("Add", ["j", "c"], ["y"]),
        ]

    model = left_weight_model(rng, after=after)
    result = bnfold.fold(model)
    assert not result.records and result.model == model


def test_a_matmul_without_a_constant_operand_says_so_for_both(rng):
    model = left_weight_model(rng)
    model.graph.input.append(value_info("W", TensorProto.FLOAT, [6, 4]))
    assert (
        "neither MatMul operand is a constant weight (left: 'W' is an initializer that is also a "
        "graph input (can be overridden); right: 'r' is computed by Relu" in only_skip(model)
    )


def test_a_bias_that_fits_only_once_combined_is_folded(rng):
    """float16: the shift alone (70000) is beyond float16, the new bias `a ⊙ c + b` (60000) is
    not: the fold into the bias Add is made (the shift is never rounded on its own)."""
    model = left_weight_model(rng, dtype=np.float16, bias=True)
    values = {"c": -10000, "bn_scale": 1, "bn_bias": 60000, "bn_mean": -10000, "bn_var": 1}
    for init in model.graph.initializer:
        if init.name in values:
            shape = list(init.dims)
            init.CopyFrom(tensor(init.name, np.full(shape, values[init.name], np.float16)))
    result = bnfold.fold(model)
    (record,) = result.folded
    assert record.how.endswith("and its bias Add's constant")
    assert_same_function(model, result.model, rtol=5e-3)


def test_a_bias_add_of_a_product_then_transposes_then_bns(rng):
    """`W·x + c` → Transposes → BN, BN: the Transposes bring the channels back to axis 1; both
    BNs fold into the rows and the Add's constant (the second through the same Add). A Transpose
    that leaves the channels on axis 2, or a Reshape, is not followed."""

    def transposed(perms, bns=1, reshape=False):
        def after(inits):
            names = ["m", *[f"t{i}" for i in range(len(perms))]]
            nodes = [
                helper.make_node("Transpose", [a], [b], perm=perm)
                for a, b, perm in zip(names, names[1:], perms, strict=False)
            ]
            last = names[-1]
            if reshape:
                inits.append(tensor("shape", np.array([0, 6, -1], np.int64)))
                nodes.append(helper.make_node("Reshape", [last, "shape"], ["r2"]))
                last = "r2"
            if bns == 2:
                inits.extend(bn_params(rng, 6, prefix="second"))
                nodes.append(bn_node(last, "z", prefix="second"))
                last = "z"
            return [*nodes, bn_node(last, "y")]

        return after

    model = left_weight_model(rng, bias=True, after=transposed([[0, 2, 1], [0, 2, 1]], bns=2))
    result = bnfold.fold(model)
    assert len(result.folded) == 2 and not result.skipped
    assert all("through Transpose" in r.how for r in result.folded)
    assert op_types(result.model) == ["Relu", "MatMul", "Add", "Transpose", "Transpose"]
    check_full(result.model)
    assert_same_function(model, result.model)
    model = left_weight_model(rng, bias=True, after=transposed([[0, 2, 1]]))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 6  # (L = C: BN fits)
    assert "on axis 2, not on its channel axis 1" in only_skip(model)
    model = left_weight_model(rng, bias=True, after=transposed([], reshape=True))
    assert "Reshape" in only_skip(model)
