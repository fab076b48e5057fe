"""Running the models: what onnxruntime is given (a file, or bytes), and outputs as arrays.

The reference runs from its file when it has one. The candidate and its perturbed twin go as
bytes when they fit one protobuf and hold nothing on disk, else through a temporary file (with
external data) that is deleted at the end.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import EncodeError

from ..encoding import Encoding
from ..model_io import (
    atomic_file,
    data_file_for,
    fits_in_one_protobuf,
    holds_data_on_disk,
    save_model,
    tensor_data_size,
)
from ..tensor_data import DataFile
from .perturb import inputs_moved_by_rounding, moved_raw_data, weights_moved_by_rounding
from .providers import SessionFactory, Unavailable

Outputs = dict[str, np.ndarray]


class ModelSources:
    """What onnxruntime is given for each model validation runs: the original, the candidate, and
    either with what the fold changed moved by rounding. A model given as a file runs from it;
    one in memory goes as bytes when small, else through a file in a temporary folder (written a
    few MB at a time, no second copy in memory): the candidate's once, each moved model for its
    one run (`discard`); the folder goes at the end."""

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

    def get(self, role: str, draw: int | None = None) -> bytes | str:
        """What onnxruntime is given for "reference" or "candidate"; with `draw` (k of
        independent ones), the candidate with the weights the fold wrote moved by rounding, or
        the reference with the values entering the arithmetic the fold removed moved so."""
        if draw is not None:
            return self._moved(role, draw)
        source = self.sources[role]
        if isinstance(source, Path):
            return str(source)
        if role not in self._written:
            encoded = self._encoded(source, role)
            if isinstance(encoded, bytes):
                return encoded
            self._written[role] = encoded
        return self._written[role]

    def _moved(self, role: str, draw: int) -> bytes | str:
        model = self.models[role]
        name = f"{role}-moved{draw}"
        if role == "reference":
            with inputs_moved_by_rounding(model, self.changed[role], seed=draw):
                return self._encoded(model, name)
        streamed = self._streamed(model, name, draw)
        if streamed is not None:
            return streamed
        spill = self._folder() if holds_data_on_disk(model) else None
        with (
            DataFile(spill) if spill else contextlib.nullcontext() as data,
            weights_moved_by_rounding(list(self.changed[role].values()), seed=draw, spill=data),
        ):
            return self._encoded(model, name)

    def _streamed(self, model: onnx.ModelProto, name: str, draw: int) -> bytes | str | None:
        """The candidate with its weights moved, encoded without touching the model (whose
        memory would grow by each new value: protobuf frees a message's memory only with the
        message); None where that cannot be done (weights outside the main graph's
        initializers, on disk, or a model over 2 GB)."""
        written = self.changed["candidate"]
        replaced = moved_raw_data(list(written.values()), seed=draw)
        if replaced is None or holds_data_on_disk(model) or not fits_in_one_protobuf(model):
            return None
        names = {t.name for t in model.graph.initializer}
        if any(t.name not in names or t.name != key for key, t in written.items()):
            return None
        encoding = Encoding(model, replaced=replaced)
        if encoding.whole:
            return None
        if tensor_data_size(model) <= AS_BYTES:
            return b"".join(encoding.pieces())
        path = self._folder() / f"{name}.onnx"
        with atomic_file(path) as handle:
            handle.writelines(encoding.pieces())
        return str(path)

    def discard(self, source: bytes | str) -> None:
        """Delete a file `get` wrote for one run (the moved models: each is run once)."""
        if isinstance(source, str) and self._tmp and source not in self._written.values():
            for path in (Path(source), data_file_for(Path(source))):
                path.unlink(missing_ok=True)

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


# Models up to this much tensor data go to onnxruntime as bytes; bigger ones through a file.
AS_BYTES = 64 << 20


def run_model(
    factory: SessionFactory, source: bytes | str, provider: str, runs: list[dict]
) -> list[Outputs] | Unavailable | str:
    """The model's outputs for each feed dict, on `provider`: `Unavailable` if no session could
    be made there, a string (onnxruntime's full message) if a run failed."""
    session = factory.create(source, provider)
    del source
    if isinstance(session, Unavailable):
        return session
    results = []
    for feeds in runs:
        outputs = _run(session, feeds)
        if isinstance(outputs, str):
            return outputs
        results.append(outputs)
    return results


def _run(session, feeds: dict[str, np.ndarray]) -> Outputs | str:
    try:
        outputs = session.get_outputs()
        values = session.run([o.name for o in outputs], feeds)
    except Exception as exc:  # onnxruntime raises many types; the message is what matters
        return f"onnxruntime failed to run: {str(exc).strip() or type(exc).__name__}"
    arrays: Outputs = {}
    for output, value in zip(outputs, values, strict=True):
        arrays.update(as_arrays(output.name, value, _element_dtype(output.type)))
    return arrays


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
