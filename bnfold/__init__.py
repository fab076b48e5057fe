"""bnfold: fold BatchNormalization into neighbouring linear layers of ONNX models, exactly.

result = bnfold.fold("model.onnx")          # or an onnx.ModelProto (left unmodified)
bnfold.fold_file("model.onnx", "out.onnx")  # what the command does: fold, validate, write
bnfold.save_model(result.model, "out.onnx")
for record in result.folded: ...             # Folded(batchnorm, into, how, ...)
for record in result.skipped: ...            # Skipped(batchnorm, reason, ...)
"""

from ._version import __version__
from .errors import BnfoldError, InputError, ValidationFailed
from .fold import fold
from .graphsurgeon import fold_graph
from .model_io import load_model, save_model
from .pipeline import FileResult, fold_file
from .records import Folded, FoldResult, Skipped
from .validation import ValidationReport, validate

__all__ = [
    "BnfoldError",
    "FileResult",
    "FoldResult",
    "Folded",
    "InputError",
    "Skipped",
    "ValidationFailed",
    "ValidationReport",
    "__version__",
    "fold",
    "fold_file",
    "fold_graph",
    "load_model",
    "save_model",
    "validate",
]
