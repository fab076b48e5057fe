"""What the pass guarantees beyond the maths: one negative test per skip reason, constants,
shared weights, names, subgraphs, IR < 4, dtypes, determinism and idempotence."""

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
    op_types,
    run,
    symbolic,
    tensor,
    value_info,
)

C = 4


def conv_bn(
    rng,
    *,
    bn_attrs=None,
    extra_nodes=(),
    outputs=("y",),
    inits_extra=(),
    inputs=None,
    dtype=np.float32,
    bn_dtype=None,
    opset=17,
    ir_version=10,
    weight_name="W",
):
    """x -> Conv(W) -> c -> BN -> y, with hooks to break one rule at a time."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [
        tensor(weight_name, rng.normal(0, 0.5, [C, 3, 3, 3]).astype(dtype)),
        *bn_params(rng, C, bn_dtype or dtype),
        *inits_extra,
    ]
    nodes = [
        helper.make_node("Conv", ["x", weight_name], ["c"], name="conv"),
        bn_node("c", "y", **(bn_attrs or {})),
        *extra_nodes,
    ]
    graph_outputs = [value_info(name, elem, symbolic(4)) for name in outputs]
    graph_inputs = [value_info("x", elem, [1, 3, 6, 6]), *(inputs or [])]
    return make_model(nodes, graph_inputs, graph_outputs, inits, opset=opset, ir_version=ir_version)


def only_skip(model) -> str:
    result = bnfold.fold(model)
    assert not result.folded
    assert len(result.skipped) == 1
    return result.skipped[0].reason


# ----- one negative test per skip reason -------------------------------------------------------


def test_skip_training_mode(rng):
    reason = only_skip(conv_bn(rng, bn_attrs={"training_mode": 1}))
    assert "training mode" in reason


def test_skip_opset6_without_is_test(rng):
    model = conv_bn(rng, opset=6, ir_version=3)
    assert "is_test" in only_skip(model)


def test_fold_opset6_with_is_test(rng):
    model = conv_bn(rng, opset=6, ir_version=3, bn_attrs={"is_test": 1})
    model.graph.input.extend(
        value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer
    )
    result = bnfold.fold(model)
    assert len(result.folded) == 1
    names = {i.name for i in result.model.graph.input}
    assert {t.name for t in result.model.graph.initializer} <= names  # IR 3: inits are inputs
    assert not names & {"bn_scale", "bn_bias", "bn_mean", "bn_var"}


def test_skip_spatial_zero(rng):
    model = conv_bn(rng, opset=7, ir_version=3, bn_attrs={"spatial": 0})
    assert "spatial=0" in only_skip(model)


def test_skip_optional_outputs_used(rng):
    model = conv_bn(rng, opset=9)
    bn = model.graph.node[1]
    bn.output.extend(["mean_out", "var_out"])
    assert "optional outputs" in only_skip(model)


def test_skip_producer_output_also_a_graph_output(rng):
    assert "graph output" in only_skip(conv_bn(rng, outputs=("y", "c")))


def test_skip_producer_output_read_elsewhere(rng):
    extra = [helper.make_node("Relu", ["c"], ["r"])]
    assert "read by 1 other node" in only_skip(conv_bn(rng, extra_nodes=extra, outputs=("y", "r")))


def test_skip_parameter_is_graph_input(rng):
    model = conv_bn(rng)
    model.graph.input.append(value_info("bn_var", TensorProto.FLOAT, [C]))  # overridable
    assert "can be overridden" in only_skip(model)


def test_skip_weight_not_constant(rng):
    model = conv_bn(
        rng, weight_name="Wx", inputs=[value_info("Wx", TensorProto.FLOAT, [C, 3, 3, 3])]
    )
    del model.graph.initializer[0]
    assert "weight is not constant" in only_skip(model)


def test_skip_channel_count_mismatch(rng):
    model = conv_bn(rng)
    for t in list(model.graph.initializer)[1:5]:
        t.CopyFrom(tensor(t.name, np.ones(C + 1, np.float32)))
    assert "output channels" in only_skip(model)


def test_skip_fp16_overflow(rng):
    model = conv_bn(rng, dtype=np.float16)
    scale = next(t for t in model.graph.initializer if t.name == "bn_scale")
    scale.CopyFrom(tensor("bn_scale", np.full(C, 60000, np.float16)))
    weight = model.graph.initializer[0]
    weight.CopyFrom(tensor("W", np.full([C, 3, 3, 3], 100, np.float16)))
    assert "overflow float16" in only_skip(model)


def test_skip_not_after_linear_layer(rng):
    model = conv_bn(rng)
    relu = helper.make_node("Relu", ["c"], ["r"])
    model.graph.node.insert(1, relu)
    model.graph.node[2].input[0] = "r"
    assert "follows Relu" in only_skip(model)


def test_skip_bn_on_graph_input(rng):
    model = make_model(
        [bn_node("x", "y")],
        [value_info("x", TensorProto.FLOAT, [1, C, 2, 2])],
        [value_info("y", TensorProto.FLOAT, [1, C, 2, 2])],
        bn_params(rng, C),
    )
    assert "graph input" in only_skip(model)


def test_skip_non_positive_variance(rng):
    model = conv_bn(rng)
    var = next(t for t in model.graph.initializer if t.name == "bn_var")
    var.CopyFrom(tensor("bn_var", np.array([1, -5, 1, 1], np.float32)))
    assert "variance + epsilon" in only_skip(model)


# ----- what counts as constant -----------------------------------------------------------------


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


# ----- shared weights, names, metadata ---------------------------------------------------------


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


# ----- dtypes ----------------------------------------------------------------------------------


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


# ----- subgraphs and functions -----------------------------------------------------------------


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


# ----- onnx-graphsurgeon -----------------------------------------------------------------------


def test_fold_graph_onnx_graphsurgeon_in_place(rng):
    import onnx_graphsurgeon as gs

    model = conv_bn(rng)
    graph = gs.import_onnx(model)
    result = bnfold.fold_graph(graph)
    assert len(result.folded) == 1
    assert [n.op for n in graph.nodes] == ["Conv"]
    assert graph.outputs[0].name == "y"
    exported = gs.export_onnx(graph)
    exported.ir_version = model.ir_version
    assert_same_function(model, exported)


# ----- malformed models: skipped with a reason, never a crash ----------------------------------


def test_weight_dims_not_matching_data_is_refused(rng):
    model = conv_bn(rng)
    model.graph.initializer[0].dims[0] = 1000  # declared [1000, 3, 3, 3], holds [4, 3, 3, 3]
    with pytest.raises(bnfold.InputError, match="declares shape"):
        bnfold.fold(model)


def test_value_defined_twice_is_refused(rng):
    model = conv_bn(rng)
    model.graph.node.append(helper.make_node("Relu", ["x"], ["c"]))
    with pytest.raises(bnfold.InputError, match="defined more than once"):
        bnfold.fold(model)


def test_malformed_group_attribute_is_skipped(rng):
    model = conv_bn(rng)
    model.graph.node[0].op_type = "ConvTranspose"
    model.graph.node[0].attribute.append(helper.make_attribute("group", "two"))
    assert "attributes or constants are malformed" in only_skip(model)


def test_bn_with_unnamed_output_is_skipped(rng):
    model = conv_bn(rng, extra_nodes=[helper.make_node("Relu", ["c"], ["y"])])
    model.graph.node[1].output[0] = ""
    result = bnfold.fold(model)
    assert not result.folded and "no name" in result.skipped[0].reason
