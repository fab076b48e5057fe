"""What the pass leaves intact or makes anew stays valid: a Gemm's bias broadcast and shape, fresh
names, IR-3 subgraph signatures, training info, custom ops' graphs, long Identity chains."""

from __future__ import annotations

import numpy as np
from onnx import helper

import bnfold
from tests.builders import (
    TensorProto,
    assert_same_function,
    bn_node,
    bn_params,
    check_full,
    conv_bn_with,
    make_model,
    symbolic,
    tensor,
    value_info,
)

C = 4


def test_deep_identity_chains_do_not_crash(rng):
    nodes = [helper.make_node("Identity", ["p"], ["i0"])]
    nodes += [helper.make_node("Identity", [f"i{k}"], [f"i{k + 1}"]) for k in range(1200)]
    nodes.append(helper.make_node("Identity", ["i1200"], ["bn_scale"]))
    model = conv_bn_with(nodes, rng, drop={"bn_scale"})
    model.graph.input.append(value_info("p", TensorProto.FLOAT, [C]))
    result = bnfold.fold(model)
    assert not result.folded and "not constant" in result.skipped[0].reason


def test_matmul_to_gemm_at_opset_6_broadcasts_its_bias(rng):
    nodes = [helper.make_node("MatMul", ["a", "B"], ["m"]), bn_node("m", "y", is_test=1)]
    inits = [tensor("B", rng.normal(0, 1, [3, C]).astype(np.float32)), *bn_params(rng, C)]
    model = make_model(
        nodes,
        [value_info("a", TensorProto.FLOAT, [2, 3])],
        [value_info("y", TensorProto.FLOAT, [2, C])],
        inits,
        opset=6,
        ir_version=3,
    )
    model.graph.input.extend(value_info(t.name, t.data_type, list(t.dims)) for t in inits)
    result = bnfold.fold(model)
    gemm = result.model.graph.node[0]
    assert gemm.op_type == "Gemm"
    assert helper.get_attribute_value(next(a for a in gemm.attribute if a.name == "broadcast")) == 1
    from onnx.reference import ReferenceEvaluator

    a = rng.standard_normal([2, 3]).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"a": a})[0]
    got = ReferenceEvaluator(result.model).run(None, {"a": a})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gemm_bias_that_changes_shape_gets_a_new_tensor(rng):
    nodes = [helper.make_node("Gemm", ["a", "B", "Cb"], ["g"]), bn_node("g", "y")]
    inits = [
        tensor("B", rng.normal(0, 1, [3, C]).astype(np.float32)),
        tensor("Cb", np.array(0.5, np.float32)),
        *bn_params(rng, C),
    ]
    model = make_model(
        nodes,
        [value_info("a", TensorProto.FLOAT, [2, 3])],
        [value_info("y", TensorProto.FLOAT, [2, C])],
        inits,
    )
    model.graph.value_info.append(value_info("Cb", TensorProto.FLOAT, []))
    check_full(model)
    result = bnfold.fold(model)
    check_full(result.model)
    assert_same_function(model, result.model)


def test_new_names_avoid_sparse_initializers(rng):
    model = conv_bn_with([], rng)
    model.graph.node[0].name = "c"
    sparse = helper.make_sparse_tensor(
        tensor("c_bnfold_bias", np.array([1.0], np.float32)),
        tensor("c_bnfold_bias_idx", np.array([0])),
        [2],
    )
    model.graph.sparse_initializer.append(sparse)
    result = bnfold.fold(model)
    names = [t.name for t in result.model.graph.initializer]
    assert "c_bnfold_bias" not in names and len(result.folded) == 1


def test_training_info_keeps_the_model_unfolded(rng):
    model = conv_bn_with([], rng)
    info = model.training_info.add()
    binding = info.update_binding.add()
    binding.key, binding.value = "bn_scale", "bn_scale"
    result = bnfold.fold(model)
    assert not result.folded and "training_info" in result.skipped[0].reason


def test_graph_attributes_of_custom_ops_are_left_alone(rng):
    inner = conv_bn_with([], rng).graph
    inner.node[-1].output[0] = inner.output[0].name = "inner_y"
    node = helper.make_node("Custom", ["x"], ["y"], domain="com.example", body=inner)
    model = make_model(
        [node],
        [value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [value_info("y", TensorProto.FLOAT, symbolic(4))],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    result = bnfold.fold(model)
    assert not result.folded and "com.example:Custom" in result.skipped[0].reason
    assert result.model.SerializeToString() == model.SerializeToString()


def test_ir3_fold_in_subgraph_keeps_the_subgraph_signature(rng):
    body = conv_bn_with([], rng).graph
    del body.input[:]
    weights = list(body.initializer)  # IR 3: values of the main graph, listed as its inputs
    del body.initializer[:]
    node = helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=body)
    inputs = [
        value_info("x", TensorProto.FLOAT, [1, 3, 2, 2]),
        value_info("cond", TensorProto.BOOL, []),
    ]
    inputs += [value_info(t.name, t.data_type, list(t.dims)) for t in weights]
    model = make_model(
        [node],
        inputs,
        [value_info("y", TensorProto.FLOAT, symbolic(4))],
        weights,
        opset=9,
        ir_version=3,
    )
    result = bnfold.fold(model)
    assert len(result.folded) == 2
    for attr in result.model.graph.node[0].attribute:
        assert len(attr.g.input) == 0  # If branches take no inputs
    main = result.model.graph  # new constants live in the main graph, listed as its inputs
    assert {t.name for t in main.initializer} <= {i.name for i in main.input}
    x = rng.standard_normal([1, 3, 2, 2]).astype(np.float32)
    assert_same_function(model, result.model, feeds={"x": x, "cond": np.array(True)})
