"""A tensor's data, as numpy reads it, whether in the model or left in its external data file.

`tensor_to_array` reads any tensor; the rest is about tensors "on disk".

A model whose tensors live in external data files can be loaded without reading its big
initializers (`bnfold.model_io.load_model_and_sources(path, lazy=True)`, what the CLI does): each
initializer of the main graph of at least `model_io.LAZY_BYTES` keeps its `external_data`
entries, with `location` replaced by the data file's absolute, already checked path (a file on
disk never has one: the loader refuses absolute locations), and `length` always set and checked
against the tensor's dims. Such a tensor is "on disk"; every other tensor is read as usual (so
shape inference and the rules see small tensors such as shapes, axes and BN statistics). The mark
(an absolute location) is written only by `put_on_disk` and read only by `is_on_disk` and
`disk_span` (a `DiskSpan`: file, offset, length); it travels with the tensor through protobuf
copies, which a table kept beside the model would not.

- readers ask `tensor_to_array`, `raw_bytes` or `data_size` (in `raw_data` or on disk alike);
- a fold that rewrites it calls `set_raw_data`, which puts the new bytes in the model and drops
  the reference to the file;
- saving (`DataFile.take`) copies the bytes of every tensor still on disk straight from file
  to file, without them passing through Python when the kernel can copy them;
- a fold given a `DataFile` (the output's data file, being written) puts there the new values
  of a Conv weight that was on disk and that no later fold can change again, and the tensor
  stays on disk, now in that file.

So the batched Conv → BatchNormalization folds of such a model read each weight once and write
it once, and hold none of them in memory; weights that other rules rewrite (and those of a fold
without a `DataFile`) are held in the model until it is saved.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import InputError
from .protobuf_speed import listed

_EXTERNAL = onnx.TensorProto.EXTERNAL
COPY_STEP = 64 << 20  # bytes per read/write when the kernel cannot copy file to file


def tensor_to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """`numpy_helper.to_array`, with a fast path for the common raw little-endian tensors
    (a read-only view of the bytes; callers never write into it), and read from its file for
    a tensor on disk."""
    dtype = RAW_DTYPES.get(tensor.data_type)
    on_disk = tensor.data_location == _EXTERNAL and is_on_disk(tensor)
    if dtype is not None and (on_disk or tensor.data_location != _EXTERNAL):
        raw = raw_bytes(tensor)
        if raw:
            shape = listed(tensor.dims)
            data = np.frombuffer(raw, dtype=dtype)
            if data.size == math.prod(shape):
                return data.reshape(shape)
    if on_disk:  # another type: numpy_helper decodes it from a copy holding the bytes
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        set_raw_data(copy, raw_bytes(tensor))
        tensor = copy
    return numpy_helper.to_array(tensor)


RAW_DTYPES: dict[int, np.dtype] = {  # TensorProto types whose raw_data numpy reads as is
    onnx.TensorProto.FLOAT: np.dtype("<f4"),
    onnx.TensorProto.FLOAT16: np.dtype("<f2"),
    onnx.TensorProto.DOUBLE: np.dtype("<f8"),
    onnx.TensorProto.INT64: np.dtype("<i8"),
}


def is_on_disk(tensor: onnx.TensorProto) -> bool:
    """Whether the tensor's data is still in a data file this process checked (see above; with
    `put_on_disk`, the only place that knows how an on-disk tensor is marked)."""
    if tensor.data_location != _EXTERNAL:
        return False
    for entry in tensor.external_data:
        if entry.key == "location":
            return os.path.isabs(entry.value)
    return False


def put_on_disk(tensor: onnx.TensorProto, span: DiskSpan) -> None:
    """Make `tensor` an on-disk tensor reading `span` (a file this process checked or wrote).
    Any bytes it held in the model are dropped."""
    if not os.path.isabs(span.path):
        raise ValueError(f"an on-disk tensor's file must be an absolute path, not {span.path!r}")
    refer_to(tensor, span.path, span.offset, span.length)


def refer_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make `tensor` external data as onnx writes it: `length` bytes at `offset` of `location`
    (relative to the model's folder when saved; an absolute one only through `put_on_disk`).
    Any bytes it held in the model are dropped."""
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    tensor.data_location = _EXTERNAL


