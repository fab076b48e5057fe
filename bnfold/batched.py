"""Many Conv → BatchNormalization folds at once: the common case, vectorised.

The general pass (the rules of `bnfold.producers`, through `folding`) decides and folds one
BatchNormalization at a time with a few dozen small numpy calls; on a graph of tens of thousands
of small layers those calls, not the arithmetic, are the cost. This module takes the pairs that
need nothing beyond a few lookups to decide, and does their arithmetic with a handful of numpy
calls over all of them:

- a default-domain Conv whose output only the BatchNormalization reads (not a graph output);
- the BatchNormalization in inference mode (`batchnorm.mode_problem`), its four parameters
  initializers of this graph, not graph inputs, raw float16/32/64 data, 1-D, one length C ≥ 1;
- the Conv weight such an initializer read by this Conv only, rank ≥ 3, C output channels; its
  bias absent or such an initializer of shape [C];
- every one of those tensors' raw data exactly the size its dims and type make.

`find_pairs` only reads the graph, and it runs before the pass checks the main graph's
initializers: the tensors it has read and checked (`checked_names`) are not read again there.

This is `producers.backward.into_layer`'s fold for many Conv → BN pairs at once, made only while
no rule asked before it may answer about a Conv (`registry.conv_pairs_batchable`). The arithmetic
is `numerics`' own functions over the pairs' values laid end to end (`batchnorm_affines`,
`multiply_exactly`, `folded_bias`: float64, one rounding to the stored dtype), so the results are
bit for bit those of the general path (tests/test_batched.py compares them). A
pair whose variance or result is not representable is not folded here: the general path then
looks at it again and says why. Small weights are scaled together in chunks of `CHUNK_BYTES`,
big ones one at a time, so the extra memory stays a few chunks whatever the model's size.

Only the weights are written up front (nothing reads them before their BatchNormalization's turn:
the Conv's output feeds only that BN, and a Conv fed by a BatchNormalization, which a forward fold
could change first, is left to the general path). The rest of each fold (bias, rewiring, record,
fresh names) happens when the pass reaches the BatchNormalization (`PendingFold.finish`), so
names and order are those of the one-at-a-time path. A graph out of topological order is left
entirely to the general path.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import onnx

from .affine import AFFINE_OPS
from .batchnorm import mode_problem
from .constant_eval import EVALUATED_OPS
from .graph_view import GraphView, NameAllocator
from .graphs import ONNX_DOMAINS, attributes, node_label
from .numerics import (
    ChannelAffine,
    batchnorm_affines,
    finite_by_fold,
    folded_bias,
    multiply_exactly,
    rounded_once,
)
from .producers.conv import how_folded
from .protobuf_speed import DATA_LOCATION, DATA_TYPE, RAW_DATA, listed
from .records import Folded
from .tensor_data import (
    RAW_DTYPES,
    DataFile,
    data_size,
    is_on_disk,
    raw_bytes,
    read_into,
    set_raw_data,
)

RAW_FLOATS = {code: dtype for code, dtype in RAW_DTYPES.items() if dtype.kind == "f"}
CHUNK_BYTES = 1 << 20  # weights smaller than this are scaled together, up to this much at once


@dataclass(slots=True)
class _Pair:
    """One Conv → BatchNormalization fold, and its per-channel factors once computed."""

    bn_index: int
    conv_index: int
    param_names: list[str]  # scale, B, mean, var
    params: list[onnx.TensorProto]
    epsilon: float
    weight: onnx.TensorProto
    bias: onnx.TensorProto | None
    channels: int
    row: int  # weight elements per output channel
    # `a` and `b` of all pairs with this pair's parameter dtype (float64), and where its own
    # C values start: one array for thousands of pairs, not two small arrays each
    factors: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    start: int = 0

    def factor(self, role: int) -> np.ndarray:
        """This pair's `a` (role 0) or `b` (role 1), a view of the shared array."""
        assert self.factors is not None  # (set for every pair before its fold)
        return self.factors[role][self.start : self.start + self.channels]


