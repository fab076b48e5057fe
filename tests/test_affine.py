"""Mul/Add by a per-channel constant after a linear layer (BatchNormalization written as
arithmetic): folded only when the constant broadcasts along the channel axis alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import bnfold
from bnfold import view
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


def conv_then(ops, rng, *, size=5):
    """x -> Conv -> op(k) -> ... with each (op, constant shape, constant first?)."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["t0"], name="conv")]
    inits = [tensor("W", rng.normal(0, 0.5, [C, 3, 3, 3]).astype(np.float32))]
    for i, (op, shape, first) in enumerate(ops):
        k = f"k{i}"
        inits.append(tensor(k, rng.uniform(0.5, 1.5, shape).astype(np.float32)))
        inputs = [k, f"t{i}"] if first else [f"t{i}", k]
        nodes.append(helper.make_node(op, inputs, [f"t{i + 1}"], name=f"{op.lower()}{i}"))
    nodes[-1].output[0] = "y"
    return make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, 3, size + 2, size + 2])],
        [value_info("y", TensorProto.FLOAT, symbolic(4))],
        inits,
    )


@pytest.mark.parametrize(
    "ops",
    [
        [("Mul", [C, 1, 1], False)],
        [("Add", [1, C, 1, 1], False)],
        [("Mul", [], True), ("Add", [C, 1, 1], True)],
        [("Mul", [1, 1, 1], False)],
    ],
)
def test_per_channel_mul_add_fold(rng, ops):
    model = conv_then(ops, rng)
    result = bnfold.fold(model)
    assert len(result.folded_affine) == len(ops)
    assert op_types(result.model) == ["Conv"]
    assert result.model.graph.node[0].output[0] == "y"
    check_full(result.model)
    assert_same_function(model, result.model)


@pytest.mark.parametrize(
    "shape",
    [[C], [1, 1, 1, C], [C, 5, 1], [2, C, 1, 1], [1, 1, C, 1, 1]],
    ids=["last-axis", "last-axis-4d", "spatial", "batch", "extra-axis"],
)
def test_constants_not_along_the_channel_axis_are_not_folded(rng, shape):
    # spatial size 4 = C, so a [C] constant is valid ONNX but broadcasts along the width
    model = conv_then([("Mul", shape, False)], rng, size=C)
    result = bnfold.fold(model)
    assert not result.folded_affine
    assert op_types(result.model) == op_types(model)


def test_non_constant_operand_is_not_folded(rng):
    model = conv_then([("Mul", [C, 1, 1], False)], rng)
    model.graph.input.append(value_info("k0", TensorProto.FLOAT, [C, 1, 1]))
    del model.graph.initializer[1]
    assert not bnfold.fold(model).folded_affine


def test_producer_read_elsewhere_is_not_folded(rng):
    model = conv_then([("Add", [C, 1, 1], False)], rng)
    model.graph.node.append(helper.make_node("Relu", ["t0"], ["r"]))
    model.graph.output.append(value_info("r", TensorProto.FLOAT, symbolic(4)))
    assert not bnfold.fold(model).folded_affine


def test_gemm_then_vector_add_folds(rng):
    nodes = [
        helper.make_node("Gemm", ["a", "B"], ["g"], transB=1),
        helper.make_node("Add", ["g", "k"], ["y"]),
    ]
    model = make_model(
        nodes,
        [value_info("a", TensorProto.FLOAT, [2, 3])],
        [value_info("y", TensorProto.FLOAT, [2, C])],
        [
            tensor("B", rng.normal(0, 1, [C, 3]).astype(np.float32)),
            tensor("k", rng.normal(0, 1, [C]).astype(np.float32)),
        ],
    )
    result = bnfold.fold(model)
    assert len(result.folded_affine) == 1 and op_types(result.model) == ["Gemm"]
    assert_same_function(model, result.model)


