"""Constant subgraphs evaluated for the rules: only exact casts, and a bounded size."""

from __future__ import annotations

import numpy as np
from onnx import helper

import bnfold
from tests.builders import (
    TensorProto,
    assert_same_function,
    conv_bn_with,
    tensor,
)

C = 4


def test_cast_to_float8_is_not_evaluated(rng):
    """numpy overflows to inf where ONNX's Cast saturates: such casts are left to the runtime."""
    nodes = [
        helper.make_node("Constant", [], ["big"], value=tensor("big", np.full(C, 1e6, np.float32))),
        helper.make_node("Cast", ["big"], ["f8"], to=TensorProto.FLOAT8E5M2),
        helper.make_node("Cast", ["f8"], ["bn_var"], to=TensorProto.FLOAT),
    ]
    model = conv_bn_with(nodes, rng, opset=21, drop={"bn_var"})
    result = bnfold.fold(model)
    assert not result.folded
    assert_same_function(model, result.model)


def test_gather_output_size_is_bounded(rng):
    n = 1 << 15
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=tensor("shape", np.array([1, n]))),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["table"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
        ),
        helper.make_node("Constant", [], ["ishape"], value=tensor("ishape", np.array([n]))),
        helper.make_node(
            "ConstantOfShape",
            ["ishape"],
            ["idx"],
            value=helper.make_tensor("z", TensorProto.INT64, [1], [0]),
        ),
        helper.make_node("Gather", ["table", "idx"], ["huge"]),  # n × n elements
        helper.make_node("Shape", ["huge"], ["hs"]),
        helper.make_node("Slice", ["hs", "s0", "s1"], ["first"]),
        helper.make_node("Cast", ["first"], ["ff"], to=TensorProto.FLOAT),
        helper.make_node("Expand", ["ff", "four"], ["bn_scale"]),
    ]
    model = conv_bn_with(nodes, rng, drop={"bn_scale"})
    model.graph.initializer.extend(
        [tensor("s0", np.array([0])), tensor("s1", np.array([1])), tensor("four", np.array([C]))]
    )
    result = bnfold.fold(model)
    assert not result.folded and "not constant" in result.skipped[0].reason
