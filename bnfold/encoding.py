"""A model's protobuf encoding, byte for byte `model.SerializeToString()`, a few MB at a time.

`SerializeToString()` holds the model and its whole encoding at once (protobuf's upb runtime
encodes into a buffer of its own, then copies that into a Python bytes object): saving a model
that way costs twice the file size on top of the model. `Encoding(model).pieces()` yields the same
bytes in pieces of about `CHUNK_BYTES`:

- protobuf encodes a message's fields in field-number order, each repeated item as its own
  record, so a message that holds only a run of the graph's nodes (or initializers) encodes to
  exactly those items' records: the graph's nodes and initializers go out a run at a time, and
  the graph's and model's other fields around them, as small messages holding only those fields;
- the graph record's length comes first in the encoding, so it is computed beforehand from each
  item's `ByteSize()` (tag, length, item), and checked against what was written.

A model with fields this onnx does not know (unknown fields, kept by protobuf and written at the
end of their message) is encoded in one piece, since those could not be placed exactly.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import numpy as np
import onnx

from . import tensor_data

CHUNK_BYTES = 4 << 20  # items are encoded together up to this much (a bigger one on its own)
MODEL_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
GRAPH_RUNS = {  # the graph's repeated fields that hold the model's bulk, by field number
    onnx.GraphProto.DESCRIPTOR.fields_by_name[name].number: name for name in ("node", "initializer")
}


class EncodingError(RuntimeError):
    """The pieces did not add up to the length announced for the graph (a bug, never a file)."""


class Encoding:
    """How a model will be encoded: `size` (bytes of the whole encoding) and `pieces()`.

    Computing `size` encodes each node and initializer once on its own (`ByteSize`), one at a
    time; no encoding of the whole graph is ever held."""

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        inline_on_disk: bool = False,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        """`inline_on_disk`: main-graph initializers left on disk by a lazy load
        (`bnfold.tensor_data`) are encoded holding their bytes, read from their file one at a
        time (the model is not touched). `chunk_bytes`: how much goes in one piece."""
        self.model = model
        self.inline_on_disk = inline_on_disk
        self.whole = _has_unknown_fields(model) or _has_unknown_fields(model.graph)
        if self.whole or not model.HasField("graph"):
            self.whole = True
            self.size = model.ByteSize()
            return
        self._before = _fields_encoded(model, lambda number: number < MODEL_GRAPH)
        self._after = _fields_encoded(model, lambda number: number > MODEL_GRAPH)
        self._graph_parts = _graph_parts(model.graph, inline_on_disk, chunk_bytes)
        self.graph_size = sum(map(_part_size, self._graph_parts))
        header = field_header(MODEL_GRAPH, self.graph_size)
        self.size = len(self._before) + len(header) + self.graph_size + len(self._after)

    def pieces(self) -> Iterator[bytes]:
        """The encoding, in order; together exactly `model.SerializeToString()`."""
        if self.whole:
            yield self.model.SerializeToString()
            return
        yield self._before
        yield field_header(MODEL_GRAPH, self.graph_size)
        written = 0
        graph = self.model.graph
        for part in self._graph_parts:
            runs = (
                [part]
                if isinstance(part, bytes)
                else _runs_encoded(graph, part, self.inline_on_disk)
            )
            for piece in runs:
                written += len(piece)
                yield piece
        if written != self.graph_size:
            raise EncodingError(
                f"the graph encoded to {written} bytes, not the {self.graph_size} announced"
            )
        yield self._after


def _graph_parts(
    graph: onnx.GraphProto, inline_on_disk: bool = False, chunk_bytes: int = CHUNK_BYTES
) -> list:
    """The graph as encoded, in field-number order: bytes for a stretch of ordinary fields, and
    for each of `GRAPH_RUNS` a list of runs `(number, start, stop, bytes of their records)`."""
    parts: list = []
    previous = 0
    for number, name in sorted(GRAPH_RUNS.items()):
        inlined = inline_on_disk and name == "initializer"
        parts.append(_fields_encoded(graph, lambda n, low=previous, high=number: low < n < high))
        size_of = _inlined_size if inlined else _BYTE_SIZE
        parts.append(_runs(number, getattr(graph, name), size_of, chunk_bytes))
        previous = number
    parts.append(_fields_encoded(graph, lambda n, low=previous: n > low))
    return [part for part in parts if len(part)]


def _part_size(part) -> int:
    """Bytes of a part of `_graph_parts`: encoded fields, or runs of records."""
    return len(part) if isinstance(part, bytes) else sum(run[3] for run in part)


def _runs(number: int, items, size_of, chunk_bytes: int) -> list[tuple[int, int, int, int]]:
    """Consecutive items in runs of about `chunk_bytes` of records (a bigger item on its own),
    each with the bytes of its records (per item: tag, length, the item)."""
    count = len(items)
    if not count:
        return []
    sizes = np.fromiter(map(size_of, items), dtype=np.int64, count=count)
    records = sizes + len(_varint(number << 3 | 2)) + _varint_lengths(sizes)
    starts = np.cumsum(records) - records
    big = records > chunk_bytes
    cuts = (np.diff(starts // chunk_bytes) != 0) | big[1:] | big[:-1]
    firsts = np.concatenate(([0], np.flatnonzero(cuts) + 1))
    totals = np.add.reduceat(records, firsts)
    stops = [*firsts[1:].tolist(), count]
    return list(zip([number] * len(firsts), firsts.tolist(), stops, totals.tolist(), strict=True))


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes of each value's varint encoding (7 bits a byte)."""
    lengths = np.ones_like(values)
    for bits in range(7, 64, 7):
        lengths += values >= 1 << bits
    return lengths