def test_bn_then_mul_chain(rng):
    from tests.builders import bn_node, bn_params

    model = conv_then([("Mul", [C, 1, 1], False)], rng)
    model.graph.node[1].input[0] = "n"
    model.graph.node.insert(1, bn_node("t0", "n"))
    model.graph.initializer.extend(bn_params(rng, C))
    result = bnfold.fold(model)
    assert len(result.folded) == 1 and len(result.folded_affine) == 1
    assert op_types(result.model) == ["Conv"]
    assert_same_function(model, result.model)


# ----- forward: Mul/Add on the input of a Dense layer (Keras' BatchNormalization before it) ----

K, M = 5, 3


def before_linear(ops, rng, *, layer="MatMul", trans_b=0, x_shape=("N", K), declare=True):
    """x[N, K] -> op(k) ... -> layer(W) -> y, each op (type, constant shape, constant first?)."""
    nodes, inits, name = [], [], "x"
    for i, (op, shape, first) in enumerate(ops):
        k = f"k{i}"
        inits.append(tensor(k, rng.uniform(0.5, 1.5, shape).astype(np.float32)))
        inputs = [k, name] if first else [name, k]
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], name=f"{op.lower()}{i}"))
        name = f"t{i}"
    weight = rng.normal(0, 0.5, [M, K] if trans_b else [K, M]).astype(np.float32)
    inits.append(tensor("W", weight))
    attrs = {"transB": trans_b} if layer == "Gemm" else {}
    nodes.append(helper.make_node(layer, [name, "W"], ["y"], name="dense", **attrs))
    x = value_info("x", TensorProto.FLOAT, list(x_shape) if declare else None)
    return make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, symbolic(2))], inits)


@pytest.mark.parametrize(
    "ops",
    [
        [("Mul", [K], False), ("Add", [K], False)],  # Keras: x·s + b
        [("Add", [1, K], True), ("Mul", [K], True)],  # (x + b)·s
        [("Mul", [K], False)],
        [("Add", [], False)],  # a scalar broadcasts along every axis
    ],
)
@pytest.mark.parametrize(("layer", "trans_b"), [("MatMul", 0), ("Gemm", 0), ("Gemm", 1)])
def test_mul_add_before_a_dense_layer_fold_forward(rng, ops, layer, trans_b):
    model = before_linear(ops, rng, layer=layer, trans_b=trans_b)
    result = bnfold.fold(model)
    assert [r.batchnorm for r in result.folded_affine] == [n.name for n in model.graph.node[:-1]]
    assert all("folded forward" in r.how and r.into == "dense" for r in result.folded_affine)
    assert op_types(result.model) == ["Gemm"]
    check_full(result.model)
    assert_same_function(model, result.model)
    assert bnfold.fold(result.model).model == result.model


def test_what_a_forward_fold_removes_leaves_no_value_info(rng):
    """The value_info of the folded Mul/Add's outputs goes with them (the editor's books)."""
    model = before_linear([("Mul", [K], False), ("Add", [K], False)], rng)
    for name in ("t0", "t1"):
        model.graph.value_info.append(value_info(name, TensorProto.FLOAT, ["N", K]))
    result = bnfold.fold(model)
    assert len(result.folded_affine) == 2
    assert not result.model.graph.value_info
    check_full(result.model)


@pytest.mark.parametrize(
    ("ops", "why"),
    [
        ([("Mul", [2, 1], False)], "per row, not per feature"),
        ([("Mul", [K], False), ("Add", [2, K], False)], "varies along the rows"),
    ],
)
def test_constants_that_are_not_per_feature_stay(rng, ops, why):
    model = before_linear(ops, rng, x_shape=(2, K))
    result = bnfold.fold(model)
    assert not result.folded_affine, why
    assert op_types(result.model) == [op for op, _, _ in ops] + ["MatMul"]


def test_a_mul_read_elsewhere_or_an_unproven_rank_stays(rng):
    model = before_linear([("Mul", [K], False)], rng)
    model.graph.output.append(value_info("t0", TensorProto.FLOAT, symbolic(2)))
    assert not bnfold.fold(model).folded_affine
    undeclared = before_linear([("Mul", [K], False)], rng, declare=False)
    assert not bnfold.fold(undeclared).folded_affine  # a MatMul needs a provably 2-D input


