"""External data: where a tensor's data file is (inside the model's folder only), whether it is
there and the size its dims say, read now or left on disk (a lazy load)."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO

import onnx

from .. import tensor_data
from ..errors import InputError
from ..protobuf_speed import DATA_LOCATION
from .checks import shape_problem
from .tensors import all_tensors


def external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    external = onnx.TensorProto.EXTERNAL
    for tensor in all_tensors(model):
        if tensor.data_location == external:
            yield tensor


def has_unread_external_data(model: onnx.ModelProto) -> bool:
    """Whether some tensor's data is in an external file this process has not read or checked
    (on-disk tensors of a lazy load do not count)."""
    return any(not tensor_data.is_on_disk(tensor) for tensor in external_tensors(model))


def require_external_data_loaded(model: onnx.ModelProto) -> None:
    """Refuse (`InputError`) a model whose external data was not loaded with it."""
    if has_unread_external_data(model):
        raise InputError(
            None,
            "the model's external data is not loaded: pass its path, or load it with "
            "onnx.load(path) (load_external_data=True)",
        )


def holds_data_on_disk(model: onnx.ModelProto) -> bool:
    """Whether some tensor of the model is on disk: a lazily loaded model. Only the main graph's
    initializers are looked at: only those are left on disk by `load_external_data`, and a
    fold's `DataFile` takes only those."""
    initializers = model.graph.initializer
    if not any(map(DATA_LOCATION, initializers)):  # all DEFAULT (0): the usual case
        return False
    return any(map(tensor_data.is_on_disk, initializers))


def load_external_data(
    model: onnx.ModelProto,
    path: Path,
    *,
    lazy: bool = False,
    in_model_file: Collection[int] = (),
    lazy_from: int | None = None,
) -> set[Path]:
    """Read external tensor data that lies inside the model's folder; refuse anything else.
    Returns the data files read. Each tensor's bytes must be there, as many as its dims and type
    make. `lazy=True` leaves those of the main graph's initializers of at least `LAZY_BYTES` in
    the files: they are then on disk (`bnfold.tensor_data`); smaller tensors (shapes, axes, BN
    statistics, which shape inference and the rules read) and tensors elsewhere (attributes,
    subgraphs, functions) are read as usual. `in_model_file`: indices of main-graph
    initializers a lazy load left in the model file itself (`bnfold.skim`), skipped."""
    base = path.resolve().parent
    tensors = all_tensors(model)
    main_initializers = len(model.graph.initializer)  # (all_tensors lists them first)
    lazy_from = LAZY_BYTES if lazy_from is None else lazy_from
    files: set[Path] = set()
    with contextlib.ExitStack() as stack:
        handles: dict[Path, BinaryIO] = {}
        for index, tensor in enumerate(tensors):
            if tensor.data_location != onnx.TensorProto.EXTERNAL or index in in_model_file:
                continue
            data_path, offset, length = _external_span(tensor, base, path)
            _check_external_size(tensor, length, path)
            files.add(data_path)
            if lazy and index < main_initializers and length >= lazy_from:
                span = tensor_data.DiskSpan(str(data_path), offset, length)
                tensor_data.put_on_disk(tensor, span)
                continue
            if data_path not in handles:
                handles[data_path] = stack.enter_context(open(data_path, "rb"))
            handle = handles[data_path]
            handle.seek(offset)
            data = handle.read(length)
            if len(data) != length:  # the file changed since it was measured
                raise InputError(data_path, f"ends before the data of tensor '{tensor.name}'")
            tensor_data.set_raw_data(tensor, data)
    return files


LAZY_BYTES = 1 << 16  # external initializers of at least this size stay on disk in a lazy load


def _external_span(tensor: onnx.TensorProto, base: Path, path: Path) -> tuple[Path, int, int]:
    """(resolved data file, offset, length) of an external tensor, checked to lie inside the
    model's folder and inside the file."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    data_path = _safe_data_path(base, location, path, tensor.name)
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise InputError(
            path, f"external data of tensor '{tensor.name}' has a malformed offset or length"
        ) from None
    try:
        available = data_path.stat().st_size - offset
    except OSError as exc:
        raise InputError(
            path, f"external data of tensor '{tensor.name}' cannot be read ({exc.strerror})"
        ) from None
    if offset < 0 or (length is not None and length < 0):
        raise InputError(
            path, f"external data of tensor '{tensor.name}' has a negative offset or length"
        )
    if available < 0 or (length is not None and length > available):
        raise InputError(
            path, f"external data of tensor '{tensor.name}' lies beyond the end of {location}"
        )
    return data_path.resolve(), offset, available if length is None else length


def _check_external_size(tensor: onnx.TensorProto, length: int, path: Path) -> None:
    """Refuse external data whose size is not what the tensor's dims and type make."""
    problem = shape_problem(tensor, length, "tensor", "its external data holds")
    if problem:
        raise InputError(path, problem)


def _safe_data_path(base: Path, location: str, path: Path, tensor: str) -> Path:
    try:
        return _checked_data_path(base, location, path, tensor)
    except OSError as exc:  # a name too long for the file system, ...
        raise InputError(
            path, f"external data of tensor '{tensor}' cannot be read ({exc.strerror or exc})"
        ) from None


def _checked_data_path(base: Path, location: str, path: Path, tensor: str) -> Path:
    if not location:
        raise InputError(path, f"tensor '{tensor}' has external data without a location")
    relative = Path(location)
    if relative.is_absolute() or ".." in relative.parts:
        raise InputError(
            path, f"external data location '{location}' leaves the model's folder; refused"
        )
    candidate = base / relative
    probe = base
    for part in relative.parts:
        probe = probe / part
        if probe.is_symlink():
            raise InputError(
                path, f"external data location '{location}' goes through a symbolic link; refused"
            )
    if not candidate.is_file():
        raise InputError(path, f"external data file '{location}' is missing")
    return candidate


# ----- saving ----------------------------------------------------------------------------------
