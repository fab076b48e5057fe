"""`fold_graph`: the fold on an onnx-graphsurgeon graph, in place."""

from __future__ import annotations

import bnfold
from tests.builders import (
    assert_same_function,
    conv_bn,
)


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