def test_ranks_are_proven_through_activations_and_layers(rng):
    """Keras' MLP: Gemm → Relu → MatMul → Mul → Add: the MatMul's input is provably 2-D (a Gemm's
    output through a Relu), so the BN written as arithmetic folds into it."""
    nodes = [
        helper.make_node("Gemm", ["x", "W0"], ["g"], name="dense0"),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("MatMul", ["r", "W1"], ["m"], name="dense1"),
        helper.make_node("Mul", ["m", "s"], ["a"], name="mul"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    inits = [
        tensor("W0", rng.normal(0, 0.5, [K, 6]).astype(np.float32)),
        tensor("W1", rng.normal(0, 0.5, [6, M]).astype(np.float32)),
        tensor("s", rng.uniform(0.5, 1.5, [M]).astype(np.float32)),
        tensor("b", rng.normal(0, 0.5, [M]).astype(np.float32)),
    ]
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, ["N", K])],
        [value_info("y", TensorProto.FLOAT, symbolic(2))],
        inits,
    )
    result = bnfold.fold(model)
    assert [r.into for r in result.folded_affine] == ["dense1", "dense1"]
    assert op_types(result.model) == ["Gemm", "Relu", "Gemm"]
    assert_same_function(model, result.model)


@pytest.mark.parametrize("opset", [11, 17])
def test_ranks_are_proven_through_layers_pools_and_squeeze(rng, opset):
    """Keras 3's Conv → pool → Squeeze → Dense → BN (as Mul/Add): the Dense's input is provably
    2-D (a Conv keeps its input's rank, a pool too, a Squeeze of two axes drops two), with no
    BatchNormalization in the model to make shape inference run."""
    axes = [2, 3]
    squeeze = (
        helper.make_node("Squeeze", ["p", "axes"], ["q"])
        if opset >= 13
        else helper.make_node("Squeeze", ["p"], ["q"], axes=axes)
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        squeeze,
        helper.make_node("MatMul", ["q", "W"], ["m"], name="dense"),
        helper.make_node("Mul", ["m", "s"], ["a"], name="mul"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    inits = [
        tensor("w", rng.normal(0, 0.5, [6, 3, 3, 3]).astype(np.float32)),
        tensor("W", rng.normal(0, 0.5, [6, M]).astype(np.float32)),
        tensor("s", rng.uniform(0.5, 1.5, [M]).astype(np.float32)),
        tensor("b", rng.normal(0, 0.5, [M]).astype(np.float32)),
    ]
    if opset >= 13:
        inits.append(tensor("axes", np.array(axes, np.int64)))
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [value_info("y", TensorProto.FLOAT, symbolic(2))],
        inits,
        opset=opset,
    )
    result = bnfold.fold(model)
    assert [r.into for r in result.folded_affine] == ["dense", "dense"]
    assert_same_function(model, result.model)


def test_a_bn_like_mul_that_cannot_fold_is_reported_and_stops_strict(rng, tmp_path):
    """Conv's output read by the Mul and by a residual Add: the Mul stays, with its reason, in
    the records, the report and the command's lines; --strict refuses to write."""
    model = conv_then([("Mul", [C, 1, 1], False)], rng)
    model.graph.node[-1].output[0] = "t1"
    model.graph.node.append(helper.make_node("Add", ["t1", "t0"], ["y"], name="residual"))
    result = bnfold.fold(model)
    assert not result.folded_affine
    (left,) = result.skipped_affine
    assert left.batchnorm == "mul0"
    assert left.reason == (
        "a Mul by a per-channel constant after Conv: the output 't0' of Conv 'conv' is also "
        "read by 1 other node"
    )
    assert result.to_dict()["skipped_affine"][0]["reason"] == left.reason
    assert "(+ 0 BN-like arithmetic, 1 left)" in view.summary_line(result, 0.0, None, True)

    from tests.test_cli import bnfold as run_command

    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    proc = run_command(path, "-o", tmp_path / "o.onnx", "--strict", "--no-validate")
    assert proc.returncode == 4 and not (tmp_path / "o.onnx").exists()
    assert "1 BN-like Mul/Add left unfolded (--strict)" in proc.stderr
    assert any(line.startswith("SKIPPED | mul0") for line in proc.stdout.splitlines())


def test_ordinary_mul_add_are_not_recorded(rng):
    model = conv_then([("Mul", [1, 1, 1, 5], False)], rng)  # along the last axis: not BN-like
    result = bnfold.fold(model)
    assert not result.folded_affine and not result.skipped_affine


def nhwc_then(ops, rng, *, read_elsewhere=False):
    """x -> Conv -> Transpose(0,2,3,1) (NHWC) -> op(k)... -> Transpose(0,3,1,2) -> y: a
    BatchNormalization written as arithmetic on a channels-last tensor (tf2onnx, no optimizers)."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Transpose", ["c"], ["t0"], name="to_nhwc", perm=[0, 2, 3, 1]),
    ]
    inits = [tensor("W", rng.normal(0, 0.5, [C, 3, 3, 3]).astype(np.float32))]
    for i, (op, shape) in enumerate(ops):
        inits.append(tensor(f"k{i}", rng.uniform(0.5, 1.5, shape).astype(np.float32)))
        nodes.append(
            helper.make_node(op, [f"t{i}", f"k{i}"], [f"t{i + 1}"], name=f"{op.lower()}{i}")
        )
    nodes.append(helper.make_node("Transpose", [f"t{len(ops)}"], ["y"], perm=[0, 3, 1, 2]))
    outputs = [value_info("y", TensorProto.FLOAT, symbolic(4))]
    if read_elsewhere:
        outputs.append(value_info("c", TensorProto.FLOAT, symbolic(4)))
    return make_model(nodes, [value_info("x", TensorProto.FLOAT, [1, 3, 7, 7])], outputs, inits)


def test_mul_add_per_channel_after_transposes_fold_into_the_layer(rng):
    model = nhwc_then([("Mul", [C]), ("Add", [1, 1, 1, C])], rng)
    result = bnfold.fold(model)
    assert [r.into for r in result.folded_affine] == ["conv", "conv"]
    assert "through Transpose 'to_nhwc', unchanged" in result.folded_affine[0].how
    assert op_types(result.model) == ["Conv", "Transpose", "Transpose"]
    check_full(result.model)
    assert_same_function(model, result.model)


def test_a_constant_along_another_axis_after_transposes_stays(rng):
    model = nhwc_then([("Mul", [C, 1, 1])], rng)  # axis 1 of NHWC is H, not the channels
    assert not bnfold.fold(model).folded_affine


def test_a_layer_read_elsewhere_before_the_transposes_stays(rng):
    model = nhwc_then([("Mul", [C])], rng, read_elsewhere=True)
    result = bnfold.fold(model)
    assert not result.folded_affine
    assert op_types(result.model) == ["Conv", "Transpose", "Mul", "Transpose"]


def test_a_transposed_output_read_elsewhere_is_named_with_its_writer(rng):
    model = nhwc_then([("Mul", [C])], rng)
    model.graph.output.append(value_info("t0", TensorProto.FLOAT, symbolic(4)))
    (record,) = bnfold.fold(model).skipped_affine
    assert record.reason == (
        "a Mul by a per-channel constant after Conv: "
        "the output 't0' of Transpose 'to_nhwc' is also a graph output"
    )


@pytest.mark.parametrize("layer", ["MatMul", "Gemm"])
def test_a_run_that_broadcasts_its_data_up_to_the_features_stays(rng, layer):
    """x[2, 1] · k[1, K] is [2, K]: the layer could not read x itself."""
    model = before_linear([("Mul", [1, K], False)], rng, layer=layer, x_shape=(2, 1))
    assert not bnfold.fold(model).folded_affine
    model = before_linear([("Mul", [1, K], False)], rng, layer=layer, x_shape=(K,))
    assert not bnfold.fold(model).folded_affine  # (and a 1-D x would not be 2-D)


def test_ranks_are_proven_once_per_tensor(rng, monkeypatch):
    """A residual chain reads each tensor twice: proving ranks must not walk it 2^depth times."""
    from bnfold.graph_view import GraphView

    calls = []
    original = GraphView._propagated_rank

    def counted(self, name, depth=0):
        calls.append(name)
        return original(self, name, depth)

    monkeypatch.setattr(GraphView, "_propagated_rank", counted)
    nodes, inits, x = [], [], "x"
    for i in range(30):
        nodes += [
            helper.make_node("MatMul", [x, f"W{i}"], [f"h{i}"]),
            helper.make_node("Add", [f"h{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Add", [f"a{i}", x], [f"x{i + 1}"]),
        ]
        inits += [
            tensor(f"W{i}", rng.normal(0, 0.5, [M, M]).astype(np.float32)),
            tensor(f"b{i}", rng.normal(0, 0.5, [M]).astype(np.float32)),
        ]
        x = f"x{i + 1}"
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, ["B", "T", M])],
        [value_info(x, TensorProto.FLOAT, symbolic(3))],
        inits,
    )
    bnfold.fold(model)
    assert len(calls) < 10 * len(nodes)


def arithmetic_then_conv(rng, *, x_shape=(1, 4, 9, 9), group=1, pads=0, ops=("Mul", "Add")):
    """x → Mul([C,1,1]) → Add([1,C,1,1]) → Conv(group, pads) → y (Keras' BatchNormalization
    before a Conv, written as arithmetic; a Conv input normalisation)."""
    c = 4
    nodes, inits, name = [], [], "x"
    for i, op in enumerate(ops):
        shape = [c, 1, 1] if i == 0 else [1, c, 1, 1]
        inits.append(tensor(f"k{i}", rng.uniform(0.5, 1.5, shape).astype(np.float32)))
        nodes.append(helper.make_node(op, [name, f"k{i}"], [f"t{i}"], name=f"{op.lower()}{i}"))
        name = f"t{i}"
    weight = rng.normal(0, 0.5, [6, c // group, 3, 3]).astype(np.float32)
    inits += [tensor("w", weight), tensor("wb", rng.normal(0, 0.5, [6]).astype(np.float32))]
    nodes.append(
        helper.make_node(
            "Conv", [name, "w", "wb"], ["y"], name="conv", group=group, pads=[pads] * 4
        )
    )
    x = value_info("x", TensorProto.FLOAT, list(x_shape) if x_shape else None)
    return make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, symbolic(4))], inits)


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("ops", [("Mul", "Add"), ("Add", "Mul"), ("Mul",)])
def test_mul_add_before_a_conv_without_padding_fold_forward(rng, group, ops):
    model = arithmetic_then_conv(rng, group=group, ops=ops)
    result = bnfold.fold(model)
    assert [r.batchnorm for r in result.folded_affine] == [n.name for n in model.graph.node[:-1]]
    assert all(
        "per-channel constant before it, folded forward" in r.how for r in result.folded_affine
    )
    assert op_types(result.model) == ["Conv"]
    check_full(result.model)
    assert_same_function(model, result.model)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"pads": 1}, "the Conv pads the Mul/Add's output, not x"),
        ({"x_shape": None}, "the data's rank is not provable"),
        ({"x_shape": (1, 1, 9, 9)}, "the constants broadcast one channel up to four"),
    ],
)
def test_mul_add_before_a_conv_stay_where_not_exact(rng, change, why):
    model = arithmetic_then_conv(rng, **change)
    result = bnfold.fold(model)
    assert not result.folded_affine and not result.skipped_affine, why


@pytest.mark.parametrize(
    ("attrs", "axes_input"),
    [({"axes": [2, 3], "keepdims": 0}, None), ({"keepdims": 0}, [2, 3])],
)
def test_ranks_are_proven_through_reduce_ops(rng, attrs, axes_input):
    """tf2onnx without optimizers: Conv → ReduceMean(axes, keepdims=0) → Dense → BN-as-Mul/Add
    (axes an attribute before opset 18, an input from 18 on)."""
    opset = 17 if axes_input is None else 18
    inputs = ["c"] if axes_input is None else ["c", "axes"]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("ReduceMean", inputs, ["p"], **attrs),
        helper.make_node("MatMul", ["p", "W"], ["m"], name="dense"),
        helper.make_node("Mul", ["m", "s"], ["y"], name="mul"),
    ]
    inits = [
        tensor("w", rng.normal(0, 0.5, [6, 3, 3, 3]).astype(np.float32)),
        tensor("W", rng.normal(0, 0.5, [6, M]).astype(np.float32)),
        tensor("s", rng.uniform(0.5, 1.5, [M]).astype(np.float32)),
    ]
    if axes_input is not None:
        inits.append(tensor("axes", np.array(axes_input, np.int64)))
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [value_info("y", TensorProto.FLOAT, symbolic(2))],
        inits,
        opset=opset,
    )
    result = bnfold.fold(model)
    assert [r.into for r in result.folded_affine] == ["dense"]
    assert_same_function(model, result.model)


def test_a_reduce_that_keeps_its_dims_keeps_the_rank(rng):
    """keepdims=1 (the default): the MatMul's input stays 4-D, so its columns are not the
    channels of a Mul after it: not BN-like, left without a record."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["p"], axes=[2]),
        helper.make_node("MatMul", ["p", "W"], ["m"], name="dense"),
        helper.make_node("Mul", ["m", "s"], ["y"], name="mul"),
    ]
    inits = [
        tensor("W", rng.normal(0, 0.5, [8, M]).astype(np.float32)),
        tensor("s", rng.uniform(0.5, 1.5, [M]).astype(np.float32)),
    ]
    x = value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    model = make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, symbolic(4))], inits)
    result = bnfold.fold(model)
    assert not result.folded_affine and not result.skipped_affine


