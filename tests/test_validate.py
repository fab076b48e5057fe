"""Validation: faithful settings, a wrong candidate fails, tolerances and reports behave."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import helper

import bnfold
from bnfold.validation import Tolerance, compare, generate_inputs, validate
from tests.builders import MODELS, TensorProto, make_model, symbolic, value_info

RESNET = MODELS / "resnet_tiny.onnx"
HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def perturbed(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """A copy with the first Conv's weight scaled by `factor` in one output channel."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    conv = next(n for n in copy.graph.node if n.op_type == "Conv")
    init = next(t for t in copy.graph.initializer if t.name == conv.input[1])
    weight = onnx.numpy_helper.to_array(init).copy()
    weight *= factor
    init.CopyFrom(onnx.numpy_helper.from_array(weight, init.name))
    return copy


def test_folded_model_passes_on_cpu():
    folded = bnfold.fold(RESNET).model
    report = validate(RESNET, folded, providers=["cpu"])
    assert report.passed
    (outcome,) = report.providers
    assert outcome.status == "passed" and outcome.outputs[0].output == "logits"
    assert outcome.outputs[0].max_abs < 1e-5


def test_weight_off_by_one_percent_fails():
    folded = bnfold.fold(RESNET).model
    report = validate(RESNET, perturbed(folded, 1.01), providers=["cpu"])
    assert not report.passed
    comparison = report.providers[0].outputs[0]
    assert comparison.mismatches > 0
    assert comparison.passing_atol > comparison.atol
    assert "FAILED | cpu | output 'logits'" in report.lines()[-2]


def test_reference_runs_with_optimisations_off():
    """At ORT_ENABLE_BASIC onnxruntime folds Conv+BN itself; validation must not."""
    report = validate(RESNET, RESNET, providers=["cpu"])
    assert report.settings["graph_optimization_level"] == "ORT_DISABLE_ALL"
    assert report.providers[0].outputs[0].max_abs == 0.0


def test_auto_providers_report_cuda_skip_without_cuda():
    if HAS_CUDA:
        pytest.skip("CUDA is available here")
    report = validate(RESNET, RESNET)
    assert report.passed
    cuda = next(p for p in report.providers if p.provider == "cuda")
    assert cuda.status == "skipped" and "onnxruntime-gpu" in cuda.reason


def test_explicit_cuda_without_cuda_fails():
    if HAS_CUDA:
        pytest.skip("CUDA is available here")
    report = validate(RESNET, RESNET, providers="cuda")
    assert not report.passed
    assert report.providers[0].status == "unavailable"


def test_nan_in_candidate_fails_even_with_huge_tolerance():
    result = compare(
        "cpu", "y", np.ones(4), np.array([1, 1, np.nan, 1.0]), Tolerance(rtol=1e9, atol=1e9)
    )
    assert not result.passed and result.nonfinite == 1


def test_allclose_semantics_both_bounds_must_be_exceeded():
    ref = np.array([100.0, 0.0])
    within_rtol = compare("cpu", "y", ref, np.array([100.5, 0.0]), Tolerance(rtol=1e-2, atol=0.0))
    assert within_rtol.passed
    beyond = compare("cpu", "y", ref, np.array([102.0, 0.0]), Tolerance(rtol=1e-2, atol=1.0))
    assert not beyond.passed
    assert beyond.passing_atol == pytest.approx(2.0) and beyond.passing_rtol == pytest.approx(0.02)


def test_per_output_tolerances():
    folded = bnfold.fold(RESNET).model
    wrong = perturbed(folded, 1.01)
    assert validate(RESNET, wrong, providers=["cpu"], atol={"logits": 10.0}).passed
    assert not validate(RESNET, wrong, providers=["cpu"], atol={"other": 10.0}).passed


