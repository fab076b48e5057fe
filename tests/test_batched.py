"""The vectorised Conv → BatchNormalization path (`bnfold.batched`) against the one-at-a-time
path: the same model bit for bit, the same records, for every mix the fast path takes or leaves."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import bnfold
from bnfold import batched
from bnfold.folding import fold_in_place
from tests.builders import assert_same_function, bn_node, bn_params, make_model, tensor


def _chain(specs, seed=0):
    """A chain of Conv → BN → Relu blocks; each spec a dict of what varies per block."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, channels = [], [], "x", 3
    x_dtype = specs[0].get("dtype", np.float32)
    for i, spec in enumerate(specs):
        dtype = spec.get("dtype", np.float32)
        out = spec.get("channels", 4)
        group = spec.get("group", 1)
        kernel = spec.get("kernel", 3)
        weight = rng.normal(0, 0.5, [out, channels // group, kernel, kernel]) * spec.get("w", 1.0)
        inits.append(tensor(f"w{i}", weight.astype(dtype)))
        conv_inputs = [x, f"w{i}"]
        if spec.get("bias"):
            inits.append(tensor(f"b{i}", rng.normal(0, 0.3, out).astype(dtype)))
            conv_inputs.append(f"b{i}")
        nodes.append(
            helper.make_node(
                "Conv", conv_inputs, [f"c{i}"], name=f"conv{i}", pads=[1] * 4, group=group
            )
        )
        params = bn_params(rng, out, spec.get("param_dtype", dtype), prefix=f"bn{i}")
        if "var" in spec:
            params[3] = tensor(
                f"bn{i}_var", np.full(out, spec["var"], spec.get("param_dtype", dtype))
            )
        inits += params
        nodes.append(bn_node(f"c{i}", f"n{i}", prefix=f"bn{i}", epsilon=spec.get("eps", 1e-3)))
        nodes.append(helper.make_node("Relu", [f"n{i}"], [f"r{i}"]))
        x, channels = f"r{i}", out
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(x_dtype))
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", elem, [1, 3, 6, 6])],
        [helper.make_tensor_value_info(x, elem, None)],
        inits,
    )


MIXES = {
    "fp32, with and without bias": [{"bias": True}, {}, {"bias": True, "channels": 6}, {}],
    "groups and 1x1": [{"channels": 6}, {"group": 3, "channels": 6}, {"kernel": 1, "bias": True}],
    "fp16 weights, fp32 statistics": [
        {"dtype": np.float16, "param_dtype": np.float32},
        {"dtype": np.float16, "bias": True},
    ],
    "fp64": [{"dtype": np.float64}, {"dtype": np.float64, "bias": True}],
    "epsilons differ": [{"eps": 1e-5}, {"eps": 0.1}, {"eps": 1e-3, "bias": True}],
    "one variance not usable": [{}, {"var": -1.0}, {"bias": True}],
    "fp16 overflow in one layer": [
        {"dtype": np.float16},
        {"dtype": np.float16, "var": 1e-7, "eps": 1e-7, "w": 600.0},
        {"dtype": np.float16},
    ],
}


def _fold_both(model, chunk_bytes=batched.CHUNK_BYTES):
    fast = onnx.ModelProto()
    fast.CopyFrom(model)
    slow = onnx.ModelProto()
    slow.CopyFrom(model)
    return fold_in_place(fast, chunk_bytes=chunk_bytes), fold_in_place(slow, batched=False)


@pytest.mark.parametrize("chunk_bytes", [batched.CHUNK_BYTES, 64, 1])  # one, several, one each
@pytest.mark.parametrize("mix", MIXES)
def test_vectorised_path_is_bit_identical(mix, chunk_bytes):
    model = _chain(MIXES[mix])
    fast, slow = _fold_both(model, chunk_bytes)
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert [r.to_dict() for r in fast.records] == [r.to_dict() for r in slow.records]
    assert fast.folded, "the fast path must have had something to do"


def test_vectorised_path_leaves_the_unrepresentable_to_the_general_one():
    fast, _ = _fold_both(_chain(MIXES["one variance not usable"]))
    assert [r.kind for r in fast.folded + fast.skipped] == ["folded", "folded", "skipped"]
    (skipped,) = fast.skipped
    assert skipped.batchnorm == "bn1_node"
    assert "variance + epsilon" in skipped.reason


def test_vectorised_fold_computes_the_same_function():
    model = _chain(MIXES["fp32, with and without bias"] + MIXES["groups and 1x1"])
    result = bnfold.fold(model)
    assert len(result.folded) == 7
    assert_same_function(model, result.model)


