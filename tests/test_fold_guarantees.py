"""What the pass guarantees beyond the maths: parameters from constants, shared weights never
changed in place, names and outputs kept, the input model untouched, determinism and
idempotence, chains, subgraphs and local functions."""

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
    only_skip,
    op_types,
    symbolic,
    tensor,
    value_info,
)


def test_parameters_from_constant_nodes_and_identity(rng):
    model = conv_bn(rng)
    params = list(model.graph.initializer)[1:5]
    del model.graph.initializer[1:5]
    nodes = []
    for t in params:
        nodes.append(helper.make_node("Constant", [], [t.name + "_c"], value=t))
        nodes.append(helper.make_node("Identity", [t.name + "_c"], [t.name]))
    for n in reversed(nodes):
        model.graph.node.insert(0, n)
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    assert op_types(result.model) == ["Conv"]  # the Constant/Identity feeding only the BN went
    check_full(result.model)
    assert_same_function(model, result.model)


def test_weight_from_constant_of_shape_and_cast(rng):
    model = conv_bn(rng)
    del model.graph.initializer[0]
    shape = tensor("wshape", np.array([C, 3, 3, 3], np.int64))
    model.graph.initializer.append(shape)
    fill = helper.make_tensor("v", TensorProto.DOUBLE, [1], [0.25])
    model.graph.node.insert(0, helper.make_node("ConstantOfShape", ["wshape"], ["w64"], value=fill))
    model.graph.node.insert(1, helper.make_node("Cast", ["w64"], ["W"], to=TensorProto.FLOAT))
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    assert op_types(result.model) == ["Conv"]
    assert "wshape" not in {t.name for t in result.model.graph.initializer}
    assert_same_function(model, result.model)


def test_constant_of_shape_too_large_is_not_evaluated(rng):
    model = conv_bn(rng)
    del model.graph.initializer[0]
    model.graph.initializer.append(tensor("wshape", np.array([C, 3, 1 << 20, 1 << 20], np.int64)))
    model.graph.node.insert(0, helper.make_node("ConstantOfShape", ["wshape"], ["W"]))
    assert "not constant" in only_skip(model)


def test_shared_weight_is_never_modified_in_place(rng):
    inits = [
        tensor("W", rng.normal(0, 0.5, [C, C, 1, 1]).astype(np.float32)),
        *bn_params(rng, C, prefix="bn1"),
        *bn_params(rng, C, prefix="bn2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c1"], name="conv1"),
        bn_node("c1", "y1", prefix="bn1"),
        helper.make_node("Conv", ["y1", "W"], ["c2"], name="conv2"),
        bn_node("c2", "y2", prefix="bn2"),
        helper.make_node("Conv", ["y2", "W"], ["y3"], name="conv3"),  # keeps the original W
    ]
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, C, 3, 3])],
        [value_info("y3", TensorProto.FLOAT, [1, C, 3, 3])],
        inits,
    )
    result = bnfold.fold(model)
    assert len(result.folded) == 2
    graph = result.model.graph
    weights = [n.input[1] for n in graph.node]
    assert weights[2] == "W" and len(set(weights)) == 3
    original_w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    kept = next(t for t in graph.initializer if t.name == "W")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(kept), original_w)
    check_full(result.model)
    assert_same_function(model, result.model)


def test_names_metadata_and_outputs_survive(rng):
    model = conv_bn(rng)
    model.doc_string = "doc"
    model.producer_name = "me"
    helper.set_model_props(model, {"k": "v"})
    model.graph.node[0].doc_string = "conv doc"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    result = bnfold.fold(model)
    out = result.model
    assert [o.name for o in out.graph.output] == ["y"]
    assert out.graph.node[0].name == "conv" and out.graph.node[0].output[0] == "y"
    assert out.graph.node[0].doc_string == "conv doc"
    assert (out.doc_string, out.producer_name, out.ir_version) == ("doc", "me", model.ir_version)
    assert out.metadata_props[0].key == "k"
    assert [(o.domain, o.version) for o in out.opset_import] == [
        (o.domain, o.version) for o in model.opset_import
    ]
    assert result.folded[0].batchnorm == "bn_node" and result.folded[0].into == "conv"


def test_stale_value_info_removed(rng):
    model = conv_bn(rng)
    model.graph.value_info.append(value_info("c", TensorProto.FLOAT, [1, C, 4, 4]))
    result = bnfold.fold(model)
    assert not [v for v in result.model.graph.value_info if v.name == "c"]


def test_input_model_is_not_mutated(rng):
    model = conv_bn(rng)
    before = model.SerializeToString()
    bnfold.fold(model)
    assert model.SerializeToString() == before


def test_deterministic_and_idempotent(rng):
    model = conv_bn(rng)
    first = bnfold.fold(model).model.SerializeToString()
    second = bnfold.fold(model).model.SerializeToString()
    assert first == second
    again = bnfold.fold(bnfold.fold(model).model)
    assert not again.folded and not again.skipped
    assert again.model.SerializeToString() == first


def test_chain_of_two_batchnorms_folds_both(rng):
    model = conv_bn(rng)
    model.graph.initializer.extend(bn_params(rng, C, prefix="bn2"))
    model.graph.node.append(bn_node("y", "z", prefix="bn2"))
    model.graph.output[0].name = "z"
    result = bnfold.fold(model)
    assert len(result.folded) == 2
    assert op_types(result.model) == ["Conv"]
    assert_same_function(model, result.model)


def test_fold_inside_if_branches(rng):
    def branch(prefix):
        inits = [
            tensor(f"{prefix}W", rng.normal(0, 0.5, [C, 3, 3, 3]).astype(np.float32)),
            *bn_params(rng, C, prefix=f"{prefix}bn"),
        ]
        nodes = [
            helper.make_node("Conv", ["x", f"{prefix}W"], [f"{prefix}c"]),
            bn_node(f"{prefix}c", f"{prefix}y", prefix=f"{prefix}bn"),
        ]
        return helper.make_graph(
            nodes,
            prefix,
            [],
            [value_info(f"{prefix}y", TensorProto.FLOAT, symbolic(4))],
            initializer=inits,
        )

    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch("t"), else_branch=branch("e"))
    model = make_model(
        [node],
        [
            value_info("x", TensorProto.FLOAT, [1, 3, 5, 5]),
            value_info("cond", TensorProto.BOOL, []),
        ],
        [value_info("y", TensorProto.FLOAT, symbolic(4))],
    )
    result = bnfold.fold(model)
    assert len(result.folded) == 2
    assert {r.graph for r in result.folded} == {"<If -> y>.then_branch", "<If -> y>.else_branch"}
    check_full(result.model)
    x = rng.standard_normal([1, 3, 5, 5]).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        assert_same_function(model, result.model, feeds=feeds)


def test_bn_in_local_function_is_reported(rng):
    fn_node = bn_node("fx", "fy")
    function = helper.make_function(
        "local",
        "BNFn",
        ["fx", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
        ["fy"],
        [fn_node],
        [helper.make_opsetid("", 17)],
    )
    model = conv_bn(rng)
    model.functions.append(function)
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    assert result.skipped[0].graph == "function local:BNFn"
    assert "function" in result.skipped[0].reason