def arithmetic_flatten_dense(rng, *, layer="Gemm", axis=1, x_shape=(2, 3, 2, 2), shapes=None):
    """x[2,3,2,2] → Mul([3,1,1]) → Add([1,3,1,1]) → Flatten(axis) → Gemm/MatMul(W[12, M]) → y:
    a BN written as arithmetic before a classifier's Flatten."""
    shapes = shapes or ([3, 1, 1], [1, 3, 1, 1])
    nodes, inits, name = [], [], "x"
    for i, (op, shape) in enumerate(zip(("Mul", "Add"), shapes, strict=False)):
        inits.append(tensor(f"k{i}", rng.uniform(0.5, 1.5, shape).astype(np.float32)))
        nodes.append(helper.make_node(op, [name, f"k{i}"], [f"t{i}"], name=op.lower()))
        name = f"t{i}"
    nodes.append(helper.make_node("Flatten", [name], ["f"], axis=axis))
    inits.append(tensor("W", rng.normal(0, 0.5, [12, M]).astype(np.float32)))
    nodes.append(helper.make_node(layer, ["f", "W"], ["y"], name="dense"))
    x = value_info("x", TensorProto.FLOAT, list(x_shape) if x_shape else None)
    return make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, symbolic(2))], inits)


@pytest.mark.parametrize("layer", ["Gemm", "MatMul"])
@pytest.mark.parametrize("shapes", [None, ([], [])])  # per channel; scalars
def test_mul_add_before_a_flatten_fold_forward_per_block(rng, layer, shapes):
    model = arithmetic_flatten_dense(rng, layer=layer, shapes=shapes)
    result = bnfold.fold(model)
    assert [r.batchnorm for r in result.folded_affine] == ["mul", "add"]
    assert all("folded forward through its Flatten" in r.how for r in result.folded_affine)
    assert op_types(result.model) == ["Flatten", "Gemm"]
    check_full(result.model)
    assert_same_function(model, result.model)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"axis": 2}, "a Flatten on axis 2 mixes channels and rows"),
        ({"x_shape": None}, "the data's rank is not provable"),
        ({"x_shape": (2, 1, 2, 2)}, "one channel broadcast up to three"),
    ],
)
def test_mul_add_before_a_flatten_stay_where_not_exact(rng, change, why):
    model = arithmetic_flatten_dense(rng, **change)
    if change.get("axis") == 2:  # (Flatten(axis=2) of [2,3,2,2] is [6, 4]: a 4-row weight)
        model.graph.initializer[-1].CopyFrom(
            tensor("W", rng.normal(0, 0.5, [4, M]).astype(np.float32))
        )
    assert not bnfold.fold(model).folded_affine, why


