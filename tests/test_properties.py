"""Property-based: random producer → BatchNormalization graphs. Each is folded, checked and
compared with the original in onnxruntime (optimisations off): no mismatch, no invalid model, no
fold that the rules forbid."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import bnfold
from tests.builders import assert_same_function, make_model, symbolic, tensor, value_info

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def conv_geometry(draw):
    """Spatial rank, group, channels in and out, kernel, and attributes (group, maybe strides and
    dilations) of a random convolution."""
    spatial = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2, 3]))
    c_in = group * draw(st.integers(1, 2))
    c_out = group * draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(spatial)]
    attrs = {"group": group}
    if draw(st.booleans()):
        attrs["strides"] = [draw(st.integers(1, 2)) for _ in range(spatial)]
    if draw(st.booleans()):
        attrs["dilations"] = [draw(st.integers(1, 2)) for _ in range(spatial)]
    return spatial, group, c_in, c_out, kernel, attrs


@st.composite
def conv_case(draw, transpose: bool):
    spatial, group, c_in, c_out, kernel, attrs = conv_geometry(draw)
    if draw(st.booleans()):
        attrs["pads"] = [draw(st.integers(0, 1)) for _ in range(2 * spatial)]
    if transpose and "strides" in attrs and draw(st.booleans()):
        attrs["output_padding"] = [draw(st.integers(0, max(0, s - 1))) for s in attrs["strides"]]
        if "dilations" in attrs:  # output_padding must be below stride or dilation
            attrs["output_padding"] = [
                min(p, max(s, d) - 1)
                for p, s, d in zip(
                    attrs["output_padding"], attrs["strides"], attrs["dilations"], strict=True
                )
            ]
    size = draw(st.integers(5, 6))  # (≥ the largest dilated kernel, 5: no empty output)
    weight_shape = [c_in, c_out // group, *kernel] if transpose else [c_out, c_in // group, *kernel]
    return {
        "op": "ConvTranspose" if transpose else "Conv",
        "attrs": attrs,
        "x_shape": [2, c_in, *([size] * spatial)],
        "weight_shape": weight_shape,
        "channels": c_out,
        "bias_shape": [c_out] if draw(st.booleans()) else None,
        "rank": 2 + spatial,
    }


@st.composite
def gemm_case(draw):
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    trans_a, trans_b = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    bias_shape = draw(st.sampled_from([None, [], [n], [1, n], [m, 1], [m, n]]))
    attrs = {
        "transA": trans_a,
        "transB": trans_b,
        "alpha": draw(st.sampled_from([1.0, 0.5, -2.0])),
        "beta": draw(st.sampled_from([1.0, 0.25, 3.0])),
    }
    return {
        "op": "Gemm",
        "attrs": attrs,
        "x_shape": [k, m] if trans_a else [m, k],
        "weight_shape": [n, k] if trans_b else [k, n],
        "channels": n,
        "bias_shape": bias_shape,
        "rank": 2,
    }


@st.composite
def matmul_case(draw):
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    return {
        "op": "MatMul",
        "attrs": {},
        "x_shape": [m, k],
        "weight_shape": [k, n],
        "channels": n,
        "bias_shape": None,
        "rank": 2,
    }


@st.composite
def left_matmul_case(draw):
    """`W[c, k] · x[b, k, l]`: the weight on the left (a Conv1d written as a product)."""
    b, k, c, length = (draw(st.integers(1, 4)) for _ in range(4))
    return {
        "op": "MatMul",
        "attrs": {},
        "operands": ["W", "x"],
        "x_shape": [b, k, length],
        "weight_shape": [c, k],
        "channels": c,
        "bias_shape": None,
        "rank": 3,
    }


@st.composite
def scenario(draw):
    cases = (conv_case(False), conv_case(True), gemm_case(), matmul_case(), left_matmul_case())
    case = draw(st.one_of(*cases))
    dtypes = ["float32", "float16"] + (["float64"] if case["op"] in ("Gemm", "MatMul") else [])
    case["dtype"] = np.dtype(draw(st.sampled_from(dtypes)))
    case["params_as"] = draw(st.sampled_from(["initializer", "constant", "identity"]))
    case["shared_weight"] = draw(st.booleans())
    case["producer_output"] = draw(
        st.sampled_from(["bn_only"] * 4 + ["also_graph_output", "also_read"])
    )
    case["training"] = draw(st.booleans()) and draw(st.booleans())
    case["seed"] = draw(st.integers(0, 2**16))
    return case


def build(case) -> onnx.ModelProto:
    rng = np.random.default_rng(case["seed"])
    dtype = case["dtype"]
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    c = case["channels"]
    inits = [tensor("W", rng.normal(0, 0.5, case["weight_shape"]).astype(dtype))]
    inputs = list(case.get("operands", ["x", "W"]))
    if case["bias_shape"] is not None:
        inits.append(tensor("B", rng.normal(0, 0.5, case["bias_shape"]).astype(dtype)))
        inputs.append("B")
    params = {
        "scale": rng.uniform(0.5, 1.5, c),
        "bias": rng.normal(0, 0.3, c),
        "mean": rng.normal(0, 0.5, c),
        "var": rng.uniform(0.3, 2.0, c),
    }
    nodes = []
    for name, value in params.items():
        array = tensor(name, value.astype(dtype))
        if case["params_as"] == "initializer":
            inits.append(array)
        else:
            source = name if case["params_as"] == "constant" else f"{name}_c"
            nodes.append(
                helper.make_node(
                    "Constant", [], [source], value=tensor(source, value.astype(dtype))
                )
            )
            if case["params_as"] == "identity":
                nodes.append(helper.make_node("Identity", [source], [name]))
    nodes.append(helper.make_node(case["op"], inputs, ["p"], name="producer", **case["attrs"]))
    bn_attrs = {"training_mode": 1} if case["training"] else {}
    bn_outputs = ["y", "rm", "rv"] if case["training"] else ["y"]
    nodes.append(
        helper.make_node(
            "BatchNormalization",
            ["p", "scale", "bias", "mean", "var"],
            bn_outputs,
            epsilon=1e-3,
            **bn_attrs,
        )
    )
    outputs = [value_info("y", elem, symbolic(case["rank"]))]
    if case["training"]:
        outputs += [value_info("rm", elem, [c]), value_info("rv", elem, [c])]
    if case["producer_output"] == "also_graph_output":
        outputs.append(value_info("p", elem, symbolic(case["rank"])))
    elif case["producer_output"] == "also_read":
        nodes.append(helper.make_node("Neg", ["p"], ["q"]))
        outputs.append(value_info("q", elem, symbolic(case["rank"])))
    if case["shared_weight"]:  # a second reader of W must keep seeing the original weight
        nodes.append(helper.make_node("Identity", ["W"], ["w_copy"]))
        outputs.append(value_info("w_copy", elem, case["weight_shape"]))
    return make_model(nodes, [value_info("x", elem, case["x_shape"])], outputs, inits)


@SETTINGS
@given(scenario())
def test_random_producer_bn_graphs(case):
    model = build(case)
    onnx.checker.check_model(model, full_check=True)
    result = bnfold.fold(model)
    forbidden = case["training"] or case["producer_output"] != "bn_only"
    assert len(result.folded) == (0 if forbidden else 1), result.skipped
    assert len(result.folded) + len(result.skipped) == 1
    onnx.checker.check_model(result.model, full_check=True)
    if result.folded:
        ops = [n.op_type for n in result.model.graph.node]
        assert "BatchNormalization" not in ops
    elif not forbidden:
        raise AssertionError(result.skipped)
    rtol = {"float16": 5e-3, "float32": 2e-5, "float64": 1e-10}[case["dtype"].name]
    rng = np.random.default_rng(case["seed"] + 1)
    feeds = {"x": rng.standard_normal(case["x_shape"]).astype(case["dtype"])}
    if not case["training"]:  # training-mode outputs depend on batch statistics only
        assert_same_function(model, result.model, rtol=rtol, feeds=feeds)


@st.composite
def forward_case(draw):
    c = draw(st.integers(1, 4))
    flatten = draw(st.booleans())
    spatial = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))] if flatten else []
    features = c * int(np.prod(spatial)) if spatial else c
    n = draw(st.integers(1, 4))
    op = draw(st.sampled_from(["Gemm", "MatMul"]))
    attrs = {}
    if op == "Gemm":
        attrs = {
            "transB": draw(st.integers(0, 1)),
            "alpha": draw(st.sampled_from([1.0, -0.5])),
            "beta": draw(st.sampled_from([1.0, 2.0])),
        }
    return {
        "c": c,
        "flatten": flatten,
        "spatial": spatial,
        "features": features,
        "n": n,
        "op": op,
        "attrs": attrs,
        "bias": op == "Gemm" and draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


@SETTINGS
@given(forward_case())
def test_random_bn_before_linear_graphs(case):
    rng = np.random.default_rng(case["seed"])
    c, n, k = case["c"], case["n"], case["features"]
    x_shape = [2, c, *case["spatial"]]
    trans_b = case["attrs"].get("transB", 0)
    inits = [tensor("B", rng.normal(0, 1, [n, k] if trans_b else [k, n]).astype(np.float32))]
    for name, value in (
        ("scale", rng.uniform(0.5, 1.5, c)),
        ("bias", rng.normal(0, 0.3, c)),
        ("mean", rng.normal(0, 0.5, c)),
        ("var", rng.uniform(0.3, 2.0, c)),
    ):
        inits.append(tensor(name, value.astype(np.float32)))
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("BatchNormalization", ["r", "scale", "bias", "mean", "var"], ["n"]),
    ]
    data = "n"
    if case["flatten"]:
        nodes.append(helper.make_node("Flatten", ["n"], ["f"], axis=1))
        data = "f"
    elif len(x_shape) != 2:
        x_shape = [2, c]
    inputs = [data, "B"]
    if case["bias"]:
        inits.append(tensor("C", rng.normal(0, 1, [n]).astype(np.float32)))
        inputs.append("C")
    nodes.append(helper.make_node(case["op"], inputs, ["y"], **case["attrs"]))
    model = make_model(
        nodes,
        [value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [value_info("y", onnx.TensorProto.FLOAT, [2, n])],
        inits,
    )
    onnx.checker.check_model(model, full_check=True)
    result = bnfold.fold(model)
    assert len(result.folded) == 1, result.skipped
    onnx.checker.check_model(result.model, full_check=True)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    assert_same_function(model, result.model, rtol=2e-5, feeds=feeds)


@SETTINGS
@given(st.sampled_from(["Mul", "Add"]), st.integers(0, 4), st.booleans(), st.integers(0, 2**16))
def test_random_mul_add_after_conv(op, shape_kind, constant_first, seed):
    rng = np.random.default_rng(seed)
    c, size = 3, 3  # size == c, so a [C] constant is valid but along the width
    shape, foldable = [
        ([c, 1, 1], True),
        ([1, c, 1, 1], True),
        ([], True),
        ([c], False),
        ([1, 1, size, 1], False),
    ][shape_kind]
    k = tensor("k", rng.uniform(-2, 2, shape).astype(np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["t"], pads=[1, 1, 1, 1]),
        helper.make_node(op, ["k", "t"] if constant_first else ["t", "k"], ["y"]),
    ]
    model = make_model(
        nodes,
        [value_info("x", onnx.TensorProto.FLOAT, [1, 2, size, size])],
        [value_info("y", onnx.TensorProto.FLOAT, symbolic(4))],
        [tensor("W", rng.normal(0, 1, [c, 2, 3, 3]).astype(np.float32)), k],
    )
    result = bnfold.fold(model)
    assert len(result.folded_affine) == (1 if foldable else 0)
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_function(model, result.model, rtol=2e-5)


@st.composite
def forward_conv_case(draw):
    spatial, group, c_in, c_out, kernel, attrs = conv_geometry(draw)
    padding = draw(st.sampled_from(["none", "none", "pads", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    if padding == "pads":
        attrs["pads"] = [draw(st.integers(0, 1)) for _ in range(2 * spatial)]
    elif padding != "none":
        attrs["auto_pad"] = padding
        if padding.startswith("SAME"):  # onnxruntime runs no dilated SAME convolution
            attrs.pop("dilations", None)
    pads_nothing = not any(attrs.get("pads", [])) and (
        not padding.startswith("SAME") or all(k == 1 for k in kernel)
    )
    return {
        "attrs": attrs,
        "x_shape": [2, c_in, *([draw(st.integers(5, 7))] * spatial)],
        "weight_shape": [c_out, c_in // group, *kernel],
        "c_in": c_in,
        "bias": draw(st.booleans()),
        "relu": draw(st.booleans()),
        "dtype": np.dtype(draw(st.sampled_from(["float32", "float16"]))),
        "foldable": pads_nothing,
        "seed": draw(st.integers(0, 2**16)),
    }


@SETTINGS
@given(forward_conv_case())
def test_random_bn_before_conv_graphs(case):
    """BN → Conv folds forward exactly when the Conv pads nothing; else it is skipped."""
    rng = np.random.default_rng(case["seed"])
    dtype, c = case["dtype"], case["c_in"]
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    inits = [tensor("W", rng.normal(0, 0.5, case["weight_shape"]).astype(dtype))]
    for name, value in (
        ("scale", rng.uniform(0.5, 1.5, c)),
        ("bias", rng.normal(0, 0.3, c)),
        ("mean", rng.normal(0, 0.5, c)),
        ("var", rng.uniform(0.3, 2.0, c)),
    ):
        inits.append(tensor(name, value.astype(dtype)))
    inputs = ["n", "W"]
    if case["bias"]:
        inits.append(tensor("B", rng.normal(0, 0.5, case["weight_shape"][0]).astype(dtype)))
        inputs.append("B")
    nodes = [helper.make_node("Relu", ["x"], ["r"])] if case["relu"] else []
    source = "r" if case["relu"] else "x"
    nodes += [
        helper.make_node("BatchNormalization", [source, "scale", "bias", "mean", "var"], ["n"]),
        helper.make_node("Conv", inputs, ["y"], **case["attrs"]),
    ]
    rank = len(case["x_shape"])
    model = make_model(
        nodes,
        [value_info("x", elem, case["x_shape"])],
        [value_info("y", elem, symbolic(rank))],
        inits,
    )
    onnx.checker.check_model(model, full_check=True)
    result = bnfold.fold(model)
    assert len(result.folded) == (1 if case["foldable"] else 0), result.skipped
    if not case["foldable"]:
        assert "pads its input" in result.skipped[0].reason
    onnx.checker.check_model(result.model, full_check=True)
    rtol = {"float16": 5e-3, "float32": 2e-5}[dtype.name]
    feeds = {"x": rng.standard_normal(case["x_shape"]).astype(dtype)}
    assert_same_function(model, result.model, rtol=rtol, feeds=feeds)
