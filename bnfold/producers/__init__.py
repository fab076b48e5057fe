"""One rule per linear layer a BatchNormalization can be folded into."""

from .base import ConstantUpdate, FoldPlan
from .conv import plan_conv
from .conv_transpose import plan_conv_transpose
from .gemm import plan_gemm
from .matmul import plan_matmul

# op type (default ONNX domain) -> rule
PLANNERS = {
    "Conv": plan_conv,
    "ConvTranspose": plan_conv_transpose,
    "Gemm": plan_gemm,
    "MatMul": plan_matmul,
}

__all__ = ["PLANNERS", "ConstantUpdate", "FoldPlan"]
