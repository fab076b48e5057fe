"""Writing a model atomically (`save_model`, `StagedModel`, `StagedFile`): a temporary file in
the target folder, then a rename, its big tensors in one data file next to it when it would
not fit one protobuf."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf.message import EncodeError
from onnx import numpy_helper

from .. import tensor_data
from ..encoding import Encoding
from ..errors import InputError
from ..protobuf_speed import listed
from .external import external_tensors, holds_data_on_disk
from .tensors import EXTERNAL_THRESHOLD, ITEMSIZE, PROTOBUF_LIMIT, STRING, all_tensors


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    data_file: tensor_data.DataFile | None = None,
) -> list[Path]:
    """Write `model` to `path` atomically; return the files written.

    The file holds exactly `model.SerializeToString()`, written a few MB at a time
    (`bnfold.encoding`), so no second copy of the model is made. `external_data=None` chooses:
    tensors go to `<name>.data` next to the output when the model would not fit in one 2 GB
    protobuf. With external data the model's large tensors are moved out of `model` (its raw
    bytes are cleared), so pass a model you own.

    Tensors left on disk by a lazy load (`bnfold.tensor_data`) are copied from their files: into
    the data file, or into OUT itself one at a time. `data_file`: the `DataFile`
    a fold put tensors in (`fold_in_place(spill=...)`), made in `path`'s folder; it becomes the
    data file when the model goes out with external data.
    """
    with StagedModel(model, path, external_data=external_data, data_file=data_file) as staged:
        return staged.commit()


class StagedModel:
    """`save_model` in two steps: the model is written at once under temporary names beside
    `path` (`readable`: a model file that onnxruntime and onnx load, its data file beside it);
    `commit()` puts it in place as `path` (and `path`.data), as `save_model` would have written
    them, byte for byte; leaving the block without that removes what was written. Problems
    writing are an `InputError` naming `path`. Until the commit, the model's tensors that went
    to the data file are on disk there (`bnfold.tensor_data`): the model can be read."""

    def __init__(
        self,
        model: onnx.ModelProto,
        path: str | os.PathLike,
        *,
        external_data: bool | None = None,
        data_file: tensor_data.DataFile | None = None,
        protobuf_limit: int = PROTOBUF_LIMIT,
    ) -> None:
        path = Path(path)
        _check_writable_target(path)
        if data_file is not None and data_file.folder.resolve() != path.parent.resolve():
            raise ValueError(f"the data file is made in {data_file.folder}, not in {path.parent}")
        self.model, self.path = model, path
        self._stack = contextlib.ExitStack()
        encoding = None
        if not external_data:
            encoding = _encoding(model)
            if external_data is None:
                external_data = encoding is None or encoding.size > protobuf_limit
            elif encoding is None or encoding.size > protobuf_limit:
                raise InputError(
                    path, "cannot be written: the model is over 2 GB (use external data)"
                )
        self.data_file = None
        try:
            self._write(model, encoding, external_data, data_file)
        except BaseException:
            self._stack.close()
            raise
        self.readable = Path(self._staged.temporary)

    def _write(self, model, encoding, external_data: bool, data_file) -> None:
        with self._writing():
            if external_data:
                if data_file is None:
                    data_file = self._stack.enter_context(tensor_data.DataFile(self.path.parent))
                self.data_file = data_file
                _move_into_data_file(model, os.path.basename(data_file.path), data_file)
                data_file.flush()
            self._staged = self._stack.enter_context(StagedFile(self.path))
            if encoding is not None and not external_data:
                self._staged.handle.writelines(encoding.pieces())
            else:
                self._staged.handle.write(model.SerializeToString())
            self._staged.handle.flush()
            if self.data_file is not None:  # the model's tensors: on disk, in the data file
                _relocate(model, os.path.basename(self.data_file.path), self.data_file.path)

    def commit(self) -> list[Path]:
        """Put the model in place; the files written (OUT, and OUT.data with external data)."""
        with self._writing():
            if self.data_file is None:
                self._staged.commit()
                return [self.path]
            return self._commit_with_data(self.data_file)

    def _commit_with_data(self, data_file: tensor_data.DataFile) -> list[Path]:
        """OUT and OUT.data put in place together: if either cannot be, the OUT and OUT.data
        that were there stay exactly as they were (the old data file is renamed aside, and back
        if the model cannot follow the new one)."""
        data_path = data_file_for(self.path)
        _relocate(self.model, data_file.path, data_path.name)
        handle = self._staged.handle
        handle.seek(0)
        handle.truncate()
        handle.write(self.model.SerializeToString())
        handle.close()
        aside = _renamed_aside(data_path)
        try:
            data_file.publish(data_path)
            self._staged.commit()
        except BaseException:
            if data_file.published:
                with contextlib.suppress(OSError):
                    os.unlink(data_path)
            if aside is not None:
                os.replace(aside, data_path)
            raise
        if aside is not None:
            with contextlib.suppress(OSError):
                os.unlink(aside)
        return [self.path, data_path]

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise InputError(self.path, f"cannot be written ({exc.strerror or exc})") from None
        except (EncodeError, ValueError) as exc:  # protobuf refuses to serialize > 2 GB
            raise InputError(self.path, f"cannot be written ({exc})") from None

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> StagedModel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _relocate(model: onnx.ModelProto, old: str, new: str) -> None:
    """Point the model's external tensors at `old` to the file named `new` instead."""
    for tensor in external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new


