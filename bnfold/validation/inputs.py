"""The inputs validation runs on: generated (seeded, dtype-aware), or read from .npz/.npy files
and cast to the declared types only where the values survive.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import InputError
from ..naming import input_shape, option

MAX_GENERATED_ELEMENTS = 1 << 28  # per generated input (1 GiB of float32)


@dataclass(frozen=True)
class DeclaredInput:
    """A graph input that is not an initializer: its name, element type and dims (an int, or
    None where the dim is symbolic or unknown)."""

    name: str
    dtype: np.dtype | None  # None: not a tensor, or a type bnfold cannot generate
    dims: tuple[int | None, ...] | None  # None: no shape declared
    labels: tuple[str, ...] = ()  # each dim's symbol ("" where none)


def declared_inputs(model: onnx.ModelProto) -> list[DeclaredInput]:
    """The model's graph inputs that are not initializers."""
    initializers = {t.name for t in model.graph.initializer}
    return [_declared(info) for info in model.graph.input if info.name not in initializers]


def _declared(info: onnx.ValueInfoProto) -> DeclaredInput:
    if not info.type.HasField("tensor_type"):
        return DeclaredInput(info.name, None, None)
    tensor_type = info.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except (KeyError, ValueError, TypeError):
        dtype = None
    if not tensor_type.HasField("shape"):
        return DeclaredInput(info.name, dtype, None)
    dims = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor_type.shape.dim
    )
    labels = tuple(d.dim_param for d in tensor_type.shape.dim)
    return DeclaredInput(info.name, dtype, dims, labels)


@dataclass(kw_only=True)
class Samples:
    """The input sets validation runs on. `batched`: the samples are stacked along axis 0 into
    one run (every input has a free first dim), else one run per sample."""

    runs: list[dict[str, np.ndarray]]
    seeds: list[int | None]  # per sample; None where the user gave all the data
    batched: bool = False
    notes: list[str] = field(default_factory=list)
    given: list[str] = field(default_factory=list)  # the inputs the user gave

    @property
    def count(self) -> int:
        return len(self.seeds)


def check_input_shapes(declared: list[DeclaredInput], shapes: dict[str, tuple[int, ...]]) -> None:
    """`--input-shape` must name inputs the model has and agree with its fixed dims."""
    by_name = {d.name: d for d in declared}
    for name, shape in shapes.items():
        if name not in by_name:
            raise InputError(
                None,
                f"{option('input_shapes')} names '{name}', which is not an input of the model "
                f"(its inputs: {', '.join(by_name) or 'none'})",
            )
        _check_dims(by_name[name], shape, option("input_shapes"))


def _check_dims(info: DeclaredInput, shape: tuple[int, ...], what: str) -> None:
    if info.dims is None:
        return
    declared = "x".join(
        str(d) if d is not None else (label or "?")
        for d, label in zip(info.dims, info.labels or [""] * len(info.dims), strict=True)
    )
    given = "x".join(str(d) for d in shape)
    if len(shape) != len(info.dims) or any(
        d is not None and d != s for d, s in zip(info.dims, shape, strict=False)
    ):
        raise InputError(
            None, f"{what} gives '{info.name}' shape {given}; the model declares {declared}"
        )


def make_samples(
    model: onnx.ModelProto,
    *,
    samples: int = 1,
    seed: int = 0,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    given: dict[str, np.ndarray] | None = None,
) -> Samples:
    """`samples` input sets, from seeds `seed`, `seed`+1, ... Arrays in `given` are used for
    every sample (only one sample then). Stacked into one batch when every generated input's
    first dim is free and no `--input-shape` fixes it."""
    declared = declared_inputs(model)
    shapes = dict(input_shapes or {})
    check_input_shapes(declared, shapes)
    given, notes = cast_given_inputs(declared, given or {})
    if given and samples > 1:
        raise InputError(
            None,
            f"{option('samples')} needs generated inputs: it cannot be used with "
            f"{option('inputs')}",
        )
    batched = samples > 1 and _batchable(declared, shapes)
    runs = []
    for index in range(1 if batched else samples):
        count = samples if batched else 1
        runs.append(_one_run(declared, shapes, given, seed + index, count, notes))
    seeds: list[int | None] = (
        [None] if given and len(given) == len(declared) else [seed + i for i in range(samples)]
    )
    notes = list(dict.fromkeys(notes))
    return Samples(runs=runs, seeds=seeds, batched=batched, notes=notes, given=sorted(given))


