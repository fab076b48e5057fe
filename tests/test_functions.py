"""BatchNormalization inside model-local functions (as torch.onnx.export writes them with
export_modules_as_functions): calls inlined where a BN can fold, folded, reported; functions
that cannot be inlined exactly stay, with the reason."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import bnfold
from bnfold import functions
from tests.builders import (
    TensorProto,
    assert_same_function,
    bn_params,
    check_full,
    make_model,
    op_types,
    random_feeds,
    symbolic,
    tensor,
    value_info,
)
from tests.test_cli import bnfold as run_cli

C = 4
LOCAL = "local"
PARAMS = ["W", "s", "b", "m", "v"]


def opsets(default=17, local=True):
    entries = [helper.make_opsetid("", default)]
    return [*entries, helper.make_opsetid(LOCAL, 1)] if local else entries


def conv_bn_relu_function(name="ConvBnRelu", *, default_opset=17, bn_attrs=None):
    """(x, W, s, b, m, v) -> Relu(BN(Conv(x, W))); internal names also used by the graphs."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn", **(bn_attrs or {})
        ),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    return helper.make_function(
        LOCAL, name, ["x", *PARAMS], ["y"], nodes, opsets(default_opset, local=False)
    )


def block_params(rng, prefix, c_in=3):
    return [
        tensor(f"{prefix}W", rng.normal(0, 0.5, [C, c_in, 3, 3]).astype(np.float32)),
        *bn_params(rng, C, prefix=prefix),
    ]


def call(name, x, y, prefix, op="ConvBnRelu", **attrs):
    args = [f"{prefix}W", *(f"{prefix}_{p}" for p in ("scale", "bias", "mean", "var"))]
    return helper.make_node(op, [x, *args], [y], name=name, domain=LOCAL, **attrs)


