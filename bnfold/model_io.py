"""Reading and writing models safely.

- `load_model` turns every way a file can be unusable (missing, a directory, empty, not
  protobuf, truncated, not a model, dangling or cyclic graph, unsupported opset, external data
  that is missing or points outside the model's folder) into one `InputError` line.
- `save_model` writes atomically: a temporary file in the target folder, then a rename, so a
  failure never leaves a partial OUT; models too big for one protobuf (2 GB) get their tensors in
  one data file named after the output, next to it.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import operator
import os
import tempfile
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import numpy_helper

from . import skim, tensor_data
from .encoding import Encoding
from .errors import InputError
from .graphs import (
    CONTROL_FLOW_OPS,
    ONNX_DOMAINS,
    default_opset,
    names_read,
    node_label,
    nodes_with_subgraphs,
    outer_references,
    subgraphs,
)

PROTOBUF_LIMIT = 2**31 - 1
# Leave room for the graph itself when deciding whether tensors fit in one protobuf.
INLINE_TENSOR_BUDGET = 1_800_000_000
EXTERNAL_THRESHOLD = 1024  # tensors at least this big go to the data file


def all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor of the model: initializers and tensor attributes, in the main graph, its
    subgraphs and the local functions (what `onnx.external_data_helper` walks, in one pass).

    The attributes of a default-domain node are looked at only if its operator's schema has
    tensor or graph attributes (`TENSOR_ATTRIBUTE_OPS`): any other default-domain node that
    carried one would be refused by onnxruntime and `onnx.checker` alike (unrecognized
    attribute), and reading every node's attributes would cost more than the rest of loading."""
    found: list[onnx.TensorProto] = []
    _collect_tensors(model.graph, found, with_initializers=True)
    for function in model.functions:
        _collect_tensors(function, found, with_initializers=False)
    return found


def _collect_tensors(graph, found: list, with_initializers: bool) -> None:
    if with_initializers:
        found.extend(graph.initializer)
    for node in graph.node:
        if node.op_type not in TENSOR_ATTRIBUTE_OPS and node.domain in ONNX_DOMAINS:
            continue
        for attr in node.attribute:
            kind = attr.type
            if kind == _TENSOR:
                found.append(attr.t)
            elif kind == _TENSORS:
                found.extend(attr.tensors)
            elif kind == _GRAPH:
                _collect_tensors(attr.g, found, with_initializers=True)
            elif kind == _GRAPHS:
                for sub in attr.graphs:
                    _collect_tensors(sub, found, with_initializers=True)


# The default-domain operators whose schema (in some version) has a tensor or graph attribute;
# tests/test_model_io.py checks this against onnx.defs
TENSOR_ATTRIBUTE_OPS = CONTROL_FLOW_OPS | {"Constant", "ConstantOfShape"}
_TENSOR, _TENSORS = onnx.AttributeProto.TENSOR, onnx.AttributeProto.TENSORS
_GRAPH, _GRAPHS = onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS


def tensor_data_size(model: onnx.ModelProto) -> int:
    """Bytes of tensor data in the model, from dims and dtypes (cheap: `ByteSize()` walks every
    byte of a big model, and reading `raw_data` copies it)."""
    total = 0
    for tensor in all_tensors(model):
        itemsize = _ITEMSIZE.get(tensor.data_type, 8)
        total += itemsize * math.prod(tensor.dims)
    return total


def fits_in_one_protobuf(model: onnx.ModelProto) -> bool:
    """Whether the model can be serialized as one protobuf (under 2 GB with room for the graph)."""
    return tensor_data_size(model) <= INLINE_TENSOR_BUDGET


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
        problem = _shape_problem(tensor, length, "initializer", "holds")  # (as a full parse)
        if problem:
            raise InputError(path, problem)
        tensor_data.point_to_file(tensor, str(path.resolve()), offset, length)
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


