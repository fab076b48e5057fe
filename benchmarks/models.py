"""Deterministic benchmark models, built with onnx.helper (no downloads).

- `chain(n)`: n × (Conv 3×3 → BatchNormalization → Relu), 8 channels: many small nodes.
- `resnet_like(mid_width, stages)`: bottleneck ResNets with real sizes: few big tensors
  (ResNet-152 ~230 MB; Wide-ResNet-101-2 ~500 MB).
- `many_subgraphs(n)`: n `If` nodes, each branch a Conv → BatchNormalization reading the main
  graph's input and weights: the cost of subgraphs (each sees the names of all around it).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

IR_VERSION = 10


def _bn(rng, prefix: str, channels: int, inits: list) -> list[str]:
    names = [f"{prefix}.{p}" for p in ("scale", "bias", "mean", "var")]
    values = (
        rng.uniform(0.5, 1.5, channels),
        rng.normal(0, 0.2, channels),
        rng.normal(0, 0.2, channels),
        rng.uniform(0.5, 2.0, channels),
    )
    for name, value in zip(names, values, strict=True):
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
    return names


def _conv_bn(rng, nodes, inits, x, c_in, c_out, k, prefix, stride=1, relu=True) -> str:
    weight = rng.normal(0, (2 / (c_in * k * k)) ** 0.5, [c_out, c_in, k, k]).astype(np.float32)
    inits.append(numpy_helper.from_array(weight, f"{prefix}.w"))
    pad = k // 2
    nodes.append(
        helper.make_node(
            "Conv",
            [x, f"{prefix}.w"],
            [f"{prefix}.c"],
            name=f"{prefix}.conv",
            pads=[pad] * 4,
            strides=[stride, stride],
        )
    )
    nodes.append(
        helper.make_node(
            "BatchNormalization",
            [f"{prefix}.c", *_bn(rng, prefix, c_out, inits)],
            [f"{prefix}.n"],
            name=f"{prefix}.bn",
        )
    )
    if not relu:
        return f"{prefix}.n"
    nodes.append(helper.make_node("Relu", [f"{prefix}.n"], [f"{prefix}.r"], name=f"{prefix}.relu"))
    return f"{prefix}.r"


def _model(nodes, inits, x_shape, output, name) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        # a shaped output: some tools (onnx-simplifier) refuse outputs without one
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, ["n", "c", "h", "w"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    return model


def chain(blocks: int, channels: int = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(blocks):
        x = _conv_bn(rng, nodes, inits, x, channels, channels, 3, f"b{i}")
    return _model(nodes, inits, [1, channels, 8, 8], x, f"chain{blocks}")


def resnet_like(mid_width: int = 64, stages=(3, 8, 36, 3)) -> onnx.ModelProto:
    """Bottleneck ResNet: mid_width 64 with (3, 8, 36, 3) is ResNet-152; mid_width 128 with
    (3, 4, 23, 3) is Wide-ResNet-101-2 (wider 3×3 convs, same 256·2^s block outputs)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = _conv_bn(rng, nodes, inits, "x", 3, 64, 7, "stem", stride=2)
    c_in = 64
    for s, count in enumerate(stages):
        mid = mid_width * 2**s
        out = 256 * 2**s
        for b in range(count):
            prefix = f"s{s}b{b}"
            stride = 2 if b == 0 and s > 0 else 1
            y = _conv_bn(rng, nodes, inits, x, c_in, mid, 1, f"{prefix}.a")
            y = _conv_bn(rng, nodes, inits, y, mid, mid, 3, f"{prefix}.b", stride=stride)
            y = _conv_bn(rng, nodes, inits, y, mid, out, 1, f"{prefix}.c", relu=False)
            shortcut = x
            if b == 0:
                shortcut = _conv_bn(
                    rng, nodes, inits, x, c_in, out, 1, f"{prefix}.d", stride=stride, relu=False
                )
            nodes.append(helper.make_node("Add", [y, shortcut], [f"{prefix}.sum"]))
            nodes.append(helper.make_node("Relu", [f"{prefix}.sum"], [f"{prefix}.out"]))
            x, c_in = f"{prefix}.out", out
    return _model(nodes, inits, [1, 3, 64, 64], x, f"resnet_like_w{mid_width}")


def many_subgraphs(count: int, channels: int = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(True), "cond")]
    nodes = []
    for i in range(count):
        branch_nodes, branch_inits = [], []
        out = _conv_bn(
            rng, branch_nodes, branch_inits, "x", channels, channels, 1, f"s{i}", relu=False
        )
        then = helper.make_graph(
            branch_nodes,
            f"then{i}",
            [],
            [helper.make_tensor_value_info(out, 1, None)],
            branch_inits,
        )
        other = helper.make_graph(
            [helper.make_node("Identity", ["x"], [f"s{i}.e"])],
            f"else{i}",
            [],
            [helper.make_tensor_value_info(f"s{i}.e", 1, None)],
        )
        nodes.append(
            helper.make_node("If", ["cond"], [f"y{i}"], then_branch=then, else_branch=other)
        )
    nodes.append(helper.make_node("Sum", [f"y{i}" for i in range(count)], ["out"]))
    return _model(nodes, inits, [1, channels, 4, 4], "out", f"subgraphs{count}")