def dense_reshape_arithmetic(rng, target=(0, 4, 1, 1), shapes=((1, 4, 1, 1), (4, 1, 1))):
    """x[2, 5] → Gemm(W[5, 4], b) → Reshape(target) → Mul → Add → y: a BN written as arithmetic
    after a Linear reshaped to NCHW (the constants per column)."""
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["g"], name="dense"),
        helper.make_node("Reshape", ["g", "shape"], ["r"], name="reshape"),
        helper.make_node("Mul", ["r", "s"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "t"], ["y"], name="add"),
    ]
    inits = [
        tensor("W", rng.normal(0, 0.5, [5, 4]).astype(np.float32)),
        tensor("b", rng.normal(0, 0.5, [4]).astype(np.float32)),
        tensor("shape", np.array(target, np.int64)),
        tensor("s", rng.uniform(0.5, 1.5, shapes[0]).astype(np.float32)),
        tensor("t", rng.normal(0, 0.5, shapes[1]).astype(np.float32)),
    ]
    x = value_info("x", TensorProto.FLOAT, [2, 5])
    y = value_info("y", TensorProto.FLOAT, symbolic(len(target)))
    return make_model(nodes, [x], [y], inits)


def test_mul_add_after_a_reshaped_dense_fold_into_its_columns(rng):
    model = dense_reshape_arithmetic(rng)
    result = bnfold.fold(model)
    assert [r.batchnorm for r in result.folded_affine] == ["mul", "add"]
    assert all("through Reshape 'reshape', unchanged" in r.how for r in result.folded_affine)
    assert op_types(result.model) == ["Gemm", "Reshape"]
    check_full(result.model)
    assert_same_function(model, result.model)


