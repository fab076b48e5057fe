"""Reading a BatchNormalization node: is it an inference-mode, per-channel normalisation with
constant parameters, and if so, which affine map does it compute?

Opset history that matters here (onnx/docs/Changelog.md):
- 1 and 6: `is_test` (default 0 = training), `spatial` (default 1), optional outputs 2-5.
- 7: `is_test` removed; using any of the optional outputs (mean, var, saved_mean, saved_var)
  means training mode; `spatial` still there.
- 9: `spatial` removed (always per-channel).
- 14: `training_mode` attribute (default 0); outputs running_mean/var only in training mode.
- 15: scale/bias and mean/var may have other float types than the data (T1, T2).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .graph_view import GraphView
from .graphs import attributes
from .numerics import ChannelAffine, NotRepresentable, batchnorm_affine, is_float
from .protobuf_speed import listed

PARAMETER_NAMES = ("scale", "B", "input_mean", "input_var")


@dataclass(frozen=True)
class BatchNorm:
    """An inference-mode BatchNormalization, ready to fold."""

    input: str
    output: str
    affine: ChannelAffine


def mode_problem(node: onnx.NodeProto, opset: int, attrs: dict | None = None) -> str | None:
    """Why this BatchNormalization is not an inference-mode per-channel one, or None."""
    attrs = attributes(node) if attrs is None else attrs
    outputs, inputs = listed(node.output), listed(node.input)
    extra_outputs = [name for name in outputs[1:] if name]
    if opset < 7 and not attrs.get("is_test", 0):
        return f"training mode (opset {opset} BatchNormalization without is_test=1)"
    if opset >= 14 and attrs.get("training_mode", 0):
        return "training mode (training_mode=1)"
    if opset < 9 and attrs.get("spatial", 1) == 0:
        return "spatial=0 (per-activation statistics, not per-channel)"
    if extra_outputs:
        named = ", ".join(f"'{n}'" for n in extra_outputs)
        return f"its optional outputs ({named}) are used, which only training mode computes"
    if not outputs or not outputs[0]:
        return "its output has no name (the result is unused)"
    if len(inputs) != 5 or not all(inputs):
        return f"it has {sum(1 for i in inputs if i)} inputs, expected 5"
    return None


def read_batchnorm(node: onnx.NodeProto, opset: int, view: GraphView) -> BatchNorm | str:
    """The node as a `BatchNorm`, or the reason it cannot be folded."""
    attrs = attributes(node)
    problem = mode_problem(node, opset, attrs)
    if problem:
        return problem
    values = []
    for role, name in zip(PARAMETER_NAMES, node.input[1:], strict=True):
        value = view.constant(name)
        if value is None:
            return f"parameter {role} is not constant: {view.why_not_constant(name)}"
        if not is_float(value.dtype):
            return f"parameter {role} has non-float dtype {value.dtype}"
        values.append(value)
    shape = values[0].shape
    if len(shape) != 1 or any(v.shape != shape for v in values):
        listed = ", ".join(
            f"{r} {tuple(v.shape)}" for r, v in zip(PARAMETER_NAMES, values, strict=True)
        )
        return f"parameters are not 1-D vectors of one length ({listed})"
    try:
        gamma, beta, mean, var = values
        affine = batchnorm_affine(gamma, beta, mean, var, attrs.get("epsilon", 1e-5))
    except NotRepresentable as exc:
        return str(exc)
    return BatchNorm(node.input[0], node.output[0], affine)
