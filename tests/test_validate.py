"""Validation end to end on the CPU: correct folds pass (also where fixed tolerances raised false
alarms), wrong ones fail (also in small-valued parts of an output), inputs, samples, warnings."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import bnfold
from bnfold.validation import Status, make_samples, validate
from bnfold.validation.criterion import CALIBRATION_DRAWS, PerOutput
from bnfold.validation.perturb import (
    changed_tensors,
    inputs_moved_by_rounding,
    weights_moved_by_rounding,
    what_the_fold_changed,
)
from bnfold.validation.providers import CPU, SessionFactory
from bnfold.validation.runs import MOVING, ModelSources, SessionSource, run_model, skeleton
from tests.builders import MODELS, TensorProto, make_model, symbolic, tensor, value_info

RESNET = MODELS / "resnet_tiny.onnx"


def scaled_channel(
    model: onnx.ModelProto, factor: float, index: int = 1, op_type: str = "Conv"
) -> onnx.ModelProto:
    """A copy with output channel 0 of the first `op_type` node's input `index` (1 weight, 2
    bias) multiplied by `factor`."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    conv = next(n for n in copy.graph.node if n.op_type == op_type)
    init = next(t for t in copy.graph.initializer if t.name == conv.input[index])
    values = onnx.numpy_helper.to_array(init).copy()
    values[0] *= values.dtype.type(factor)
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    return copy


def test_folded_model_passes_with_its_margin():
    report = validate(RESNET, bnfold.fold(RESNET).model, providers=["cpu"])
    assert report.passed, report.lines()
    (comparison,) = report.providers[0].outputs
    assert comparison.criterion == "calibrated" and 0 < comparison.limit_used < 0.5
    assert comparison.rounding_noise > 0
    assert report.to_dict()["settings"]["weights_written"] > 0


@pytest.mark.parametrize("index", [1, 2])
def test_one_channel_off_by_a_tenth_of_a_percent_fails(index):
    folded = bnfold.fold(RESNET).model
    report = validate(
        RESNET, scaled_channel(folded, 1.001 if index == 1 else 1.01, index), providers=["cpu"]
    )
    assert not report.passed
    comparison = report.providers[0].outputs[0]
    assert comparison.mismatches > 0 and comparison.limit_used > 1
    assert "FAILED | cpu | output 'logits'" in report.lines()[0]


def test_reference_runs_with_optimisations_off():
    """At ORT_ENABLE_BASIC onnxruntime folds Conv+BN itself; validation must not."""
    report = validate(RESNET, RESNET, providers=["cpu"])
    assert report.settings["graph_optimization_level"] == "ORT_DISABLE_ALL"
    assert report.providers[0].outputs[0].max_abs == 0.0


def cancelling_model(channels: int = 8) -> onnx.ModelProto:
    """Conv with bias 1e4 → BatchNormalization with mean ≈ 1e4 and variance 0.01: the original
    rounds the Conv's output at 1e4 (an ULP of 1e-3) before subtracting the mean, so it is itself
    ~1e-4 (relative) away from exact arithmetic; the fold, which subtracts in float64 once, is
    closer. A fixed rtol of 1e-4 calls the correct fold wrong."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "beta", "m", "v"], ["y"], name="bn"),
    ]
    params = {
        "w": rng.standard_normal([channels, 3, 3, 3]) * 0.3,
        "b": np.full(channels, 1e4),
        "s": np.ones(channels),
        "beta": np.zeros(channels),
        "m": 1e4 + rng.standard_normal(channels) * 0.01,
        "v": np.full(channels, 1e-2),
    }
    return make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [value_info("y", TensorProto.FLOAT, [1, channels, 14, 14])],
        [tensor(k, v.astype(np.float32)) for k, v in params.items()],
    )


def test_no_false_alarm_where_the_original_itself_is_off_by_rounding():
    model = cancelling_model()
    folded = bnfold.fold(model).model
    report = validate(model, folded, providers=["cpu"])
    assert report.passed, report.lines()
    assert not validate(model, folded, providers=["cpu"], rtol=1e-4).passed  # the old verdict
    assert not validate(model, scaled_channel(folded, 1.05), providers=["cpu"]).passed


def test_moving_the_folded_weights_leaves_the_model_as_it_was():
    model = bnfold.fold(RESNET).model
    model.graph.initializer[0].float_data.extend([])  # (raw data, as folds write)
    before = model.SerializeToString()
    written = changed_tensors(onnx.load(RESNET), model)
    with weights_moved_by_rounding(list(written.values()), seed=1) as moved:
        assert moved > 0 and model.SerializeToString() != before
    assert model.SerializeToString() == before


def resize_model() -> onnx.ModelProto:
    """Conv → BN → Resize ×2 (scales from a Constant node) → Conv whose weight is a Constant
    node's: constants without names of their own, and one that sets a shape."""
    rng = np.random.default_rng(3)

    def constant(name, values):
        return helper.make_node("Constant", [], [name], value=tensor("", values))

    nodes = [
        constant("w1", rng.standard_normal([4, 3, 1, 1]).astype(np.float32)),
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
        constant("scales", np.array([1, 1, 2, 2], np.float32)),
        helper.make_node("Resize", ["n", "", "scales"], ["r"], mode="nearest"),
        constant("w2", rng.standard_normal([2, 4, 1, 1]).astype(np.float32)),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
    ]
    stats = {
        "s": 1 + 0.3 * rng.standard_normal(4),
        "b": rng.standard_normal(4),
        "m": rng.standard_normal(4),
        "v": 0.2 + 2 * rng.uniform(size=4),
    }
    return make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        [tensor(k, v.astype(np.float32)) for k, v in stats.items()],
    )


def test_constants_are_matched_by_the_name_they_are_read_under_and_shapes_never_move():
    model = resize_model()
    assert changed_tensors(model, model) == {}
    folded = bnfold.fold(model).model
    written = changed_tensors(model, folded)
    assert "scales" not in written and "w2" not in written and written
    assert set(changed_tensors(folded, model)) >= {"s", "b", "m", "v"}
    report = validate(model, folded, providers="cpu")
    assert report.passed, report.lines()