class DiskSpan(NamedTuple):
    """Where an on-disk tensor's bytes are: `length` bytes at `offset` of the file `path`."""

    path: str  # absolute, checked when the model was loaded (or written by this process)
    offset: int
    length: int


def disk_span(tensor: onnx.TensorProto) -> DiskSpan:
    """Where an on-disk tensor's bytes are."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    return DiskSpan(info["location"], int(info["offset"]), int(info["length"]))


def data_size(tensor: onnx.TensorProto) -> int:
    """Bytes of raw data the tensor holds, in the model or on disk (0 for typed fields, and for
    data in an external file this process has not checked)."""
    if tensor.data_location == _EXTERNAL:
        return disk_span(tensor).length if is_on_disk(tensor) else 0
    return len(tensor.raw_data)


def raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """The tensor's raw data, from the model or read from its file (b"" for typed fields)."""
    if tensor.data_location == _EXTERNAL and is_on_disk(tensor):
        return read(*disk_span(tensor))
    return tensor.raw_data


def same_raw_data(a: onnx.TensorProto, b: onnx.TensorProto, step: int = 1 << 20) -> bool:
    """Whether two tensors hold the same raw bytes, in the model or on disk alike, compared
    `step` bytes at a time: tensors that differ (a weight a fold rewrote) usually do so in
    their first piece, and are then not read whole."""
    with contextlib.ExitStack() as files:
        (size_a, pieces_a), (size_b, pieces_b) = (_pieces(t, step, files) for t in (a, b))
        return size_a == size_b and all(x == y for x, y in zip(pieces_a, pieces_b, strict=True))


def holds_raw_data(tensor: onnx.TensorProto) -> bool:
    """Whether the tensor's data is raw bytes, in the model or on disk (asked without copying
    them: protobuf copies a bytes field on each access)."""
    return is_on_disk(tensor) or tensor.HasField("raw_data")


def _pieces(
    tensor: onnx.TensorProto, step: int, files: contextlib.ExitStack
) -> tuple[int, Iterator[bytes | memoryview]]:
    """The tensor's raw data size, and its bytes `step` at a time (an on-disk tensor's file
    opened in `files`)."""
    if not is_on_disk(tensor):
        raw = memoryview(tensor.raw_data)  # (read once: protobuf copies it on each access)
        return len(raw), (raw[i : i + step] for i in range(0, len(raw), step))
    path, offset, length = disk_span(tensor)
    try:
        handle = files.enter_context(open(path, "rb"))  # noqa: SIM115 (closed by `files`)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    handle.seek(offset)

    def read_on() -> Iterator[bytes]:
        for start in range(0, length, step):
            piece = handle.read(min(step, length - start))
            if len(piece) != min(step, length - start):
                raise _changed(path, offset, length)
            yield piece

    return length, read_on()


