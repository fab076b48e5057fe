"""Running the models: what onnxruntime is given, and outputs as arrays.

The original and the candidate run from their files when they have one; a model held in memory
goes as bytes when small, else through a temporary file (with external data) deleted at the end.
The models moved by rounding (`perturb.py`) are never written out: each goes as a skeleton (its
graph, with every big initializer marked as external data) and the initializers' arrays, handed
to onnxruntime from memory (`add_external_initializers`): the moved weights, and the model's own
for the rest.
"""

from __future__ import annotations

import ctypes
import functools
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import EncodeError

from ..encoding import is_repeated
from ..graphs import default_opset, names_read
from ..model_io import (
    all_tensors,
    fits_in_one_protobuf,
    holds_data_on_disk,
    save_model,
    tensor_data_size,
)
from ..tensor_data import is_on_disk, mapped, raw_bytes, set_raw_data, tensor_to_array
from .perturb import (
    inputs_moved_by_rounding,
    one_ulp_moved,
    unused_stem,
    weights_moved_by_rounding,
)
from .providers import SessionFactory, Unavailable

Outputs = dict[str, np.ndarray]


@dataclass
class SessionSource:
    """What one session is made from: the model (a file's path, or its bytes), and arrays by
    name for the initializers it marks as supplied from memory."""

    model: bytes | str
    supplied: dict[str, np.ndarray] = field(default_factory=dict)