def _batchable(declared: list[DeclaredInput], shapes: dict) -> bool:
    return bool(declared) and all(
        d.dims and d.dims[0] is None and d.name not in shapes for d in declared
    )


def _one_run(declared, shapes, given, seed: int, batch: int, notes: list[str]) -> dict:
    """One feed dict; with `batch` > 1, `batch` samples from seeds seed.. stacked on axis 0."""
    feeds = {}
    for info in declared:
        if info.name in given:
            feeds[info.name] = given[info.name]
            continue
        if batch > 1:
            parts = [_generated(info, shapes, seed + k, notes, stacked=True) for k in range(batch)]
            feeds[info.name] = np.concatenate(parts, axis=0)
        else:
            feeds[info.name] = _generated(info, shapes, seed, notes)
    return feeds


def _generated(info: DeclaredInput, shapes, seed: int, notes, stacked: bool = False) -> np.ndarray:
    if info.dtype is None:
        raise InputError(
            None,
            f"input '{info.name}' is not a tensor bnfold can generate; pass it with "
            f"{option('inputs')}",
        )
    shape = _shape(info, shapes.get(info.name), notes, stacked)
    if math.prod(shape) > MAX_GENERATED_ELEMENTS:
        raise InputError(
            None,
            f"input '{info.name}' would have shape {list(shape)} ({math.prod(shape):,} "
            f"elements); give a smaller shape: {input_shape(info.name)}",
        )
    rng = np.random.default_rng([seed, _name_key(info.name)])
    return _random_array(rng, info.dtype, shape)