def two_calls_model(rng, function=None, *, second_op="ConvBnRelu"):
    """x -> block1 -> c -> block2 -> y: the graph uses 'c' too, as the function does inside."""
    model = make_model(
        [call("block1", "x", "c", "p1"), call("block2", "c", "y", "p2", op=second_op)],
        [value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [value_info("y", TensorProto.FLOAT, [1, C, 6, 6])],
        [*block_params(rng, "p1"), *block_params(rng, "p2", C)],
    )
    model.opset_import.append(helper.make_opsetid(LOCAL, 1))
    model.functions.append(function or conv_bn_relu_function())
    return model


def assert_folds_exactly(model, result):
    check_full(result.model)
    assert_same_function(model, result.model)
    again = bnfold.fold(result.model)
    assert not again.folded and again.model.SerializeToString() == result.model.SerializeToString()


def test_two_calls_with_weights_as_inputs_are_inlined_and_folded(rng):
    model = two_calls_model(rng)
    result = bnfold.fold(model)
    assert [(r.call, r.function, r.batchnorms) for r in result.inlined] == [
        ("block1", "local:ConvBnRelu", 1),
        ("block2", "local:ConvBnRelu", 1),
    ]
    assert [(r.batchnorm, r.into) for r in result.folded] == [
        ("block1/bn", "block1/conv"),
        ("block2/bn", "block2/conv"),
    ]
    assert [r.inlined_from for r in result.folded] == [
        "local:ConvBnRelu at call site 'block1'",
        "local:ConvBnRelu at call site 'block2'",
    ]
    assert not result.skipped
    assert result.functions_removed == ["local:ConvBnRelu"]
    assert not result.model.functions
    assert op_types(result.model) == ["Conv", "Relu", "Conv", "Relu"]
    assert (result.nodes_before, result.nodes_after) == (2, 4)
    # the function's internal 'c' is renamed: the graph's own 'c' (block1's output) survives
    assert result.model.graph.node[1].output[0] == "c"
    assert result.model.graph.node[2].input[0] == "c"
    assert len({o for n in result.model.graph.node for o in n.output}) == 4
    assert_folds_exactly(model, result)
    assert model.functions and len(model.graph.node) == 2  # the input is untouched


def test_weights_as_constant_nodes_inside_the_function(rng):
    weight = rng.normal(0, 0.5, [C, 3, 3, 3]).astype(np.float32)
    constants = [
        helper.make_node("Constant", [], [name], value=tensor(name, value))
        for name, value in [("W", weight)]
        + [(p.name.split("_")[-1][0], onnx.numpy_helper.to_array(p)) for p in bn_params(rng, C)]
    ]
    body = constants + list(conv_bn_relu_function().node)
    function = helper.make_function(LOCAL, "Block", ["x"], ["y"], body, opsets(local=False))
    model = make_model(
        [
            helper.make_node("Block", ["x"], ["h"], name="first", domain=LOCAL),
            helper.make_node("Block", ["x"], ["y"], domain=LOCAL),  # unnamed call
        ],
        [value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [
            value_info("h", TensorProto.FLOAT, [1, C, 6, 6]),
            value_info("y", TensorProto.FLOAT, symbolic(4)),
        ],
    )
    model.opset_import.append(helper.make_opsetid(LOCAL, 1))
    model.functions.append(function)
    result = bnfold.fold(model)
    assert [r.call for r in result.inlined] == ["first", "<Block -> y>"]
    assert [r.batchnorm for r in result.folded] == ["first/bn", "Block/bn"]
    assert op_types(result.model) == ["Conv", "Relu", "Conv", "Relu"]  # Constants folded away
    assert_folds_exactly(model, result)


def test_nested_functions_are_inlined_recursively(rng):
    inner = conv_bn_relu_function("Inner")
    outer_nodes = [
        helper.make_node("Inner", ["x", *PARAMS], ["r"], name="inner", domain=LOCAL),
        helper.make_node("Neg", ["r"], ["y"], name="neg"),
    ]
    outer = helper.make_function(LOCAL, "Outer", ["x", *PARAMS], ["y"], outer_nodes, opsets())
    model = two_calls_model(rng, outer)
    model.graph.node[0].op_type = "Outer"
    model.graph.node[1].op_type = "Inner"  # Inner is also called directly
    model.functions.append(inner)
    result = bnfold.fold(model)
    assert [(r.call, r.function, r.batchnorms) for r in result.inlined] == [
        ("block1", "local:Outer", 0),
        ("block1/inner", "local:Inner", 1),
        ("block2", "local:Inner", 1),
    ]
    assert [r.batchnorm for r in result.folded] == ["block1/inner/bn", "block2/bn"]
    assert sorted(result.functions_removed) == ["local:Inner", "local:Outer"]
    assert op_types(result.model) == ["Conv", "Relu", "Neg", "Conv", "Relu"]
    assert_folds_exactly(model, result)


def test_function_still_called_from_a_kept_function_stays(rng):
    """Outer cannot be inlined (another opset); Inner is inlined at the graph's call but stays,
    since Outer's body still calls it; its BN is reported once for the copy left in Inner."""
    inner = conv_bn_relu_function("Inner")
    outer_nodes = [helper.make_node("Inner", ["x", *PARAMS], ["y"], domain=LOCAL)]
    outer = helper.make_function(LOCAL, "Outer", ["x", *PARAMS], ["y"], outer_nodes, opsets(16))
    model = two_calls_model(rng, outer)
    model.graph.node[0].op_type = "Outer"
    model.graph.node[1].op_type = "Inner"
    model.functions.append(inner)
    result = bnfold.fold(model)
    assert [r.call for r in result.inlined] == ["block2"]
    assert [r.batchnorm for r in result.folded] == ["block2/bn"]
    assert [(r.graph, r.reason) for r in result.skipped] == [
        (
            "function local:Inner",
            "inside a model-local function, not inlined: called from function local:Outer, "
            "which stays a function",
        )
    ]
    assert [f.name for f in result.model.functions] == ["Outer", "Inner"]
    assert op_types(result.model) == ["Outer", "Conv", "Relu"]
    assert_folds_exactly(model, result)


def attribute_ref(name, kind, refers_to):
    attr = onnx.AttributeProto()
    attr.name, attr.type, attr.ref_attr_name = name, kind, refers_to
    return attr


def test_attribute_references_take_call_values_then_defaults(rng):
    """epsilon: the call's value at block2, the function's default at block1; pads: the default;
    dilations: referenced but given nowhere, so unset."""
    function = conv_bn_relu_function()
    conv, bn = function.node[0], function.node[1]
    bn.attribute.append(attribute_ref("epsilon", onnx.AttributeProto.FLOAT, "eps"))
    del conv.attribute[:]
    conv.attribute.extend(
        [
            attribute_ref("pads", onnx.AttributeProto.INTS, "padding"),
            attribute_ref("dilations", onnx.AttributeProto.INTS, "dilation"),
        ]
    )
    function.attribute.append("dilation")
    function.attribute_proto.extend(
        [helper.make_attribute("eps", 0.25), helper.make_attribute("padding", [1, 1, 1, 1])]
    )
    model = two_calls_model(rng, function)
    model.graph.node[1].attribute.append(helper.make_attribute("eps", 1e-3))
    result = bnfold.fold(model)
    assert len(result.folded) == 2
    assert not any(a.ref_attr_name for n in result.model.graph.node for a in n.attribute)
    conv_attrs = {a.name: list(a.ints) for a in result.model.graph.node[0].attribute}
    assert conv_attrs == {"pads": [1, 1, 1, 1]}
    assert_folds_exactly(model, result)  # σ² in [0.3, 2]: a wrong epsilon would show


def test_call_inside_if_branch(rng):
    branch = helper.make_graph(
        [call("blk", "x", "t", "p1")], "then", [], [value_info("t", TensorProto.FLOAT, symbolic(4))]
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [value_info("e", TensorProto.FLOAT, symbolic(4))],
    )
    model = make_model(
        [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=other)],
        [
            value_info("x", TensorProto.FLOAT, [1, 3, 6, 6]),
            value_info("cond", TensorProto.BOOL, []),
        ],
        [value_info("y", TensorProto.FLOAT, symbolic(4))],
        block_params(rng, "p1"),
    )
    model.opset_import.append(helper.make_opsetid(LOCAL, 1))
    model.functions.append(conv_bn_relu_function())
    result = bnfold.fold(model)
    assert [(r.call, r.graph) for r in result.inlined] == [("blk", "if.then_branch")]
    assert [(r.batchnorm, r.graph) for r in result.folded] == [("blk/bn", "if.then_branch")]
    assert not result.model.functions
    check_full(result.model)
    x = rng.standard_normal([1, 3, 6, 6]).astype(np.float32)
    for cond in (True, False):
        assert_same_function(model, result.model, feeds={"x": x, "cond": np.array(cond)})


def test_if_inside_the_function_body(rng):
    """The body holds an If whose branch reads the formal inputs: renamed, inlined, folded in
    the branch."""
    then = helper.make_graph(
        list(conv_bn_relu_function().node), "then", [], [value_info("y", TensorProto.FLOAT, None)]
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [value_info("e", TensorProto.FLOAT, None)],
    )
    body = [
        helper.make_node("If", ["cond"], ["out"], name="if", then_branch=then, else_branch=other)
    ]
    function = helper.make_function(
        LOCAL, "Maybe", ["x", "cond", *PARAMS], ["out"], body, opsets(local=False)
    )
    node = call("blk", "x", "y", "p1", op="Maybe")
    node.input.insert(1, "cond")
    model = make_model(
        [node],
        [
            value_info("x", TensorProto.FLOAT, [1, C, 6, 6]),
            value_info("cond", TensorProto.BOOL, []),
        ],
        [value_info("y", TensorProto.FLOAT, symbolic(4))],
        block_params(rng, "p1", C),
    )
    model.opset_import.append(helper.make_opsetid(LOCAL, 1))
    model.functions.append(function)
    result = bnfold.fold(model)
    assert [(r.call, r.batchnorms) for r in result.inlined] == [("blk", 1)]
    [folded] = result.folded
    assert (folded.batchnorm, folded.graph) == ("blk/bn", "blk/if.then_branch")
    assert folded.inlined_from == "local:Maybe at call site 'blk'"
    [branch] = [a.g for a in result.model.graph.node[0].attribute if a.name == "then_branch"]
    assert [n.op_type for n in branch.node] == ["Conv", "Relu"]
    assert branch.node[0].input[0] == "x" and branch.output[0].name == "blk/y"
    assert result.model.graph.node[0].output[0] == "y"
    check_full(result.model)
    x = rng.standard_normal([1, C, 6, 6]).astype(np.float32)
    for cond in (True, False):
        assert_same_function(model, result.model, feeds={"x": x, "cond": np.array(cond)})


def test_missing_opset_import_is_added(rng):
    """The inlined body calls aux:Helper (no BN, stays a function): the model gains the 'aux'
    import the function has."""
    helper_fn = helper.make_function(
        "aux", "Helper", ["t"], ["u"], [helper.make_node("Neg", ["t"], ["u"])], opsets(local=False)
    )
    nodes = [
        *conv_bn_relu_function().node[:2],
        helper.make_node("Helper", ["n"], ["y"], domain="aux"),
    ]
    block = helper.make_function(
        LOCAL,
        "ConvBnRelu",
        ["x", *PARAMS],
        ["y"],
        nodes,
        [*opsets(local=False), helper.make_opsetid("aux", 1)],
    )
    model = two_calls_model(rng, block)
    model.functions.append(helper_fn)
    result = bnfold.fold(model)
    assert len(result.folded) == 2
    assert op_types(result.model) == ["Conv", "Helper", "Conv", "Helper"]
    assert [f.name for f in result.model.functions] == ["Helper"]
    assert {(o.domain, o.version) for o in result.model.opset_import} == {
        ("", 17),
        (LOCAL, 1),
        ("aux", 1),
    }
    check_full(result.model)
    # onnxruntime wants the import in the model itself to run the original
    model.opset_import.append(helper.make_opsetid("aux", 1))
    assert_same_function(model, result.model)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda f: setattr(f, "domain", ""), "in the default ONNX domain"),
        (lambda f: f.node[2].input.__setitem__(0, "nowhere"), "reads 'nowhere'"),
        (lambda f: f.output.__setitem__(0, "gone"), "output 'gone' is not computed"),
        (
            lambda f: f.node.append(
                helper.make_node("ConvBnRelu", ["y", *PARAMS], ["z"], domain=LOCAL)
            ),
            "calls itself",
        ),
    ],
)
def test_functions_not_inlined(rng, edit, reason):
    """Functions whose inlining could change the meaning, or that are malformed: kept, reported."""
    function = conv_bn_relu_function()
    edit(function)
    model = two_calls_model(rng, function)
    for node in model.graph.node:
        node.domain = function.domain
    result = bnfold.fold(model)
    assert not result.inlined and not result.folded
    [skipped] = result.skipped
    assert skipped.reason.startswith("inside a model-local function, not inlined: ")
    assert reason in skipped.reason
    assert result.model.SerializeToString() == model.SerializeToString()


