"""Layers → Concat (channel axis) → BatchNormalization, folded slice by slice into the layers
(bnfold/producers/concat.py), and every reason it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

import bnfold
from tests.builders import (
    TensorProto,
    assert_same_function,
    bn_node,
    bn_params,
    check_full,
    make_model,
    op_types,
    symbolic,
    tensor,
    value_info,
)


def mixconv_model(rng, widths=(3, 5, 2), *, axis=1, ops=None, extra_nodes=(), biases=True):
    """x (1×4×6×6) → one Conv per width (kernel 1, 3, 5, ...) → Concat(axis) → BN → y."""
    ops = ops or ["Conv"] * len(widths)
    nodes, inits, names = [], [], []
    for i, (width, op) in enumerate(zip(widths, ops, strict=True)):
        kernel = 2 * (i % 3) + 1
        if op == "Conv":
            weight = rng.normal(0, 0.3, [width, 4, kernel, kernel])
            attrs = {"pads": [kernel // 2] * 4}
        else:  # ConvTranspose: [C_in, C_out, k, k], output 6 + k - 1 - 2·pad = 6
            weight = rng.normal(0, 0.3, [4, width, kernel, kernel])
            attrs = {"pads": [kernel // 2] * 4}
        inputs = ["x", f"w{i}"] + ([f"b{i}"] if biases else [])
        inits.append(tensor(f"w{i}", weight.astype(np.float32)))
        if biases:
            inits.append(tensor(f"b{i}", rng.normal(0, 0.2, [width]).astype(np.float32)))
        nodes.append(helper.make_node(op, inputs, [f"c{i}"], name=f"layer{i}", **attrs))
        names.append(f"c{i}")
    nodes.extend(extra_nodes)
    nodes.append(helper.make_node("Concat", names, ["cat"], name="concat", axis=axis))
    nodes.append(bn_node("cat", "y"))
    inits.extend(bn_params(rng, sum(widths)))
    x = value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])
    return make_model(nodes, [x], [value_info("y", TensorProto.FLOAT, symbolic(4))], inits)


def assert_split(model, layers):
    result = bnfold.fold(model)
    assert not result.skipped, result.skipped
    (record,) = result.folded
    assert record.into == "concat" and record.into_op == "Concat"
    assert "split over the" in record.how and "by channel" in record.how
    assert op_types(result.model) == [*layers, "Concat"]
    assert result.model.graph.output[0].name == "y"
    check_full(result.model)
    assert_same_function(model, result.model)
    assert bnfold.fold(result.model).model == result.model  # idempotent
    return record


@pytest.mark.parametrize("axis", [1, -3])
def test_a_batchnorm_after_a_concat_of_convs_folds_into_each(rng, axis):
    record = assert_split(mixconv_model(rng, axis=axis), ["Conv"] * 3)
    assert "Conv 'layer0' 0..2, Conv 'layer1' 3..7, Conv 'layer2' 8..9" in record.how


def test_layers_of_several_kinds_and_without_biases(rng):
    model = mixconv_model(rng, (2, 3), ops=["Conv", "ConvTranspose"], biases=False)
    assert_split(model, ["Conv", "ConvTranspose"])


def test_a_concat_of_gemms_folds_into_their_columns(rng):
    nodes = [
        helper.make_node("Gemm", ["x", "w0"], ["g0"], name="g0"),
        helper.make_node("Gemm", ["x", "w1", "b1"], ["g1"], name="g1", transB=1),
        helper.make_node("Concat", ["g0", "g1"], ["cat"], name="concat", axis=-1),
        bn_node("cat", "y"),
    ]
    inits = [
        tensor("w0", rng.normal(0, 0.4, [5, 3]).astype(np.float32)),
        tensor("w1", rng.normal(0, 0.4, [4, 5]).astype(np.float32)),
        tensor("b1", rng.normal(0, 0.4, [4]).astype(np.float32)),
        *bn_params(rng, 7),
    ]
    model = make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [2, 5])],
        [value_info("y", TensorProto.FLOAT, [2, 7])],
        inits,
    )
    assert_split(model, ["Gemm", "Gemm"])


def only_skip(model) -> str:
    result = bnfold.fold(model)
    assert not result.folded and len(result.skipped) == 1, result.folded
    return result.skipped[0].reason


def test_a_concat_input_from_anything_else_is_named(rng):
    relu = helper.make_node("Relu", ["c1"], ["r1"], name="relu")
    model = mixconv_model(rng, extra_nodes=[relu])
    next(n for n in model.graph.node if n.op_type == "Concat").input[1] = "r1"
    reason = only_skip(model)
    assert "whose input 'r1' comes from Relu 'relu', not a Conv" in reason


def test_a_layer_whose_output_is_read_elsewhere_is_named(rng):
    model = mixconv_model(rng)
    model.graph.output.append(value_info("c1", TensorProto.FLOAT, symbolic(4)))
    assert "the output 'c1' of Conv 'layer1' is also a graph output" in only_skip(model)


def test_an_input_given_twice_or_a_graph_input_is_refused(rng):
    model = mixconv_model(rng, (3, 3))
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    concat.input[1] = "c0"
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "layer1"))
    assert "reads an input twice" in only_skip(model)
    model = mixconv_model(rng, (3, 4))
    next(n for n in model.graph.node if n.op_type == "Concat").input[1] = "x"
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "layer1"))
    assert "whose input 'x' is not computed by a layer" in only_skip(model)


def test_a_concat_on_another_axis_is_left(rng):
    model = mixconv_model(rng, (4, 4), axis=2)
    model.graph.node[-1].CopyFrom(bn_node("cat", "y"))  # (4 channels: Concat on H leaves C = 4)
    del model.graph.initializer[-4:]
    model.graph.initializer.extend(bn_params(rng, 4))
    assert "which joins on axis 2, not the channel axis 1" in only_skip(model)


def test_a_slice_its_layer_refuses_names_the_layer(rng):
    model = mixconv_model(rng, (2, 3))
    weight = next(t for t in model.graph.initializer if t.name == "w1")
    model.graph.initializer.remove(weight)
    model.graph.input.append(value_info("w1", TensorProto.FLOAT, [3, 4, 3, 3]))
    assert "whose input from Conv 'layer1' has no constant weight" in only_skip(model)


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_any_split_computes_the_same_function(widths, seed):
    rng = np.random.default_rng(seed)
    assert_split(mixconv_model(rng, tuple(widths)), ["Conv"] * len(widths))


def test_a_concat_whose_output_is_read_elsewhere_is_left(rng):
    model = mixconv_model(rng)
    model.graph.output.append(value_info("cat", TensorProto.FLOAT, symbolic(4)))
    assert "the output 'cat' of Concat 'concat' is also a graph output" in only_skip(model)


# ----- a BatchNormalization written as Mul/Add after the Concat --------------------------------


def as_arithmetic(model, rng, ops=(("Mul", [1, 10, 1, 1]), ("Add", [10, 1, 1])), axis=1):
    """The model with its BN replaced by Mul/Add by per-channel constants (Keras, FrozenBN)."""
    del model.graph.node[-1]
    del model.graph.initializer[-4:]
    name = "cat"
    for i, (op, shape) in enumerate(ops):
        out = "y" if i == len(ops) - 1 else f"t{i}"
        model.graph.node.append(helper.make_node(op, [name, f"k{i}"], [out], name=f"{op}{i}"))
        values = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        model.graph.initializer.append(tensor(f"k{i}", values))
        name = out
    return model


def test_mul_and_add_after_a_concat_of_convs_fold_into_each(rng):
    model = as_arithmetic(mixconv_model(rng), rng)
    result = bnfold.fold(model)
    assert [r.batchnorm for r in result.folded_affine] == ["Mul0", "Add1"]
    assert all("split over the 3 inputs of Concat 'concat'" in r.how for r in result.folded_affine)
    assert result.folded_affine[0].into == "concat" and not result.skipped_affine
    assert op_types(result.model) == ["Conv", "Conv", "Conv", "Concat"]
    check_full(result.model)
    assert_same_function(model, result.model)
    assert bnfold.fold(result.model).model == result.model


@settings(max_examples=15, deadline=None)
@given(
    widths=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    first=st.sampled_from(["Mul", "Add"]),
    seed=st.integers(0, 2**16),
)
def test_any_split_of_arithmetic_computes_the_same_function(widths, first, seed):
    rng = np.random.default_rng(seed)
    channels = sum(widths)
    second = "Add" if first == "Mul" else "Mul"
    ops = ((first, [channels, 1, 1]), (second, [1, channels, 1, 1]))
    model = as_arithmetic(mixconv_model(rng, tuple(widths)), rng, ops)
    result = bnfold.fold(model)
    assert len(result.folded_affine) == 2
    assert_same_function(model, result.model)


def test_arithmetic_that_is_not_per_channel_after_a_concat_is_ordinary(rng):
    model = as_arithmetic(mixconv_model(rng), rng, (("Mul", [1, 10, 6, 1]),))
    result = bnfold.fold(model)
    assert not result.folded_affine and not result.skipped_affine


def test_arithmetic_after_a_concat_says_why_it_stays(rng):
    shared = as_arithmetic(mixconv_model(rng), rng, (("Mul", [10, 1, 1]),))
    shared.graph.output.append(value_info("cat", TensorProto.FLOAT, symbolic(4)))
    (record,) = bnfold.fold(shared).skipped_affine
    assert record.reason == (
        "a Mul by a per-channel constant after Concat: "
        "the output 'cat' of Concat 'concat' is also a graph output"
    )
    read_twice = as_arithmetic(mixconv_model(rng), rng, (("Add", [10, 1, 1]),))
    read_twice.graph.output.append(value_info("c1", TensorProto.FLOAT, symbolic(4)))
    (record,) = bnfold.fold(read_twice).skipped_affine
    assert record.reason.startswith("an Add of a per-channel constant after Concat: it follows")
    assert "the output 'c1' of Conv 'layer1' is also a graph output" in record.reason


def test_arithmetic_after_a_concat_on_another_axis_is_ordinary(rng):
    on_height = as_arithmetic(mixconv_model(rng, (4, 4), axis=2), rng, (("Add", [4, 1, 1]),))
    result = bnfold.fold(on_height)
    assert not result.folded_affine and not result.skipped_affine


# ----- NHWC: Transposes between the layers, the Concat and what is folded (tf2onnx) -----------


def nhwc_mixconv(rng, widths=(3, 5, 2), *, perms=None, after=(0, 3, 1, 2), tail="bn"):
    """x → Conv_i → Transpose(perm_i, default 0,2,3,1) → Concat(axis -1) → then either
    Transpose(after) → BN, or Mul([C]) → Add([C]) (tail="arithmetic") → y."""
    model = mixconv_model(rng, widths)
    del model.graph.node[-2:]  # the Concat and the BN
    del model.graph.initializer[-4:]
    perms = perms or [(0, 2, 3, 1)] * len(widths)
    for i, perm in enumerate(perms):
        model.graph.node.append(helper.make_node("Transpose", [f"c{i}"], [f"t{i}"], perm=perm))
    names = [f"t{i}" for i in range(len(widths))]
    model.graph.node.append(helper.make_node("Concat", names, ["cat"], name="concat", axis=-1))
    channels = sum(widths)
    if tail == "bn":
        model.graph.node.append(helper.make_node("Transpose", ["cat"], ["back"], perm=after))
        model.graph.node.append(bn_node("back", "y"))
        model.graph.initializer.extend(bn_params(rng, channels))
        return model
    for i, op in enumerate(("Mul", "Add")):
        inputs, out = ["cat" if i == 0 else "m", f"k{i}"], "m" if i == 0 else "y"
        model.graph.node.append(helper.make_node(op, inputs, [out], name=op))
        values = rng.uniform(0.5, 1.5, [channels]).astype(np.float32)
        model.graph.initializer.append(tensor(f"k{i}", values))
    return model


def test_a_batchnorm_after_an_nhwc_concat_folds_through_the_transposes(rng):
    model = nhwc_mixconv(rng)
    result = bnfold.fold(model)
    (record,) = result.folded
    assert record.into == "concat" and "; through Transpose" in record.how
    assert op_types(result.model).count("Transpose") == 4  # (they stay: they carry the values)
    check_full(result.model)
    assert_same_function(model, result.model)
    assert bnfold.fold(result.model).model == result.model


def test_arithmetic_after_an_nhwc_concat_folds_through_the_transposes(rng):
    model = nhwc_mixconv(rng, tail="arithmetic")
    result = bnfold.fold(model)
    assert [r.batchnorm for r in result.folded_affine] == ["Mul", "Add"]
    assert "Mul" not in op_types(result.model) and "Add" not in op_types(result.model)
    assert_same_function(model, result.model)


@settings(max_examples=15, deadline=None)
@given(
    widths=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    tail=st.sampled_from(["bn", "arithmetic"]),
    seed=st.integers(0, 2**16),
)
def test_any_nhwc_split_computes_the_same_function(widths, tail, seed):
    rng = np.random.default_rng(seed)
    model = nhwc_mixconv(rng, tuple(widths), tail=tail)
    result = bnfold.fold(model)
    assert len(result.folded) + len(result.folded_affine) == (1 if tail == "bn" else 2)
    assert_same_function(model, result.model)


def test_transposes_that_move_the_channels_elsewhere_are_named(rng):
    sideways = nhwc_mixconv(rng, (6, 6), after=(0, 2, 3, 1))  # (the BN's axis 1 is H then)
    assert only_skip(sideways) == (
        "it follows Concat 'concat', which joins on axis 3, not axis 2, which reaches its "
        "channel axis"
    )
    mixed = nhwc_mixconv(rng, (6, 6), perms=[(0, 2, 3, 1), (0, 2, 1, 3)])
    assert (
        "the channels of its input from Conv 'layer1' reach it on axis 2, not on the joined "
        "axis 3" in only_skip(mixed)
    )