@dataclass(slots=True)
class PendingFold:
    """A pair whose weight holds its folded values; `finish` completes the fold."""

    pair: _Pair
    biases: np.ndarray  # the folded biases of many pairs, in this pair's bias dtype
    start: int  # where this pair's C values start in `biases`

    @property
    def bias(self) -> np.ndarray:
        return self.biases[self.start : self.start + self.pair.channels]

    def finish(self, view: GraphView, names: NameAllocator) -> Folded:
        """Complete the fold with the edits `Match.apply` makes for `into_layer`'s match (the
        bias, the Conv taking over the BatchNormalization's output) and the same record, made
        here directly: a `Match` per pair costs a tenth of the pass on a 48,000-node chain."""
        pair = self.pair
        bn_node, conv = view.nodes[pair.bn_index], view.nodes[pair.conv_index]
        into, label = node_label(conv), node_label(bn_node)  # (before the renaming)
        if pair.bias is not None:
            set_raw_data(pair.bias, self.bias.tobytes())
        else:
            stem = conv.name or conv.output[0]
            view.set_constant_input(pair.conv_index, 2, self.bias, f"{stem}_bnfold_bias", names)
        output = view.bypass(pair.bn_index, pair.conv_index, pair.param_names)
        how = how_folded(pair.channels, pair.bias is not None)
        return Folded(label, output, into, "Conv", how, view.path)


def find_pairs(view: GraphView, opset: int, forward_from: frozenset[str]) -> list[_Pair]:
    """The pairs of the kind above, in node order, leaving out a Conv fed by a node of
    `forward_from` (`registry.forward_folding_ops()`: a forward rule may fold it into the Conv
    first). Only reads the graph; the data of every tensor a pair reads is checked to be the
    size its dims and type make (`checked_names`)."""
    if not view.reads_in_order:
        return []
    return [pair for pair in _candidates(view, opset, forward_from) if pair is not None]


def checked_names(pairs: list[_Pair]) -> set[str]:
    """The initializers `find_pairs` checked for `pairs` (positive dims, data of that size)."""
    names = {name for pair in pairs for name in pair.param_names}
    names.update(pair.weight.name for pair in pairs)
    names.update(pair.bias.name for pair in pairs if pair.bias is not None)
    return names


def fold_conv_batchnorm_weights(
    view: GraphView,
    pairs: list[_Pair],
    spill: DataFile | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    followed: frozenset[str] | None = None,
) -> dict[int, PendingFold]:
    """Write the folded weights of `pairs` (from `find_pairs`); return the pending folds by
    BatchNormalization position (the pass calls `finish` on each when it gets there). A weight
    on disk goes to `spill` when one is given (it stays on disk) unless a later fold may
    rewrite it again (`followed`: `registry.followed_back_through()`; it would leave unused
    bytes there); any other into the model. Small weights are scaled together, up to
    `chunk_bytes` at a time."""
    if not pairs:
        return {}
    pairs = _with_affines(pairs)
    new_biases = _folded_biases(pairs)
    pending: dict[int, PendingFold] = {}
    folding = [pair for pair in pairs if pair.bn_index in new_biases]
    for chunk in _scaled_weights(folding, chunk_bytes):
        for pair, weight in chunk:  # weights are written a chunk at a time: no copy of them all
            on_disk = spill is not None and is_on_disk(pair.weight)
            if on_disk and not _may_fold_again(view, pair, followed):
                assert spill is not None
                spill.put(pair.weight, weight)
            else:
                set_raw_data(pair.weight, weight.tobytes())
            pending[pair.bn_index] = PendingFold(pair, *new_biases[pair.bn_index])
    return pending


def _candidates(view: GraphView, opset: int, forward_from: frozenset[str]):
    nodes, domains = view.nodes, view.domains
    for index, op_type in enumerate(view.op_types):
        if op_type == "BatchNormalization" and domains[index] in ONNX_DOMAINS:
            yield _pair(view, index, nodes[index], opset, forward_from)


def _pair(
    view: GraphView, index: int, node: onnx.NodeProto, opset: int, forward_from: frozenset[str]
) -> _Pair | None:
    found = _batchnorm_params(view, node, opset)
    if found is None:
        return None
    source, param_names, params, epsilon = found
    channels = params[0].dims[0]
    conv = _conv_before(view, source, index, channels, forward_from)
    if conv is None:
        return None
    conv_index, weight, bias, row = conv
    return _Pair(index, conv_index, param_names, params, epsilon, weight, bias, channels, row)


