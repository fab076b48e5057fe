"""What a fold changed, and both models with exactly that moved by rounding.

The calibrated criterion (`criterion.py`) needs the model's own sensitivity to rounding-level
changes of what the fold changed (from the original; from the candidate where the original's
movers cannot run or have nothing to move):
- the candidate with the weights the fold wrote moved by rounding (each element, with
  probability 1/4, one unit in the last place, ULP, up or down: `one_ulp_moved`);
- the original with the values entering the arithmetic the fold replaced moved by rounding
  (`inputs_moved_by_rounding`).
`what_the_fold_changed` finds what the fold wrote (candidate tensors the original lacks) and
consumed (original tensors the candidate lacks) by name and contents (`changed_tensors`, one
way), so any pair of models can be validated, not only bnfold's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..graphs import all_graphs, default_opset, subgraphs
from ..protobuf_speed import listed
from ..tensor_data import (
    DiskSpan,
    disk_span,
    holds_raw_data,
    is_on_disk,
    little_endian_bytes,
    put_on_disk,
    same_raw_data,
    tensor_to_array,
)

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}
# One element in this many is moved (by one ULP): a root-mean-square move of half an ULP, the
# bound of a correctly rounded weight, measured best on real nets (benchmarks/validation_study.py).
MOVED_EVERY = 4
_UNSIGNED: dict[int, Any] = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def changed_tensors(
    reference: onnx.ModelProto, candidate: onnx.ModelProto
) -> dict[str, onnx.TensorProto]:
    """The candidate's floating-point constants (initializers and Constant nodes, in every
    graph, by the name nodes read them under) that the reference does not hold under that name
    with the same contents. Constants that set shapes (Resize and Upsample scales, Range bounds)
    are left out: moving those by rounding changes shapes, not values."""
    return _changed(_constants(reference), _constants(candidate), candidate)


def what_the_fold_changed(
    reference: onnx.ModelProto, candidate: onnx.ModelProto
) -> dict[str, dict[str, onnx.TensorProto]]:
    """`changed_tensors` both ways, each model's constants found once: "candidate", what the
    fold wrote; "reference", what it consumed."""
    old, new = _constants(reference), _constants(candidate)
    return {"candidate": _changed(old, new, candidate), "reference": _changed(new, old, reference)}


def _changed(known, constants, model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    shaping = _shape_setting_names(model.graph)
    return {
        name: tensor
        for name, tensor in constants.items()
        if tensor.data_type in FLOAT_TYPES
        and name not in shaping
        and not _same(known.get(name), tensor)
    }


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The model's constant tensors by the name nodes read them under."""
    found: dict[str, onnx.TensorProto] = {}
    for _, graph in all_graphs(model.graph):
        for tensor in listed(graph.initializer):
            found[tensor.name] = tensor
        for node in listed(graph.node):
            if node.op_type == "Constant" and node.output and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.TENSOR:
                        found[node.output[0]] = attr.t
    return found


# Inputs whose values set a shape: (op type, input positions).
SHAPE_SETTING = {"Resize": (1, 2, 3), "Upsample": (1,), "Range": (0, 1, 2)}


def _shape_setting_names(graph: onnx.GraphProto) -> set[str]:
    return {
        node.input[index]
        for _, inner in all_graphs(graph)
        for node in listed(inner.node)
        for index in SHAPE_SETTING.get(node.op_type, ())
        if index < len(node.input)
    }


def _same(old: onnx.TensorProto | None, new: onnx.TensorProto) -> bool:
    if old is None or old.data_type != new.data_type or listed(old.dims) != listed(new.dims):
        return False
    if is_on_disk(old) and is_on_disk(new) and disk_span(old) == disk_span(new):
        return True
    if holds_raw_data(old) or holds_raw_data(new):
        return same_raw_data(old, new)
    return bool(np.array_equal(tensor_to_array(old), tensor_to_array(new), equal_nan=True))


@dataclass
class Moves:
    """Which elements of a tensor's bits moved, and by how much (+1 or -1): undone exactly by
    `undo`."""

    where: np.ndarray  # flat indices
    steps: np.ndarray  # the step each took, as the bits' unsigned type (-1 wraps around)

    def undo(self, bits: np.ndarray) -> None:
        flat = bits.reshape(-1)
        flat[self.where] -= self.steps


