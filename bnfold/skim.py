"""Reading a model file without its big tensors: the protobuf wire format, walked by hand.

`ModelProto.ParseFromString` copies every byte of a model into memory, the weights included. A
lazy load (`model_io.load_model_and_sources(lazy=True)`) needs only the graph and the small
tensors: `skimmed(data)` walks the encoding (model → graph → initializer → raw_data) and returns
it without the raw data of the main graph's initializers of at least `min_bytes`, with where each
was (its initializer's index, offset and length in `data`). Given a memory map of the file, only
the pages that hold the graph are read.

The walk understands exactly what protobuf would parse: any field order, a field given twice
(the graph's fields merge, a tensor's last `raw_data` wins), unknown fields kept as they are.
Anything it cannot walk (a truncated record, a group) raises `Unskimmable`; the caller then
parses the whole file as usual, which reports the problem.
"""

from __future__ import annotations

import onnx

from .encoding import field_header

_LEN = 2  # wire type of length-delimited fields
MODEL_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
GRAPH_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
TENSOR_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


class Unskimmable(ValueError):
    """The bytes are not a protobuf encoding this walk can follow."""


def skimmed(data, min_bytes: int) -> tuple[bytes, list[tuple[int, int, int]]]:
    """(the encoding without the raw data of the main graph's initializers of at least
    `min_bytes`, [(initializer index, offset, length) of each raw data left out]). `data`: bytes,
    or any buffer that slices to bytes (a memory map)."""
    spans: list[tuple[int, int, int]] = []
    counter = [0]
    pieces: list[bytes] = []
    for number, wire_type, start, value_start, end in _fields(data, 0, len(data)):
        if number == MODEL_GRAPH and wire_type == _LEN:
            graph = _graph_skimmed(data, value_start, end, min_bytes, spans, counter)
            pieces.append(field_header(number, len(graph)) + graph)
        else:
            pieces.append(bytes(data[start:end]))
    return b"".join(pieces), spans


def _graph_skimmed(data, start: int, end: int, min_bytes: int, spans, counter) -> bytes:
    pieces: list[bytes] = []
    run_start = start  # fields copied as they are, in runs
    for number, wire_type, field_start, value_start, field_end in _fields(data, start, end):
        if number != GRAPH_INITIALIZER or wire_type != _LEN:
            continue
        index = counter[0]
        counter[0] += 1
        if field_end - value_start < min_bytes:  # too small to hold raw data worth leaving
            continue
        tensor = _tensor_skimmed(data, value_start, field_end, min_bytes, spans, index)
        if tensor is None:
            continue
        pieces.append(bytes(data[run_start:field_start]))
        pieces.append(field_header(number, len(tensor)) + tensor)
        run_start = field_end
    pieces.append(bytes(data[run_start:end]))
    return b"".join(pieces)


def _tensor_skimmed(data, start: int, end: int, min_bytes: int, spans, index) -> bytes | None:
    """The tensor without its raw data, or None when it keeps it (small, or none)."""
    raw = [f for f in _fields(data, start, end) if f[0] == TENSOR_RAW_DATA and f[1] == _LEN]
    if not raw or raw[-1][4] - raw[-1][3] < min_bytes:
        return None
    last = raw[-1]
    spans.append((index, last[3], last[4] - last[3]))
    pieces: list[bytes] = []
    position = start
    for _, _, field_start, _, field_end in raw:
        pieces.append(bytes(data[position:field_start]))
        position = field_end
    pieces.append(bytes(data[position:end]))
    return b"".join(pieces)


def _fields(data, start: int, end: int):
    """(number, wire type, start, value start, end) of each field record in data[start:end]."""
    position = start
    while position < end:
        key, value_start = _varint(data, position, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, field_end = _varint(data, value_start, end)
        elif wire_type == 1:
            field_end = value_start + 8
        elif wire_type == _LEN:
            length, value_start = _varint(data, value_start, end)
            field_end = value_start + length
        elif wire_type == 5:
            field_end = value_start + 4
        else:  # groups (3, 4): not in ONNX
            raise Unskimmable(f"wire type {wire_type} at byte {position}")
        if number == 0 or field_end > end:
            raise Unskimmable(f"a malformed or truncated field at byte {position}")
        yield number, wire_type, position, value_start, field_end
        position = field_end


def _varint(data, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise Unskimmable(f"a malformed varint at byte {position}")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
        shift += 7
