"""Is a parsed model usable: structure (names, definitions before use, no cycles, tensor
sizes), opset, names that decode; each problem one `InputError` line."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ..errors import InputError
from ..graphs import (
    ONNX_DOMAINS,
    default_opset,
    names_read,
    node_label,
    nodes_with_subgraphs,
    outer_references,
    subgraphs,
)
from ..protobuf_speed import listed
from .tensors import ITEMSIZE


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
        for index, info in enumerate(listed(infos)):
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
    writes = [list(node.output) for node in nodes]
    given = {i.name for i in graph.input}
    given.update(t.name for t in graph.initializer)
    problem = _duplicate_definition(graph, given, writes)
    problem = problem or _initializer_size_mismatch(graph.initializer)
    if problem:
        return problem
    given.update(t.values.name for t in graph.sparse_initializer)
    local = given | {name for names in writes for name in names if name}
    defined = _Scope(local, outer)
    holders = sorted(nodes_with_subgraphs(nodes))
    problem, in_order = _first_dangling_read(nodes, writes, given, defined, holders)
    problem = problem or _first_nested_or_output_problem(graph, holders, defined)
    return problem or (None if in_order else _cycle(graph))


def _first_nested_or_output_problem(
    graph: onnx.GraphProto, holders: list[int], defined: _Scope
) -> str | None:
    """The first problem of a subgraph of the nodes at `holders` (which see `defined`), or a
    graph output nothing computes; None if there is none."""
    for index in holders:
        for _, sub in subgraphs(graph.node[index]):
            problem = _first_undefined_input(sub, defined)
            if problem:
                return problem
    for output in graph.output:
        if output.name not in defined:
            return f"graph output '{output.name}' is not computed by the graph"
    return None


def _first_dangling_read(
    nodes, writes: list[list[str]], given: set[str], defined: _Scope, holders: list[int]
) -> tuple[str | None, bool]:
    """(A read that nothing defines, described, or None; whether every read comes after its
    definition). A node holding subgraphs reads here what they read of the graphs around them."""
    so_far = set(given)
    in_order = True
    holding = set(holders)
    for index, node in enumerate(nodes):
        names = list(node.input)
        if index in holding:
            names += [n for _, sub in subgraphs(node) for n in outer_references(sub)]
        for name in names:
            if not name or name in so_far or name in defined.outer:
                continue
            if name not in defined.local:
                return f"node '{node_label(node)}' reads '{name}', which nothing defines", in_order
            in_order = False
        so_far.update(writes[index])
    return None, in_order


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
        if tensor.data_type in ITEMSIZE and tensor.data_location != external:
            size = len(tensor.raw_data)
            if not size and not tensor.HasField("raw_data"):
                size = None
        problem = shape_problem(tensor, size, "initializer", "holds")
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
    expected = per_element * math.prod(listed(tensor.dims))
    if count != expected:
        return (
            f"initializer '{tensor.name}' declares shape {listed(tensor.dims)} but holds "
            f"{count} values in {name}"
        )
    return None


def shape_problem(tensor: onnx.TensorProto, size: int | None, what: str, holder: str) -> str | None:
    """A negative dimension, or `size` bytes of data (None: not known) that are not what the
    tensor's dims and type make, described as `what` 'name' ... `holder` N bytes."""
    dims = listed(tensor.dims)
    if dims and min(dims) < 0:
        return f"{what} '{tensor.name}' declares a negative dimension {dims}"
    itemsize = ITEMSIZE.get(tensor.data_type)
    if size is not None and itemsize is not None and size != itemsize * math.prod(dims):
        return f"{what} '{tensor.name}' declares shape {dims} but {holder} {size} bytes"
    return None


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