def one_ulp_moved(
    values: np.ndarray, rng: np.random.Generator, *, record: bool = True
) -> tuple[np.ndarray, Moves | None]:
    """(`values` with each finite non-zero element moved, with probability 1/`MOVED_EVERY`, one
    ULP up or down in magnitude at random; the moves, if `record`). Never to infinity; zeros
    stay zero. Works on the bit patterns (in sign-magnitude, one more is one ULP further from
    zero), so float16, bfloat16, float32 and float64 alike; costs a copy of the bits (and a few
    bytes per moved element to record), worked through in cache-sized pieces."""
    values = np.ascontiguousarray(values)
    unsigned = _UNSIGNED[values.dtype.itemsize]
    bits = values.view(unsigned).copy()
    flat = bits.reshape(-1)
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, flat.size, _PIECE):
        where, steps = _moved_piece(flat[start : start + _PIECE], rng, str(values.dtype))
        if record:
            pieces.append((where + start, steps))
    if not record:
        return bits.view(values.dtype), None
    empty = (np.empty(0, np.int64), np.empty(0, unsigned))
    where, steps = (np.concatenate(part) for part in zip(empty, *pieces, strict=False))
    return bits.view(values.dtype), Moves(where, steps)


_PIECE = 1 << 16  # elements moved at a time (temporaries stay in the cache)