def _batchnorm_params(view: GraphView, node: onnx.NodeProto, opset: int):
    """(data input, parameter names, parameters, epsilon) of an inference-mode BN whose four
    parameters are initializers of this graph (not graph inputs), raw float data of one dtype,
    1-D of one length C ≥ 1; else None."""
    attrs = attributes(node)
    if mode_problem(node, opset, attrs):
        return None
    epsilon = attrs.get("epsilon", 1e-5)
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        return None  # malformed: the general path says why
    source, *param_names = listed(node.input)  # five names: mode_problem checked
    found = list(map(view.initializers.get, param_names))
    if None in found or not view.input_names.isdisjoint(param_names):
        return None
    params = cast(list[onnx.TensorProto], found)
    dtype = params[0].data_type
    if dtype not in RAW_FLOATS or set(map(DATA_TYPE, params)) != {dtype}:
        return None
    shapes = [listed(param.dims) for param in params]
    dims = shapes[0]
    if len(dims) != 1 or dims[0] < 1 or shapes.count(dims) != len(shapes):
        return None
    if not _hold_bytes(params, dims[0] * RAW_FLOATS[dtype].itemsize):
        return None  # (or the data is in a typed field, or in a file not read)
    return source, param_names, params, epsilon


def _conv_before(
    view: GraphView, source: str, index: int, channels: int, forward_from: frozenset[str]
):
    """(Conv index, weight, bias or None, weight row length) of the default-domain Conv whose
    output `source` only the BN at `index` reads, its weight and bias owned float initializers
    of C output channels, not fed by a node a forward rule may fold into it first
    (`forward_from`: `registry.forward_folding_ops`); else None."""
    conv_index = view.producer.get(source)
    if conv_index is None or view.sole_consumer(source) != index:
        return None
    if view.op_types[conv_index] != "Conv" or view.domains[conv_index] not in ONNX_DOMAINS:
        return None
    conv_inputs = listed(view.nodes[conv_index].input)
    if len(conv_inputs) < 2:
        return None
    weight = _owned_float_initializer(view, conv_inputs[1], conv_index)
    if weight is None:
        return None
    weight_dims = listed(weight.dims)
    if len(weight_dims) < 3 or weight_dims[0] != channels or min(weight_dims) < 1:
        return None
    row = math.prod(weight_dims[1:])
    if not _hold_bytes([weight], channels * row * RAW_FLOATS[weight.data_type].itemsize):
        return None
    feeder = view.producer.get(conv_inputs[0])
    if feeder is not None and view.op_types[feeder] in forward_from:
        return None  # a forward fold may change this Conv first, in node order
    bias = None
    if len(conv_inputs) > 2 and conv_inputs[2]:
        bias = _owned_float_initializer(view, conv_inputs[2], conv_index)
        if bias is None or listed(bias.dims) != [channels]:
            return None
        if not _hold_bytes([bias], channels * RAW_FLOATS[bias.data_type].itemsize):
            return None
    return conv_index, weight, bias, row


def _may_fold_again(view: GraphView, pair: _Pair, followed: frozenset[str] | None) -> bool:
    """Whether something reading the BatchNormalization's output may fold into the same Conv
    afterwards (rewriting its weight again): another BatchNormalization, a node backward rules
    follow (`followed`: `registry.followed_back_through`, None: any), or BN-like arithmetic
    whose other operand may be constant (a residual Add of two branches is not)."""
    output = view.nodes[pair.bn_index].output[0]
    for reader in view.consumers.of(output):
        op_type = view.op_types[reader]
        if followed is None or op_type == "BatchNormalization" or op_type in followed:
            return True
        if op_type in AFFINE_OPS:
            for name in listed(view.nodes[reader].input):
                producer = view.producer.get(name)
                if name != output and (
                    producer is None or view.op_types[producer] in _CONSTANT_MAKERS
                ):
                    return True  # an initializer, an input, an outer value or a constant
    return False


_CONSTANT_MAKERS = frozenset({"Constant", *EVALUATED_OPS})


def _owned_float_initializer(view: GraphView, name: str, reader: int) -> onnx.TensorProto | None:
    """An initializer of this graph of a float type, not a graph input or output, read by
    `reader` only (so it can be rewritten)."""
    tensor = view.initializers.get(name)
    if (
        tensor is None
        or tensor.data_type not in RAW_FLOATS
        or name in view.input_names
        or view.consumers.only(name) != reader
        or name in view.output_names
    ):
        return None
    return tensor


