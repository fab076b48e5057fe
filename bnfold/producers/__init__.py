"""The linear layers a BatchNormalization can be folded into: one module per kind, each with its
planner and how to read its output channels, listed once in `LAYERS` (a new kind: its module and
one line)."""

from . import conv, conv_transpose, gemm, matmul
from .base import ConstantUpdate, FoldPlan, Layer

# op type (default ONNX domain) -> the layer kind
LAYERS = {
    "Conv": Layer(conv.plan_conv, conv.output_channels),
    "ConvTranspose": Layer(conv_transpose.plan_conv_transpose, conv_transpose.output_channels),
    "Gemm": Layer(gemm.plan_gemm, gemm.output_channels),
    "MatMul": Layer(matmul.plan_matmul, matmul.output_channels),
}
# op type -> planner (may I fold, and with which new constants)
PLANNERS = {op: layer.plan for op, layer in LAYERS.items()}

__all__ = ["LAYERS", "PLANNERS", "ConstantUpdate", "FoldPlan", "Layer"]
