"""The vectorised Conv → BatchNormalization path (`bnfold.batched`) against the one-at-a-time
path: the same model bit for bit, the same records, for every mix the fast path takes or leaves."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import bnfold
from bnfold import batched
from bnfold.fold import fold_in_place
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


def _fold_both(model):
    fast = onnx.ModelProto()
    fast.CopyFrom(model)
    slow = onnx.ModelProto()
    slow.CopyFrom(model)
    return fold_in_place(fast), fold_in_place(slow, batched=False)


@pytest.mark.parametrize("chunk_bytes", [batched.CHUNK_BYTES, 64, 1])
@pytest.mark.parametrize("mix", MIXES)
def test_vectorised_path_is_bit_identical(mix, chunk_bytes, monkeypatch):
    monkeypatch.setattr(batched, "CHUNK_BYTES", chunk_bytes)  # one chunk, several, one each
    model = _chain(MIXES[mix])
    fast, slow = _fold_both(model)
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