def test_shared_weight_goes_to_the_general_path():
    """Two Convs read one weight: neither pair may rewrite it in place."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c0"], name="conv0"),
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        bn_node("c0", "n0", prefix="bn0"),
        bn_node("c1", "n1", prefix="bn1"),
        helper.make_node("Add", ["n0", "n1"], ["y"]),
    ]
    inits = [tensor("w", rng.normal(0, 1, [4, 3, 3, 3]).astype(np.float32))]
    inits += bn_params(rng, 4, prefix="bn0") + bn_params(rng, 4, prefix="bn1")
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    fast, slow = _fold_both(model)
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert len(fast.folded) == 2
    weights = [n.input[1] for n in fast.model.graph.node if n.op_type == "Conv"]
    assert len(set(weights)) == 2  # the first fold gave its Conv a weight of its own
    assert_same_function(model, fast.model)


def _plain_pair(prefix, rng, channels=4, dtype=np.float32, x="x", conv_name=None, out=None):
    """Conv (no bias) → BN nodes and initializers; the BN writes `{prefix}_n`."""
    out = out or f"{prefix}_c"
    nodes = [
        helper.make_node("Conv", [x, f"{prefix}_w"], [out], name=conv_name or ""),
        bn_node(out, f"{prefix}_n", prefix=prefix),
    ]
    inits = [tensor(f"{prefix}_w", rng.normal(0, 1, [channels, channels, 1, 1]).astype(dtype))]
    return nodes, inits + bn_params(rng, channels, dtype, prefix=prefix)


def _model_of(nodes, inits, output, elem=TensorProto.FLOAT):
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", elem, [1, 4, 4, 4])],
        [helper.make_tensor_value_info(output, elem, None)],
        inits,
    )


def test_same_fresh_names_as_one_at_a_time_across_dtypes():
    """Two new biases with one stem ('k': a Conv named k, an unnamed one writing k), an fp16 layer
    between: the names go in node order, whatever order the weights were scaled in."""
    rng = np.random.default_rng(3)
    a, a_inits = _plain_pair("a", rng, conv_name="a")
    b, b_inits = _plain_pair("b", rng, dtype=np.float16, x="h", conv_name="k")
    c, c_inits = _plain_pair("c", rng, x="f", out="k")
    casts = [
        helper.make_node("Cast", ["a_n"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["b_n"], ["f"], to=TensorProto.FLOAT),
    ]
    model = _model_of(a + casts[:1] + b + casts[1:] + c, a_inits + b_inits + c_inits, "c_n")
    fast, slow = _fold_both(model)
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    biases = [n.input[2] for n in fast.model.graph.node if n.op_type == "Conv"]
    assert biases == ["a_bnfold_bias", "k_bnfold_bias", "k_bnfold_bias_2"]


def test_forward_fold_into_the_conv_comes_first_as_in_node_order():
    """BN0 → Conv → BN1: BN0 folds forward into the Conv before BN1 folds into it."""
    rng = np.random.default_rng(4)
    pair, inits = _plain_pair("p", rng, x="n0")
    nodes = [bn_node("x", "n0", prefix="bn0"), *pair]
    model = _model_of(nodes, inits + bn_params(rng, 4, prefix="bn0"), "p_n")
    fast, slow = _fold_both(model)
    assert len(fast.folded) == 2
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert_same_function(model, fast.model)


def test_graph_out_of_order_goes_one_at_a_time():
    """A Mul listed before the Conv → BN it reads (valid, onnxruntime runs it)."""
    rng = np.random.default_rng(5)
    pair, inits = _plain_pair("p", rng)
    scale = tensor("k", rng.uniform(0.5, 2, [4, 1, 1]).astype(np.float32))
    nodes = [helper.make_node("Mul", ["p_n", "k"], ["y"]), *pair]
    model = _model_of(nodes, [*inits, scale], "y")
    fast, slow = _fold_both(model)
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert_same_function(model, fast.model)


def test_malformed_epsilon_is_left_to_the_general_path():
    rng = np.random.default_rng(6)
    pair, inits = _plain_pair("p", rng)
    del pair[1].attribute[:]
    pair[1].attribute.append(helper.make_attribute("epsilon", "tiny"))
    result = bnfold.fold(_model_of(pair, inits, "p_n"))
    (skipped,) = result.skipped
    assert "attributes or constants are malformed" in skipped.reason
