"""The rule protocol (`bnfold/producers/rule.py`): every rule of every list answers in one shape,
only reads the graph, and a new rule is one function and one line in its list."""

from __future__ import annotations

import dataclasses
import glob

import onnx
import pytest

import bnfold
from bnfold.folding import fold_in_place
from bnfold.graph_view import GraphView
from bnfold.graphs import default_opset
from bnfold.producers import registry
from bnfold.producers.backward import into_layer
from bnfold.producers.rule import Absorb, Bypass, Match, Skip
from tests.builders import MODELS, assert_same_function

REAL_MODELS = sorted(glob.glob(str(MODELS / "*.onnx")))


def every_answer(model: onnx.ModelProto):
    """(op type, rule, answer) for every rule asked about every node of the main graph."""
    opset = default_opset(model)
    view = GraphView(model.graph, ir_version=model.ir_version, opset=opset)
    for index, node in enumerate(view.nodes):
        rules = registry.RULES.get(node.op_type)
        if rules is None:
            continue
        subject = rules.read(view, index, node, opset)
        if isinstance(subject, Skip):
            yield node.op_type, rules.read, subject
            continue
        for _, group in rules.groups:
            for rule in group:
                yield node.op_type, rule, rule(view, index, subject, opset)


@pytest.mark.parametrize("path", REAL_MODELS, ids=lambda p: p.rsplit("/", 1)[-1])
def test_every_rule_answers_in_the_protocol_s_shape_and_only_reads(path):
    model = onnx.load(path)
    before = model.SerializeToString()
    answers = list(every_answer(model))
    assert any(isinstance(answer, Match) for _, _, answer in answers)
    for op_type, rule, answer in answers:
        assert answer is None or isinstance(answer, Match | Skip), (op_type, rule)
        if isinstance(answer, Skip):
            assert isinstance(answer.reason, str) and answer.reason, (op_type, rule)
        if isinstance(answer, Match):
            assert answer.layers and answer.removals, (op_type, rule)
            assert all(isinstance(r, Bypass | Absorb) for r in answer.removals)
    assert model.SerializeToString() == before  # asking never edits


def test_the_batchnorm_rules_always_end_with_an_answer():
    """The last backward rule says why nothing before a BN can take it: every BN gets a record."""
    *_, last = registry.RULES["BatchNormalization"].groups[0][1]
    model = onnx.load(REAL_MODELS[0])
    opset = default_opset(model)
    view = GraphView(model.graph, ir_version=model.ir_version, opset=opset)
    for index, node in enumerate(view.nodes):
        if node.op_type == "BatchNormalization":
            subject = registry.RULES["BatchNormalization"].read(view, index, node, opset)
            assert isinstance(last(view, index, subject, opset), Skip)


def with_first_backward_rule(rule) -> dict:
    """The rule lists with `rule` asked first about each BatchNormalization."""
    rules = registry.RULES["BatchNormalization"]
    (direction, backward), *rest = rules.groups
    changed = dataclasses.replace(rules, groups=((direction, (rule, *backward)), *rest))
    return {**registry.RULES, "BatchNormalization": changed}


def test_a_new_rule_is_one_function_and_one_line():
    """A rule put first in the backward list is asked first: here one that refuses every Conv
    whose name starts with "keep", and otherwise lets the next rules answer."""

    def keep_some(view, bn_index, bn, opset):
        layer = view.producer.get(bn.input)
        if layer is not None and view.nodes[layer].name.startswith("keep"):
            return Skip("the layer before it is to be kept as it is")
        return None

    rules = with_first_backward_rule(keep_some)
    assert registry.conv_pairs_batchable(), (
        "a rule asked before into_layer declares neither about_producers nor never_folds: "
        "the vectorised Conv -> BN path is off (bnfold/producers/rule.py)"
    )
    assert not registry.conv_pairs_batchable(rules)  # (it might answer about a Conv: asked)
    model = onnx.load(MODELS / "resnet_tiny.onnx")
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.name = "keep_this_one"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    result = fold_in_place(copy, rules=rules)
    kept = [r for r in result.skipped if r.reason == "the layer before it is to be kept as it is"]
    assert len(kept) == 1 and result.folded
    assert_same_function(model, result.model)