def test_mul_add_after_a_reshape_that_splits_the_columns_stay(rng):
    """[2, 4] → [2, 2, 2]: each axis holds part of the columns; a [1, 2, 1] constant is not per
    column (not BN-like: no record)."""
    model = dense_reshape_arithmetic(rng, (0, 2, 2), ((1, 2, 1), (1, 2, 1)))
    result = bnfold.fold(model)
    assert not result.folded_affine and not result.skipped_affine


def test_mul_after_a_reshaped_dense_read_elsewhere_says_why(rng):
    model = dense_reshape_arithmetic(rng)
    model.graph.output.append(value_info("r", TensorProto.FLOAT, symbolic(4)))
    result = bnfold.fold(model)
    (record,) = result.skipped_affine
    assert not result.folded_affine and record.reason.startswith(
        "a Mul by a per-channel constant after Gemm: the output 'r' of Reshape 'reshape' is also"
    )


@pytest.mark.parametrize(
    "ops",
    [
        [("Sub", [C, 1, 1], False), ("Div", [1, C, 1, 1], False)],  # (x − μ) / σ
        [("Sub", [C, 1, 1], True)],  # k − x: scale −1
        [("Div", [C, 1, 1], False), ("Add", [C, 1, 1], True)],
    ],
)
def test_sub_and_div_by_per_channel_constants_fold_like_mul_and_add(rng, ops):
    model = conv_then(ops, rng)
    result = bnfold.fold(model)
    assert [r.batchnorm for r in result.folded_affine] == [
        f"{op.lower()}{i}" for i, (op, _, _) in enumerate(ops)
    ]
    assert op_types(result.model) == ["Conv"]
    check_full(result.model)
    assert_same_function(model, result.model)


