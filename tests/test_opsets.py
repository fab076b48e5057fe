"""Every producer → BatchNormalization pattern across opsets 7 to the newest onnxruntime runs, at
the IR version each opset first appeared with: folded, valid, same function."""

from __future__ import annotations

import numpy as np
import onnx
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
    symbolic,
    tensor,
    value_info,
)

NEWEST = min(onnx.defs.onnx_opset_version(), 22)  # onnxruntime 1.31/1.32 run up to opset 22+
OPSETS = [7, 8, 9, 11, 13, 14, 15, 17, 19, 21, NEWEST]


def pattern(kind: str, rng, opset: int) -> onnx.ModelProto:
    c = 4
    if kind == "conv":
        nodes = [helper.make_node("Conv", ["x", "W", "B"], ["p"], pads=[1, 1, 1, 1])]
        inits = [
            tensor("W", rng.normal(0, 0.5, [c, 3, 3, 3]).astype(np.float32)),
            tensor("B", rng.normal(0, 0.5, c).astype(np.float32)),
        ]
        x, rank = [1, 3, 5, 5], 4
    elif kind == "conv_transpose":
        nodes = [helper.make_node("ConvTranspose", ["x", "W"], ["p"], strides=[2, 2], group=2)]
        inits = [tensor("W", rng.normal(0, 0.5, [4, c // 2, 3, 3]).astype(np.float32))]
        x, rank = [1, 4, 3, 3], 4
    elif kind == "gemm":
        nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["p"], transB=1, alpha=0.5)]
        inits = [
            tensor("W", rng.normal(0, 0.5, [c, 3]).astype(np.float32)),
            tensor("B", rng.normal(0, 0.5, [c]).astype(np.float32)),
        ]
        if opset < 7:
            nodes[0].attribute.append(helper.make_attribute("broadcast", 1))
        x, rank = [2, 3], 2
    else:
        nodes = [helper.make_node("MatMul", ["x", "W"], ["p"])]
        inits = [tensor("W", rng.normal(0, 0.5, [3, c]).astype(np.float32))]
        x, rank = [2, 3], 2
    nodes.append(bn_node("p", "y"))
    ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, x)],
        [value_info("y", TensorProto.FLOAT, symbolic(rank))],
        [*inits, *bn_params(rng, c)],
        opset=opset,
        ir_version=ir_version,
    )
    if ir_version < 4:
        model.graph.input.extend(
            value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer
        )
    return model


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("kind", ["conv", "conv_transpose", "gemm", "matmul"])
def test_patterns_across_opsets(rng, kind, opset):
    model = pattern(kind, rng, opset)
    check_full(model)
    result = bnfold.fold(model)
    assert len(result.folded) == 1, result.skipped
    check_full(result.model)
    assert result.model.ir_version == model.ir_version
    assert_same_function(model, result.model)
