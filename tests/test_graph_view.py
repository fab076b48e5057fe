"""The index a GraphView builds once: producers, readers (one int per tensor read once), order."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from bnfold.graph_view import GraphView, Readers


def view_of(text: str) -> GraphView:
    model = onnx.parser.parse_model(text)
    return GraphView(model.graph, ir_version=model.ir_version, opset=17)


def test_readers_keep_an_int_for_one_read_and_a_list_for_more():
    readers = Readers.of_reads(["a", "b", "a", "", "c", "a"], [0, 0, 1, 1, 2, 2])
    assert readers == {"a": [0, 1, 2], "b": 0, "c": 2}  # "" is an absent input, not a read
    assert readers.of("a") == [0, 1, 2] and readers.of("b") == [0] and readers.of("z") == []
    assert readers.only("b") == 0 and readers.only("a") is None and readers.only("z") is None
    readers.remove("a", 1)
    readers.remove("a", 0)
    assert readers["a"] == 2 and readers.only("a") == 2  # back to one reader: a bare int
    readers.remove("a", 2)
    assert "a" not in readers
    readers.add("b", 5)
    assert readers["b"] == [0, 5]
    readers.add("new", 3)
    assert readers.only("new") == 3
    with pytest.raises(ValueError):
        readers.remove("new", 4)


def test_a_node_reading_a_tensor_twice_is_two_reads():
    view = view_of(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Add(x, x) }"""
    )
    assert view.consumers.of("x") == [0, 0]
    assert view.sole_consumer("x") is None  # read twice: not a sole reader
    view.consumers.remove("x", 0)
    assert view.sole_consumer("x") == 0


def test_index_producers_order_and_subgraph_reads():
    view = view_of(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y) {
            a = Abs(x)
            y = If(c) <then_branch = g1 () => (float[2] t) { t = Neg(a) },
                       else_branch = g2 () => (float[2] e) { e = Relu(x) }>
        }"""
    )
    assert view.producer == {"a": 0, "y": 1}
    assert view.consumers.of("a") == [1]  # read inside a branch: counts as the If's read
    assert view.consumers.of("x") == [0, 1] and view.consumers.of("c") == [1]
    assert view.reads_in_order and not view.defines_twice and view.holders == [1]


def test_out_of_order_reads_and_double_definitions_are_noticed():
    view = view_of(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
            y = Relu(a)
            a = Abs(x)
            a = Neg(x)
        }"""
    )
    assert not view.reads_in_order and view.defines_twice


def test_all_graphs_walks_every_nested_graph_with_its_path():
    from bnfold.graphs import all_graphs

    def branch(name: str, inner=None):
        nodes = [helper.make_node("Identity", ["x"], [f"{name}_out"])]
        if inner is not None:
            nodes.append(
                helper.make_node(
                    "If",
                    ["c"],
                    [f"{name}_if"],
                    name=f"{name}_if",
                    then_branch=inner,
                    else_branch=branch(f"{name}_e"),
                )
            )
        return helper.make_graph(
            nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)]
        )

    nested = branch("deep")
    main = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node(
                "If",
                ["c"],
                ["y"],
                name="top",
                then_branch=branch("t", nested),
                else_branch=branch("e"),
            ),
        ],
        "main",
        [],
        [],
    )
    found = [(path, graph.name) for path, graph in all_graphs(main)]
    assert found == [  # (make_node writes attributes by name: else_branch first)
        ("", "main"),
        ("top.else_branch", "e"),
        ("top.then_branch", "t"),
        ("top.then_branch/t_if.else_branch", "t_e"),
        ("top.then_branch/t_if.then_branch", "deep"),
    ]
    assert [p for p, _ in all_graphs(main, "outer")][1] == "outer/top.else_branch"


def test_interpose_puts_a_node_right_after_another_writing_its_output():
    """The node before takes a fresh output name; the new node writes the old one, so readers,
    graph outputs included, read the new node's output unchanged."""
    import bnfold.graph_view as graph_view

    model = onnx.helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Relu", ["x"], ["a"], name="first"),
                helper.make_node("Neg", ["a"], ["b"], name="second"),
                helper.make_node("Abs", ["a"], ["y"], name="third"),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
            [
                helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]),
            ],
            [onnx.numpy_helper.from_array(np.ones(2, np.float32), "one")],
        ),
        ir_version=10,
    )
    view = GraphView(model.graph, ir_version=10, opset=17)
    names = graph_view.NameAllocator(model)
    added = view.interpose(0, "Add", ["one"], names)
    fresh = view.nodes[0].output[0]
    assert view.nodes[added].output[0] == "a" and list(view.nodes[added].input) == [fresh, "one"]
    assert view.producer["a"] == added and view.producer[fresh] == 0
    assert sorted(view.consumers.of("a")) == [1, 2] and view.consumers.of(fresh) == [added]
    second = view.interpose(1, "Mul", ["one"], names)  # ('b' is a graph output)
    assert view.nodes[second].output[0] == "b"
    view.finish()
    assert [n.op_type for n in model.graph.node] == ["Relu", "Add", "Neg", "Mul", "Abs"]
    onnx.checker.check_model(model, full_check=True)
    run = ReferenceEvaluator(model).run
    y, b = run(None, {"x": np.array([-1.0, 2.0], np.float32)})
    assert y.tolist() == [1.0, 3.0] and b.tolist() == [-1.0, -3.0]