def test_a_rule_s_match_is_what_the_pass_makes():
    """`Match.apply` edits through the view's editor; the records name the layer folded into."""
    model = onnx.load(MODELS / "resnet_tiny.onnx")
    opset = default_opset(model)
    view = GraphView(model.graph, ir_version=model.ir_version, opset=opset)
    index = next(i for i, n in enumerate(view.nodes) if n.op_type == "BatchNormalization")
    bn = registry.RULES["BatchNormalization"].read(view, index, view.nodes[index], opset)
    match = into_layer(view, index, bn, opset)
    assert isinstance(match, Match)
    layer = view.nodes[match.into]
    records = match.apply(view, bnfold.graph_view.NameAllocator(model))
    view.finish()
    assert [r.into for r in records] == [layer.name] and records[0].into_op == "Conv"
    assert len(model.graph.node) == len(view.nodes) - 1


def test_a_layer_given_a_new_bias_add_takes_over_the_output_through_it():
    """A Match whose layer gets a new bias Add and takes over the removed node's output: the Add
    writes that output, the layer writes the Add's input."""
    import numpy as np

    from bnfold.graph_view import NameAllocator
    from bnfold.producers.base import FoldPlan

    graph = _graph(("MatMul", ["w", "x"], ["h"]), ("Relu", ["h"], ["y"]))
    model = onnx.helper.make_model(graph, ir_version=10)
    view = GraphView(model.graph, ir_version=10, opset=17)
    plan = FoldPlan((), "shifted", added_bias=np.ones((2, 1), np.float32))
    Match(((0, plan),), (Bypass(1, 0, "how"),), 0).apply(view, NameAllocator(model))
    view.finish()
    matmul, add = model.graph.node
    assert (add.op_type, list(add.input[:1]), list(add.output)) == (
        "Add",
        [matmul.output[0]],
        ["y"],
    )


def test_what_the_vectorised_path_must_respect_is_derived_from_the_rules():
    """The nodes a forward rule may fold into a layer first, and the nodes backward rules follow
    back to a layer, come from the rule lists' declarations, not from a list kept by hand."""
    assert registry.forward_folding_ops() == {"BatchNormalization", "Mul", "Add", "Sub", "Div"}
    assert registry.followed_back_through() == {"Concat", "Identity", "Reshape", "Transpose"}
    # (a bias Add is followed back only to a MatMul with its weight on the left)
    assert registry.followed_back_through(layer="MatMul") == {
        "Add",
        "Concat",
        "Identity",
        "Reshape",
        "Transpose",
    }

    def undeclared(view, index, bn, opset):
        return None

    rules = with_first_backward_rule(undeclared)
    assert registry.followed_back_through(rules) is None  # (it may follow anything)


def _graph(*nodes: tuple[str, list[str], list[str]], **attributes) -> onnx.GraphProto:
    """A graph of the given (op type, inputs, outputs) nodes: only their wiring matters here."""
    made = [onnx.helper.make_node(op, inputs, outputs) for op, inputs, outputs in nodes]
    for node in made:
        if node.op_type == "If":
            node.attribute.extend(
                onnx.helper.make_attribute(name, graph) for name, graph in attributes.items()
            )
    return onnx.helper.make_graph(made, "g", [], [])


MATMUL_THEN_BN = (("MatMul", ["x", "w"], ["m"]), ("BatchNormalization", ["m", "s"], ["y"]))


@pytest.mark.parametrize(
    ("nodes", "needed"),
    [
        (MATMUL_THEN_BN, True),
        ((("MatMul", ["x", "w"], ["m"]), ("Reshape", ["m", "r"], ["t"]),
          ("Transpose", ["t"], ["u"]), ("BatchNormalization", ["u", "s"], ["y"])), True),
        ((("BatchNormalization", ["x", "s"], ["b"]), ("MatMul", ["b", "w"], ["y"])), True),
        ((("BatchNormalization", ["x", "s"], ["b"]), ("MatMul", ["w", "b"], ["y"])), True),
        ((("BatchNormalization", ["x", "s"], ["b"]), ("Transpose", ["b"], ["t"]),
          ("MatMul", ["t", "w"], ["y"])), False),  # (no forward rule follows a Transpose)
        ((("Conv", ["x", "w"], ["c"]), ("BatchNormalization", ["c", "s"], ["y"])), False),
        ((("MatMul", ["x", "w"], ["m"]), ("Relu", ["m"], ["r"]),
          ("BatchNormalization", ["r", "s"], ["y"])), False),
        ((("If", ["c"], ["y"]),), True),  # (a MatMul → BN in its branch)
    ],
    ids=["matmul-bn", "through-layout", "bn-matmul", "right-operand", "bn-transpose-matmul",
         "conv-bn", "through-relu", "in-a-branch"],
)  # fmt: skip
def test_shape_inference_runs_where_a_rule_declares_it_needs_ranks(nodes, needed):
    """`folding._needs_ranks` answers from the rules' declarations (`infers_ranks_near`)."""
    from bnfold.folding import _needs_ranks

    branch = _graph(*MATMUL_THEN_BN)
    graph = _graph(*nodes, then_branch=branch, else_branch=_graph())
    assert _needs_ranks(graph, registry.rank_meetings()) is needed


