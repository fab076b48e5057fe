"""Reading and writing models safely.

- `load_model` turns every way a file can be unusable (missing, a directory, empty, not
  protobuf, truncated, not a model, dangling or cyclic graph, unsupported opset, external data
  that is missing or points outside the model's folder) into one `InputError` line.
- `save_model` writes atomically: a temporary file in the target folder, then a rename, so a
  failure never leaves a partial OUT; models too big for one protobuf (2 GB) get their tensors in
  one data file named after the output, next to it.

The parts: `tensors` (every tensor of a model, sizes), `checks` (is a parsed model usable),
`external` (external data: where, whether there, read or left on disk), `loading`, `saving`.
"""

from .checks import (
    check_model_opset,
    check_model_structure,
    indexed_structure_problem,
    parse_model,
)
from .external import (
    LAZY_BYTES,
    external_tensors,
    has_unread_external_data,
    holds_data_on_disk,
    load_external_data,
    require_external_data_loaded,
)
from .loading import SKIM_FROM, load_model, load_model_and_sources
from .saving import StagedFile, StagedModel, atomic_file, data_file_for, save_model
from .tensors import (
    EXTERNAL_THRESHOLD,
    PROTOBUF_LIMIT,
    TENSOR_ATTRIBUTE_OPS,
    all_tensors,
    fits_in_one_protobuf,
    tensor_data_size,
)

__all__ = [
    "EXTERNAL_THRESHOLD",
    "LAZY_BYTES",
    "PROTOBUF_LIMIT",
    "SKIM_FROM",
    "TENSOR_ATTRIBUTE_OPS",
    "StagedFile",
    "StagedModel",
    "all_tensors",
    "atomic_file",
    "check_model_opset",
    "check_model_structure",
    "data_file_for",
    "external_tensors",
    "fits_in_one_protobuf",
    "has_unread_external_data",
    "holds_data_on_disk",
    "indexed_structure_problem",
    "load_external_data",
    "load_model",
    "load_model_and_sources",
    "parse_model",
    "require_external_data_loaded",
    "save_model",
    "tensor_data_size",
]
