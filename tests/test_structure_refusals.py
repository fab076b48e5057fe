"""Models the pass refuses before folding (exit 2 from the command): weights whose dims do not
match their data, a value defined twice."""

from __future__ import annotations

import pytest
from onnx import helper

import bnfold
from tests.builders import (
    conv_bn,
)


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