def test_moving_the_original_s_inputs_leaves_the_model_as_it_was():
    model = cancelling_model()
    conv = model.graph.node[0]  # a caller's handle on a node stays valid
    before = model.SerializeToString()
    consumed = changed_tensors(bnfold.fold(model).model, model)
    with inputs_moved_by_rounding(model, consumed, seed=3) as moved:
        assert moved == 3  # the Conv's input, the BatchNormalization's input and its output
        ops = [n.op_type for n in model.graph.node]
        assert ops[:2] == ["Conv", "BatchNormalization"]
        assert ops.count("RandomUniformLike") == ops.count("Sign") == 3
        assert conv.input[0] == "x__bnfold_moved0"
        assert model.graph.node[1].output[0] == "y__bnfold_moved2"
        assert model.graph.node[-1].output[0] == "y"  # (the graph's output: the mover writes it)
    assert model.SerializeToString() == before
    conv.name = "renamed"
    assert model.graph.node[0].name == "renamed"


def two_scales(dtype=np.float32) -> onnx.ModelProto:
    """y = Concat(x·A·1e4, x·B·0.01): boxes in pixels next to scores, as detection heads do."""
    rng = np.random.default_rng(2)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["big"]),
        helper.make_node("MatMul", ["x", "B"], ["small"]),
        helper.make_node("Concat", ["big", "small"], ["y"], axis=1),
    ]
    inits = [
        tensor("A", (rng.standard_normal([16, 64]) * 1e4 / 4).astype(dtype)),
        tensor("B", (rng.standard_normal([16, 64]) * 0.01 / 4).astype(dtype)),
    ]
    return make_model(
        nodes, [value_info("x", elem, [1, 16])], [value_info("y", elem, [1, 128])], inits
    )


def with_b_scaled(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    init = next(t for t in copy.graph.initializer if t.name == "B")
    values = onnx.numpy_helper.to_array(init)
    init.CopyFrom(onnx.numpy_helper.from_array(values * values.dtype.type(factor), "B"))
    return copy


@pytest.mark.parametrize(("dtype", "error"), [(np.float32, 1.01), (np.float16, 1.3)])
def test_an_error_in_the_small_valued_part_of_an_output_is_caught(dtype, error):
    model = two_scales(dtype)
    report = validate(model, with_b_scaled(model, error), providers=["cpu"])
    assert not report.passed, report.lines()
    assert report.providers[0].outputs[0].worst_index[1] >= 64


def test_explicit_tolerances_override_per_output_and_name_real_outputs():
    wrong = scaled_channel(bnfold.fold(RESNET).model, 1.01)
    passed = validate(RESNET, wrong, providers=["cpu"], atol={"logits": 10.0})
    assert passed.passed and passed.providers[0].outputs[0].criterion == "tolerance"
    with pytest.raises(bnfold.InputError, match=r"'other', which is not an output.*logits"):
        validate(RESNET, wrong, providers=["cpu"], atol={"other": 10.0})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("0.1", None),
        ([1e-3], "finite number >= 0, not \\[0.001\\]"),
        (-1.0, "finite number >= 0, not -1.0"),
        ({"logits": "x"}, "finite number >= 0, not 'x'"),
        (PerOutput(None, 1.0), "PerOutput.named must be a dict, not NoneType"),  # type: ignore[arg-type]
        (PerOutput({"logits": float("nan")}), "finite number >= 0, not nan"),
    ],
)
def test_malformed_tolerances_are_input_errors(given, message):
    """Whatever a caller passes as rtol or atol: a number, or an InputError naming it."""
    if message is None:
        assert validate(RESNET, RESNET, providers=["cpu"], rtol=given).passed
        return
    with pytest.raises(bnfold.InputError, match=f"rtol.*{message}"):
        validate(RESNET, RESNET, providers=["cpu"], rtol=given)


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
    samples = make_samples(model, input_shapes={"x": (5, 3)}, seed=3)
    again = make_samples(model, input_shapes={"x": (5, 3)}, seed=3)
    feeds = samples.runs[0]
    assert feeds["x"].shape == (5, 3) and feeds["x"].dtype == np.float32
    assert feeds["i"].dtype == np.int64 and feeds["i"].min() >= 0 and feeds["i"].max() < 4
    np.testing.assert_array_equal(feeds["x"], again.runs[0]["x"])
    assert not samples.notes
    assert "not fixed; using 1" in make_samples(model).notes[0]


def test_input_shape_must_name_an_input_and_agree_with_fixed_dims():
    with pytest.raises(bnfold.InputError, match=r"'nope', which is not an input.*input"):
        validate(RESNET, RESNET, providers="cpu", input_shapes={"nope": (1, 3, 32, 32)})
    declared = onnx.load(RESNET).graph.input[0].type.tensor_type.shape.dim
    fixed = [d.dim_value for d in declared]
    if all(fixed):
        with pytest.raises(bnfold.InputError, match="the model declares"):
            validate(RESNET, RESNET, providers="cpu", input_shapes={"input": (9, 9, 9, 9)})


def batch_free_model(first_dim="n"):
    w = tensor("W", np.random.default_rng(0).standard_normal([4, 3, 1, 1]).astype(np.float32))
    return make_model(
        [helper.make_node("Conv", ["x", "W"], ["y"])],
        [value_info("x", TensorProto.FLOAT, [first_dim, 3, 4, 4])],
        [value_info("y", TensorProto.FLOAT, [first_dim, 4, 4, 4])],
        [w],
    )


def test_samples_are_one_batch_when_the_first_dim_is_free():
    model = batch_free_model()
    report = validate(model, model, providers="cpu", samples=3, seed=7)
    assert report.settings["batched"] and report.settings["seeds"] == [7, 8, 9]
    assert report.inputs["x"]["shape"] == [3, 3, 4, 4]
    batch = make_samples(model, samples=3, seed=7).runs[0]["x"]
    one = make_samples(model, samples=1, seed=8).runs[0]["x"]
    np.testing.assert_array_equal(batch[1:2], one)  # sample k is seed+k, batched or not


