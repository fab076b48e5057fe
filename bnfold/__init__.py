"""bnfold: fold BatchNormalization into neighbouring linear layers of ONNX models, exactly.

result = bnfold.fold("model.onnx")          # or an onnx.ModelProto (left unmodified)
bnfold.fold_file("model.onnx", "out.onnx")  # what the command does: fold, validate, write
bnfold.save_model(result.model, "out.onnx")
for record in result.folded: ...             # Folded(batchnorm, into, how, ...)
for record in result.skipped: ...            # Skipped(batchnorm, reason, ...)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import BnfoldError, InputError, ValidationFailed

if TYPE_CHECKING:
    from .folding import fold
    from .graphsurgeon import fold_graph
    from .model_io import load_model, save_model
    from .pipeline import FileResult, fold_file
    from .records import Folded, FoldResult, Skipped
    from .validation import ValidationReport, validate

# The rest is imported on first use (PEP 562): `bnfold --help` and `import bnfold.errors` do not
# load onnx, numpy or onnxruntime.
_LAZY = {
    "fold": "folding",
    "fold_graph": "graphsurgeon",
    "load_model": "model_io",
    "save_model": "model_io",
    "FileResult": "pipeline",
    "fold_file": "pipeline",
    "Folded": "records",
    "FoldResult": "records",
    "Skipped": "records",
    "ValidationReport": "validation",
    "validate": "validation",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bnfold' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