def test_a_constant_divided_by_the_data_is_not_affine(rng):
    result = bnfold.fold(conv_then([("Div", [C, 1, 1], True)], rng))  # k / x
    assert not result.folded_affine and not result.skipped_affine


def test_sub_and_div_before_a_dense_layer_fold_forward(rng):
    """Input normalisation `(x − μ) / σ` before a Dense layer."""
    model = before_linear([("Sub", [K], False), ("Div", [K], False)], rng)
    result = bnfold.fold(model)
    assert [r.batchnorm for r in result.folded_affine] == ["sub0", "div1"]
    assert op_types(result.model) == ["Gemm"]
    assert_same_function(model, result.model)


@pytest.mark.parametrize("op", ["Mul", "Add", "Sub"])
@pytest.mark.parametrize("bias", [True, False])
def test_arithmetic_before_a_conv_then_a_bn_folds_both_ways_in_order(rng, op, bias):
    """x → op(k) → Conv(1×1) → BN: the forward fold writes the Conv's bias first, then the BN's
    fold must scale that (the vectorised Conv → BN path leaves such a Conv to the general one,
    which composes them in node order)."""
    inits = [
        tensor("k", rng.uniform(0.5, 2, [1, 3, 1, 1]).astype(np.float32)),
        tensor("W", rng.normal(0, 0.5, [4, 3, 1, 1]).astype(np.float32)),
        *bn_params(rng, 4),
    ]
    conv_inputs = ["m", "W"]
    if bias:
        inits.append(tensor("B", rng.normal(0, 1, [4]).astype(np.float32)))
        conv_inputs.append("B")
    nodes = [
        helper.make_node(op, ["x", "k"], ["m"], name="pre"),
        helper.make_node("Conv", conv_inputs, ["c"], name="conv"),
        bn_node("c", "y"),
    ]
    x = value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])
    model = make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])], inits)
    result = bnfold.fold(model)
    assert len(result.folded) == 1 and len(result.folded_affine) == 1
    assert op_types(result.model) == ["Conv"]
    assert_same_function(model, result.model)