def test_a_rule_that_declares_it_needs_ranks_gets_shape_inference(monkeypatch):
    """The meetings come from the declarations: a new rule asking for ranks near a Gemm makes
    Gemm → BN one; and the pass runs onnx's shape inference exactly where one is found (once),
    which a MatMul whose input rank nothing declares or proves needs to take a BN."""
    from bnfold import folding
    from bnfold.producers.rule import infers_ranks_near

    assert registry.rank_meetings() == (
        registry.RankMeeting(
            frozenset({"MatMul"}),
            frozenset({"Reshape", "Transpose", "Identity"}),
            frozenset({"BatchNormalization"}),
        ),
        registry.RankMeeting(frozenset({"MatMul"}), frozenset(), frozenset({"BatchNormalization"})),
        registry.RankMeeting(
            frozenset({"MatMul"}), frozenset({"Add"}), frozenset({"BatchNormalization"})
        ),
        registry.RankMeeting(frozenset({"BatchNormalization"}), frozenset(), frozenset({"MatMul"})),
    )
    gemm_bn = _graph(("Gemm", ["x", "w"], ["g"]), ("BatchNormalization", ["g", "s"], ["y"]))
    assert not folding._needs_ranks(gemm_bn, registry.rank_meetings())

    @infers_ranks_near("Gemm")
    def near_gemm(view, index, bn, opset):
        return None

    rules = with_first_backward_rule(near_gemm)
    assert folding._needs_ranks(gemm_bn, registry.rank_meetings(rules))

    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 6] x) => (float[2, 3] y)
        <float[4, 3] w = {1., 2., 3., 4., 5., 6., 7., 8., 9., 1., 2., 3.},
         int64[1] starts = {1}, int64[1] ends = {5}, int64[1] axes = {1},
         float[3] s = {1., 2., 3.}, float[3] b = {0.5, 0.25, 1.},
         float[3] mean = {0.1, 0.2, 0.3}, float[3] var = {1., 2., 4.}> {
            part = Slice(x, starts, ends, axes)
            m = MatMul(part, w)
            y = BatchNormalization(m, s, b, mean, var)
        }"""
    )
    calls = []
    infer = folding._shape_inference_ranks
    monkeypatch.setattr(folding, "_shape_inference_ranks", lambda m: calls.append(1) or infer(m))
    result = bnfold.fold(model)
    assert len(calls) == 1 and len(result.folded) == 1  # (Slice's rank: inference's alone)
    assert_same_function(model, result.model)
    bnfold.fold(onnx.load(MODELS / "resnet_tiny.onnx"))
    assert len(calls) == 1  # (Conv → BN: no rule asks)


@pytest.mark.parametrize("path", REAL_MODELS, ids=lambda p: p.rsplit("/", 1)[-1])
def test_each_layer_kind_says_its_output_channels(path):
    """`producers.LAYERS`: every kind has its planner and reads its output channels from its
    weight (`affine.producer_channels` asks it): a BatchNormalization after a layer has as many
    channels as the layer says."""
    from bnfold.affine import producer_channels
    from bnfold.producers import LAYERS, PLANNERS

    assert {op: layer.plan for op, layer in LAYERS.items()} == PLANNERS
    model = onnx.load(path)
    view = GraphView(model.graph, ir_version=model.ir_version, opset=default_opset(model))
    seen = 0
    for node in view.nodes:
        producer = view.producer.get(node.input[0]) if node.input else None
        if node.op_type != "BatchNormalization" or producer is None:
            continue
        layer = view.nodes[producer]
        if layer.op_type in LAYERS:
            channels = view.constant(node.input[1]).shape[0]
            assert producer_channels(layer, view) == (channels, view.rank(node.input[0]))
            seen += 1
    assert seen
