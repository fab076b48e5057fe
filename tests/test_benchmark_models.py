"""The benchmark's model builders make valid models that bnfold folds completely and exactly
(the benchmark's timings are only meaningful if the work is the real work)."""

from __future__ import annotations

import sys

import onnx
import pytest

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


def test_many_subgraphs_model_folds_every_batchnorm():
    model = benchmark_models.many_subgraphs(3)
    onnx.checker.check_model(model, full_check=True)
    result = bnfold.fold(model)
    assert (len(result.folded), len(result.skipped)) == (3, 0)
    assert all(record.graph for record in result.folded)  # inside the If branches
    assert_same_function(model, result.model)


def test_resnet_like_model_folds_every_batchnorm():
    model = benchmark_models.resnet_like(8, (1, 1, 1, 1))
    onnx.checker.check_model(model, full_check=True)
    result = bnfold.fold(model)
    assert not result.skipped and len(result.folded) == 1 + 4 * 4
    assert_same_function(model, result.model)


@pytest.mark.filterwarnings("ignore:Specified provider")  # onnxruntime's, for the fake CUDA
def test_inference_effect_times_each_provider_and_says_why_one_cannot_run(tmp_path, monkeypatch):
    import bench
    import onnxruntime as ort

    model = benchmark_models.chain(2)
    original, folded = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(model, original)
    onnx.save(bnfold.fold(model).model, folded)
    available = ort.get_available_providers()
    # CUDA listed as available (as on a GPU machine); where it is not usable, a row says why
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: [*available, "CUDAExecutionProvider"]
    )
    effect = bench.inference_effect(original, folded, runs=2)
    levels = [
        f"{level}/{which}"
        for level in ("disable_all", "default")
        for which in ("original", "folded")
    ]
    assert list(effect) == [f"cpu/{key}" for key in levels] + [f"cuda/{key}" for key in levels]
    for key in levels:
        assert effect[f"cpu/{key}"]["latency_ms"] > 0 and effect[f"cpu/{key}"]["create_s"] > 0
        cuda = effect[f"cuda/{key}"]
        if "CUDAExecutionProvider" not in available:
            assert "error" in cuda


def test_validation_cost_compares_the_default_command_with_its_floor(tmp_path):
    import bench

    source = tmp_path / "in.onnx"
    onnx.save(benchmark_models.chain(3), source)
    cost = bench.validation_cost(source, tmp_path, repeat=1, timeout=120)
    assert not cost["floor"]["error"] and not cost["bnfold"]["error"], cost
    assert (tmp_path / "v.onnx").exists() and (tmp_path / "floor.onnx").exists()
    assert cost["time_ratio"] > 0 and cost["memory_ratio"] > 0
    assert len(cost["pair_time_ratios"]) == cost["runs"] == 1
    text = "\n".join(bench._cost_lines("chain", cost))
    assert "× floor: time" in text and "Medians of 1 alternating runs" in text