def _moved_piece(flat: np.ndarray, rng: np.random.Generator, dtype: str):
    """Move `flat` (bits, in place) as `one_ulp_moved` says; (where, steps) of the moves."""
    unsigned = flat.dtype.type
    exponent = unsigned(_EXPONENT_BITS[dtype])
    # one random byte per element: below 256/MOVED_EVERY moves it; its lowest bit says which way
    draw = np.frombuffer(rng.bytes(flat.size), dtype=np.uint8)
    chosen = np.flatnonzero(draw < 256 // MOVED_EVERY)
    magnitude = flat[chosen] & unsigned((1 << (8 * flat.dtype.itemsize - 1)) - 1)
    movable = (magnitude != 0) & ((magnitude & exponent) != exponent)
    where, magnitude = chosen[movable], magnitude[movable]
    # the lowest bit of the draw says up (1) or down (0); the largest finite value moves down
    one = unsigned(1)
    steps = (draw[where] & 1).astype(unsigned)
    steps &= magnitude < exponent - one
    steps <<= one
    steps -= one  # 1 -> +1; 0 -> -1 (wrapped around)
    flat[where] += steps
    return where, steps


_EXPONENT_BITS = {
    "float16": 0x7C00,
    "bfloat16": 0x7F80,
    "float32": 0x7F800000,
    "float64": 0x7FF0000000000000,
}


@contextlib.contextmanager
def weights_moved_by_rounding(tensors: list[onnx.TensorProto], seed: int = 0) -> Iterator[int]:
    """Within the block, each tensor holds its values moved by rounding (`one_ulp_moved`); they
    are moved back afterwards (exactly: the moves are undone bit for bit, no copy of the weights
    is kept; an on-disk tensor points at its file again). For the tensors the skeleton
    (`runs.skeleton`) cannot hand over as arrays: Constant nodes', subgraphs'. Yields how many
    elements were moved."""
    rng = np.random.default_rng(seed)
    done: list[tuple[onnx.TensorProto, Moves, DiskSpan | onnx.TensorProto | None]] = []
    moved_elements = 0
    try:
        for tensor in tensors:
            span: DiskSpan | onnx.TensorProto | None = None
            if is_on_disk(tensor):
                span = disk_span(tensor)
            elif not tensor.raw_data:  # typed fields (small tensors): kept as they were
                span = onnx.TensorProto()
                span.CopyFrom(tensor)
            moved, moves = one_ulp_moved(tensor_to_array(tensor), rng)
            assert moves is not None
            moved_elements += moves.where.size
            _store(tensor, moved)
            done.append((tensor, moves, span))
            del moved
        yield moved_elements
    finally:
        for tensor, moves, span in reversed(done):
            if isinstance(span, onnx.TensorProto):
                tensor.CopyFrom(span)
                continue
            if span is not None:  # on disk: point at the original bytes again
                put_on_disk(tensor, span)
                continue
            bits = tensor_to_array(tensor).copy()
            moves.undo(bits.view(_UNSIGNED[bits.dtype.itemsize]))
            _store(tensor, bits)


def _store(tensor: onnx.TensorProto, values: np.ndarray) -> None:
    """Put `values` in the tensor's raw data (an on-disk tensor's, typed fields' too)."""
    if is_on_disk(tensor):
        tensor.ClearField("external_data")
        tensor.ClearField("data_location")
    elif not tensor.raw_data:
        for field in ("float_data", "int32_data", "double_data"):
            tensor.ClearField(field)
    tensor.raw_data = little_endian_bytes(values)


# Twice the relative move of a moved value, by element type: a value is multiplied by 1 ± half
# of it, one unit in the last place of 1.0 (`_factor`).
_FACTOR_WIDTH: dict[int, float] = {
    onnx.TensorProto.FLOAT: 2.0**-22,
    onnx.TensorProto.FLOAT16: 2.0**-9,
    onnx.TensorProto.DOUBLE: 2.0**-51,
    onnx.TensorProto.BFLOAT16: 2.0**-6,
}


# Where the values entering a node's arithmetic are, for the nodes a fold replaces or rewrites:
# moved only there (never a shape, an index or a flag another input of theirs may be).
MOVABLE_INPUTS = {
    "BatchNormalization": (0,),
    "Conv": (0,),
    "ConvTranspose": (0,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "Mul": (0, 1),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Div": (0, 1),
}


@contextlib.contextmanager
def inputs_moved_by_rounding(
    model: onnx.ModelProto,
    consumed: dict[str, onnx.TensorProto],
    seed: int = 0,
    switch: str | None = None,
) -> Iterator[int]:
    """Within the block, every node that reads a `consumed` tensor (the BatchNormalization, Mul
    or Add the fold removed, and the layer whose old weights it read), in any graph, reads its
    computed data inputs (`MOVABLE_INPUTS`) multiplied element-wise by 1 ± one ULP of 1.0 of the
    consumed tensor's type, the sign random (`_factor`: `RandomUniformLike` then `Sign`,
    seeded), and the removed nodes' outputs (`REPLACED_OPS`) are moved likewise: the original's
    own rounding of the values entering and leaving the arithmetic the fold replaced,
    accumulation included (a layer whose inputs carry a large common offset cancels in its
    sums). Data of another type than the statistics' (BatchNormalization-15) may get a factor
    of exactly 1 (float16 or float32 data, coarser than float32 or float64 statistics: the
    caller sees draws that moved nothing). With `switch` (the model's opset must be 9 or more),
    the model gets a boolean scalar input of that name, and each mover is an `If` on it that
    passes its value on unchanged, bit for bit, where it is false (`Identity`, the moving not
    done): one session runs the original as it is and moved. The movers are appended to their
    graph (onnxruntime sorts a graph itself) and removed afterwards, and the nodes' inputs and
    outputs renamed back: the model's messages stay the same objects. Yields how many values
    were moved."""
    widths = {
        name: _FACTOR_WIDTH[t.data_type]
        for name, t in consumed.items()
        if t.data_type in _FACTOR_WIDTH
    }
    types = {name: consumed[name].data_type for name in widths}
    stem = unused_stem(model, "__bnfold_moved")
    movers = _Movers(widths, seed, switch, default_opset(model), types, stem)
    edits: list[_Edit] = []
    inputs = model.graph.input
    try:
        _add_movers(model.graph, movers, set(), edits, main=True)
        if switch is not None and movers.count:
            inputs.append(onnx.helper.make_tensor_value_info(switch, onnx.TensorProto.BOOL, []))
        yield movers.count
    finally:
        if switch is not None and movers.count and inputs and inputs[-1].name == switch:
            del inputs[-1]
        for edit in reversed(edits):
            edit.undo()


def unused_stem(model: onnx.ModelProto, stem: str) -> str:
    """`stem`, or `stem_2`, `stem_3`, ...: the first that no tensor or node name of any graph of
    the model contains, so that no name built on it meets one of the model's."""
    names: list[str] = []
    for _, graph in all_graphs(model.graph):
        names.extend(i.name for i in graph.input)
        names.extend(t.name for t in graph.initializer)
        for node in graph.node:
            names.append(node.name)
            names.extend(node.input)
            names.extend(node.output)
    text = "\n".join(name for name in names if isinstance(name, str))
    candidate, count = stem, 1
    while candidate in text:
        count += 1
        candidate = f"{stem}_{count}"
    return candidate


@dataclass
class _Movers:
    """What the movers of one model are made from, and how many there are so far."""

    widths: dict[str, float]  # consumed tensor -> the factor's half-width
    seed: int
    switch: str | None  # the boolean input that turns them on, if any
    opset: int = 9  # the model's default-domain opset
    types: dict[str, int] = field(default_factory=dict)  # consumed tensor -> its element type
    stem: str = "__bnfold_moved"  # what the movers' names carry (no name of the model does)
    count: int = 0
    moved_outputs: set[str] = field(default_factory=set)  # written by an output's mover

    def tag(self) -> str:
        """The next mover's tag (unique in the model)."""
        return f"{self.stem}{self.count}"

    def width_for(self, node: onnx.NodeProto) -> tuple[float, int] | None:
        """(the factor's half-width, the element type it is for) of a node's movers: those of
        its data's type where a consumed input has it (a BatchNormalization's scale: from
        opset 14 on its mean and variance may have another), else of the coarsest consumed
        tensor it reads; None if it reads none."""
        read = [(self.widths[n], self.types[n]) for n in node.input if n in self.widths]
        if not read:
            return None
        scale = (
            node.input[1] if node.op_type == "BatchNormalization" and len(node.input) > 1 else ""
        )
        if scale in self.widths:
            return self.widths[scale], self.types[scale]
        return max(read)

    def mover(self, source: str, target: str, kind: tuple[float, int]) -> list[onnx.NodeProto]:
        """The nodes of one more mover (`_mover`), its seed and tag its own."""
        tag = self.tag()
        seed = self.seed * 7919 + self.count
        self.count += 1
        width, elem_type = kind
        return _mover(source, target, width, seed, tag, self.switch, (self.opset, elem_type))


@dataclass
class _Edit:
    """Movers added to one graph, and how to take them out again."""

    graph: onnx.GraphProto
    added: int  # main graph: movers appended at the end
    renamed: list[tuple[onnx.NodeProto, int, str]]  # (node, input position, its old name)
    saved: list[onnx.NodeProto] | None = None  # a subgraph: its node list as it was
    outputs: list[tuple[onnx.NodeProto, str]] = field(default_factory=list)  # (node, old name)

    def undo(self) -> None:
        if self.saved is not None:
            del self.graph.node[:]
            self.graph.node.extend(self.saved)
            return
        for node, index, name in self.renamed:
            node.input[index] = name
        for node, name in self.outputs:
            node.output[0] = name
        if self.added:
            del self.graph.node[-self.added :]


def _add_movers(graph, movers: _Movers, outer_constants, edits, main: bool) -> None:
    """Movers for the readers of consumed tensors in `graph` and its subgraphs. In the main
    graph they are appended (onnxruntime sorts it); a subgraph must be in order, so its node
    list is rebuilt with each mover before its reader (and put back as it was)."""
    constants = outer_constants | {t.name for t in listed(graph.initializer)}
    nodes = listed(graph.node)
    constants.update(out for node in nodes if node.op_type == "Constant" for out in node.output)
    reads_consumed = any(name in movers.widths for node in nodes for name in node.input)
    saved = [_copy(node) for node in nodes] if reads_consumed and not main else None
    ordered: list[onnx.NodeProto] = []
    added: list[onnx.NodeProto] = []
    renamed: list[tuple[onnx.NodeProto, int, str]] = []
    # (booked before any edit: a failure part way is undone too)
    edit = _Edit(graph, 0, renamed) if main else _Edit(graph, 0, [], saved)
    if main or saved is not None:
        edits.append(edit)
    for node in nodes:
        mine = _movers_for(node, movers, constants, renamed, main)
        after = _output_mover(node, movers, edit.outputs if main else None)
        added.extend([*mine, *after])
        ordered.extend([*mine, node, *after])
        for _, sub in subgraphs(node):
            _add_movers(sub, movers, constants, edits, main=False)
    if main:
        graph.node.extend(added)
        edit.added = len(added)
    elif added:
        del graph.node[:]
        graph.node.extend(ordered)


def _movers_for(node, movers: _Movers, constants, renamed, rename_in_place) -> list:
    kind = movers.width_for(node)
    positions = MOVABLE_INPUTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
    made: list[onnx.NodeProto] = []
    for index in positions:
        if kind is None:
            break
        name = node.input[index] if index < len(node.input) else ""
        if not isinstance(name, str) or not name or name in constants or name in movers.widths:
            continue  # (a name that is not UTF-8 comes back as bytes: left as it is)
        if name in movers.moved_outputs:
            continue  # (moved once where it is written: a Mul → Add, a BN → a forward fold)
        target = f"{name}{movers.tag()}"
        made.extend(movers.mover(name, target, kind))
        if rename_in_place:
            renamed.append((node, index, name))
        node.input[index] = target
    return made


# The nodes a fold removes (BatchNormalization, and BN written as arithmetic): their output is
# moved too, as the original rounds it (where a large shift dominates it, that rounding is the
# largest the fold changes, and a shift-invariant op after it, Softmax or a normalization,
# turns it into relative error).
REPLACED_OPS = frozenset({"BatchNormalization", "Mul", "Add", "Sub", "Div"})


def _output_mover(node, movers: _Movers, renamed: list | None) -> list[onnx.NodeProto]:
    """A mover for the first output of a node the fold removes that reads a consumed tensor:
    the node writes a new name, the mover the old one. `renamed`: where the main graph books
    the renaming (a subgraph's node list is put back whole)."""
    kind = movers.width_for(node)
    replaced = node.op_type in REPLACED_OPS and node.domain in ("", "ai.onnx")
    if kind is None or not replaced or not node.output or not node.output[0]:
        return []
    name = node.output[0]
    if not isinstance(name, str):
        return []
    source = f"{name}{movers.tag()}"
    if renamed is not None:
        renamed.append((node, name))
    node.output[0] = source
    movers.moved_outputs.add(name)
    return movers.mover(source, name, kind)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _uniform_like(source: str, output: str, low: float, high: float, seed: int):
    return onnx.helper.make_node(
        "RandomUniformLike",
        [source],
        [output],
        name=f"{output}_node",
        low=low,
        high=high,
        seed=float(seed),
    )


def _mover(
    source: str,
    target: str,
    width: float,
    seed: int,
    tag: str,
    switch: str | None,
    kind: tuple[int, int],
) -> list[onnx.NodeProto]:
    """`target` = `source` · a factor 1 ± width/2 (`_factor`); with `switch`, an `If` on it:
    `source` itself where it is false (`Identity`: bit for bit, and the mover's work is not
    done), moved where it is true. `kind`: (the model's opset, the element type of the data)."""
    factor = f"{source}{tag}_factor"
    moved = target if switch is None else f"{factor}_on"
    nodes = _factor(source, factor, width, seed, *kind)
    nodes.append(onnx.helper.make_node("Mul", [source, factor], [moved], name=f"{factor}_mul"))
    if switch is None:
        return nodes
    off = f"{factor}_off"  # (node names from the factor's: the target may be the model's own)
    on_branch = onnx.helper.make_graph(
        nodes, f"{factor}_moved", [], [onnx.helper.make_empty_tensor_value_info(moved)]
    )
    identity = onnx.helper.make_node("Identity", [source], [off], name=f"{factor}_identity")
    off_branch = onnx.helper.make_graph(
        [identity], f"{factor}_as_is", [], [onnx.helper.make_empty_tensor_value_info(off)]
    )
    switched = onnx.helper.make_node(
        "If",
        [switch],
        [target],
        name=f"{factor}_if",
        then_branch=on_branch,
        else_branch=off_branch,
    )
    return [switched]


def _factor(
    source: str, factor: str, width: float, seed: int, opset: int, elem_type: int
) -> list[onnx.NodeProto]:
    """Nodes making `factor` = 1 ± width/2 per element of `source`, the sign random
    (`RandomUniformLike`, then `Sign`): one ULP of 1.0 either way, so every value moves (a
    factor drawn uniformly within ±width lands on 1 for 3 in 16 values in float32, and a value
    that dominates its block, a softmax's one likely class, then shows no noise of its own;
    here only `Sign` of an exact 0, one value in 2^24, leaves 1). The constants take `source`'s
    type (`CastLike`, from opset 15; before it, `elem_type`: the type of the node's data,
    `_Movers.width_for`). Below opset 9, without `Sign`, the factor is uniform within ±width."""
    if opset < 9:
        return [_uniform_like(source, factor, 1.0 - width, 1.0 + width, seed)]
    unit, sign, spread = f"{factor}_unit", f"{factor}_sign", f"{factor}_spread"
    step, one = f"{factor}_step", f"{factor}_one"
    nodes = [
        _uniform_like(source, unit, -1.0, 1.0, seed),
        onnx.helper.make_node("Sign", [unit], [sign], name=f"{sign}_node"),
        *_typed_constant(step, width / 2, unit, opset, elem_type),
        *_typed_constant(one, 1.0, unit, opset, elem_type),
        onnx.helper.make_node("Mul", [sign, step], [spread], name=f"{spread}_node"),
        onnx.helper.make_node("Add", [one, spread], [factor], name=f"{factor}_node"),
    ]
    return nodes


def _typed_constant(name: str, value: float, like: str, opset: int, elem_type: int) -> list:
    """A scalar `value` named `name` of `like`'s type: CastLike from float64 (exact for the
    values used here), from opset 15; before it, a constant of `elem_type`."""
    if opset >= 15:
        double = f"{name}_double"
        tensor = onnx.helper.make_tensor(double, onnx.TensorProto.DOUBLE, [], [value])
        return [
            onnx.helper.make_node("Constant", [], [double], name=f"{double}_node", value=tensor),
            onnx.helper.make_node("CastLike", [double, like], [name], name=f"{name}_node"),
        ]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    tensor = onnx.numpy_helper.from_array(np.array(value, dtype=dtype), name)
    return [onnx.helper.make_node("Constant", [], [name], name=f"{name}_node", value=tensor)]
