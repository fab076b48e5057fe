"""One negative test per reason a BatchNormalization is left: each breaks one rule and checks the
reason the record gives (and that nothing else changed)."""

from __future__ import annotations

import numpy as np
from onnx import helper

import bnfold
from tests.builders import (
    C,
    TensorProto,
    bn_node,
    bn_params,
    conv_bn,
    make_model,
    only_skip,
    tensor,
    value_info,
)


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


def test_skip_producer_output_read_by_one_node_twice(rng):
    """An If reading the layer's output in both branches is one other node, not two."""

    def branch(name):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)
        return helper.make_graph(
            [helper.make_node("Relu", ["c"], [f"{name}_out"])], name, [], [out]
        )

    extra = [
        helper.make_node(
            "If", ["flag"], ["r"], then_branch=branch("then"), else_branch=branch("else")
        )
    ]
    model = conv_bn(rng, extra_nodes=extra, outputs=("y", "r"))
    model.graph.input.append(value_info("flag", TensorProto.BOOL, []))
    assert "is also read by 1 other node" in only_skip(model)


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