def test_samples_run_one_by_one_when_the_batch_is_fixed():
    model = batch_free_model(first_dim=1)
    samples = make_samples(model, samples=3, seed=0)
    assert not samples.batched and len(samples.runs) == 3
    report = validate(model, model, providers="cpu", samples=3)
    assert report.passed and report.providers[0].outputs[0].elements == 3 * 64


def test_real_inputs_from_npz_and_npy(tmp_path):
    data = np.random.default_rng(5).standard_normal([4, 3, 32, 32]).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=data)
    np.save(tmp_path / "d.npy", data)
    folded = bnfold.fold(RESNET).model
    for name in ("d.npz", "d.npy"):
        report = validate(RESNET, folded, providers=["cpu"], inputs=tmp_path / name)
        assert report.passed and report.inputs["input"]["shape"] == [4, 3, 32, 32]


def two_input_model():
    return make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [value_info("a", TensorProto.FLOAT, [2]), value_info("b", TensorProto.INT32, [2])],
        [value_info("y", TensorProto.FLOAT, [2])],
    )


def test_given_inputs_are_cast_only_where_values_survive():
    model = make_model(
        [
            helper.make_node("Cast", ["b"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "f"], ["y"]),
        ],
        [value_info("a", TensorProto.FLOAT, [2]), value_info("b", TensorProto.INT32, [2])],
        [value_info("y", TensorProto.FLOAT, [2])],
    )
    report = validate(
        model, model, providers="cpu", inputs={"a": np.array([0.1, 2.0]), "b": np.array([1.0, 2.0])}
    )
    assert report.passed
    assert any("rounded from float64 to float32" in n for n in report.notes)
    assert any("'b' cast from float64 to int32 (values unchanged)" in n for n in report.notes)
    with pytest.raises(bnfold.InputError, match="'b' is float64, the model takes int32"):
        validate(model, model, providers="cpu", inputs={"b": np.array([1.5, 2.0])})
    with pytest.raises(bnfold.InputError, match="out of range"):
        validate(model, model, providers="cpu", inputs={"b": np.array([2**40, 1])})
    with pytest.raises(bnfold.InputError, match="overflow"):
        half = make_model(
            [helper.make_node("Relu", ["h"], ["y"])],
            [value_info("h", TensorProto.FLOAT16, [1])],
            [value_info("y", TensorProto.FLOAT16, [1])],
        )
        validate(half, half, providers="cpu", inputs={"h": np.array([1e6])})
    with pytest.raises(bnfold.InputError, match="does not take"):
        validate(model, model, providers="cpu", inputs={"c": np.zeros(2)})
    with pytest.raises(bnfold.InputError, match="shape 3; the model declares 2"):
        validate(model, model, providers="cpu", inputs={"a": np.zeros(3, np.float32)})


def test_npy_needs_a_single_input_model(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(2, np.float32))
    model = two_input_model()
    with pytest.raises(bnfold.InputError, match=r"use \.npz"):
        validate(model, model, providers="cpu", inputs=tmp_path / "a.npy")


def test_a_file_that_is_neither_npy_nor_npz_says_so(tmp_path):
    garbage = tmp_path / "in.npz"
    garbage.write_bytes(bytes(range(200)))
    with pytest.raises(bnfold.InputError, match=r"is not a \.npz or \.npy file \(its first"):
        validate(RESNET, RESNET, providers="cpu", inputs=garbage)


def test_saved_inputs_and_outputs_reproduce_the_run(tmp_path):
    folded = bnfold.fold(RESNET).model
    report = validate(
        RESNET,
        folded,
        providers="cpu",
        seed=4,
        save_inputs=tmp_path / "in",
        save_outputs=tmp_path / "out",
    )
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "cpu-original-0.npz" in saved and "cpu-folded-0.npz" in saved
    assert any(name.startswith("cpu-original-moved") for name in saved)
    again = validate(RESNET, folded, providers="cpu", inputs=tmp_path / "in" / "inputs-0.npz")
    assert again.providers[0].outputs[0].max_abs == report.providers[0].outputs[0].max_abs


def test_outputs_that_hardly_depend_on_the_inputs_are_warned_about():
    model = make_model(
        [
            helper.make_node("Mul", ["x", "tiny"], ["t"]),
            helper.make_node("Add", ["t", "one"], ["y"]),
        ],
        [value_info("x", TensorProto.FLOAT, [1, 8])],
        [value_info("y", TensorProto.FLOAT, [1, 8])],
        [tensor("tiny", np.float32(1e-9)), tensor("one", np.float32(1.0))],
    )
    report = validate(model, model, providers="cpu")
    assert report.passed
    assert any("hardly depends on the inputs" in w for w in report.warnings)
    assert report.lines()[0].startswith("WARNING | output 'y' hardly depends")
    assert not validate(RESNET, RESNET, providers="cpu").warnings


def test_an_output_without_finite_values_is_warned_about():
    model = make_model(
        [helper.make_node("Div", ["x", "zero"], ["y"])],
        [value_info("x", TensorProto.FLOAT, [1, 8])],
        [value_info("y", TensorProto.FLOAT, [1, 8])],
        [tensor("zero", np.float32(0.0))],
    )
    report = validate(model, model, providers="cpu")
    assert any("has no finite value on these inputs" in w for w in report.warnings)
    assert not any("nan" in w for w in report.warnings)


def test_empty_outputs_do_not_count_as_validated():
    report = validate(RESNET, RESNET, providers="cpu", input_shapes={"input": (0, 3, 32, 32)})
    assert not report.passed and "nothing was compared" in report.providers[0].reason


def test_huge_declared_input_is_a_clean_error():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [value_info("x", TensorProto.FLOAT, [100000, 100000, 100])],
        [value_info("y", TensorProto.FLOAT, symbolic(3))],
    )
    with pytest.raises(bnfold.InputError, match=r"smaller shape: input_shapes=\{'x': \(\.\.\.\)\}"):
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


