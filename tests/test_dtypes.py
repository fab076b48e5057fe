"""Folds in every floating type: float16 and float64 layers, fp16 data with fp32 statistics,
bfloat16 weights; the maths in float64 and rounded once."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import bnfold
from tests.builders import (
    C,
    TensorProto,
    assert_same_function,
    bn_node,
    bn_params,
    check_full,
    conv_bn,
    make_model,
    run,
    tensor,
    value_info,
)


def test_float16(rng):
    model = conv_bn(rng, dtype=np.float16)
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    check_full(result.model)
    assert_same_function(model, result.model, rtol=3e-3)


def test_float64_gemm(rng):
    """onnxruntime has no float64 Conv on the CPU; Gemm covers float64."""
    nodes = [helper.make_node("Gemm", ["a", "B"], ["g"], transB=1), bn_node("g", "y")]
    model = make_model(
        nodes,
        [value_info("a", TensorProto.DOUBLE, [3, 5])],
        [value_info("y", TensorProto.DOUBLE, [3, C])],
        [tensor("B", rng.normal(0, 1, [C, 5])), *bn_params(rng, C, np.float64)],
    )
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    assert result.model.graph.initializer[0].data_type == TensorProto.DOUBLE
    check_full(result.model)
    assert_same_function(model, result.model, rtol=1e-12)


def test_fp16_data_with_fp32_statistics_bn15(rng):
    model = conv_bn(rng, dtype=np.float16, bn_dtype=np.float32, opset=15)
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    conv = result.model.graph.node[0]
    init = {t.name: t for t in result.model.graph.initializer}
    assert init[conv.input[1]].data_type == TensorProto.FLOAT16
    assert init[conv.input[2]].data_type == TensorProto.FLOAT16
    check_full(result.model)
    assert_same_function(model, result.model, rtol=3e-3)


def test_fold_in_float64_beats_fp16_arithmetic(rng):
    """Folding in float64 and rounding once is closer than folding in fp16 would be."""
    model = conv_bn(rng, dtype=np.float16)
    folded = bnfold.fold(model).model
    feeds = {"x": rng.standard_normal([1, 3, 6, 6]).astype(np.float16)}
    exact = run(model, feeds)[0].astype(np.float64)
    got = run(folded, feeds)[0].astype(np.float64)
    assert np.max(np.abs(got - exact)) / np.max(np.abs(exact)) < 2e-3


def test_bfloat16_weights(rng):
    import ml_dtypes

    model = conv_bn(rng, opset=22)  # Conv takes bfloat16 from opset 22
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    model.graph.initializer[0].CopyFrom(tensor("W", w.astype(ml_dtypes.bfloat16)))
    cast = helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16)
    model.graph.node.insert(0, cast)
    model.graph.node[1].input[0] = "xb"
    for t in list(model.graph.initializer)[1:5]:
        t.CopyFrom(tensor(t.name, onnx.numpy_helper.to_array(t).astype(ml_dtypes.bfloat16)))
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.BFLOAT16
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    conv = result.model.graph.node[1]
    init = {t.name: t for t in result.model.graph.initializer}
    assert init[conv.input[2]].data_type == TensorProto.BFLOAT16
    check_full(result.model)
    from onnx.reference import ReferenceEvaluator

    x = rng.standard_normal([1, 3, 6, 6]).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0].astype(np.float64)
    got = ReferenceEvaluator(result.model).run(None, {"x": x})[0].astype(np.float64)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 3e-2