class ModelSources:
    """What onnxruntime is given for each model validation runs: the original, the candidate, and
    either with what the fold changed moved by rounding."""

    def __init__(
        self,
        reference: onnx.ModelProto | Path,
        candidate: onnx.ModelProto | Path,
        models: dict[str, onnx.ModelProto],
        changed: dict[str, dict[str, onnx.TensorProto]],
    ) -> None:
        self.sources = {"reference": reference, "candidate": candidate}
        self.models = models  # "reference", "candidate": the ModelProtos (on-disk tensors allowed)
        self.changed = changed  # per model: the tensors the fold consumed / wrote
        self._written: dict[str, str] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None

    def get(self, role: str) -> SessionSource:
        """The "reference" or the "candidate" itself: its file, or its bytes (written to a
        temporary file once when big)."""
        source = self.sources[role]
        if isinstance(source, Path):
            return SessionSource(str(source))
        if role not in self._written:
            encoded = self._encoded(source, role)
            if isinstance(encoded, bytes):
                return SessionSource(encoded)
            self._written[role] = encoded
        return SessionSource(self._written[role])

    def moved_reference(self, seed: int = 0) -> SessionSource | None:
        """The reference with the values entering the arithmetic the fold removed moved by
        rounding, by random movers in the graph (each run of one session draws anew); None when
        there is no such value to move."""
        model = self.models["reference"]
        with inputs_moved_by_rounding(model, self.changed["reference"], seed=seed) as moved:
            return skeleton(model) if moved else None

    def switchable_reference(self, seed: int = 0) -> tuple[SessionSource, str] | None:
        """The reference with the same movers as `moved_reference`, turned on by a boolean input
        (off, each passes its value on bit for bit: the reference as it is), for one session
        that runs the reference and its draws; and that input's name (`MOVING`, or a variant no
        name of the model contains: `unused_stem`). None when there is nothing to move, or
        below opset 9 (no `Sign`: movers of another kind, not switched)."""
        model = self.models["reference"]
        if default_opset(model) < 9:
            return None
        switch = unused_stem(model, MOVING)
        changed = self.changed["reference"]
        with inputs_moved_by_rounding(model, changed, seed=seed, switch=switch) as moved:
            return (skeleton(model), switch) if moved else None

    def moved_candidate(self, draw: int) -> SessionSource:
        """The candidate with the weights the fold wrote moved by rounding (draw `draw`): those
        that are main-graph initializers as supplied arrays, others (Constant nodes, subgraphs)
        moved in the skeleton's copy of the graph."""
        model = self.models["candidate"]
        supplied, others = self._written_initializers()
        with weights_moved_by_rounding(others, seed=draw):
            return skeleton(model, self.fed_weights(supplied, draw))

    def fed_candidate(self) -> tuple[SessionSource, dict[str, onnx.TensorProto]] | None:
        """The candidate with the main-graph initializers the fold wrote (and the graph reads)
        made graph inputs, and those initializers: for one session that runs the candidate as it
        is and with every draw of them moved by rounding (fed from `fed_weights`). None when some
        written tensor cannot be fed (a Constant's or a subgraph's, a type numpy lacks, one the
        graph also outputs)."""
        model = self.models["candidate"]
        written, others = self._written_initializers()
        read = set().union(*map(names_read, model.graph.node))
        written = {name: t for name, t in written.items() if name in read}
        outputs = {o.name for o in model.graph.output}
        feedable = all(t.data_type in FED_TYPES for t in written.values())
        if others or not written or not feedable or outputs & written.keys():
            return None
        return skeleton(model, fed=set(written)), written

    def fed_weights(
        self, written: dict[str, onnx.TensorProto], draw: int | None
    ) -> dict[str, np.ndarray]:
        """The `written` initializers as arrays: their own values (`draw` None) or moved by
        rounding (`one_ulp_moved`, seeded by `draw`)."""
        own = {name: tensor_to_array(t) for name, t in written.items()}
        return own if draw is None else moved_by_rounding(own, draw)

    def _written_initializers(
        self,
    ) -> tuple[dict[str, onnx.TensorProto], list[onnx.TensorProto]]:
        """What the fold wrote into the candidate: (main-graph initializers by name, the rest)."""
        model = self.models["candidate"]
        names = {t.name for t in model.graph.initializer}
        written = self.changed["candidate"]
        initializers = {k: t for k, t in written.items() if k in names and t.name == k}
        return initializers, [t for k, t in written.items() if k not in initializers]

    def _encoded(self, model: onnx.ModelProto, name: str) -> bytes | str:
        small = tensor_data_size(model) <= AS_BYTES
        if small and not holds_data_on_disk(model):
            try:
                return model.SerializeToString()
            except (EncodeError, ValueError):  # (not small after all)
                pass
        path = self._folder() / f"{name}.onnx"
        if holds_data_on_disk(model) or not fits_in_one_protobuf(model):
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # save_model moves tensors out of the model it is given
            save_model(copy, path, external_data=True)
        else:
            save_model(model, path, external_data=False)
        return str(path)

    def _folder(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bnfold-validate-")
        return Path(self._tmp.name)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def moved_by_rounding(arrays: dict[str, np.ndarray], draw: int) -> dict[str, np.ndarray]:
    """Copies of `arrays` moved by rounding (`one_ulp_moved`), the generator seeded by `draw`
    and drawn from in the order of `arrays`."""
    rng = np.random.default_rng(draw)
    return {name: one_ulp_moved(values, rng, record=False)[0] for name, values in arrays.items()}


def skeleton(
    model: onnx.ModelProto,
    replaced: dict[str, np.ndarray] | None = None,
    fed: set[str] | frozenset[str] = frozenset(),
) -> SessionSource:
    """`model` as a small encoding plus supplied arrays: every main-graph initializer of at least
    SUPPLIED_FROM bytes whose values numpy holds as they are goes as an array (`replaced`'s
    where it names it, else the model's own, read from its file if on disk); the rest of the
    model is copied (what `replaced` names among small initializers with its new values). The
    initializers `fed` names become graph inputs of their type and shape instead: every run
    feeds them."""
    replaced = replaced or {}
    copy = _copied_fields(model, onnx.ModelProto(), left_out={"graph"})
    _copied_fields(model.graph, copy.graph, left_out={"initializer"})
    supplied: dict[str, np.ndarray] = {}
    read = {o.name for o in model.graph.output}.union(*map(names_read, model.graph.node))
    unread = set()
    listed = {info.name for info in copy.graph.input}
    for tensor in model.graph.initializer:
        values = replaced.get(tensor.name)
        if tensor.name not in read:
            unread.add(tensor.name)  # (onnxruntime drops what nothing reads, refuses it handed)
            continue
        if tensor.name in fed:
            if tensor.name not in listed:
                shape = list(tensor.dims)
                info = onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, shape)
                copy.graph.input.append(info)
        elif _suppliable(tensor):
            own = values if values is not None else mapped(tensor)
            if own is None:
                own = tensor_to_array(tensor)
            supplied[tensor.name] = np.ascontiguousarray(own)
            placeholder = copy.graph.initializer.add()
            placeholder.name, placeholder.data_type = tensor.name, tensor.data_type
            placeholder.dims.extend(tensor.dims)
            placeholder.data_location = onnx.TensorProto.EXTERNAL
            placeholder.external_data.add(key="location", value=SUPPLIED_LOCATION)
        elif values is not None:
            copy.graph.initializer.append(onnx.numpy_helper.from_array(values, tensor.name))
        else:
            copy.graph.initializer.append(tensor)
    if unread & {info.name for info in copy.graph.input}:  # (IR 3: initializers as inputs too)
        kept = [info for info in copy.graph.input if info.name not in unread]
        del copy.graph.input[:]
        copy.graph.input.extend(kept)
    for tensor in all_tensors(copy):
        if is_on_disk(tensor):  # small, in a subgraph or a Constant: into the encoding
            set_raw_data(tensor, raw_bytes(tensor))
    return SessionSource(copy.SerializeToString(), supplied)