def test_generated_inputs_are_seeded_and_dtype_aware():
    nodes = [
        helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["f", "x"], ["y"]),
    ]
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, ["n", 3]), value_info("i", TensorProto.INT64, [1, 3])],
        [value_info("y", TensorProto.FLOAT, symbolic(2))],
    )
    feeds, notes = generate_inputs(model, input_shapes={"x": (5, 3)}, seed=3)
    again, _ = generate_inputs(model, input_shapes={"x": (5, 3)}, seed=3)
    assert feeds["x"].shape == (5, 3) and feeds["x"].dtype == np.float32
    assert feeds["i"].dtype == np.int64 and feeds["i"].min() >= 0 and feeds["i"].max() < 4
    np.testing.assert_array_equal(feeds["x"], again["x"])
    assert not notes
    _, notes = generate_inputs(model)
    assert "not fixed; using 1" in notes[0]


def test_real_inputs_from_npz(tmp_path):
    data = {"input": np.random.default_rng(5).standard_normal([4, 3, 32, 32]).astype(np.float32)}
    np.savez(tmp_path / "d.npz", **data)
    from bnfold.validation import load_inputs

    report = validate(
        RESNET, bnfold.fold(RESNET).model, providers=["cpu"], inputs=load_inputs(tmp_path / "d.npz")
    )
    assert report.passed and report.inputs["input"]["shape"] == [4, 3, 32, 32]


# ----- CUDA (run on the GPU machine; skipped elsewhere) ----------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime's CUDA execution provider")
@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_passes_with_and_without_tf32(tf32):
    folded = bnfold.fold(RESNET).model
    report = validate(RESNET, folded, providers=["cpu", "cuda"], tf32=tf32)
    assert report.passed, report.lines()
    cuda = report.providers[1]
    assert cuda.status == "passed" and cuda.options["use_tf32"] == ("1" if tf32 else "0")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime's CUDA execution provider")
def test_cuda_catches_a_wrong_candidate():
    folded = bnfold.fold(RESNET).model
    report = validate(RESNET, perturbed(folded, 1.01), providers=["cuda"])
    assert not report.passed
    assert report.providers[0].status == "failed"


def test_huge_declared_input_is_a_clean_error():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [value_info("x", TensorProto.FLOAT, [100000, 100000, 100])],
        [value_info("y", TensorProto.FLOAT, symbolic(3))],
    )
    with pytest.raises(bnfold.InputError, match="smaller --input-shape"):
        validate(model, model, providers=["cpu"])


def zipmap_model(rng, labels=("a", "b", "c", "d")):
    """x → BN → Conv → Flatten → ZipMap: a `seq(map(string, float))` output (onnxruntime
    returns it as a list of dicts)."""
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"]),
        helper.make_node("Conv", ["n", "W"], ["c"], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node(
            "ZipMap", ["f"], ["z"], domain="ai.onnx.ml", classlabels_strings=list(labels)
        ),
    ]
    value_type = helper.make_tensor_type_proto(TensorProto.FLOAT, None)
    z_type = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.STRING, value_type)
    )
    arrays = {
        "W": rng.normal(0, 1, [4, 3, 4, 4]),
        "s": rng.uniform(0.5, 1.5, 3),
        "b": rng.normal(0, 1, 3),
        "m": rng.normal(0, 1, 3),
        "v": rng.uniform(0.5, 2, 3),
    }
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_value_info("z", z_type)],
        [onnx.numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()],
    )
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    return model


def test_sequence_of_maps_compares_values_with_tolerance_and_keys_exactly(rng):
    model = zipmap_model(rng)
    report = validate(model, model, providers=["cpu"])
    assert report.passed, report.lines()
    assert [o.output for o in report.providers[0].outputs] == ["z (keys)", "z"]
    report = validate(model, perturbed(model, 1.01), providers=["cpu"])
    assert [o.passed for o in report.providers[0].outputs] == [True, False]
    relabelled = zipmap_model(np.random.default_rng(0), labels=("a", "b", "c", "e"))
    report = validate(relabelled, zipmap_model(np.random.default_rng(0)), providers=["cpu"])
    assert not report.passed and report.providers[0].outputs[0].mismatches == 1