def parse_model(data: bytes, path: Path | None = None) -> onnx.ModelProto:
    """Parse bytes as a ModelProto and check it is a model at all."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InputError(path, f"is not an ONNX model (protobuf parse failed: {exc})") from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise InputError(path, "is not an ONNX model (no graph or no IR version)")
    _check_names_decode(model.graph, path)
    return model


def _check_names_decode(graph: onnx.GraphProto, path: Path | None) -> None:
    """The main graph's input and output names must be UTF-8 text (protobuf parses any bytes,
    and hands back a name that is not UTF-8 as `bytes`, which later string work trips over)."""
    for kind, infos in (("input", graph.input), ("output", graph.output)):
        for index, info in enumerate(infos[:]):
            if not isinstance(info.name, str):
                raise InputError(path, f"graph {kind} {index} has a name that is not valid UTF-8")


def check_model_structure(model: onnx.ModelProto, path: Path | None = None) -> None:
    """Checks the fold relies on: a known opset and a graph whose every input is defined before
    it is read (no dangling names, no cycles). Cheaper than `onnx.checker`, and unlike it accepts
    IR-3 models that onnxruntime runs."""
    check_model_opset(model, path)
    problem = _first_undefined_input(model.graph, set())
    if problem:
        raise InputError(path, problem)


def indexed_structure_problem(view, checked: Collection[str] = ()) -> str | None:
    """`check_model_structure`'s answer for a main graph, from the index a `GraphView` built
    (so a big graph is not walked twice); the full check runs only to describe a problem, and on
    the subgraphs. The initializers named in `checked` are taken to have positive dims and data
    of their size (the caller has read them: `bnfold.batched.find_pairs`)."""
    graph = view.graph
    given = view.input_names | view.initializers.keys()
    given.update(t.values.name for t in graph.sparse_initializer)
    defined = given | view.producer.keys()
    suspect = (
        view.defines_twice
        or len(view.initializers) != len(graph.initializer)  # a name given twice
        or not view.reads_in_order
        or not given.isdisjoint(view.producer)
        or not defined.issuperset(view.consumers)
        or not defined.issuperset(view.output_names)
    )
    if suspect:
        return _first_undefined_input(graph, set())
    unchecked = (t for name, t in view.initializers.items() if name not in checked)
    problem = _initializer_size_mismatch(unchecked)
    for index in view.holders:
        for _, sub in subgraphs(view.nodes[index]):
            problem = problem or _first_undefined_input(sub, defined)
    return problem


def check_model_opset(model: onnx.ModelProto, path: Path | None = None) -> None:
    """A default-domain opset this onnx knows (raises `InputError`)."""
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset == 0 and _uses_default_domain(model.graph):
        raise InputError(path, "imports no opset for the default ONNX domain")
    if opset > newest:
        raise InputError(
            path, f"uses opset {opset}, newer than this onnx ({onnx.__version__}) knows ({newest})"
        )


def _uses_default_domain(graph: onnx.GraphProto) -> bool:
    return any(node.domain in ONNX_DOMAINS for node in graph.node)


def _first_undefined_input(graph: onnx.GraphProto, outer: Collection[str]) -> str | None:
    """A dangling name, a duplicate definition, an initializer whose data does not match its
    dims, or a cycle, described; None if every read has exactly one source. `outer`: the names
    the enclosing graphs define (looked up, never copied: a model with thousands of subgraphs
    is checked in linear time).

    Graphs that are merely out of topological order are accepted (onnxruntime runs them)."""
    nodes = graph.node
    reads = [list(node.input) for node in nodes]
    writes = [list(node.output) for node in nodes]
    given = {i.name for i in graph.input}
    given.update(t.name for t in graph.initializer)
    problem = _duplicate_definition(graph, given, writes)
    problem = problem or _initializer_size_mismatch(graph.initializer)
    if problem:
        return problem
    given.update(t.values.name for t in graph.sparse_initializer)
    so_far = set(given)
    local = given
    local.update(name for names in writes for name in names if name)
    defined = _Scope(local, outer)
    in_order = True
    holders = set(nodes_with_subgraphs(nodes))
    for index, names in enumerate(reads):
        if index in holders:  # what its subgraphs read of this graph is read here too
            names = names + [n for _, sub in subgraphs(nodes[index]) for n in outer_references(sub)]
        for name in names:
            if not name or name in so_far or name in outer:
                continue
            if name not in local:
                return f"node '{node_label(nodes[index])}' reads '{name}', which nothing defines"
            in_order = False
        so_far.update(writes[index])
    for index in sorted(holders):
        for _, sub in subgraphs(nodes[index]):
            problem = _first_undefined_input(sub, defined)
            if problem:
                return problem
    for output in graph.output:
        if output.name not in defined:
            return f"graph output '{output.name}' is not computed by the graph"
    return None if in_order else _cycle(graph)


class _Scope(Collection[str]):
    """The names a graph defines, then those of the graphs around it (membership only)."""

    def __init__(self, local: set[str], outer: Collection[str]) -> None:
        self.local, self.outer = local, outer

    def __contains__(self, name: object) -> bool:
        return name in self.local or name in self.outer

    def __iter__(self):
        yield from self.local
        yield from self.outer

    def __len__(self) -> int:
        return len(self.local) + len(self.outer)


def _duplicate_definition(
    graph: onnx.GraphProto, given: set[str], writes: list[list[str]]
) -> str | None:
    """A value defined twice in one graph (two nodes, a node and an input or initializer, or
    two initializers: onnxruntime would take the first, a fold might rewrite the other)."""
    initializers = [t.name for t in graph.initializer]
    if len(set(initializers)) != len(initializers):
        twice = next(name for name, n in Counter(initializers).items() if n > 1)
        return f"initializer '{twice}' is defined more than once"
    written = [name for names in writes for name in names if name]
    if len(set(written)) == len(written) and given.isdisjoint(written):
        return None
    seen = set(given)
    for node, names in zip(graph.node, writes, strict=True):
        for name in names:
            if name and name in seen:
                return f"value '{name}' is defined more than once (node '{node_label(node)}')"
            seen.add(name)
    return None


def _initializer_size_mismatch(initializers: Iterable[onnx.TensorProto]) -> str | None:
    """An initializer with a negative dimension, or whose raw data is not the size its dims and
    type make, described (tensors whose data is still in an external file are not read)."""
    external = onnx.TensorProto.EXTERNAL
    for tensor in initializers:
        if tensor.data_type not in _KNOWN_TYPES:
            return f"initializer '{tensor.name}' has an unknown data type {tensor.data_type}"
        size = None  # not known: a type of no fixed size, typed fields or external data
        if tensor.data_type in _ITEMSIZE and tensor.data_location != external:
            size = len(tensor.raw_data)
            if not size and not tensor.HasField("raw_data"):
                size = None
        problem = _shape_problem(tensor, size, "initializer", "holds")
        if problem is None and tensor.data_location != external and not tensor.raw_data:
            problem = _typed_fields_problem(tensor)
        if problem:
            return problem
    return None


_KNOWN_TYPES = set(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
_T = onnx.TensorProto
# The typed field each element type keeps its values in, and how many entries an element takes.
_TYPED_FIELDS: dict[int, tuple[str, int]] = {
    _T.FLOAT: ("float_data", 1),
    _T.COMPLEX64: ("float_data", 2),
    _T.DOUBLE: ("double_data", 1),
    _T.COMPLEX128: ("double_data", 2),
    _T.INT64: ("int64_data", 1),
    _T.UINT32: ("uint64_data", 1),
    _T.UINT64: ("uint64_data", 1),
    _T.STRING: ("string_data", 1),
    **{
        kind: ("int32_data", 1)
        for kind in (
            _T.INT32,
            _T.INT16,
            _T.INT8,
            _T.UINT16,
            _T.UINT8,
            _T.BOOL,
            _T.FLOAT16,
            _T.BFLOAT16,
        )
    },
}


def _typed_fields_problem(tensor: onnx.TensorProto) -> str | None:
    """Values kept in typed fields (`float_data`, ...) that are not as many as the dims make."""
    field = _TYPED_FIELDS.get(tensor.data_type)
    if field is None:  # (packed and 8-bit float types: not checked here)
        return None
    name, per_element = field
    count = len(getattr(tensor, name))
    expected = per_element * math.prod(tensor.dims[:])
    if count != expected:
        return (
            f"initializer '{tensor.name}' declares shape {tensor.dims[:]} but holds "
            f"{count} values in {name}"
        )
    return None


def _shape_problem(
    tensor: onnx.TensorProto, size: int | None, what: str, holder: str
) -> str | None:
    """A negative dimension, or `size` bytes of data (None: not known) that are not what the
    tensor's dims and type make, described as `what` 'name' ... `holder` N bytes."""
    dims = tensor.dims[:]
    if dims and min(dims) < 0:
        return f"{what} '{tensor.name}' declares a negative dimension {dims}"
    itemsize = _ITEMSIZE.get(tensor.data_type)
    if size is not None and itemsize is not None and size != itemsize * math.prod(dims):
        return f"{what} '{tensor.name}' declares shape {dims} but {holder} {size} bytes"
    return None


