"""MatMul/Gemm → Reshape/Transpose/Identity → BatchNormalization: folded only where every
element's channel is provably its column (bnfold/producers/through_reshape.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import bnfold
from bnfold.producers.through_reshape import ROWS, Layout, reshape
from tests.builders import (
    TensorProto,
    assert_same_function,
    bn_node,
    bn_params,
    check_full,
    make_model,
    op_types,
    random_feeds,
    run,
    symbolic,
    tensor,
    value_info,
)

K, C = 6, 4


def layout_model(rng, chain, *, channels=C, a_shape=("N", K), op="MatMul", after=(), out_rank=4):
    """a -> MatMul(W) -> m -> chain (list of (op, attrs, target or None)) -> BN -> y -> after."""
    nodes = [helper.make_node(op, ["a", "W"], ["m"], name="linear")]
    inits = [tensor("W", rng.normal(0, 0.5, [K, C]).astype(np.float32))]
    inits += bn_params(rng, channels)
    name = "m"
    for i, (kind, attrs, target) in enumerate(chain):
        inputs = [name]
        if target is not None:
            inits.append(tensor(f"shape{i}", np.array(target, np.int64)))
            inputs.append(f"shape{i}")
        nodes.append(helper.make_node(kind, inputs, [f"t{i}"], name=f"{kind.lower()}{i}", **attrs))
        name = f"t{i}"
    nodes.append(bn_node(name, "y"))
    nodes.extend(after)
    last = after[-1].output[0] if after else "y"
    a = value_info("a", TensorProto.FLOAT, list(a_shape))
    y = value_info(last, TensorProto.FLOAT, symbolic(out_rank))
    return make_model(nodes, [a], [y], inits)


def reshape_to(target):
    return ("Reshape", {}, target)


def assert_folded(model, ops):
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == ["Gemm"], result.skipped
    assert op_types(result.model) == ops
    assert result.model.graph.output[0].name == model.graph.output[0].name
    check_full(result.model)
    assert_same_function(model, result.model)
    assert bnfold.fold(result.model).model == result.model  # idempotent
    return result.folded[0]


def only_skip(model) -> str:
    result = bnfold.fold(model)
    assert not result.folded and len(result.skipped) == 1
    return result.skipped[0].reason


@pytest.mark.parametrize(
    "target", [[0, C, 1, 1], [-1, C, 1, 1], [0, -1, 1, 1], [-1, C], [0, C, 1], [2, C, 1, 1]]
)
def test_reshape_that_appends_unit_axes_folds(rng, target):
    model = layout_model(rng, [reshape_to(target)], out_rank=len(target))
    record = assert_folded(model, ["Gemm", "Reshape"])
    assert "through Reshape 'reshape0'" in record.how


def test_reshape_then_transpose_columns_to_axis_1_folds(rng):
    """onnxruntime's own test case, with a batch: [N, C] -> [N, 1, 1, C] -> [N, C, 1, 1]."""
    chain = [reshape_to([-1, 1, 1, C]), ("Transpose", {"perm": [0, 3, 1, 2]}, None)]
    assert_folded(layout_model(rng, chain), ["Gemm", "Reshape", "Transpose"])


def test_identity_and_reshape_back_after_the_bn_fold(rng):
    chain = [("Identity", {}, None), reshape_to([0, C, 1, 1])]
    back = [
        helper.make_node("Reshape", ["y", "back"], ["z"], name="back"),
        helper.make_node("Relu", ["z"], ["r"]),
    ]
    model = layout_model(rng, chain, after=back, out_rank=2)
    model.graph.initializer.append(tensor("back", np.array([0, C], np.int64)))
    shapes = {"m": ["N", C], "t1": ["N", C, 1, 1], "y": ["N", C, 1, 1], "z": ["N", C]}
    model.graph.value_info.extend(value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items())
    check_full(model)
    folded = bnfold.fold(model).model
    assert_folded(model, ["Gemm", "Identity", "Reshape", "Reshape", "Relu"])
    assert [v.name for v in folded.graph.value_info] == ["m", "y", "z"]  # t1 is gone


def test_gemm_through_reshape_folds(rng):
    model = layout_model(rng, [reshape_to([0, C, 1, 1])], op="Gemm")
    assert_folded(model, ["Gemm", "Reshape"])


