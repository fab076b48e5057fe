"""Test helpers: build small producer → BatchNormalization models, run them in
onnxruntime with every graph optimisation off, and compare original with folded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import bnfold

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
MODELS = ROOT / "models"
IR_VERSION = 10  # onnxruntime-gpu 1.31 refuses IR 14, which onnx 1.23 writes by default
OPSET = 17


def make_model(nodes, inputs, outputs, initializers=(), *, opset=OPSET, ir_version=IR_VERSION):
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def tensor(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def bn_params(rng, channels, dtype=np.float32, prefix="bn"):
    """Non-trivial statistics: γ, β, μ, σ² far from 1/0."""
    return [
        tensor(f"{prefix}_scale", rng.uniform(0.5, 1.5, channels).astype(dtype)),
        tensor(f"{prefix}_bias", rng.normal(0, 0.3, channels).astype(dtype)),
        tensor(f"{prefix}_mean", rng.normal(0, 0.5, channels).astype(dtype)),
        tensor(f"{prefix}_var", rng.uniform(0.3, 2.0, channels).astype(dtype)),
    ]


def bn_node(x, y, prefix="bn", epsilon=1e-3, name=None, **attrs):
    return helper.make_node(
        "BatchNormalization",
        [x, f"{prefix}_scale", f"{prefix}_bias", f"{prefix}_mean", f"{prefix}_var"],
        [y],
        epsilon=epsilon,
        name=name or f"{prefix}_node",
        **attrs,
    )


def value_info(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def symbolic(rank: int) -> list[str]:
    """A shape of `rank` symbolic dims (graph outputs need a shape for the full checker)."""
    return [f"d{i}" for i in range(rank)]


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed=1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for info in model.graph.input:
        if info.name in initializers:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        shape = [d.dim_value or 2 for d in info.type.tensor_type.shape.dim]
        feeds[info.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_same_function(original, folded, *, rtol=1e-5, atol=None, feeds=None):
    """Outputs of the folded model equal the original's (relative to each output's magnitude)."""
    feeds = feeds or random_feeds(original)
    expected = run(original, feeds)
    got = run(folded, feeds)
    assert len(expected) == len(got)
    for want, have in zip(expected, got, strict=True):
        assert want.shape == have.shape and want.dtype == have.dtype
        want64, have64 = want.astype(np.float64), have.astype(np.float64)
        scale = max(float(np.max(np.abs(want64))), 1e-30)
        error = float(np.max(np.abs(want64 - have64))) / scale
        assert error <= rtol if atol is None else np.allclose(have64, want64, rtol, atol), error


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def check_full(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


__all__ = [
    "CORPUS",
    "IR_VERSION",
    "MODELS",
    "OPSET",
    "TensorProto",
    "assert_same_function",
    "bn_node",
    "bn_params",
    "check_full",
    "make_model",
    "op_types",
    "random_feeds",
    "run",
    "symbolic",
    "tensor",
    "value_info",
]


def conv_bn_with(nodes_before, rng, *, opset=17, drop=(), channels=4, **kwargs):
    """x -> Conv(W) -> BN(bn_*) -> y, with `nodes_before` computing some of the parameters."""
    inits = [
        tensor("W", rng.normal(0, 0.5, [channels, 3, 1, 1]).astype(np.float32)),
        *[t for t in bn_params(rng, channels) if t.name not in drop],
    ]
    nodes = [*nodes_before, helper.make_node("Conv", ["x", "W"], ["c"]), bn_node("c", "y")]
    return make_model(
        nodes,
        [value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [value_info("y", TensorProto.FLOAT, symbolic(4))],
        inits,
        opset=opset,
        **kwargs,
    )


C = 4


def conv_bn(
    rng,
    *,
    bn_attrs=None,
    extra_nodes=(),
    outputs=("y",),
    inits_extra=(),
    inputs=None,
    dtype=np.float32,
    bn_dtype=None,
    opset=17,
    ir_version=10,
    weight_name="W",
):
    """x -> Conv(W) -> c -> BN -> y, with hooks to break one rule at a time."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [
        tensor(weight_name, rng.normal(0, 0.5, [C, 3, 3, 3]).astype(dtype)),
        *bn_params(rng, C, bn_dtype or dtype),
        *inits_extra,
    ]
    nodes = [
        helper.make_node("Conv", ["x", weight_name], ["c"], name="conv"),
        bn_node("c", "y", **(bn_attrs or {})),
        *extra_nodes,
    ]
    graph_outputs = [value_info(name, elem, symbolic(4)) for name in outputs]
    graph_inputs = [value_info("x", elem, [1, 3, 6, 6]), *(inputs or [])]
    return make_model(nodes, graph_inputs, graph_outputs, inits, opset=opset, ir_version=ir_version)


def only_skip(model) -> str:
    result = bnfold.fold(model)
    assert not result.folded
    assert len(result.skipped) == 1
    return result.skipped[0].reason