def _hold_bytes(tensors: list[onnx.TensorProto], size: int) -> bool:
    """Whether each tensor holds exactly `size` bytes of raw data, in the model or on disk
    (not in a typed field such as float_data, nor in an external file that was not read)."""
    if not any(map(DATA_LOCATION, tensors)):  # all in the model: the usual case
        return set(map(len, map(RAW_DATA, tensors))) == {size}
    return set(map(data_size, tensors)) == {size}


def _concatenated(tensors: list[onnx.TensorProto], dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(b"".join(map(raw_bytes, tensors)), dtype=dtype)


def _with_affines(pairs: list[_Pair]) -> list[_Pair]:
    """Compute every pair's `a = γ/√(σ²+ε)`, `b = β − μ·a` (`numerics.batchnorm_affine`); keep the
    pairs whose σ²+ε is positive and finite on every channel."""
    by_dtype: dict[int, list[_Pair]] = defaultdict(list)
    for pair in pairs:
        by_dtype[pair.params[0].data_type].append(pair)
    kept = []
    for code, group in by_dtype.items():
        dtype = RAW_FLOATS[code]
        gamma, beta, mean, var = (
            _concatenated([pair.params[role] for pair in group], dtype).astype(np.float64)
            for role in range(4)
        )
        lengths = np.array([pair.channels for pair in group])
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        epsilons = np.repeat(np.array([pair.epsilon for pair in group], np.float32), lengths)
        affine, representable = batchnorm_affines(gamma, beta, mean, var, epsilons)
        good = np.logical_and.reduceat(representable, starts)
        factors = (affine.scale, affine.shift)
        for pair, start, ok in zip(group, starts.tolist(), good.tolist(), strict=True):
            if ok:
                pair.factors, pair.start = factors, start
                kept.append(pair)
    kept.sort(key=lambda pair: pair.bn_index)
    return kept


def _scaled_weights(
    pairs: list[_Pair], chunk_bytes: int
) -> Iterator[list[tuple[_Pair, np.ndarray]]]:
    """`W'[c] = a[c]·W[c]` rounded once to W's dtype, a chunk at a time, for the pairs where
    every value is finite (`numerics.multiply_exactly`). The arrays are views of a buffer the
    next chunk reuses: use them before asking for it."""
    buffers = _Buffers()
    for chunk in _weight_chunks(pairs, chunk_bytes):
        first = chunk[0]
        dtype = RAW_FLOATS[first.weight.data_type]
        rows = _weight_rows(chunk, dtype, buffers).reshape(-1, first.row)  # a row per channel
        scales = _joined(chunk, 0)
        scaled = buffers.array("scaled", rows.size, dtype).reshape(rows.shape)
        multiply_exactly(rows, scales[:, None], out=scaled)
        del rows
        starts = np.cumsum([0, *(p.channels for p in chunk)])
        finite: list[bool]
        if _all_finite(scaled, buffers):  # the usual case, 10x cheaper than the per-row answer
            finite = [True] * len(chunk)
        else:
            rows_start = (starts[:-1] * first.row).tolist()
            finite = finite_by_fold(scaled, rows_start)
        yield [
            (pair, scaled[start:stop])
            for pair, start, stop, ok in zip(chunk, starts[:-1], starts[1:], finite, strict=True)
            if ok
        ]


class _Buffers:
    """Scratch arrays reused from chunk to chunk, each as big as the biggest use so far: a
    fresh array of a big weight's size costs a page fault every 4 KB when first written, more
    than the arithmetic (and the memory is the same)."""

    def __init__(self) -> None:
        self._held: dict[str, np.ndarray] = {}

    def array(self, role: str, size: int, dtype: np.dtype) -> np.ndarray:
        """A 1-D array of `size` elements of `dtype` (its values are left over from before)."""
        nbytes = size * dtype.itemsize
        held = self._held.get(role)
        if held is None or held.nbytes < nbytes:
            self._held[role] = held = np.empty(nbytes, dtype=np.uint8)
        return held[:nbytes].view(dtype)


def _weight_rows(chunk: list[_Pair], dtype: np.dtype, buffers: _Buffers) -> np.ndarray:
    """The weights of `chunk` end to end, as a flat (read-only) array: straight from their raw
    bytes when all are in the model (one weight: no copy), else read into a scratch buffer."""
    weights = [pair.weight for pair in chunk]
    if not any(map(DATA_LOCATION, weights)):
        return np.frombuffer(b"".join(map(RAW_DATA, weights)), dtype=dtype)
    sizes = list(map(data_size, weights))
    flat = buffers.array("weights", sum(sizes) // dtype.itemsize, dtype)
    target = memoryview(flat.view(np.uint8))  # type: ignore[arg-type]
    at = 0
    for weight, size in zip(weights, sizes, strict=True):
        if is_on_disk(weight):
            read_into(weight, target[at : at + size])
        else:
            target[at : at + size] = weight.raw_data
        at += size
    return flat


def _all_finite(values: np.ndarray, buffers: _Buffers) -> bool:
    """`np.isfinite(values).all()`, a block at a time into a reused buffer."""
    flat = values.reshape(-1)
    block = 1 << 22
    flags = buffers.array("finite", min(flat.size, block), np.dtype(bool))
    for start in range(0, flat.size, block):
        piece = flat[start : start + block]
        if not np.isfinite(piece, out=flags[: piece.size]).all():
            return False
    return True


def _weight_chunks(pairs: list[_Pair], chunk_bytes: int) -> Iterator[list[_Pair]]:
    """Pairs whose weights share a dtype and a row length (elements per output channel), in
    runs of at most chunk_bytes of weights (a bigger weight makes a run of its own)."""
    groups: dict[tuple[int, int], list[_Pair]] = defaultdict(list)
    for pair in pairs:
        groups[pair.weight.data_type, pair.row].append(pair)
    for (code, row), group in groups.items():
        row_bytes = row * RAW_FLOATS[code].itemsize
        chunk: list[_Pair] = []
        size = 0
        for pair in group:
            weight_bytes = pair.channels * row_bytes
            if chunk and size + weight_bytes > chunk_bytes:
                yield chunk
                chunk, size = [], 0
            chunk.append(pair)
            size += weight_bytes
        if chunk:
            yield chunk


def _folded_biases(pairs: list[_Pair]) -> dict[int, tuple[np.ndarray, int]]:
    """`B' = a·B + b` (an absent B counts as zero: `B' = b`) rounded once to B's dtype (W's when
    B is absent), for the pairs where every value is finite (`numerics.folded_bias`): by
    BatchNormalization position, the array holding the pair's values and where they start."""
    by_dtype: dict[int, list[_Pair]] = defaultdict(list)
    for pair in pairs:
        by_dtype[(pair.bias or pair.weight).data_type].append(pair)
    result: dict[int, tuple[np.ndarray, int]] = {}
    for code, group in by_dtype.items():
        dtype = RAW_FLOATS[code]
        scale, shift = _joined(group, 0), _joined(group, 1)
        with_bias = [pair for pair in group if pair.bias is not None]
        folded = shift.copy()
        if with_bias:
            present = np.repeat([pair.bias is not None for pair in group], _lengths(group))
            biases = [pair.bias for pair in with_bias if pair.bias is not None]
            bias = _concatenated(biases, dtype)
            folded[present] = folded_bias(bias, ChannelAffine(scale[present], shift[present]))
        rounded = rounded_once(folded, dtype)
        starts = np.concatenate(([0], np.cumsum(_lengths(group))[:-1])).tolist()
        finite = finite_by_fold(rounded, starts)
        for pair, start, ok in zip(group, starts, finite, strict=True):
            if ok:
                result[pair.bn_index] = rounded, start
    return result


def _joined(pairs: list[_Pair], role: int) -> np.ndarray:
    """The `a` (role 0) or `b` (role 1) values of `pairs`, end to end: a view of the array they
    share when they lie there end to end in this order (the usual case), else a copy."""
    first = pairs[0]
    shared = first.factors
    if shared is not None and all(
        pair.factors is shared and pair.start == before.start + before.channels
        for before, pair in itertools.pairwise(pairs)
    ):
        last = pairs[-1]
        return shared[role][first.start : last.start + last.channels]
    return np.concatenate([pair.factor(role) for pair in pairs])


def _lengths(pairs: list[_Pair]) -> list[int]:
    return [pair.channels for pair in pairs]
