"""Regression tests from review: cases where an earlier version folded wrongly, wrote an invalid
model, used unbounded memory or crashed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import bnfold
from bnfold.folding import fold_in_place
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

C = 4


def conv_bn_with(nodes_before, rng, *, opset=17, drop=(), **kwargs):
    """x -> Conv(W) -> BN(bn_*) -> y, with `nodes_before` computing some of the parameters."""
    inits = [
        tensor("W", rng.normal(0, 0.5, [C, 3, 1, 1]).astype(np.float32)),
        *[t for t in bn_params(rng, C) if t.name not in drop],
    ]
    nodes = [*nodes_before, helper.make_node("Conv", ["x", "W"], ["c"]), bn_node("c", "y")]
    return make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [value_info("y", TensorProto.FLOAT, symbolic(4))],
        inits,
        opset=opset,
        **kwargs,
    )


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


def test_unloaded_external_data_is_a_clean_error(rng, tmp_path):
    model = conv_bn_with([], rng)
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0)
    partial = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    with pytest.raises(bnfold.InputError, match="external data is not loaded"):
        bnfold.fold(partial)
    assert len(bnfold.fold(tmp_path / "m.onnx").folded) == 1


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


def _conv_bn_model():
    rng = np.random.default_rng(0)
    weight = tensor("w", rng.normal(0, 1, [4, 3, 3, 3]).astype(np.float32))
    return make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("c", "y")],
        [value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [value_info("y", TensorProto.FLOAT, None)],
        [weight, *bn_params(rng, 4)],
    )


def test_negative_dimension_in_an_initializer_is_refused():
    model = _conv_bn_model()
    model.graph.initializer[0].dims[:] = [4, -3, -3, 3]  # product and bytes still match
    with pytest.raises(bnfold.InputError, match="negative dimension"):
        bnfold.fold(model)


@pytest.mark.parametrize("which", ["w", "scale", "var"])
def test_data_not_the_size_of_its_dims_is_refused_before_any_edit(which):
    """The vectorised path checks the sizes of the tensors it reads itself: a pair with a short
    tensor is left to the general check, which names it; nothing has been written by then."""
    model = _conv_bn_model()
    tensor = next(t for t in model.graph.initializer if t.name.endswith(which))
    tensor.raw_data = tensor.raw_data[:-4]
    before = model.SerializeToString()
    with pytest.raises(bnfold.InputError, match=f"'{tensor.name}' declares shape .* but holds"):
        fold_in_place(model)
    assert model.SerializeToString() == before


def test_initializer_given_twice_is_refused():
    """onnxruntime takes the first; a fold that rewrote the second would change the function."""
    model = _conv_bn_model()
    twin = onnx.TensorProto()
    twin.CopyFrom(model.graph.initializer[0])
    model.graph.initializer.append(twin)
    with pytest.raises(bnfold.InputError, match="'w' is defined more than once"):
        bnfold.fold(model)


def test_cycle_through_a_subgraph_read_is_refused():
    """If's branch reads y, and y is computed from the If's output."""
    model = _conv_bn_model()
    branch = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["r"])],
        "branch",
        [],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)],
    )
    graph = model.graph
    graph.node[0].input[0] = "o"
    graph.node.insert(
        0, helper.make_node("If", ["cond"], ["o"], then_branch=branch, else_branch=branch)
    )
    graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    with pytest.raises(bnfold.InputError, match="cycle through node '<If -> o>'"):
        bnfold.fold(model)