def _runs_encoded(graph: onnx.GraphProto, runs, inline_on_disk: bool = False) -> Iterator[bytes]:
    """Each run's records: its items encoded one by one (no copy into a holder message), each
    after its tag and length; initializers on disk holding their bytes, with `inline_on_disk`."""
    for number, start, stop, _ in runs:
        headers = _Headers(_varint(number << 3 | 2))
        items = getattr(graph, GRAPH_RUNS[number])[start:stop]
        inlined = inline_on_disk and GRAPH_RUNS[number] == "initializer"
        encoded = list(map(_inlined if inlined else _SERIALIZED, items))
        del items
        if len(encoded) == 1:  # a big item: not copied again by a join
            yield headers[len(encoded[0])]
            yield encoded.pop()
            continue
        records: list[bytes] = [b""] * (2 * len(encoded))
        records[0::2] = map(headers.__getitem__, map(len, encoded))
        records[1::2] = encoded
        del encoded
        yield b"".join(records)


def _inlined(tensor: onnx.TensorProto) -> bytes:
    """The tensor encoded; one on disk as holding its bytes (read from its file)."""
    if not tensor_data.is_on_disk(tensor):
        return tensor.SerializeToString()
    copy = _without_location(tensor)
    copy.raw_data = tensor_data.raw_bytes(tensor)
    return copy.SerializeToString()


def _inlined_size(tensor: onnx.TensorProto) -> int:
    """Bytes of `_inlined(tensor)`, without reading anything."""
    if not tensor_data.is_on_disk(tensor):
        return tensor.ByteSize()
    length = tensor_data.data_size(tensor)
    return _without_location(tensor).ByteSize() + len(field_header(_RAW_DATA, length)) + length


def _without_location(tensor: onnx.TensorProto) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)  # (small: an on-disk tensor holds no bytes)
    del copy.external_data[:]
    copy.ClearField("data_location")
    return copy


_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


class _Headers(dict):
    """Tag and length of a record, by length (items of a run mostly share a few lengths)."""

    def __init__(self, tag: bytes) -> None:
        super().__init__()
        self.tag = tag

    def __missing__(self, length: int) -> bytes:
        header = self[length] = self.tag + _varint(length)
        return header


_BYTE_SIZE = operator.methodcaller("ByteSize")
_SERIALIZED = operator.methodcaller("SerializeToString")


def _fields_encoded(message, wanted) -> bytes:
    """The encoding of `message`'s set fields whose number `wanted` accepts (a copy of just
    those fields, encoded)."""
    holder = type(message)()
    for descriptor, value in message.ListFields():
        if not wanted(descriptor.number):
            continue
        if is_repeated(descriptor):
            getattr(holder, descriptor.name).extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            getattr(holder, descriptor.name).CopyFrom(value)
        else:
            setattr(holder, descriptor.name, value)
    return holder.SerializeToString()


def is_repeated(descriptor) -> bool:
    repeated = getattr(descriptor, "is_repeated", None)  # `label` in older protobuf
    return repeated if repeated is not None else descriptor.label == descriptor.LABEL_REPEATED


def _has_unknown_fields(message) -> bool:
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
    except ImportError:  # protobuf < 4.22: the message says itself
        try:
            return len(message.UnknownFields()) > 0
        except (AttributeError, NotImplementedError):
            return True  # cannot tell: encode in one piece
    return len(UnknownFieldSet(message)) > 0


def field_header(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(length)


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ONE_BYTE = [bytes([value]) for value in range(0x80)]