def test_sequence_of_maps_compares_values_with_limits_and_keys_exactly(rng):
    model = zipmap_model(rng)
    report = validate(model, model, providers=["cpu"])
    assert report.passed, report.lines()
    assert [o.output for o in report.providers[0].outputs] == ["z (keys)", "z"]
    report = validate(model, scaled_channel(model, 1.01), providers=["cpu"])
    assert [o.passed for o in report.providers[0].outputs] == [True, False]
    relabelled = zipmap_model(np.random.default_rng(0), labels=("a", "b", "c", "e"))
    report = validate(relabelled, zipmap_model(np.random.default_rng(0)), providers=["cpu"])
    assert not report.passed and report.providers[0].outputs[0].mismatches == 1
    assert report.providers[0].status == Status.FAILED


# ----- cases found in review ------------------------------------------------------------------


def conv_bn_then(rng, tail_nodes, tail_inits, outputs, x_shape=(1, 3, 64, 64), channels=3):
    """x → Conv → BN (trained-looking statistics) → `tail_nodes`."""
    params = {
        "w": rng.standard_normal([channels, x_shape[1], 3, 3]) * 0.3,
        "s": 1 + 0.3 * rng.standard_normal(channels),
        "b": 0.2 * rng.standard_normal(channels),
        "m": 0.5 * rng.standard_normal(channels),
        "v": 0.2 + 2 * rng.uniform(size=channels),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
        *tail_nodes,
    ]
    inits = [tensor(k, v.astype(np.float32)) for k, v in params.items()] + list(tail_inits)
    return make_model(nodes, [value_info("x", TensorProto.FLOAT, list(x_shape))], outputs, inits)


def test_integer_outputs_may_flip_where_rounding_flips_them():
    """An image generator ending in Round → Cast(uint8): a correct fold flips a few pixels by
    one, as moving the weights by rounding does; a wrong one flips many."""
    rng = np.random.default_rng(0)
    tail = [
        helper.make_node("Tanh", ["n"], ["t"]),
        helper.make_node("Mul", ["t", "k"], ["sc"]),
        helper.make_node("Add", ["sc", "k"], ["sh"]),
        helper.make_node("Round", ["sh"], ["rd"]),
        helper.make_node("Cast", ["rd"], ["img"], to=TensorProto.UINT8),
    ]
    out = [value_info("img", TensorProto.UINT8, [1, 3, 256, 256])]
    model = conv_bn_then(rng, tail, [tensor("k", np.float32(127.5))], out, (1, 3, 256, 256))
    folded = bnfold.fold(model).model
    report = validate(model, folded, providers="cpu")
    assert report.passed, report.lines()
    assert report.providers[0].outputs[0].criterion in ("flips", "exact")
    assert not validate(model, scaled_channel(folded, 1.01), providers="cpu").passed


def test_outputs_whose_shape_depends_on_the_values_are_compared():
    rng = np.random.default_rng(1)
    tail = [
        helper.make_node("Flatten", ["n"], ["f"], axis=0),
        helper.make_node("Squeeze", ["f", "zero"], ["flat"]),
        helper.make_node("Greater", ["flat", "thr"], ["keep"]),
        helper.make_node("Compress", ["flat", "keep"], ["out"], axis=0),
    ]
    inits = [tensor("zero", np.array([0], np.int64)), tensor("thr", np.float32(0.0))]
    model = conv_bn_then(rng, tail, inits, [value_info("out", TensorProto.FLOAT, ["k"])])
    report = validate(model, bnfold.fold(model).model, providers="cpu")
    assert report.passed, report.lines()


def test_an_input_named_file_can_be_saved(tmp_path):
    model = make_model(
        [helper.make_node("Relu", ["file"], ["y"])],
        [value_info("file", TensorProto.FLOAT, [2])],
        [value_info("y", TensorProto.FLOAT, [2])],
    )
    validate(model, model, providers="cpu", save_inputs=tmp_path)
    assert np.load(tmp_path / "inputs-0.npz")["file"].shape == (2,)


def test_inputs_with_a_common_prefix_get_their_own_data():
    model = make_model(
        [helper.make_node("Sub", ["features_a", "features_b"], ["y"])],
        [value_info(n, TensorProto.FLOAT, [8]) for n in ("features_a", "features_b")],
        [value_info("y", TensorProto.FLOAT, [8])],
    )
    feeds = make_samples(model).runs[0]
    assert not np.array_equal(feeds["features_a"], feeds["features_b"])


def test_partly_given_inputs_are_validated():
    model = make_model(
        [helper.make_node("MatMul", ["x", "z"], ["y"])],
        [value_info("x", TensorProto.FLOAT, ["n", 4]), value_info("z", TensorProto.FLOAT, [4, 2])],
        [value_info("y", TensorProto.FLOAT, ["n", 2])],
    )
    report = validate(model, model, providers="cpu", inputs={"x": np.ones([5, 4], np.float32)})
    assert report.passed, report.lines()


def test_per_output_tolerances_for_names_with_brackets():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y[0]"])],
        [value_info("x", TensorProto.FLOAT, [4])],
        [value_info("y[0]", TensorProto.FLOAT, [4])],
    )
    report = validate(model, model, providers="cpu", atol={"y[0]": 1.0})
    assert report.providers[0].outputs[0].criterion == "tolerance"


def test_a_provider_that_runs_nothing_itself_cannot_be_asked_for():
    with pytest.raises(bnfold.InputError, match="does not run models itself"):
        validate(RESNET, RESNET, providers="AzureExecutionProvider")


def test_a_model_without_its_external_data_is_refused(tmp_path):
    model = onnx.load(RESNET)
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0)
    shell = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    with pytest.raises(bnfold.InputError, match="external data is not loaded"):
        validate(shell, shell, providers="cpu")


def test_a_value_name_that_is_not_utf8_is_left_unmoved():
    model = onnx.load(RESNET)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    inner = conv.output[0]
    renamed = "v" * len(inner.encode())
    for node in model.graph.node:
        node.input[:] = [renamed if name == inner else name for name in node.input]
        node.output[:] = [renamed if name == inner else name for name in node.output]
    broken = onnx.ModelProto()
    bad = renamed.encode()[:-2] + b"\xfe\xff"
    broken.ParseFromString(model.SerializeToString().replace(renamed.encode(), bad))
    report = validate(broken, bnfold.fold(broken).model, providers="cpu")
    assert report.passed, report.lines()