def test_left_operand_rank_found_by_shape_inference(rng):
    """Nothing declares the MatMul input's rank: shape inference runs because a Reshape links
    the MatMul and the BN."""
    model = layout_model(rng, [reshape_to([0, C, 1, 1])], a_shape=[3, K])
    model.graph.node.insert(0, helper.make_node("Relu", ["a0"], ["a"]))
    model.graph.input[0].name = "a0"
    assert_folded(model, ["Relu", "Gemm", "Reshape"])


def test_conv_through_identity_folds(rng):
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Identity", ["c"], ["i"], name="identity"),
        bn_node("i", "y"),
    ]
    inits = [tensor("W", rng.normal(0, 0.5, [C, 3, 3, 3]).astype(np.float32)), *bn_params(rng, C)]
    x = value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])
    model = make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, symbolic(4))], inits)
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == ["Conv"]
    assert op_types(result.model) == ["Conv", "Identity"]
    assert_same_function(model, result.model)
    model.graph.node[1].op_type = "Reshape"
    model.graph.node[1].input.append("shape")
    model.graph.initializer.append(tensor("shape", np.array([0, C, 4, 4], np.int64)))
    reason = only_skip(model)
    assert "only a Gemm or MatMul (its weight on the right) is followed through a Reshape" in reason


# ----- not provably the same function ----------------------------------------------------------