# The boolean input that turns the reference's movers on (`switchable_reference`).
MOVING = "__bnfold_moving"


# Models up to this much tensor data go to onnxruntime as bytes; bigger ones through a file.
AS_BYTES = 64 << 20
# Initializers of at least this many bytes go to onnxruntime as arrays, not in the encoding.
SUPPLIED_FROM = 1 << 10
# Where a supplied initializer's data "is" (onnxruntime takes it from memory, never reads this).
SUPPLIED_LOCATION = "bnfold-supplied-from-memory"
# Element types a written weight may have to be fed as an input (numpy holds them as they are).
FED_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
_SUPPLIED_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT64,
}


def _suppliable(tensor: onnx.TensorProto) -> bool:
    if tensor.data_type not in _SUPPLIED_TYPES:
        return False
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    size = itemsize
    for dim in tensor.dims:
        size *= dim
    return size >= SUPPLIED_FROM


def _copied_fields(message, into, left_out: set[str]):
    """`into` (a new message of `message`'s type) given every field set in `message` but those
    `left_out`."""
    for descriptor, value in message.ListFields():
        if descriptor.name in left_out:
            continue
        if is_repeated(descriptor):
            getattr(into, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(into, descriptor.name).CopyFrom(value)
        else:
            setattr(into, descriptor.name, value)
    return into


def run_model(
    factory: SessionFactory, source: SessionSource, provider: str, runs: Iterable[dict]
) -> list[Outputs] | Unavailable | str:
    """The model's outputs for each feed dict (taken one at a time from `runs`), on `provider`,
    from one session: `Unavailable` if no session could be made there, a string (onnxruntime's
    full message) if a run failed."""
    session = factory.create(source.model, provider, source.supplied)
    del source
    if isinstance(session, Unavailable):
        return session
    outputs_of = session.get_outputs()
    # bfloat16, float8: through OrtValues, numpy's side in ml_dtypes' types
    lacking = any(_numpy_lacks(o.type) for o in (*session.get_inputs(), *outputs_of))
    run = functools.partial(_run_with_ort_values, factory.ort) if lacking else _plain_run
    results = []
    for feeds in runs:
        outputs = _run(run, session, outputs_of, feeds)
        del feeds  # (before the next is made: runs may make big feeds one at a time)
        if isinstance(outputs, str):
            return outputs
        results.append(outputs)
    return results


def _run(run, session, outputs, feeds: dict[str, np.ndarray]) -> Outputs | str:
    """One run's outputs as arrays (`run`: `_plain_run` or `_run_with_ort_values`), or
    onnxruntime's message."""
    try:
        values = run(session, [o.name for o in outputs], feeds)
    except Exception as exc:  # onnxruntime raises many types; the message is what matters
        return f"onnxruntime failed to run: {str(exc).strip() or type(exc).__name__}"
    arrays: Outputs = {}
    for output, value in zip(outputs, values, strict=True):
        arrays.update(as_arrays(output.name, value, _element_dtype(output.type)))
    return arrays


# Element types onnxruntime's numpy conversion lacks: (TensorProto type, ml_dtypes' numpy type).
_NUMPY_LACKS = {
    name: (code, onnx.helper.tensor_dtype_to_np_dtype(code))
    for name, code in {
        "bfloat16": onnx.TensorProto.BFLOAT16,
        "float8e4m3fn": onnx.TensorProto.FLOAT8E4M3FN,
        "float8e4m3fnuz": onnx.TensorProto.FLOAT8E4M3FNUZ,
        "float8e5m2": onnx.TensorProto.FLOAT8E5M2,
        "float8e5m2fnuz": onnx.TensorProto.FLOAT8E5M2FNUZ,
    }.items()
}


def _numpy_lacks(type_name: str) -> bool:
    return type_name.removeprefix("tensor(").removesuffix(")") in _NUMPY_LACKS


def _plain_run(session, names: list[str], feeds: dict[str, np.ndarray]) -> list:
    return session.run(names, feeds)


def _run_with_ort_values(ort, session, names: list[str], feeds: dict[str, np.ndarray]) -> list:
    """`session.run` for models with tensors of a type numpy lacks: ml_dtypes arrays go in as
    OrtValues of that type (their bits), such outputs come back as ml_dtypes arrays (copies of
    their bits); other outputs as `run` gives them."""
    values = {}
    for name, array in feeds.items():
        lacking = _NUMPY_LACKS.get(str(array.dtype).replace("_", ""))
        if lacking is not None:
            bits = np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")
            values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, lacking[0])
        else:
            values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
    results = []
    for value in session.run_with_ort_values(names, values):
        kind = value.data_type() if value.is_tensor() else ""
        lacking = _NUMPY_LACKS.get(kind.removeprefix("tensor(").removesuffix(")"))
        if lacking is None:
            results.append(value.numpy())
            continue
        shape = value.shape()
        size = int(np.prod(shape)) * lacking[1].itemsize
        raw = ctypes.string_at(value.data_ptr(), size) if size else b""
        results.append(np.frombuffer(raw, dtype=lacking[1]).reshape(shape))
    return results