def _name_key(name: str) -> int:
    """A number for the input's name, so each input gets its own stream from the seed."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _shape(info: DeclaredInput, override, notes: list[str], stacked: bool) -> tuple[int, ...]:
    """The shape to generate: the override, else the declared dims with 1 for free ones (a
    note says so, but for the first dim of samples `stacked` into one batch)."""
    if override is not None:
        return tuple(int(d) for d in override)
    shape = []
    for index, dim in enumerate(info.dims or ()):
        if dim is not None:
            shape.append(dim)
            continue
        label = (info.labels[index] if info.labels else "") or "?"
        if not (index == 0 and stacked):
            notes.append(
                f"input '{info.name}' dim {index} ('{label}') is not fixed; using 1 "
                f"(set it with {input_shape(info.name)})"
            )
        shape.append(1)
    return tuple(shape)


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        return rng.integers(0, 4, size=shape).astype(dtype)
    if dtype.kind in "OSU":
        return np.full(shape, "a", dtype=object)
    return rng.standard_normal(size=shape).astype(dtype)


# ----- given inputs ----------------------------------------------------------------------------


def cast_given_inputs(
    declared: list[DeclaredInput], given: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """(the given arrays in their declared element types, notes): a cast is made only where
    every value survives it (float64 → float32 rounds, with a note). Unknown names, shapes that
    contradict fixed dims and value-changing casts are refused."""
    by_name = {d.name: d for d in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise InputError(
            None,
            f"{option('inputs')} holds {unknown}, which the model does not take "
            f"(its inputs: {', '.join(by_name) or 'none'})",
        )
    result: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for name, array in given.items():
        info = by_name[name]
        array = np.asarray(array)
        _check_dims(info, tuple(array.shape), option("inputs"))
        result[name] = cast_to(array, info.dtype, name, notes)
    missing = [d.name for d in declared if d.name not in given]
    if given and missing:
        notes.append(f"{option('inputs')} lacks {missing}: generated from the seed")
    return result, notes


def cast_to(array: np.ndarray, dtype: np.dtype | None, name: str, notes: list[str]) -> np.ndarray:
    """`array` as `dtype`, refusing casts that change values (beyond float rounding)."""
    if dtype is None or array.dtype == dtype:
        return array
    source = array.dtype
    if dtype.kind == "f" or str(dtype) == "bfloat16":
        return _to_float(array, dtype, name, notes)
    if dtype.kind in "iub" and source.kind in "iubf":
        converted = array.astype(dtype)
        if source.kind == "f" and not np.all(np.isfinite(array)):
            raise _cannot_cast(name, source, dtype, "it holds non-finite values")
        if not np.array_equal(converted.astype(np.float64), array.astype(np.float64)):
            why = "values would change (fractions, or out of range)"
            raise _cannot_cast(name, source, dtype, why)
        notes.append(f"input '{name}' cast from {source} to {dtype} (values unchanged)")
        return converted
    raise _cannot_cast(name, source, dtype, "the types are incompatible")


def _to_float(array: np.ndarray, dtype: np.dtype, name: str, notes: list[str]) -> np.ndarray:
    source = array.dtype
    if source.kind not in "iubf":
        raise _cannot_cast(name, source, dtype, "the types are incompatible")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(dtype)
    wide = array.astype(np.float64)
    back = converted.astype(np.float64)
    if np.any(np.isfinite(wide) & ~np.isfinite(back)):
        raise _cannot_cast(name, source, dtype, f"values overflow {dtype}")
    if source.kind in "iub" and not np.array_equal(back, wide):
        raise _cannot_cast(name, source, dtype, f"integers beyond {dtype}'s exact range")
    if not np.array_equal(back, wide, equal_nan=True):
        notes.append(f"input '{name}' rounded from {source} to {dtype}")
    else:
        notes.append(f"input '{name}' cast from {source} to {dtype} (values unchanged)")
    return converted


def _cannot_cast(name: str, source, dtype, why: str) -> InputError:
    return InputError(
        None, f"{option('inputs')}: '{name}' is {source}, the model takes {dtype}: {why}"
    )


def load_inputs(path: str | os.PathLike, declared: list[DeclaredInput] | None = None) -> dict:
    """Read `--inputs`: a .npz of input name → array, or a .npy for a model with one input."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            head = file.read(6)
        if not head.startswith((b"\x93NUMPY", b"PK")):  # (.npy's magic; .npz is a zip)
            raise InputError(path, "is not a .npz or .npy file (its first bytes are neither's)")
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
            return {_single_input(path, declared): array}
        with np.load(path, allow_pickle=False) as data:
            if isinstance(data, np.ndarray):
                return {_single_input(path, declared): data}
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory; give a .npz or .npy file") from None
    except InputError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"is not a readable .npz or .npy file ({first})") from None


def _single_input(path: Path, declared: list[DeclaredInput] | None) -> str:
    if declared is None or len(declared) != 1:
        count = "several" if declared else "no"
        raise InputError(
            path, f"a .npy file holds one array, and the model takes {count} inputs: use .npz"
        )
    return declared[0].name


def save_arrays(folder: Path, name: str, arrays: dict[str, np.ndarray]) -> Path:
    """Write `arrays` to `folder/name.npz` (the folder is made if missing)."""
    try:
        folder.mkdir(parents=False, exist_ok=True)
        target = folder / f"{name}.npz"
        # (as np.savez writes it, without its keyword arguments: an input may be named "file")
        with zipfile.ZipFile(target, "w", allowZip64=True) as archive:
            for key, value in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    except OSError as exc:
        raise InputError(folder, f"cannot be written ({exc.strerror or exc})") from None
    return target
