"""Many Conv → BatchNormalization folds at once: the common case, vectorised.

The general pass (`fold._fold_one`) decides and folds one BatchNormalization at a time with a few
dozen small numpy calls; on a graph of tens of thousands of small layers those calls, not the
arithmetic, are the cost. This module takes the pairs that need nothing beyond a few lookups to
decide, and does their arithmetic with a handful of numpy calls over all of them:

- a default-domain Conv whose output only the BatchNormalization reads (not a graph output);
- the BatchNormalization in inference mode (`batchnorm.mode_problem`), its four parameters
  initializers of this graph, not graph inputs, raw float16/32/64 data, 1-D, one length C ≥ 1;
- the Conv weight such an initializer read by this Conv only, rank ≥ 3, C output channels; its
  bias absent or such an initializer of shape [C].

The arithmetic is `numerics`' operation for operation (float64, one rounding to the stored dtype),
so the results are bit for bit those of the general path (tests/test_batched.py compares them). A
pair whose variance or result is not representable is not folded here: the general path then
looks at it again and says why. Small weights are scaled together in chunks of `CHUNK_BYTES`,
big ones one at a time, so the extra memory stays a few chunks whatever the model's size.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx

from .batchnorm import mode_problem
from .graph_view import GraphView, NameAllocator, attributes, node_label
from .records import Folded

DEFAULT_DOMAINS = ("", "ai.onnx")
RAW_FLOATS = {
    onnx.TensorProto.FLOAT: np.dtype("<f4"),
    onnx.TensorProto.FLOAT16: np.dtype("<f2"),
    onnx.TensorProto.DOUBLE: np.dtype("<f8"),
}
CHUNK_BYTES = 1 << 22  # weights smaller than this are scaled together, up to this much at once


@dataclass
class _Pair:
    """One Conv → BatchNormalization fold, and its per-channel factors once computed."""

    bn_index: int
    conv_index: int
    params: list[onnx.TensorProto]  # scale, B, mean, var
    epsilon: float
    weight: onnx.TensorProto
    bias: onnx.TensorProto | None
    channels: int
    scale: np.ndarray = field(default=None, repr=False)  # float64 [C]
    shift: np.ndarray = field(default=None, repr=False)


def fold_conv_batchnorm_pairs(
    view: GraphView,
    opset: int,
    names: NameAllocator,
    vanished: set[str],
    maybe_dead: set[str],
) -> dict[int, Folded]:
    """Fold every pair of the kind above; return their records by BatchNormalization position.

    Edits the graph as `fold._fold_one` does: the Conv takes over the BatchNormalization's output,
    its weight and bias hold the folded values, the BatchNormalization is removed at commit.
    """
    pairs = [pair for pair in _find_pairs(view, opset) if pair is not None]
    if not pairs:
        return {}
    pairs = _with_affines(pairs)
    new_weights = _scaled_weights(pairs)
    new_biases = _folded_biases(pairs)
    records: dict[int, Folded] = {}
    for pair in pairs:
        weight, bias = new_weights.get(pair.bn_index), new_biases.get(pair.bn_index)
        if weight is None or bias is None:
            continue  # not representable: the general path will say why
        records[pair.bn_index] = _apply(pair, view, names, weight, bias, vanished, maybe_dead)
    return records


def _find_pairs(view: GraphView, opset: int):
    for index, node in enumerate(view.nodes):
        if node.op_type == "BatchNormalization" and node.domain in DEFAULT_DOMAINS:
            yield _pair(view, index, node, opset)


def _pair(view: GraphView, index: int, node: onnx.NodeProto, opset: int) -> _Pair | None:
    attrs = attributes(node)
    if mode_problem(node, opset, attrs):
        return None
    source, *param_names = node.input
    params = [_raw_initializer(view, name) for name in param_names]
    if any(p is None for p in params):
        return None
    dtype = params[0].data_type
    dims = list(params[0].dims)
    if len(dims) != 1 or dims[0] < 1:
        return None
    if any(p.data_type != dtype or list(p.dims) != dims for p in params):
        return None
    conv_index = view.producer.get(source)
    if conv_index is None or view.sole_consumer(source) != index:
        return None
    conv = view.nodes[conv_index]
    if conv.op_type != "Conv" or conv.domain not in DEFAULT_DOMAINS or len(conv.input) < 2:
        return None
    weight = _owned_raw_initializer(view, conv.input[1], conv_index)
    if weight is None or len(weight.dims) < 3 or weight.dims[0] != dims[0]:
        return None
    if not math.prod(weight.dims):
        return None
    bias = None
    if len(conv.input) > 2 and conv.input[2]:
        bias = _owned_raw_initializer(view, conv.input[2], conv_index)
        if bias is None or list(bias.dims) != dims:
            return None
    epsilon = attrs.get("epsilon", 1e-5)
    return _Pair(index, conv_index, params, epsilon, weight, bias, dims[0])


def _raw_initializer(view: GraphView, name: str) -> onnx.TensorProto | None:
    """An initializer of this graph, not a graph input, holding raw float data in memory."""
    tensor = view.initializers.get(name)
    if (
        tensor is None
        or name in view.input_names
        or tensor.data_type not in RAW_FLOATS
        or tensor.data_location == onnx.TensorProto.EXTERNAL
        or not tensor.HasField("raw_data")
    ):
        return None
    return tensor


def _owned_raw_initializer(view: GraphView, name: str, reader: int) -> onnx.TensorProto | None:
    """`_raw_initializer`, read by `reader` only and not a graph output (so it can be rewritten)."""
    tensor = _raw_initializer(view, name)
    if tensor is None or view.consumers.get(name) != [reader] or name in view.output_names:
        return None
    return tensor


def _concatenated(tensors: list[onnx.TensorProto], dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(b"".join(t.raw_data for t in tensors), dtype=dtype)


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
        epsilons = np.array([pair.epsilon for pair in group], dtype=np.float32)
        radicand = var + np.repeat(epsilons.astype(np.float64), lengths)
        good = np.logical_and.reduceat((radicand > 0) & (radicand < math.inf), starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = gamma / np.sqrt(radicand)
        shift = beta - mean * scale
        for pair, start, ok in zip(group, starts.tolist(), good.tolist(), strict=True):
            if ok:
                stop = start + pair.channels
                pair.scale, pair.shift = scale[start:stop], shift[start:stop]
                kept.append(pair)
    kept.sort(key=lambda pair: pair.bn_index)
    return kept


def _scaled_weights(pairs: list[_Pair]) -> dict[int, bytes]:
    """`W'[c] = a[c]·W[c]` rounded once to W's dtype, as raw bytes, for the pairs where every
    value is finite (`numerics.multiply_exactly`)."""
    result: dict[int, bytes] = {}
    for chunk in _weight_chunks(pairs):
        dtype = RAW_FLOATS[chunk[0].weight.data_type]
        weights = _concatenated([pair.weight for pair in chunk], dtype)
        rows = [math.prod(pair.weight.dims[1:]) for pair in chunk]
        if len(chunk) == 1:
            factors = chunk[0].scale.reshape(-1, 1)
            weights = weights.reshape(chunk[0].channels, rows[0])
        else:
            scales = np.concatenate([pair.scale for pair in chunk])
            row_sizes = np.repeat(rows, [pair.channels for pair in chunk])
            factors = np.repeat(scales, row_sizes)
        scaled = np.empty(weights.shape, dtype=dtype)
        with np.errstate(invalid="ignore", over="ignore"):
            np.multiply(weights, factors, out=scaled, dtype=np.float64, casting="unsafe")
        scaled = scaled.reshape(-1)
        sizes = [row * pair.channels for row, pair in zip(rows, chunk, strict=True)]
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        finite = np.logical_and.reduceat(np.isfinite(scaled), starts).tolist()
        payload = scaled.tobytes()
        itemsize = dtype.itemsize
        for pair, start, size, ok in zip(chunk, starts.tolist(), sizes, finite, strict=True):
            if ok:
                result[pair.bn_index] = payload[start * itemsize : (start + size) * itemsize]
    return result


def _weight_chunks(pairs: list[_Pair]):
    """Pairs grouped by weight dtype, in runs of at most CHUNK_BYTES of weights (a bigger weight
    makes a run of its own)."""
    by_dtype: dict[int, list[_Pair]] = defaultdict(list)
    for pair in pairs:
        by_dtype[pair.weight.data_type].append(pair)
    for code, group in by_dtype.items():
        itemsize = RAW_FLOATS[code].itemsize
        chunk, size = [], 0
        for pair in group:
            nbytes = itemsize * math.prod(pair.weight.dims)
            if chunk and size + nbytes > CHUNK_BYTES:
                yield chunk
                chunk, size = [], 0
            chunk.append(pair)
            size += nbytes
        if chunk:
            yield chunk


def _folded_biases(pairs: list[_Pair]) -> dict[int, np.ndarray]:
    """`B' = a·B + b` (an absent B counts as zero: `B' = b`) rounded once to B's dtype (W's when
    B is absent), for the pairs where every value is finite (`numerics.folded_bias`)."""
    by_dtype: dict[int, list[_Pair]] = defaultdict(list)
    for pair in pairs:
        by_dtype[(pair.bias or pair.weight).data_type].append(pair)
    result: dict[int, np.ndarray] = {}
    for code, group in by_dtype.items():
        dtype = RAW_FLOATS[code]
        scale = np.concatenate([pair.scale for pair in group])
        shift = np.concatenate([pair.shift for pair in group])
        with_bias = [pair for pair in group if pair.bias is not None]
        folded = shift.copy()
        if with_bias:
            present = np.repeat([pair.bias is not None for pair in group], _lengths(group))
            bias = _concatenated([pair.bias for pair in with_bias], dtype).astype(np.float64)
            folded[present] = bias * scale[present] + shift[present]
        with np.errstate(over="ignore", invalid="ignore"):
            rounded = folded.astype(dtype)
        starts = np.concatenate(([0], np.cumsum(_lengths(group))[:-1]))
        finite = np.logical_and.reduceat(np.isfinite(rounded), starts).tolist()
        for pair, start, ok in zip(group, starts.tolist(), finite, strict=True):
            if ok:
                result[pair.bn_index] = rounded[start : start + pair.channels]
    return result


def _lengths(pairs: list[_Pair]) -> list[int]:
    return [pair.channels for pair in pairs]


def _apply(
    pair: _Pair,
    view: GraphView,
    names: NameAllocator,
    weight: bytes,
    bias: np.ndarray,
    vanished: set[str],
    maybe_dead: set[str],
) -> Folded:
    bn_node, conv = view.nodes[pair.bn_index], view.nodes[pair.conv_index]
    into = node_label(conv)  # before the fold renames its output
    pair.weight.raw_data = weight
    if pair.bias is not None:
        pair.bias.raw_data = bias.tobytes()
    else:
        stem = conv.name or conv.output[0]
        view.set_constant_input(pair.conv_index, 2, bias, f"{stem}_bnfold_bias", names)
    vanished.add(bn_node.input[0])
    maybe_dead.update(name for name in bn_node.input[1:] if name)
    view.bypass(pair.bn_index, pair.conv_index)
    verb = "updated" if pair.bias is not None else "added"
    how = f"scaled {pair.channels} output channels; bias {verb}"
    return Folded(node_label(bn_node), bn_node.output[0], into, "Conv", how, view.path)
