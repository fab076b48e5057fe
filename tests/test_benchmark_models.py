"""The benchmark's model builders make valid models that bnfold folds completely and exactly
(the benchmark's timings are only meaningful if the work is the real work)."""

from __future__ import annotations

import sys

import onnx

import bnfold
from tests.builders import ROOT, assert_same_function

sys.path.insert(0, str(ROOT / "benchmarks"))
import models as benchmark_models


def test_chain_model_folds_every_batchnorm():
    model = benchmark_models.chain(6)
    onnx.checker.check_model(model, full_check=True)
    result = bnfold.fold(model)
    assert (len(result.folded), len(result.skipped)) == (6, 0)
    assert result.nodes_after == 12
    assert_same_function(model, result.model)


def test_resnet_like_model_folds_every_batchnorm():
    model = benchmark_models.resnet_like(8, (1, 1, 1, 1))
    onnx.checker.check_model(model, full_check=True)
    result = bnfold.fold(model)
    assert not result.skipped and len(result.folded) == 1 + 4 * 4
    assert_same_function(model, result.model)