_STRING = onnx.TensorProto.STRING
_ITEMSIZE: dict[int, int] = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.BOOL: 1,
}


def _cycle(graph: onnx.GraphProto) -> str | None:
    """Kahn's algorithm over node outputs: describe a node on a cycle, if there is one."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    waiting = [0] * len(graph.node)
    readers: dict[int, list[int]] = {}
    for index, node in enumerate(graph.node):
        sources = {producer[name] for name in names_read(node) if name in producer}
        waiting[index] = len(sources)
        for source in sources:
            readers.setdefault(source, []).append(index)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    done = 0
    while ready:
        index = ready.pop()
        done += 1
        for reader in readers.get(index, ()):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if done == len(graph.node):
        return None
    stuck = next(i for i, count in enumerate(waiting) if count > 0)
    return f"the graph has a cycle through node '{node_label(graph.node[stuck])}'"


# ----- external data ---------------------------------------------------------------------------


def _external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    external = onnx.TensorProto.EXTERNAL
    for tensor in all_tensors(model):
        if tensor.data_location == external:
            yield tensor


def has_unread_external_data(model: onnx.ModelProto) -> bool:
    """Whether some tensor's data is in an external file this process has not read or checked
    (on-disk tensors of a lazy load do not count)."""
    return any(not tensor_data.is_on_disk(tensor) for tensor in _external_tensors(model))


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
    if not any(map(_DATA_LOCATION, initializers)):  # all DEFAULT (0): the usual case
        return False
    return any(map(tensor_data.is_on_disk, initializers))


_DATA_LOCATION = operator.attrgetter("data_location")


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
                tensor_data.point_to_file(tensor, str(data_path), offset, length)
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
    if offset < 0 or available < 0 or (length is not None and length > available):
        raise InputError(
            path, f"external data of tensor '{tensor.name}' lies beyond the end of {location}"
        )
    return data_path.resolve(), offset, available if length is None else length


def _check_external_size(tensor: onnx.TensorProto, length: int, path: Path) -> None:
    """Refuse external data whose size is not what the tensor's dims and type make."""
    problem = _shape_problem(tensor, length, "tensor", "its external data holds")
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
    for tensor in _external_tensors(model):
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
        if (
            kind == _STRING
            or _ITEMSIZE.get(kind, 1) * math.prod(tensor.dims[:]) < EXTERNAL_THRESHOLD
        ):
            tensor_data.load_into_model([tensor])
            continue
        if not tensor.HasField("raw_data") and not tensor_data.is_on_disk(tensor):
            # typed fields (float_data, ...) -> raw bytes
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
        offset, length = data_file.take(tensor)
        tensor_data.point_to_file(tensor, location, offset, length)
