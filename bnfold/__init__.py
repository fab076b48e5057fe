"""bnfold: fold BatchNormalization into neighbouring linear layers of ONNX models, exactly.

result = bnfold.fold("model.onnx")          # or an onnx.ModelProto (left unmodified)
bnfold.save_model(result.model, "out.onnx")
for record in result.folded: ...             # Folded(batchnorm, into, how, ...)
for record in result.skipped: ...            # Skipped(batchnorm, reason, ...)
"""

from .errors import BnfoldError, InputError, ValidationFailed
from .fold import fold
from .graphsurgeon import fold_graph
from .model_io import load_model, save_model
from .records import Folded, FoldResult, Skipped
from .validation import ValidationReport, validate

__version__ = "0.1.0"

__all__ = [
    "BnfoldError",
    "FoldResult",
    "Folded",
    "InputError",
    "Skipped",
    "ValidationFailed",
    "ValidationReport",
    "__version__",
    "fold",
    "fold_graph",
    "load_model",
    "save_model",
    "validate",
]