def big_folded_pair():
    """The skim tests' Conv → BN → Relu (a 1.3 MB weight, supplied from memory in the moved
    runs) and its fold."""
    from tests.test_skim import conv_model

    model = conv_model()
    return model, bnfold.fold(model).model


def test_a_skeleton_with_supplied_initializers_runs_as_the_model():
    import onnxruntime

    model, _ = big_folded_pair()
    source = skeleton(model)
    assert list(source.supplied) == ["w"] and len(source.model) < 10_000  # ("unused": dropped)
    feeds = {"x": np.random.default_rng(0).standard_normal([1, 192, 6, 6]).astype(np.float32)}
    factory = SessionFactory(onnxruntime, tf32=False, options={})
    (outputs,) = run_model(factory, source, CPU, [feeds])
    (expected,) = run_model(factory, SessionSource(model.SerializeToString()), CPU, [feeds])
    assert outputs["y"].tobytes() == expected["y"].tobytes()


def test_the_moved_folded_model_moves_only_what_the_fold_wrote_and_draws_differ():
    model, folded = big_folded_pair()
    changed = {
        "reference": changed_tensors(folded, model),
        "candidate": changed_tensors(model, folded),
    }
    sources = ModelSources(model, folded, {"reference": model, "candidate": folded}, changed)
    first, second = sources.moved_candidate(0), sources.moved_candidate(1)
    weight = next(t for t in folded.graph.initializer if t.name == "w")
    own = onnx.numpy_helper.to_array(weight)
    for moved in (first.supplied["w"], second.supplied["w"]):
        ulps = moved.view(np.int32).astype(np.int64) - own.view(np.int32)
        assert set(np.unique(ulps)) == {-1, 0, 1} and 0.2 < np.mean(ulps != 0) < 0.3
    assert not np.array_equal(first.supplied["w"], second.supplied["w"])
    moved_model = onnx.ModelProto.FromString(first.model)
    bias = next(t for t in moved_model.graph.initializer if t.name not in {"w", "unused"})
    assert bias.name in changed["candidate"]  # small: moved in the encoding itself
    original_bias = next(t for t in folded.graph.initializer if t.name == bias.name)
    assert bias.raw_data != original_bias.raw_data


def test_the_candidate_file_is_what_runs(tmp_path):
    """`candidate_file` (OUT's temporary file in `fold_file`: the candidate as written) is what
    onnxruntime runs; the ModelProto describes it."""
    folded = bnfold.fold(RESNET).model
    right = tmp_path / "right.onnx"
    onnx.save(folded, right)
    assert validate(RESNET, folded, providers=["cpu"], candidate_file=right).passed
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(right.read_bytes()[:-50])
    report = validate(RESNET, folded, providers=["cpu"], candidate_file=broken)
    assert not report.passed and report.providers[0].reason.startswith("folded model:")
    with pytest.raises(TypeError, match="candidate_file"):
        validate(RESNET, right, providers=["cpu"], candidate_file=right)