def as_arrays(name: str, value, dtype: np.dtype | None) -> dict[str, np.ndarray]:
    """An output as arrays to compare. onnxruntime returns sequences as lists and maps as dicts
    (e.g. ZipMap's `seq(map(string, float))`): a map's values are compared under `name` with the
    tolerances of `dtype` (the innermost tensor type), its keys exactly under `name (keys)`."""
    if isinstance(value, np.ndarray):
        return {name: value}
    if isinstance(value, dict):
        keys = sorted(value)
        return {
            f"{name} (keys)": np.array(keys, dtype=object),
            name: np.asarray([value[k] for k in keys], dtype=dtype),
        }
    if not isinstance(value, list):  # anything else onnxruntime might hand back: compare exactly
        return {name: np.asarray(value, dtype=object)}
    items = value
    maps = bool(items) and all(isinstance(item, dict) for item in items)
    if maps and len({len(item) for item in items}) == 1:  # maps of one size: 2-D arrays
        keys = [sorted(item) for item in items]
        values = [[item[k] for k in ks] for item, ks in zip(items, keys, strict=True)]
        return {f"{name} (keys)": np.array(keys, dtype=object), name: np.asarray(values, dtype)}
    tensors = all(isinstance(item, np.ndarray) for item in items)
    if tensors and len({(item.shape, item.dtype) for item in items}) <= 1:  # one stacked array
        return {name: np.stack(items) if items else np.empty(0, dtype=dtype)}
    arrays: dict[str, np.ndarray] = {}
    for index, item in enumerate(items):
        arrays.update(as_arrays(f"{name}[{index}]", item, dtype))
    return arrays


def _element_dtype(type_name: str) -> np.dtype | None:
    """The numpy dtype of the innermost tensor of an onnxruntime type like
    `seq(map(string,tensor(float)))`, or None if unknown."""
    start = type_name.rfind("tensor(")
    if start < 0:
        return None
    element = type_name[start + len("tensor(") :].split(")")[0]
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(
            onnx.TensorProto.DataType.Value(element.upper())
        )
    except (ValueError, KeyError, TypeError):
        return None