def read(path: str, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` of `path`, read into one new buffer (no intermediate copy).
    Raises `InputError` naming the file if they are not there (it changed since it was
    checked)."""
    try:
        with open(path, "rb") as handle:  # (buffered: its read(n) reads until n or the end)
            handle.seek(offset)
            data = handle.read(length)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if len(data) != length:
        raise _changed(path, offset, length)
    return data


def mapped(tensor: onnx.TensorProto) -> np.ndarray | None:
    """An on-disk tensor's values as a read-only memory map of its file (no copy: the pages are
    read as they are used), or None where numpy cannot read its bytes as they are."""
    dtype = RAW_DTYPES.get(tensor.data_type)
    if dtype is None or not is_on_disk(tensor):
        return None
    path, offset, length = disk_span(tensor)
    shape = tuple(listed(tensor.dims))
    if length != dtype.itemsize * math.prod(shape):
        return None
    if length == 0:
        return np.zeros(shape, dtype)
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc if isinstance(exc, OSError) else OSError(str(exc))) from None


def read_into(tensor: onnx.TensorProto, buffer: memoryview) -> None:
    """Fill `buffer` (exactly the tensor's size) with an on-disk tensor's bytes, or raise
    `InputError` as `read` does."""
    path, offset, length = disk_span(tensor)
    if len(buffer) != length:
        raise ValueError(f"a buffer of {len(buffer)} bytes for {length} bytes")
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            got = handle.readinto(buffer)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if got != length:
        raise _changed(path, offset, length)


def _unreadable(path: str, exc: OSError) -> InputError:
    return InputError(path, f"cannot be read ({exc.strerror or exc})")


def _changed(path: str, offset: int, length: int) -> InputError:
    return InputError(
        path, f"changed while bnfold used it: {length} bytes expected at offset {offset}"
    )


def set_raw_data(tensor: onnx.TensorProto, data: bytes) -> None:
    """Give the tensor new raw bytes in the model (an on-disk tensor stops referring to its
    file)."""
    if tensor.data_location == _EXTERNAL:
        del tensor.external_data[:]
        tensor.ClearField("data_location")  # (as a tensor that never had external data)
    tensor.raw_data = data


def load_into_model(tensors) -> None:
    """Read every on-disk tensor of `tensors` into its `raw_data` (for writing one protobuf)."""
    for tensor in tensors:
        if is_on_disk(tensor):
            set_raw_data(tensor, read(*disk_span(tensor)))


def _copy_into(tensor: onnx.TensorProto, handle: BinaryIO, at: int, step: int = COPY_STEP) -> int:
    """Copy an on-disk tensor's bytes to `handle` at offset `at` (its current end); return the
    bytes copied. The kernel copies file to file where it can (no pass through memory), else
    `step` bytes at a time pass through memory."""
    path, offset, length = disk_span(tensor)
    handle.flush()
    try:
        source = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    with source:
        copied = _kernel_copy(source.fileno(), handle.fileno(), offset, at, length)
        source.seek(offset + copied)
        handle.seek(at + copied)
        while copied < length:
            try:
                piece = source.read(min(step, length - copied))
            except OSError as exc:
                raise _unreadable(path, exc) from None
            if not piece:
                raise _changed(path, offset, length)
            handle.write(piece)
            copied += len(piece)
    handle.seek(at + length)
    return length


def _kernel_copy(source: int, target: int, offset: int, at: int, length: int) -> int:
    """Bytes copied with `os.copy_file_range` (0 where it is missing or refuses these files)."""
    copy = getattr(os, "copy_file_range", None)
    done = 0
    while copy is not None and done < length:
        try:
            step = copy(source, target, length - done, offset + done, at + done)
        except OSError:  # another file system, an old kernel, ...: copy through memory
            break
        if step == 0:
            break
        done += step
    return done


class DataFile:
    """An external data file being written: a temporary file in the folder it will end in,
    where tensors are appended, each page-aligned (so runtimes can map it), until `publish`
    renames it into place; `close` (or leaving a `with` block) deletes it if it was not
    published. Only this process reads it before that.

    A fold given one (`fold_in_place(spill=...)`) `put`s there the new values of weights it
    rewrites, which stay on disk; saving the model then `take`s every tensor: those already
    there stay where they are, the others are appended."""

    def __init__(self, folder: str | os.PathLike, copy_step: int = COPY_STEP) -> None:
        self.folder = Path(folder)
        try:
            descriptor, path = tempfile.mkstemp(dir=self.folder, prefix=".bnfold-", suffix=".tmp")
        except OSError as exc:
            raise self._cannot_write(exc) from None
        try:
            os.fchmod(descriptor, 0o666 & ~umask())  # what a new file gets, once in place
            self._handle = os.fdopen(descriptor, "wb")
        except OSError as exc:
            os.close(descriptor)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise self._cannot_write(exc) from None
        self.path = os.path.abspath(path)
        self._end = 0
        self._published = False
        self._copy_step = copy_step  # bytes a copy passes through memory at a time

    def holds(self, tensor: onnx.TensorProto) -> bool:
        """Whether the tensor's bytes are in this file."""
        return is_on_disk(tensor) and disk_span(tensor).path == self.path

    def put(self, tensor: onnx.TensorProto, values: np.ndarray | bytes) -> None:
        """Append `values` (the tensor's new contents: C-contiguous, little-endian) and make the
        tensor an on-disk tensor reading them here; where the tensor is here already with as
        many bytes (a weight folded again), they are overwritten in place (no bytes left unread
        in the file; during the fold nothing else holds them: `read` copies, and `mapped` maps
        files only for validation, after the fold)."""
        data = memoryview(values).cast("B")  # type: ignore[arg-type]
        if self.holds(tensor) and disk_span(tensor).length == len(data):
            self.flush()
            try:
                os.pwrite(self._handle.fileno(), data, disk_span(tensor).offset)
            except OSError as exc:
                raise self._cannot_write(exc) from None
            return
        offset, length = self._append(data)
        self.flush()
        put_on_disk(tensor, DiskSpan(self.path, offset, length))

    def take(self, tensor: onnx.TensorProto) -> tuple[int, int]:
        """(offset, length) of the tensor's raw bytes in this file, appended unless they are
        here already (copied file to file for an on-disk tensor). The caller points the tensor
        at its place."""
        if self.holds(tensor):
            span = disk_span(tensor)
            return span.offset, span.length
        if is_on_disk(tensor):
            self._pad()
            try:
                length = _copy_into(tensor, self._handle, self._end, self._copy_step)
            except OSError as exc:
                raise self._cannot_write(exc) from None
            offset, self._end = self._end, self._end + length
            return offset, length
        return self._append(tensor.raw_data)

    def flush(self) -> None:
        """Write out what is buffered: readers open the file by its path."""
        self._write(None)

    @property
    def published(self) -> bool:
        """Whether `publish` put the file in place."""
        return self._published

    def publish(self, target: Path) -> None:
        """Put the file in place as `target` (replacing any file there)."""
        try:
            self._handle.close()
            os.replace(self.path, target)
        except OSError as exc:
            raise InputError(target, f"cannot be written ({exc.strerror or exc})") from None
        self._published = True

    def close(self) -> None:
        with contextlib.suppress(OSError):  # (what is left to flush is thrown away anyway)
            self._handle.close()
        if not self._published:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def __enter__(self) -> DataFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _pad(self) -> None:
        padding = -self._end % 4096
        self._write(b"\0" * padding)
        self._end += padding

    def _append(self, data) -> tuple[int, int]:
        self._pad()
        self._write(data)
        offset, self._end = self._end, self._end + len(data)
        return offset, len(data)

    def _write(self, data) -> None:
        """Write `data` at the end (None: flush what is buffered)."""
        try:
            if data is None:
                self._handle.flush()
            else:
                self._handle.write(data)
        except OSError as exc:
            raise self._cannot_write(exc) from None

    def _cannot_write(self, exc: OSError) -> InputError:
        return InputError(self.folder, f"cannot be written ({exc.strerror or exc})")


def umask() -> int:
    """The process's file creation mask."""
    current = os.umask(0)
    os.umask(current)
    return current


def little_endian_bytes(value: np.ndarray) -> bytes:
    """The array's bytes as raw data holds them (little-endian), copied once."""
    order = value.dtype.byteorder
    if order == "<" or order == "|" or (order == "=" and sys.byteorder == "little"):
        return value.tobytes()
    return value.astype(value.dtype.newbyteorder("<")).tobytes()
