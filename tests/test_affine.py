"""Mul/Add by a per-channel constant after a linear layer (BatchNormalization written as
arithmetic): folded only when the constant broadcasts along the channel axis alone."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import bnfold
from tests.builders import (
    TensorProto,
    assert_same_function,
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