def test_call_with_more_outputs_than_the_function_is_not_inlined(rng):
    model = two_calls_model(rng)
    model.graph.node[1].output.append("extra")
    result = bnfold.fold(model)
    assert [r.call for r in result.inlined] == ["block1"]
    assert result.skipped[0].reason.endswith("call site 'block2' has 2 outputs, the function 1")
    assert op_types(result.model) == ["Conv", "Relu", "ConvBnRelu"]


def test_node_budget_bounds_inlining(rng):
    model = two_calls_model(rng)
    result = functions.inline_batchnorm_functions(model, max_nodes=4)
    assert [r.call for r in result.inlined] == ["block1"]
    assert result.skipped[0].reason.endswith("inlining would add more than 4 nodes")
    assert op_types(model) == ["Conv", "BatchNormalization", "Relu", "ConvBnRelu"]


def test_call_in_a_custom_op_graph_attribute_is_not_inlined(rng):
    body = helper.make_graph(
        [call("blk", "x", "t", "p1")], "body", [], [value_info("t", TensorProto.FLOAT, None)]
    )
    model = make_model(
        [helper.make_node("Wrap", ["x"], ["y"], domain="custom", body=body)],
        [value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [value_info("y", TensorProto.FLOAT, None)],
        block_params(rng, "p1"),
    )
    model.functions.append(conv_bn_relu_function())
    result = bnfold.fold(model)
    assert not result.inlined
    assert [r.reason for r in result.skipped] == [
        "inside a model-local function, not inlined: called inside a graph attribute of "
        "custom:Wrap, whose use is unknown"
    ]
    assert result.model.SerializeToString() == model.SerializeToString()


def test_function_with_another_default_opset_is_not_inlined(rng):
    model = two_calls_model(rng, conv_bn_relu_function(default_opset=13))
    result = bnfold.fold(model)
    assert not result.inlined and not result.folded
    assert [r.graph for r in result.skipped] == ["function local:ConvBnRelu"]
    assert result.skipped[0].reason == (
        "inside a model-local function, not inlined: it imports ai.onnx opset 13 and the model "
        "ai.onnx opset 17, so its nodes would mean other operator versions"
    )
    assert result.model.SerializeToString() == model.SerializeToString()


def test_bn_parameters_not_constant_at_one_call_site(rng):
    """block1 gets its BN scale from a graph input: no BN in it could fold, so it stays a call;
    block2 is inlined and folded; the function stays for block1."""
    model = two_calls_model(rng)
    model.graph.node[0].input[2] = "gamma"
    model.graph.input.append(value_info("gamma", TensorProto.FLOAT, [C]))
    result = bnfold.fold(model)
    assert [r.call for r in result.inlined] == ["block2"]
    assert [r.batchnorm for r in result.folded] == ["block2/bn"]
    assert [(r.batchnorm, r.graph, r.reason) for r in result.skipped] == [
        (
            "bn",
            "function local:ConvBnRelu",
            "inside a model-local function, not inlined: at call site 'block1', the scale of "
            "BatchNormalization 'bn' is not constant: 'gamma' is a graph input",
        )
    ]
    assert op_types(result.model) == ["ConvBnRelu", "Conv", "Relu"]
    assert [f.name for f in result.model.functions] == ["ConvBnRelu"]
    feeds = {
        "x": rng.standard_normal([1, 3, 6, 6]).astype(np.float32),
        "gamma": rng.uniform(0.5, 1.5, C).astype(np.float32),
    }
    check_full(result.model)
    assert_same_function(model, result.model, feeds=feeds)


def test_inlined_bn_that_still_cannot_fold_is_reported_with_its_origin(rng):
    """The Conv weight is a graph input: the call is inlined (its BN parameters are constant) but
    the BN cannot fold; it is skipped like any graph BN and says where it came from."""
    model = two_calls_model(rng)
    model.graph.node[0].input[1] = "weight"
    model.graph.input.append(value_info("weight", TensorProto.FLOAT, [C, 3, 3, 3]))
    result = bnfold.fold(model)
    assert [r.call for r in result.inlined] == ["block1", "block2"]
    assert [r.batchnorm for r in result.folded] == ["block2/bn"]
    [skipped] = result.skipped
    assert (skipped.batchnorm, skipped.graph) == ("block1/bn", "")
    assert "'weight' is a graph input" in skipped.reason
    assert skipped.inlined_from == "local:ConvBnRelu at call site 'block1'"
    feeds = {
        "x": rng.standard_normal([1, 3, 6, 6]).astype(np.float32),
        "weight": rng.standard_normal([C, 3, 3, 3]).astype(np.float32),
    }
    check_full(result.model)
    assert_same_function(model, result.model, feeds=feeds)


def block_with_outputs(rng, outputs):
    """Block(x, W, s, b, m, v) -> `outputs` of y = Relu(BN(Conv)), x, unused = Neg(Conv); the
    calls name their first output only (the others: '')."""
    nodes = [*conv_bn_relu_function().node, helper.make_node("Neg", ["c"], ["unused"])]
    function = helper.make_function(
        LOCAL, "Block", ["x", *PARAMS], outputs, nodes, opsets(local=False)
    )
    model = two_calls_model(rng, function, second_op="Block")
    model.graph.node[0].op_type = "Block"
    for node in model.graph.node:
        node.output.extend([""] * (len(outputs) - 1))
    return model


def test_omitted_optional_outputs_get_fresh_names(rng):
    model = block_with_outputs(rng, ["y", "unused"])
    result = bnfold.fold(model)
    assert len(result.inlined) == 2
    assert not result.folded  # the Conv output is also read by Neg: nothing to fold into
    negs = [n for n in result.model.graph.node if n.op_type == "Neg"]
    assert [n.output[0] for n in negs] == ["block1/unused", "block2/unused"]
    check_full(result.model)
    assert_same_function(model, result.model)


def test_formal_input_passed_through_becomes_identity(rng):
    """onnxruntime refuses such functions ("ONNX Schema Block: failed validating"): compared in
    onnx's reference evaluator."""
    model = block_with_outputs(rng, ["y", "x", "unused"])
    model.graph.node[0].output[1] = "x_again"
    model.graph.output.append(value_info("x_again", TensorProto.FLOAT, [1, 3, 6, 6]))
    result = bnfold.fold(model)
    identities = [n for n in result.model.graph.node if n.op_type == "Identity"]
    assert [(list(n.input), list(n.output)) for n in identities] == [(["x"], ["x_again"])]
    check_full(result.model)
    feeds = random_feeds(model)
    want = ReferenceEvaluator(model).run(None, feeds)
    got = ReferenceEvaluator(result.model).run(None, feeds)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w, g)