def test_messages_name_options_as_the_api_or_the_command_spells_them():
    from bnfold import naming

    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [value_info("x", TensorProto.FLOAT, [1, 4])],
        [value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(bnfold.InputError, match=r"^input_shapes=\.\.\. names 'z'"):
        validate(model, model, providers=["cpu"], input_shapes={"z": (1,)})
    with naming.command_line(), pytest.raises(bnfold.InputError, match=r"^--input-shape names"):
        validate(model, model, providers=["cpu"], input_shapes={"z": (1,)})
    assert naming.option("validate") == "validate=False"
    with naming.command_line():
        assert naming.option("validate") == "--no-validate"


def test_an_unread_initializer_listed_as_an_input_leaves_calibration_whole():
    """IR 3 lists initializers as graph inputs; one nothing reads must not break the skeleton of
    the runs moved by rounding (onnxruntime drops it)."""
    from tests.test_skim import conv_model

    model = conv_model(channels=32)
    model.ir_version = 3
    for tensor_ in model.graph.initializer:
        model.graph.input.append(
            helper.make_tensor_value_info(tensor_.name, tensor_.data_type, tensor_.dims)
        )
    report = validate(model, bnfold.fold(model).model, providers=["cpu"])
    assert report.passed and not report.providers[0].notes
    assert report.providers[0].outputs[0].rounding_noise > 0


def pair_sources(model, folded) -> ModelSources:
    changed = what_the_fold_changed(model, folded)
    assert changed == {
        "reference": changed_tensors(folded, model),
        "candidate": changed_tensors(model, folded),
    }
    return ModelSources(model, folded, {"reference": model, "candidate": folded}, changed)


def test_the_fed_folded_model_runs_as_it_is_and_moved_from_one_session():
    import onnxruntime

    model, folded = big_folded_pair()
    sources = pair_sources(model, folded)
    fed = sources.fed_candidate()
    assert fed is not None
    source, written = fed
    assert set(written) == set(sources.changed["candidate"])  # the weight and the new bias
    inputs = {i.name for i in onnx.ModelProto.FromString(source.model).graph.input}
    assert set(written) <= inputs and not set(written) & set(source.supplied)
    feeds = {"x": np.random.default_rng(0).standard_normal([1, 192, 6, 6]).astype(np.float32)}
    own, first = sources.fed_weights(written, None), sources.fed_weights(written, 0)
    factory = SessionFactory(onnxruntime, tf32=False, options={})
    runs = [{**feeds, **own}, {**feeds, **first}]
    plain, moved = run_model(factory, source, CPU, runs)
    (expected,) = run_model(factory, SessionSource(folded.SerializeToString()), CPU, [feeds])
    np.testing.assert_allclose(plain["y"], expected["y"], rtol=1e-6, atol=1e-6)
    assert not np.array_equal(moved["y"], plain["y"])
    # the draws are those of the one-session-per-draw path
    assert first["w"].tobytes() == sources.moved_candidate(0).supplied["w"].tobytes()


def test_written_tensors_that_cannot_be_fed_keep_one_session_per_draw():
    model, folded = big_folded_pair()
    as_output = onnx.ModelProto()
    as_output.CopyFrom(folded)
    as_output.graph.output.append(value_info("w", TensorProto.FLOAT, None))
    assert pair_sources(model, as_output).fed_candidate() is None
    as_constant = onnx.ModelProto()
    as_constant.CopyFrom(folded)
    weight = next(t for t in as_constant.graph.initializer if t.name == "w")
    as_constant.graph.node.insert(0, helper.make_node("Constant", [], ["w"], value=weight))
    as_constant.graph.initializer.remove(weight)
    assert pair_sources(model, as_constant).fed_candidate() is None
    report = validate(model, as_constant, providers=["cpu"])
    assert report.passed and report.providers[0].outputs[0].rounding_noise > 0


def _counting_sessions(monkeypatch) -> list:
    made: list = []
    create = SessionFactory.create

    def counted(self, source, provider, supplied=None):
        made.append(provider)
        return create(self, source, provider, supplied)

    monkeypatch.setattr(SessionFactory, "create", counted)
    return made


def _original_movers_fail(monkeypatch) -> None:
    """The original with its movers cannot run (as where a provider lacks RandomUniformLike:
    onnxruntime 1.32 has none for opset 22)."""
    broken = SessionSource(b"not a model")
    monkeypatch.setattr(ModelSources, "switchable_reference", lambda self: (broken, MOVING))
    monkeypatch.setattr(ModelSources, "moved_reference", lambda self: broken)


def test_calibration_comes_from_the_original_moved_in_one_session(monkeypatch):
    """On the CPU: the original, as it is and then moved (all draws), in one session, and the
    folded model: two sessions; the folded model's weights are not moved."""
    model, folded = big_folded_pair()
    made = _counting_sessions(monkeypatch)
    report = validate(model, folded, providers=["cpu"])
    assert report.passed and report.providers[0].outputs[0].rounding_noise > 0
    assert len(made) == 2 and not report.providers[0].notes


def test_where_the_original_s_movers_cannot_run_the_folded_model_s_weights_are_moved(
    monkeypatch,
):
    """Then the plain original, and the folded model fed its written weights, as they are and
    moved, in one session (four tries in all: the failed one, the original, the folded model,
    the fed one), and a note says the original's rounding is not in the limit."""
    model, folded = big_folded_pair()
    _original_movers_fail(monkeypatch)
    made = _counting_sessions(monkeypatch)
    report = validate(model, folded, providers=["cpu"])
    assert report.passed and report.providers[0].outputs[0].rounding_noise > 0
    assert len(made) == 4
    assert "the original model moved by rounding could not run" in report.providers[0].notes[0]
    wrong = validate(model, scaled_channel(folded, 1.01), providers=["cpu"])
    assert not wrong.passed


def test_where_the_original_has_nothing_to_move_the_folded_model_s_weights_are(monkeypatch):
    model, folded = big_folded_pair()
    monkeypatch.setattr(ModelSources, "switchable_reference", lambda self: None)
    monkeypatch.setattr(ModelSources, "moved_reference", lambda self: None)
    made = _counting_sessions(monkeypatch)
    report = validate(model, folded, providers=["cpu"])
    assert report.passed and report.providers[0].outputs[0].rounding_noise > 0
    assert len(made) == 3 and not report.providers[0].notes  # (the fed one instead)


def bfloat16_ends(rng, *, input_type=TensorProto.FLOAT, output_type=TensorProto.BFLOAT16):
    """x (input_type) → Cast to float → Conv → BN → Cast to output_type → y: tensors of a type
    numpy lacks at either end (onnxruntime's numpy conversion refuses them)."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["xf", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
        helper.make_node("Cast", ["n"], ["y"], to=output_type),
    ]
    params = {
        "w": rng.normal(0, 0.5, [4, 3, 3, 3]),
        "s": rng.uniform(0.5, 1.5, 4),
        "b": rng.normal(0, 1, 4),
        "m": rng.normal(0, 1, 4),
        "v": rng.uniform(0.5, 2, 4),
    }
    inits = [tensor(name, value.astype(np.float32)) for name, value in params.items()]
    x = value_info("x", input_type, [1, 3, 8, 8])
    return make_model(nodes, [x], [value_info("y", output_type, [1, 4, 6, 6])], inits)


@pytest.mark.parametrize(
    ("input_type", "output_type"),
    [
        (TensorProto.FLOAT, TensorProto.BFLOAT16),
        (TensorProto.BFLOAT16, TensorProto.FLOAT),
        (TensorProto.FLOAT, TensorProto.FLOAT8E4M3FN),
    ],
)
def test_inputs_and_outputs_of_types_numpy_lacks_are_validated(rng, input_type, output_type):
    """bfloat16 and float8 go through OrtValues; outputs compare with their own precision (a
    float8 output's 8 ULP are its whole magnitude: only a correct fold is checked there)."""
    model = bfloat16_ends(rng, input_type=input_type, output_type=output_type)
    folded = bnfold.fold(model).model
    report = validate(model, folded, providers=["cpu"])
    assert report.passed, report.lines()
    if output_type != TensorProto.FLOAT8E4M3FN:
        wrong = validate(model, scaled_channel(folded, 1.5), providers=["cpu"])
        assert not wrong.passed and wrong.providers[0].outputs[0].mismatches > 0


def test_a_fed_session_that_fails_falls_back_to_one_session_per_draw(monkeypatch):
    model, folded = big_folded_pair()
    real = ModelSources.fed_candidate

    def broken(self):
        found = real(self)
        return None if found is None else (SessionSource(b"not a model"), found[1])

    monkeypatch.setattr(ModelSources, "fed_candidate", broken)
    _original_movers_fail(monkeypatch)
    made = _counting_sessions(monkeypatch)
    report = validate(model, folded, providers=["cpu"])
    assert report.passed and len(report.providers[0].notes) == 1  # (the original's movers)
    assert report.providers[0].outputs[0].rounding_noise > 0
    assert len(made) == 4 + CALIBRATION_DRAWS  # (fed; then one session per draw)


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.onnx")), ids=lambda p: p.stem)
def test_the_switchable_original_runs_as_the_original_when_off_and_moved_when_on(path):
    """Off, every mover passes its value on bit for bit: the original's outputs exactly; on,
    they move; and the model is given back as it was."""
    import onnxruntime

    model = onnx.load(path)
    before = model.SerializeToString()
    sources = pair_sources(model, bnfold.fold(model).model)
    found = sources.switchable_reference()
    assert found is not None and model.SerializeToString() == before
    switchable, switch = found
    assert switch == MOVING
    feeds = make_samples(model, samples=1, seed=0).runs[0]
    factory = SessionFactory(onnxruntime, tf32=False, options={})
    off, on = run_model(
        factory, switchable, CPU, [{**feeds, switch: np.array(v)} for v in (False, True)]
    )
    (plain,) = run_model(factory, SessionSource(before), CPU, [feeds])
    assert all(off[name].tobytes() == plain[name].tobytes() for name in plain)
    assert any(on[name].tobytes() != plain[name].tobytes() for name in plain)


def test_explicit_tolerances_for_every_output_need_no_movers(monkeypatch):
    """Nothing is calibrated: the plain original and the folded model, no draws."""
    model, folded = big_folded_pair()
    made = _counting_sessions(monkeypatch)
    report = validate(model, folded, providers=["cpu"], atol=1e-3)
    assert report.passed and len(made) == 2
    assert report.providers[0].outputs[0].criterion == "tolerance"


def test_below_opset_9_the_original_s_draws_take_a_session_of_their_own(monkeypatch, rng):
    """No `Where` to switch the movers: the plain original, its moved copy, the folded model."""
    from tests.builders import conv_bn_with

    model = conv_bn_with([], rng, opset=8)
    folded = bnfold.fold(model).model
    assert pair_sources(model, folded).switchable_reference() is None
    made = _counting_sessions(monkeypatch)
    report = validate(model, folded, providers=["cpu"])
    assert report.passed and report.providers[0].outputs[0].rounding_noise > 0
    assert len(made) == 3


def gemm_bn_float64(rng) -> onnx.ModelProto:
    """x → Gemm → BN → Relu → Gemm → BN → y, all float64 (the movers' factor 1 ± 2^-51 is not a
    float32 attribute: it is computed in float64)."""
    nodes, inits, last = [], [], "x"
    for k, (n_in, n_out) in enumerate([(8, 16), (16, 6)]):
        gemm, bn = f"g{k}", "y" if k else "n0"
        nodes.append(helper.make_node("Gemm", [last, f"w{k}", f"c{k}"], [gemm], transB=1))
        nodes.append(
            helper.make_node(
                "BatchNormalization", [gemm, *(f"{p}{k}" for p in "sbmv")], [bn], epsilon=1e-5
            )
        )
        params = {
            f"w{k}": rng.normal(0, 1, [n_out, n_in]),
            f"c{k}": rng.normal(0, 1, n_out),
            f"s{k}": rng.uniform(0.5, 1.5, n_out),
            f"b{k}": rng.normal(0, 1, n_out),
            f"m{k}": rng.normal(0, 1, n_out),
            f"v{k}": rng.uniform(0.5, 2, n_out),
        }
        inits.extend(tensor(name, value) for name, value in params.items())
        if not k:
            nodes.append(helper.make_node("Relu", ["n0"], ["r0"]))
            last = "r0"
    double = TensorProto.DOUBLE
    return make_model(
        nodes, [value_info("x", double, [3, 8])], [value_info("y", double, [3, 6])], inits
    )


def test_a_float64_model_is_calibrated_by_float64_movers(rng, monkeypatch):
    """The original's draws move (two sessions: no fallback to the folded model's draws)."""
    model = gemm_bn_float64(rng)
    folded = bnfold.fold(model).model
    made = _counting_sessions(monkeypatch)
    report = validate(model, folded, providers=["cpu"])
    assert report.passed, report.lines()
    assert len(made) == 2
    (comparison,) = report.providers[0].outputs
    assert comparison.criterion == "calibrated" and comparison.rounding_noise > 0
    assert not report.providers[0].notes
    wrong = scaled_channel(folded, 1 + 1e-9, op_type="Gemm")
    assert not validate(model, wrong, providers=["cpu"]).passed


def test_the_switch_takes_a_name_the_model_does_not(rng, monkeypatch):
    """A model with a value named like the switch: the switch is named anew, nothing clashes."""
    from tests.builders import conv_bn_with

    model = conv_bn_with([], rng)
    model.graph.node[0].output[0] = MOVING  # the Conv's output, read by the BatchNormalization
    model.graph.node[1].input[0] = MOVING
    folded = bnfold.fold(model).model
    found = pair_sources(model, folded).switchable_reference()
    assert found is not None and found[1] == f"{MOVING}_2"
    made = _counting_sessions(monkeypatch)
    report = validate(model, folded, providers=["cpu"])
    assert report.passed and len(made) == 2 and not report.providers[0].notes


def test_where_the_original_s_draws_move_nothing_the_folded_model_s_weights_are(monkeypatch):
    """Movers too fine for the values they meet (float32 statistics on float16 data: the factor
    rounds to 1; here a factor of exactly 1) leave the original's draws equal to its runs: the
    folded model's draws are taken instead (the fed session), not a limit of zero."""
    import bnfold.validation.perturb as perturb

    model, folded = big_folded_pair()
    real = perturb._mover
    monkeypatch.setattr(
        perturb, "_mover", lambda source, target, width, *rest: real(source, target, 0.0, *rest)
    )
    made = _counting_sessions(monkeypatch)
    report = validate(model, folded, providers=["cpu"])
    assert report.passed and report.providers[0].outputs[0].rounding_noise > 0
    assert len(made) == 3  # (the switchable original, the folded model, the fed one)
    assert not validate(model, scaled_channel(folded, 1.01), providers=["cpu"]).passed


def test_a_failure_part_way_through_adding_movers_leaves_the_model_as_it_was(monkeypatch):
    import bnfold.validation.perturb as perturb

    model = onnx.load(RESNET)
    before = model.SerializeToString()
    consumed = changed_tensors(bnfold.fold(model).model, model)
    real, calls = perturb._mover, []

    def failing(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("part way")
        return real(*args)

    monkeypatch.setattr(perturb, "_mover", failing)
    with (
        pytest.raises(RuntimeError, match="part way"),
        inputs_moved_by_rounding(model, consumed, switch=MOVING),
    ):
        pass
    assert model.SerializeToString() == before


def sparse_relu_output(channels: int = 64, size: int = 64) -> onnx.ModelProto:
    """Conv 3×3 → BN → Relu as the output: some channels are zero but for a few values, which
    come out of a cancellation (the Conv's output minus a mean close to it)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(4.5 * channels)
    stats = [
        rng.uniform(0.5, 2, channels),
        rng.standard_normal(channels),
        rng.standard_normal(channels) * 0.1,
        rng.uniform(0.5, 2, channels),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    inits = [tensor("w", weight.astype(np.float32))]
    inits += [tensor(k, v.astype(np.float32)) for k, v in zip("sbmv", stats, strict=True)]
    shape = [1, channels, size, size]
    return make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, shape)],
        [value_info("y", TensorProto.FLOAT, shape)],
        inits,
    )


def test_a_sparse_relu_output_passes_on_every_seed_and_still_catches_errors():
    """Each block of 32 holding one value of a sparse channel got the floor as its limit where
    that value's two draws happened not to move it (7 of 10 seeds failed)."""
    model = sparse_relu_output()
    folded = bnfold.fold(model).model
    for seed in range(5):
        report = validate(model, folded, providers=["cpu"], seed=seed)
        assert report.passed, report.lines()
        assert report.providers[0].outputs[0].limit_used < 0.6
    for index in (1, 2):
        wrong = scaled_channel(folded, 1.001 if index == 1 else 1.01, index)
        assert not validate(model, wrong, providers=["cpu"]).passed


def classifier_head(seed, channels=64, classes=100, beta_scale=10.0):
    """Conv → BN → Relu (×2) → GlobalAveragePool → Flatten → Gemm → BN → Softmax, the last BN's
    β ~ N(0, `beta_scale`): a class prior larger than the Gemm's part of each logit."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def init(name, value):
        inits.append(tensor(name, np.asarray(value, np.float32)))
        return name

    def bn(x, c, k, beta):
        ins = [
            x,
            init(f"g{k}", 1 + 0.3 * rng.standard_normal(c)),
            init(f"b{k}", beta),
            init(f"m{k}", 0.5 * rng.standard_normal(c)),
            init(f"v{k}", 0.2 + 2 * rng.uniform(size=c)),
        ]
        nodes.append(helper.make_node("BatchNormalization", ins, [f"n{k}"]))
        return f"n{k}"

    x, c_in = "x", 3
    for k in range(2):
        w = init(f"w{k}", rng.normal(0, np.sqrt(2 / (9 * c_in)), (channels, c_in, 3, 3)))
        nodes.append(helper.make_node("Conv", [x, w], [f"c{k}"], pads=[1] * 4))
        nodes.append(
            helper.make_node(
                "Relu", [bn(f"c{k}", channels, k, 0.2 * rng.standard_normal(channels))], [f"r{k}"]
            )
        )
        x, c_in = f"r{k}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["p"]))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"]))
    wg = init("wg", rng.normal(0, np.sqrt(2 / channels), (classes, channels)))
    nodes.append(
        helper.make_node(
            "Gemm", ["f", wg, init("cg", rng.normal(0, 0.1, classes))], ["logits"], transB=1
        )
    )
    z = bn("logits", classes, 9, beta_scale * rng.standard_normal(classes))
    nodes.append(helper.make_node("Softmax", [z], ["y"], axis=1))
    x_info = value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    return make_model(nodes, [x_info], [value_info("y", TensorProto.FLOAT, [1, classes])], inits)


def test_a_softmax_after_a_bn_whose_shift_dominates_passes_and_catches_errors():
    """The original rounds the last BN's output at the shift's magnitude; the Softmax turns that
    rounding into relative error of the unlikely classes (1e-30 and less). The movers move that
    output too, and a value that dominates its block is held to its neighbours' relative noise:
    5 of these 30 validations failed before."""
    for model_seed in range(6):
        model = classifier_head(model_seed)
        folded = bnfold.fold(model).model
        for seed in range(5):
            report = validate(model, folded, providers=["cpu"], seed=seed)
            assert report.passed, (model_seed, report.lines())
    assert not validate(model, scaled_channel(folded, 1.001), providers=["cpu"]).passed


def test_bn14_statistics_of_another_type_than_its_data_are_moved_in_the_data_s_type(rng):
    """BatchNormalization-14: float16 mean and variance, float32 data and scale. The movers'
    constants take the data's type (the scale's), so the original's draws run."""
    from tests.builders import bn_params

    params = bn_params(rng, 4)
    for t in params[2:]:  # (mean, variance)
        values = onnx.numpy_helper.to_array(t).astype(np.float16)
        t.CopyFrom(onnx.numpy_helper.from_array(values, t.name))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c", *(t.name for t in params)], ["y"]),
    ]
    weight = tensor("w", rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32))
    shape = [1, 4, 5, 5]
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [value_info("y", TensorProto.FLOAT, shape)],
        [weight, *params],
        opset=14,
    )
    folded = bnfold.fold(model).model
    report = validate(model, folded, providers=["cpu"])
    assert report.passed and not report.providers[0].notes, report.lines()
    assert report.providers[0].outputs[0].rounding_noise > 0


def test_mover_names_never_meet_the_model_s_own(monkeypatch):
    """A node named as a mover's would be, and values named like the movers' stem: the
    original's draws still run (no note of a fallback)."""
    model = cancelling_model()
    model.graph.node[0].name = "y_node"
    model.graph.node[0].output[0] = "c__bnfold_moved1"
    model.graph.node[1].input[0] = "c__bnfold_moved1"
    folded = bnfold.fold(model).model
    made = _counting_sessions(monkeypatch)
    report = validate(model, folded, providers=["cpu"])
    assert report.passed and not report.providers[0].notes, report.lines()
    assert len(made) == 2
