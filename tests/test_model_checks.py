"""Models the pass must refuse before any edit (one `InputError` line): data not the size of its
dims, negative dimensions, initializers given twice, cycles through subgraph reads, external data
not loaded."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import bnfold
from bnfold.folding import fold_in_place
from tests.builders import (
    TensorProto,
    bn_node,
    bn_params,
    conv_bn_with,
    make_model,
    tensor,
    value_info,
)


def _conv_bn_model():
    rng = np.random.default_rng(0)
    weight = tensor("w", rng.normal(0, 1, [4, 3, 3, 3]).astype(np.float32))
    return make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("c", "y")],
        [value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [value_info("y", TensorProto.FLOAT, None)],
        [weight, *bn_params(rng, 4)],
    )


def test_unloaded_external_data_is_a_clean_error(rng, tmp_path):
    model = conv_bn_with([], rng)
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0)
    partial = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    with pytest.raises(bnfold.InputError, match="external data is not loaded"):
        bnfold.fold(partial)
    assert len(bnfold.fold(tmp_path / "m.onnx").folded) == 1


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