def data_file_for(path: Path) -> Path:
    """The data file `save_model` writes beside `path` when tensors go to external data."""
    return path.parent / f"{path.name}.data"


def _encoding(model: onnx.ModelProto) -> Encoding | None:
    """The model's `Encoding` (tensors on disk inlined), or None if protobuf cannot encode a
    part of it (over 2 GB). A model with fields this onnx does not know is encoded whole: its
    tensors on disk are read into it first."""
    try:
        on_disk = holds_data_on_disk(model)
        encoding = Encoding(model, inline_on_disk=on_disk)
        if encoding.whole and on_disk:
            tensor_data.load_into_model(all_tensors(model))
            encoding = Encoding(model)
        return encoding
    except (EncodeError, ValueError):
        return None


def _check_writable_target(path: Path) -> None:
    if path.is_dir():
        raise InputError(path, "is a directory; give a file name for the output")
    if not path.parent.is_dir():
        raise InputError(path, f"its folder '{path.parent}' does not exist")
    if not os.access(path.parent, os.W_OK):
        raise InputError(path, f"its folder '{path.parent}' is not writable")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A new file in `path`'s folder (`StagedFile`) that replaces `path` only when the block
    succeeds.

    A reader never sees a partial file. There is no `fsync`: like `onnx.save`, durability across
    a power cut is left to the file system (it cost 0.7 s on a 500 MB model here)."""
    with StagedFile(path) as staged:
        yield staged.handle
        staged.commit()


def _renamed_aside(path: Path) -> Path | None:
    """Rename an existing `path` to a fresh name beside it (None if there is nothing)."""
    if not os.path.lexists(path):
        return None
    descriptor, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old")
    os.close(descriptor)
    os.replace(path, aside)
    return Path(aside)


class StagedFile:
    """A new file in `path`'s folder (random name, created exclusively, so no symbolic link
    planted there is followed; the permissions a new file gets) that `commit` puts in place;
    removed if the block ends without that."""

    def __init__(self, path: Path) -> None:
        self.path = path
        descriptor, self.temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        try:
            os.fchmod(descriptor, 0o666 & ~tensor_data.umask())
            self.handle = os.fdopen(descriptor, "wb")
        except OSError:
            os.close(descriptor)
            with contextlib.suppress(OSError):
                os.unlink(self.temporary)
            raise
        self.committed = False

    def commit(self) -> None:
        self.handle.close()
        os.replace(self.temporary, self.path)
        self.committed = True

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.handle.close()
        if not self.committed:
            with contextlib.suppress(OSError):
                os.unlink(self.temporary)


def _move_into_data_file(
    model: onnx.ModelProto, location: str, data_file: tensor_data.DataFile
) -> None:
    """Move every tensor of at least EXTERNAL_THRESHOLD bytes (by its dims and type: measuring
    its encoding would copy its data once more) into `data_file` (which the fold may already
    have put tensors in), each pointing at `location`. String tensors stay in the model
    (external data holds raw bytes, which strings have not); smaller tensors left on disk by a
    lazy load are read into the model."""
    for tensor in all_tensors(model):
        kind = tensor.data_type
        size = ITEMSIZE.get(kind, 1) * math.prod(listed(tensor.dims))
        if kind == STRING or size < EXTERNAL_THRESHOLD:
            tensor_data.load_into_model([tensor])
            continue
        if not tensor.HasField("raw_data") and not tensor_data.is_on_disk(tensor):
            # typed fields (float_data, ...) -> raw bytes
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
        offset, length = data_file.take(tensor)
        tensor_data.refer_to(tensor, location, offset, length)
