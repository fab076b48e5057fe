"""Loading a model file: whole, or skimmed (its big initializers left in the file), then
checked (`checks`) and its external data found (`external`)."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import onnx

from .. import skim, tensor_data
from ..errors import InputError
from .checks import check_model_structure, parse_model, shape_problem
from .external import LAZY_BYTES, load_external_data


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file and its external data; raise `InputError` naming the file if unusable."""
    return load_model_and_sources(path)[0]


def load_model_and_sources(
    path: str | os.PathLike,
    *,
    check: bool = True,
    lazy: bool = False,
    lazy_from: int | None = None,
) -> tuple[onnx.ModelProto, set[Path]]:
    """`load_model`, plus the resolved paths of every file read (the model, its data files).

    `check=False` leaves the graph checks to the caller (`fold_in_place` makes them from its
    index); the file, protobuf and external-data checks are always made. `lazy=True` checks
    external data but leaves it in its files, and the big initializers of the model file itself
    in that file (`bnfold.skim`): those tensors are then "on disk" (`bnfold.tensor_data`) and
    the model must be saved with `save_model`, which copies them. `lazy_from`: the least size
    in bytes of a tensor left on disk (`LAZY_BYTES`)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, not an ONNX file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise InputError(path, "is not a regular file")
    lazy_from = LAZY_BYTES if lazy_from is None else lazy_from
    model, in_file = _skimmed_model(path, lazy_from) if lazy else (None, [])
    if model is None:
        model = parse_model(_read(path), path)
    for index, offset, length in in_file:  # (their tensors have no external data: checked)
        tensor = model.graph.initializer[index]
        problem = shape_problem(tensor, length, "initializer", "holds")  # (as a full parse)
        if problem:
            raise InputError(path, problem)
        span = tensor_data.DiskSpan(str(path.resolve()), offset, length)
        tensor_data.put_on_disk(tensor, span)
    if check:
        check_model_structure(model, path)
    in_model_file = {index for index, _, _ in in_file}
    sources = load_external_data(
        model, path, lazy=lazy, in_model_file=in_model_file, lazy_from=lazy_from
    )
    return model, {path.resolve(), *sources}


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise InputError(path, "is empty")
    return data


def _skimmed_model(
    path: Path, lazy_from: int
) -> tuple[onnx.ModelProto | None, list[tuple[int, int, int]]]:
    """The model without the raw data of its big initializers, and where that is in the file
    (`bnfold.skim`), read through a memory map: only the graph's pages are read. (None, []) when
    skimming gains nothing or cannot be done: then the file is parsed whole, which reports any
    problem."""
    try:
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            if len(data) < SKIM_FROM:
                return None, []
            encoding, spans = skim.skimmed(data, lazy_from)
    except (OSError, ValueError):  # (an empty file cannot be mapped; Unskimmable)
        return None, []
    if not spans:
        return None, []
    try:
        model = parse_model(encoding, path)
    except InputError:
        return None, []
    initializers = model.graph.initializer
    if any(initializers[i].data_location or initializers[i].external_data for i, _, _ in spans):
        return None, []  # raw data and external data at once: as the whole file parses
    return model, spans


SKIM_FROM = 1 << 20  # model files at least this big are read without their big initializers