def test_keep_functions_leaves_the_model_unchanged(rng):
    model = two_calls_model(rng)
    result = bnfold.fold(model, inline_functions=False)
    assert not result.inlined and not result.folded
    assert [r.reason for r in result.skipped] == [
        "inside a model-local function, left unchanged (inline_functions=False)"  # (API words)
    ]
    assert result.model.SerializeToString() == model.SerializeToString()


def test_uncalled_function_is_kept_and_reported(rng):
    model = two_calls_model(rng)
    model.functions.append(conv_bn_relu_function("Spare"))
    result = bnfold.fold(model)
    assert len(result.folded) == 2
    assert [(r.graph, r.reason) for r in result.skipped] == [
        (
            "function local:Spare",
            "inside a model-local function, not inlined: nothing in the model calls it",
        )
    ]
    assert [f.name for f in result.model.functions] == ["Spare"]
    check_full(result.model)


def test_fold_graph_inlines_too(rng):
    import onnx_graphsurgeon as gs

    model = two_calls_model(rng)
    graph = gs.import_onnx(model)
    result = bnfold.fold_graph(graph)
    assert len(result.folded) == 2
    assert [n.op for n in graph.nodes] == ["Conv", "Relu", "Conv", "Relu"]
    kept = bnfold.fold_graph(gs.import_onnx(model), inline_functions=False)
    assert not kept.folded and len(kept.skipped) == 1


@pytest.mark.parametrize("keep", [False, True])
def test_cli_reports_inlined_calls(rng, tmp_path, keep):
    path, out, report = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(two_calls_model(rng), path)
    proc = run_cli(path, "-o", out, "--report", report, *(["--keep-functions"] if keep else []))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    data = json.loads(report.read_text())
    if keep:
        assert not any(line.startswith("INLINED") for line in lines)
        assert any("left unchanged (--keep-functions" in line for line in lines)
        assert data["inlined"] == [] and data["functions_removed"] == []
        return
    assert lines[1:3] == [
        "INLINED | block1 | function local:ConvBnRelu | 1 BatchNormalization",
        "INLINED | block2 | function local:ConvBnRelu | 1 BatchNormalization",
    ]
    assert lines[-1].startswith(
        "folded 2 of 2 BatchNormalization | inlined 2 function calls | 2 → 4 nodes | validated"
    )
    assert data["inlined"][0] == {
        "status": "inlined",
        "call": "block1",
        "function": "local:ConvBnRelu",
        "batchnorms": 1,
        "graph": "",
    }
    assert data["functions_removed"] == ["local:ConvBnRelu"]
    assert data["folded"][1]["inlined_from"] == "local:ConvBnRelu at call site 'block2'"