@pytest.mark.parametrize("opset", [11, 13])
def test_a_squeeze_with_empty_axes_proves_no_rank(rng, opset):
    """Empty axes drop every axis of size 1, as no axes do: the rank is not provable."""
    squeeze = helper.make_node("Squeeze", ["x", "axes"] if opset >= 13 else ["x"], ["q"])
    if opset < 13:
        empty = helper.make_attribute("axes", [], attr_type=onnx.AttributeProto.INTS)
        squeeze.attribute.append(empty)
    nodes = [
        squeeze,
        helper.make_node("MatMul", ["q", "W"], ["m"], name="dense"),
        helper.make_node("Mul", ["m", "s"], ["y"], name="mul"),
    ]
    inits = [
        tensor("W", rng.normal(0, 0.5, [K, M]).astype(np.float32)),
        tensor("s", rng.uniform(0.5, 1.5, [M]).astype(np.float32)),
    ]
    if opset >= 13:
        inits.append(tensor("axes", np.array([], np.int64)))
    x = value_info("x", TensorProto.FLOAT, [1, K])
    model = make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, None)], inits, opset=opset)
    result = bnfold.fold(model)
    assert not result.folded_affine and op_types(result.model) == ["Squeeze", "MatMul", "Mul"]


def test_arithmetic_that_broadcasts_the_old_way_is_not_read_as_a_bn(rng):
    """Before opset 7, `broadcast=1, axis=0` aligns a [C] constant with the rows of a Gemm's
    output, not its columns: never read as per-channel."""
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["g"], name="dense"),
        helper.make_node("Mul", ["g", "s"], ["y"], name="mul", broadcast=1, axis=0),
    ]
    inits = [
        tensor("W", rng.normal(0, 0.5, [2, 2]).astype(np.float32)),
        tensor("s", rng.uniform(0.5, 1.5, [2]).astype(np.float32)),
    ]
    x = value_info("x", TensorProto.FLOAT, [2, 2])
    model = make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, [2, 2])], inits, opset=6)
    model.ir_version = 3
    result = bnfold.fold(model)
    assert not result.folded_affine and not result.skipped_affine


def test_a_custom_domain_layer_after_a_flatten_is_left(rng):
    model = arithmetic_flatten_dense(rng, layer="MatMul")
    dense = next(n for n in model.graph.node if n.name == "dense")
    dense.domain = "my.custom"
    model.opset_import.append(helper.make_opsetid("my.custom", 1))
    result = bnfold.fold(model)
    assert not result.folded_affine and dense.op_type == "MatMul"