@pytest.mark.parametrize(
    ("chain", "channels", "words"),
    [
        ([reshape_to([-1, 1, 1, C])], C, "on axis 3, not on its channel axis 1"),
        ([("Transpose", {"perm": [1, 0]}, None)], C, "on axis 0"),
        ([("Transpose", {}, None)], C, "on axis 0"),  # default perm reverses the axes
        ([reshape_to([0, 2, 2])], 2, "has 4 output columns"),  # splits each row's columns
        ([reshape_to([0, C // 2, 2])], C, "does not provably keep"),
        ([reshape_to([C, -1])], C, "does not provably keep"),  # reinterprets [N, C] as [C, N]
        ([reshape_to([-1, 2])], 2, "the MatMul has 4 output columns but the Batch"),
    ],
)
def test_layout_that_moves_columns_off_the_channel_axis_is_skipped(rng, chain, channels, words):
    model = layout_model(rng, chain, channels=channels, a_shape=[C, K])
    assert words in only_skip(model)


def test_runnable_inexact_reshape_is_skipped(rng):
    """[N, 4] -> [N, 2, 2] -> BN(2 channels) runs, with channel = column // 2: the MatMul's 4
    columns are not the BN's 2 channels."""
    model = layout_model(rng, [reshape_to([0, 2, 2])], channels=2, out_rank=3)
    run(model, random_feeds(model))  # the original runs
    assert "output columns but the BatchNormalization has 2" in only_skip(model)


def test_rows_split_across_the_channel_axis_is_skipped(rng):
    """[8, 4] -> [2, 4, 4] runs and BN has 4 channels, but axis 1 holds row % 4, not the column."""
    model = layout_model(rng, [reshape_to([2, C, C])], a_shape=[8, K], out_rank=3)
    run(model, random_feeds(model))
    assert "to [2, 4, 4] does not provably keep the 4 columns" in only_skip(model)


def test_a_reshape_after_a_3d_matmul_is_not_followed(rng):
    """[B, T, K] · [K, C] → Reshape: the rows of the 3-D product are not followed."""
    model = layout_model(rng, [reshape_to([-1, C])], a_shape=[2, 3, K])
    assert "reshapes the output of a MatMul on a rank-3 input" in only_skip(model)


def test_non_ignorable_node_between_is_skipped(rng):
    model = layout_model(rng, [reshape_to([0, C, 1, 1])])
    model.graph.node.insert(1, helper.make_node("Relu", ["m"], ["m_relu"], name="relu"))
    model.graph.node[2].input[0] = "m_relu"
    reason = only_skip(model)
    assert reason.startswith("it follows Reshape 'reshape0' after Relu 'relu', not a Gemm")


def test_reshape_output_read_elsewhere_is_skipped(rng):
    extra = [helper.make_node("Relu", ["t0"], ["r"])]
    model = layout_model(rng, [reshape_to([0, C, 1, 1])], after=extra)
    model.graph.output.insert(0, value_info("y", TensorProto.FLOAT, symbolic(4)))
    assert "'t0' of Reshape 'reshape0' is also read by 1 other node" in only_skip(model)


def test_matmul_output_also_graph_output_is_skipped(rng):
    model = layout_model(rng, [reshape_to([0, C, 1, 1])])
    model.graph.output.append(value_info("m", TensorProto.FLOAT, symbolic(2)))
    assert "'m' of MatMul 'linear' is also a graph output" in only_skip(model)


def test_reshape_target_not_constant_is_skipped(rng):
    model = layout_model(rng, [reshape_to([0, C, 1, 1])])
    model.graph.input.append(value_info("shape0", TensorProto.INT64, [4]))  # overridable
    assert "target shape of Reshape 'reshape0' is not constant" in only_skip(model)


def test_graph_input_through_reshape_has_nothing_to_fold_into(rng):
    model = layout_model(rng, [reshape_to([0, C, 1, 1])])
    del model.graph.node[0]
    model.graph.node[0].input[0] = "a"
    model.graph.input[0].CopyFrom(value_info("a", TensorProto.FLOAT, ["N", C]))
    assert "it follows Reshape 'reshape0' after graph input 'a', not a" in only_skip(model)


# ----- the layout rule itself, checked against numpy ---------------------------------------------


@pytest.mark.parametrize(
    ("target", "n", "rows", "columns"),
    [
        ([0, C, 1, 1], 3, 0, 1),
        ([-1, C, 1, 1], 3, 0, 1),
        ([0, -1, 1, 1], 3, 0, 1),
        ([0, 0], 3, 0, 1),
        ([-1, 1, 1, C], 3, 0, 3),
        ([1, 3, C], 3, 1, 2),  # the row count becomes known: 3
        ([1, C], 1, None, 1),  # then there is one row
        ([C * 3], 3, None, None),  # rows and columns merged
        ([-1], 3, None, None),
        ([C, -1], 3, None, None),
        ([3, -1], 3, None, None),  # 3 is not provably the row count
        ([-1, -1], 3, None, None),
        ([0, 2, 2], 3, None, None),
    ],
)
def test_reshape_layout_matches_numpy(target, n, rows, columns):
    result = reshape(Layout((ROWS, C), rows=0, columns=1), target, allow_zero=False)
    if columns is None:
        assert result is None
        return
    assert (result.rows, result.columns) == (rows, columns)
    grid = np.arange(n * C).reshape(n, C)  # element (n, c) holds n·C + c
    moved = grid.reshape([grid.shape[i] if t == 0 else t for i, t in enumerate(target)])
    for index in np.ndindex(moved.shape):
        row, column = divmod(int(moved[index]), C)
        assert index[columns] == column
        assert rows is None or index[rows] == row


def test_reshape_with_allowzero_zero_is_refused():
    assert reshape(Layout((ROWS, C), 0, 1), [0, C], allow_zero=True) is None


# ----- Conv / ConvTranspose → Transposes → BN (tf2onnx without its optimizers) ---------------


def conv_layout_model(rng, perms, *, op="Conv", rank=4, group=1):
    """x -> Conv/ConvTranspose (C out channels) -> Transpose(perm) for each perm -> BN."""
    spatial = [5] * (rank - 2)
    if op == "Conv":
        weight = rng.normal(0, 0.3, [C, 3 // group if group > 1 else 3, *[3] * (rank - 2)])
    else:
        weight = rng.normal(0, 0.3, [3, C, *[3] * (rank - 2)])
    nodes = [helper.make_node(op, ["x", "W"], ["c"], name="layer")]
    inits = [tensor("W", weight.astype(np.float32)), *bn_params(rng, C)]
    name = "c"
    for i, perm in enumerate(perms):
        attrs = {} if perm is None else {"perm": perm}
        nodes.append(
            helper.make_node("Transpose", [name], [f"t{i}"], name=f"transpose{i}", **attrs)
        )
        name = f"t{i}"
    nodes.append(bn_node(name, "y"))
    x = value_info("x", TensorProto.FLOAT, [2, 3, *spatial])
    return make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, symbolic(rank))], inits)


@pytest.mark.parametrize(
    ("op", "rank", "perms"),
    [
        ("Conv", 4, [[0, 2, 3, 1], [0, 3, 1, 2]]),  # tf2onnx's pair
        ("Conv", 3, [[0, 2, 1], [0, 2, 1]]),  # 1-D
        ("Conv", 5, [[0, 2, 3, 4, 1], [0, 4, 1, 2, 3]]),  # 3-D
        ("Conv", 4, [None, None]),  # no perm: reversed twice
        ("Conv", 4, [[2, 1, 0, 3]]),  # the channel axis stays where it is
        ("ConvTranspose", 4, [[0, 2, 3, 1], [0, 3, 1, 2]]),
    ],
)
def test_conv_through_transposes_that_keep_the_channel_axis_folds(rng, op, rank, perms):
    model = conv_layout_model(rng, perms, op=op, rank=rank)
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == [op], result.skipped
    assert op_types(result.model) == [op, *["Transpose"] * len(perms)]
    assert "through Transpose 'transpose0'" in result.folded[0].how
    assert result.model.graph.output[0].name == "y"
    check_full(result.model)
    assert_same_function(model, result.model)
    assert bnfold.fold(result.model).model == result.model  # idempotent


@pytest.mark.parametrize(
    ("perms", "reason"),
    [
        (
            [[0, 2, 3, 1]],
            "output channels of Conv 'layer' reach it through Transpose 'transpose0' on axis 3",
        ),
        ([[0, 2, 3, 1], [0, 2, 3, 1]], "on axis 2, not on its channel axis 1"),
        ([[0, 2, 1]], "has perm [0, 2, 1], not a permutation of the 4 axes"),
    ],
)
def test_conv_through_transposes_that_move_the_channel_axis_is_left(rng, perms, reason):
    assert reason in only_skip(conv_layout_model(rng, perms))


def test_conv_through_a_reshape_is_left_and_says_which_layers_go_through_what(rng):
    model = conv_layout_model(rng, [[0, 2, 3, 1], [0, 3, 1, 2]])
    transpose = next(n for n in model.graph.node if n.name == "transpose1")
    model.graph.initializer.append(tensor("target", np.array([2, C, 3, 3], np.int64)))
    reshape_node = helper.make_node("Reshape", ["t1", "target"], ["r"], name="reshape")
    model.graph.node.insert(list(model.graph.node).index(transpose) + 1, reshape_node)
    next(n for n in model.graph.node if n.op_type == "BatchNormalization").input[0] = "r"
    reason = only_skip(model)
    assert "ConvTranspose or MatMul with its weight on the left through Transposes" in reason


# ----- Linear on a rank ≥ 3 input (MatMul + bias Add) → Transposes → BN (point clouds) --------


def linear_nd_model(rng, perms, *, x_shape=(2, 7, K), bias_shape=(C,), bias_first=False, bias=True):
    """x[B, N, K] -> MatMul(W[K, C]) -> Add(bias) -> Transposes -> BN(C) -> y."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="linear")]
    inits = [tensor("W", rng.normal(0, 0.5, [K, C]).astype(np.float32)), *bn_params(rng, C)]
    name = "m"
    if bias:
        inits.append(tensor("bias", rng.normal(0, 0.5, bias_shape).astype(np.float32)))
        inputs = ["bias", "m"] if bias_first else ["m", "bias"]
        nodes.append(helper.make_node("Add", inputs, ["a"], name="bias_add"))
        name = "a"
    for i, perm in enumerate(perms):
        nodes.append(
            helper.make_node("Transpose", [name], [f"t{i}"], name=f"transpose{i}", perm=perm)
        )
        name = f"t{i}"
    nodes.append(bn_node(name, "y"))
    x = value_info("x", TensorProto.FLOAT, list(x_shape))
    return make_model(
        nodes, [x], [value_info("y", TensorProto.FLOAT, symbolic(len(x_shape)))], inits
    )


@pytest.mark.parametrize(
    ("perms", "x_shape", "bias_shape", "bias_first"),
    [
        ([[0, 2, 1]], (2, 7, K), (C,), False),  # PointNet: Linear, then x.transpose(1, 2), BN1d
        ([[0, 2, 1]], (2, 7, K), (1, 1, C), True),
        ([[0, 2, 1]], (2, 7, K), (), False),  # one bias for every feature
        ([[0, 3, 1, 2]], (2, 3, 7, K), (C,), False),  # 4-D: features to axis 1
        ([[0, 1, 3, 2], [0, 2, 1, 3]], (2, 3, 7, K), (C,), False),  # two steps
    ],
)
def test_linear_on_a_3d_input_folds_into_its_columns_and_bias(
    rng, perms, x_shape, bias_shape, bias_first
):
    model = linear_nd_model(
        rng, perms, x_shape=x_shape, bias_shape=bias_shape, bias_first=bias_first
    )
    result = bnfold.fold(model)
    (record,) = result.folded
    assert record.into == "linear" and record.into_op == "MatMul"
    assert "scaled 4 columns of MatMul 'linear' and its bias; through Transpose" in record.how
    assert op_types(result.model) == ["MatMul", "Add", *["Transpose"] * len(perms)]
    check_full(result.model)
    assert_same_function(model, result.model)
    assert bnfold.fold(result.model).model == result.model


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"perms": [[0, 1, 2]]},
            "output features of MatMul 'linear' reach it through Transpose 'transpose0' on axis 2",
        ),
        (
            {"bias_shape": (7, 1)},
            "the Add after MatMul 'linear' does not add one bias per output feature",
        ),
    ],
)
def test_linear_on_a_3d_input_is_left_where_not_exact(rng, change, reason):
    arguments = {"perms": [[0, 2, 1]], **change}
    assert reason in only_skip(linear_nd_model(rng, **arguments))


@pytest.mark.parametrize(
    ("perms", "x_shape"),
    [
        ([[0, 2, 1]], (2, 7, K)),  # PointNet with Linear(bias=False)
        ([[0, 3, 1, 2]], (2, 3, 7, K)),
        ([[0, 1, 3, 2], [0, 2, 1, 3]], (2, 3, 7, K)),
    ],
)
def test_linear_without_bias_on_a_3d_input_gets_a_bias_add(rng, perms, x_shape):
    """BN(T(x·W)) = T(x·(W·diag(a)) + b): the columns scaled, the shift added by a new Add right
    after the MatMul (where a Linear with a bias has it)."""
    model = linear_nd_model(rng, perms, x_shape=x_shape, bias=False)
    result = bnfold.fold(model)
    (record,) = result.folded
    assert record.into == "linear" and record.into_op == "MatMul"
    assert "its shift added by a new Add after it (it had no bias)" in record.how
    assert op_types(result.model) == ["MatMul", "Add", *["Transpose"] * len(perms)]
    assert result.nodes_after == len(result.model.graph.node) == result.nodes_before
    add = result.model.graph.node[1]
    assert add.output[0] == "m" and add.input[0] == result.model.graph.node[0].output[0]
    check_full(result.model)
    assert_same_function(model, result.model)
    assert bnfold.fold(result.model).model == result.model


def test_linear_without_bias_and_a_zero_shift_gets_no_add(rng):
    model = linear_nd_model(rng, [[0, 2, 1]], bias=False)
    _, shift, mean, _ = (t for t in model.graph.initializer if t.name.startswith("bn"))
    mean.CopyFrom(tensor(mean.name, np.zeros(C, np.float32)))
    shift.CopyFrom(tensor(shift.name, np.zeros(C, np.float32)))
    result = bnfold.fold(model)
    assert len(result.folded) == 1 and op_types(result.model) == ["MatMul", "Transpose"]
    assert_same_function(model, result.model)


def test_linear_without_bias_whose_output_is_read_elsewhere_is_left(rng):
    model = linear_nd_model(rng, [[0, 2, 1]], bias=False)
    model.graph.output.append(value_info("m", TensorProto.FLOAT, symbolic(3)))
    assert "the output 'm' of MatMul 'linear' is also a graph output" in only_skip(model)


def test_linear_on_a_3d_input_whose_output_is_read_elsewhere_is_left(rng):
    model = linear_nd_model(rng, [[0, 2, 1]])
    model.graph.output.append(value_info("m", TensorProto.FLOAT, symbolic(3)))
    assert "the output 'm' of MatMul 'linear' is also a graph output" in only_skip(model)


def test_a_linear_whose_input_rank_is_proven_through_transposes_folds(rng):
    """The second block of a PointNet: its MatMul reads Transpose(Relu(...)) of the first block's
    output: rank 3, proven from the producers (nothing declares it)."""
    model = linear_nd_model(rng, [[0, 2, 1]])
    first = model.graph.node[0]
    first.input[0] = "p"
    model.graph.node.insert(0, helper.make_node("Transpose", ["r"], ["p"], perm=[0, 2, 1]))
    model.graph.node.insert(0, helper.make_node("Relu", ["x"], ["r"]))
    model.graph.input[0].CopyFrom(value_info("x", TensorProto.FLOAT, [2, K, 7]))
    result = bnfold.fold(model)
    assert [r.into_op for r in result.folded] == ["MatMul"], result.skipped
    assert_same_function(model, result.model)


def test_the_new_bias_add_broadcasts_explicitly_before_opset_7(rng):
    model = linear_nd_model(rng, [[0, 2, 1]], bias=False)
    model.opset_import[0].version = 6
    model.ir_version = 3
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.attribute.append(helper.make_attribute("is_test", 1))
    result = bnfold.fold(model)
    (add,) = (n for n in result.model.graph.node if n.op_type == "Add")
    assert {a.name: a.i for a in add.attribute} == {"broadcast": 1}
