"""Prove a fold: run the original and the folded model in onnxruntime and compare every output.

Faithful settings, each measured to matter:
- every session at `ORT_DISABLE_ALL` (onnxruntime fuses Conv+BatchNormalization itself from its
  basic level up, which would compare a folded graph with a folded graph), sequential execution,
  deterministic compute;
- a session is only "on CUDA" if `get_providers()` says so afterwards (onnxruntime falls back to
  the CPU silently);
- CUDA with `use_tf32=0` unless asked (TF32 moves fp32 outputs by up to 1e-3 relative) and
  `cudnn_conv_algo_search=HEURISTIC`;
- the reference is the original model on the CPU; on CUDA the original also runs on CUDA and the
  candidate may differ from the reference by at most twice the original's own CUDA error plus the
  tolerance, which calibrates itself for TF32 and fp16;
- a non-finite candidate value where the reference is finite always fails.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import EncodeError

from .errors import InputError
from .graph_view import subgraphs
from .model_io import fits_in_one_protobuf, holds_data_on_disk, load_model, save_model

CPU = "cpu"
CUDA = "cuda"
PROVIDER_NAMES = {CPU: "CPUExecutionProvider", CUDA: "CUDAExecutionProvider"}
MAX_GENERATED_ELEMENTS = 1 << 28  # per generated input (1 GiB of float32)
CUDA_HOW_TO = "install onnxruntime-gpu instead of onnxruntime on a machine with an NVIDIA GPU"


# ----- tolerances ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """An element fails only if |candidate − reference| exceeds both `atol` and `rtol`·|ref|.

    `atol_scale` makes the absolute tolerance relative to the output's magnitude:
    atol = atol_scale · max|reference| (used unless an explicit atol is given).
    """

    rtol: float
    atol: float | None = None
    atol_scale: float = 0.0

    def resolved_atol(self, reference: np.ndarray) -> float:
        if self.atol is not None:
            return self.atol
        finite = reference[np.isfinite(reference)]
        magnitude = float(np.max(np.abs(finite))) if finite.size else 0.0
        return self.atol_scale * magnitude


DEFAULT_TOLERANCES = {
    "float64": Tolerance(rtol=1e-7, atol_scale=1e-9),
    "float32": Tolerance(rtol=1e-4, atol_scale=1e-5),
    "float16": Tolerance(rtol=1e-2, atol_scale=2e-3),
    "bfloat16": Tolerance(rtol=5e-2, atol_scale=1e-2),
}
TF32_FACTOR = 10.0  # fp32 tolerances are scaled by this when TF32 is allowed on CUDA


def default_tolerance(dtype: np.dtype, *, tf32: bool = False) -> Tolerance:
    base = DEFAULT_TOLERANCES.get(str(dtype))
    if base is None:  # integers, bools: exact
        return Tolerance(rtol=0.0, atol=0.0)
    if tf32 and str(dtype) == "float32":
        return Tolerance(base.rtol * TF32_FACTOR, None, base.atol_scale * TF32_FACTOR)
    return base


# ----- report ----------------------------------------------------------------------------------


@dataclass
class OutputComparison:
    """One output on one provider."""

    provider: str
    output: str
    passed: bool
    elements: int
    mismatches: int
    max_abs: float
    max_rel: float  # max |diff| / max |reference|
    mean_abs: float
    atol: float
    rtol: float
    passing_atol: float  # the smallest atol that passes at this rtol
    passing_rtol: float  # the smallest rtol that passes at this atol
    nonfinite: int = 0  # non-finite candidate values where the reference is finite
    calibration: float = 0.0  # CUDA: the original's own max abs error on this provider
    note: str = ""

    def line(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        stats = f"max abs {self.max_abs:.2g}, max rel {self.max_rel:.2g}"
        tol = f"atol {self.atol:.2g}, rtol {self.rtol:.2g}"
        if self.calibration:
            tol += f", + 2 × original's own error {self.calibration:.2g}"
        text = f"{verdict} | {self.provider} | output '{self.output}' | {stats} ({tol})"
        if not self.passed:
            text += f" | {self.mismatches} of {self.elements} elements off"
            if self.nonfinite:
                text += f", {self.nonfinite} non-finite where the reference is finite"
            else:
                text += (
                    f"; would pass with atol {self.passing_atol:.2g} "
                    f"or rtol {self.passing_rtol:.2g}"
                )
        if self.note:
            text += f" | {self.note}"
        return text


@dataclass
class ProviderOutcome:
    """What happened on one execution provider."""

    provider: str
    status: str  # "passed", "failed", "skipped" (auto, not usable), "unavailable" (required)
    reason: str = ""
    options: dict = field(default_factory=dict)
    outputs: list[OutputComparison] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "skipped")

    def lines(self) -> list[str]:
        if self.status in ("skipped", "unavailable"):
            label = "SKIPPED" if self.status == "skipped" else "FAILED"
            return [f"{label} | {self.provider} | {self.reason}"]
        lines = [comparison.line() for comparison in self.outputs]
        if self.reason:
            lines.append(f"FAILED | {self.provider} | {self.reason}")
        return lines


@dataclass
class ValidationReport:
    """The verdict of `validate`, per provider and per output."""

    providers: list[ProviderOutcome]
    inputs: dict[str, dict]
    seed: int
    settings: dict
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        ran = [p for p in self.providers if p.status in ("passed", "failed")]
        return bool(ran) and all(p.ok for p in self.providers)

    def lines(self) -> list[str]:
        lines = [f"WARNING | {text}" for text in self.warnings]
        for outcome in self.providers:
            lines.extend(outcome.lines())
        used = [p.provider for p in self.providers if p.status in ("passed", "failed")]
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"validation {verdict} on {', '.join(used) or 'no provider'}")
        return lines

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "providers_requested": self.settings.get("providers_requested"),
            "providers_used": [p.provider for p in self.providers if p.status != "skipped"],
            "providers": [
                {
                    **{k: v for k, v in asdict(p).items() if k != "outputs"},
                    "outputs": [asdict(o) for o in p.outputs],
                }
                for p in self.providers
            ],
            "inputs": self.inputs,
            "seed": self.seed,
            "settings": self.settings,
            "warnings": self.warnings,
        }


# ----- inputs ----------------------------------------------------------------------------------


def generate_inputs(
    model: onnx.ModelProto,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    given: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """One seeded array per graph input that is not an initializer; (feeds, warnings).

    Floats ~ N(0, 1), integers in [0, 4), bools uniform. Static dims as declared; symbolic or
    unknown dims from `input_shapes`, else 1 (with a warning). Arrays in `given` are used as is.
    """
    input_shapes = dict(input_shapes or {})
    given = dict(given or {})
    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    notes: list[str] = []
    declared = [i for i in model.graph.input if i.name not in initializers]
    unknown = set(given) - {i.name for i in declared}
    if unknown:
        raise InputError(None, f"inputs given for names the model does not have: {sorted(unknown)}")
    for info in declared:
        if info.name in given:
            feeds[info.name] = np.asarray(given[info.name])
            continue
        if not info.type.HasField("tensor_type"):
            raise InputError(None, f"input '{info.name}' is not a tensor; pass it with inputs=")
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        except (KeyError, ValueError, TypeError):
            raise InputError(
                None,
                f"input '{info.name}' has element type {info.type.tensor_type.elem_type}, "
                "which bnfold cannot generate; pass it with --inputs",
            ) from None
        shape = _input_shape(info, input_shapes.pop(info.name, None), notes)
        if math.prod(shape) > MAX_GENERATED_ELEMENTS:
            raise InputError(
                None,
                f"input '{info.name}' would have shape {list(shape)} "
                f"({math.prod(shape):,} elements); give a smaller --input-shape {info.name}:...",
            )
        feeds[info.name] = _random_array(rng, dtype, shape)
    if input_shapes:
        notes.append(f"--input-shape names no input of the model: {sorted(input_shapes)}")
    if _has_op(model.graph, "If"):
        notes.append(
            "the model has If nodes: the inputs exercise only the branches they select "
            "(give real data with --inputs to cover others)"
        )
    return feeds, notes


def _has_op(graph: onnx.GraphProto, op_type: str) -> bool:
    return any(
        node.op_type == op_type or any(_has_op(g, op_type) for _, g in subgraphs(node))
        for node in graph.node
    )


def _input_shape(info: onnx.ValueInfoProto, override, notes: list[str]) -> tuple[int, ...]:
    if override is not None:
        return tuple(int(d) for d in override)
    shape = []
    for index, dim in enumerate(info.type.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(int(dim.dim_value))
        else:
            label = dim.dim_param or "?"
            notes.append(
                f"input '{info.name}' dim {index} ('{label}') is not fixed; using 1 "
                f"(set it with --input-shape {info.name}:...)"
            )
            shape.append(1)
    return tuple(shape)


def _random_array(rng: np.random.Generator, dtype: np.dtype, shape) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        return rng.integers(0, 4, size=shape).astype(dtype)
    if dtype.kind in "OSU":
        return np.full(shape, "a", dtype=object)
    return rng.standard_normal(size=shape).astype(dtype)


# ----- sessions --------------------------------------------------------------------------------


class _SessionMaker:
    """Creates faithful onnxruntime sessions, from bytes or, for big models, from a file."""

    def __init__(self, tf32: bool) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.tf32 = tf32
        ort.set_default_logger_severity(4)  # bnfold reports session errors itself, in one line
        self._tmp: tempfile.TemporaryDirectory | None = None

    def options(self):
        options = self.ort.SessionOptions()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        options.use_deterministic_compute = True
        options.log_severity_level = 4
        return options

    def provider_options(self, provider: str) -> dict:
        if provider == CUDA:
            return {"use_tf32": "1" if self.tf32 else "0", "cudnn_conv_algo_search": "HEURISTIC"}
        return {}

    def source(self, model: onnx.ModelProto | Path) -> bytes | str:
        if isinstance(model, Path):
            return str(model)
        if fits_in_one_protobuf(model) and not holds_data_on_disk(model):
            try:
                return model.SerializeToString()
            except (EncodeError, ValueError):  # over 2 GB after all: go through a file
                pass
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bnfold-validate-")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        path = Path(self._tmp.name) / f"model{len(os.listdir(self._tmp.name))}.onnx"
        save_model(copy, path, external_data=True)
        return str(path)

    def unavailable(self, provider: str) -> str | None:
        """Why `provider` cannot be used here, or None."""
        name = PROVIDER_NAMES[provider]
        if name in self.ort.get_available_providers():
            return None
        if provider == CUDA:
            return f"{name} is not available in this onnxruntime ({CUDA_HOW_TO})"
        return f"{name} is not available"

    def create(self, source: bytes | str, provider: str):
        """A session on `provider`, or a string saying why there is none."""
        name = PROVIDER_NAMES[provider]
        missing = self.unavailable(provider)
        if missing:
            return missing
        providers = [(name, self.provider_options(provider))]
        if provider != CPU:
            providers.append(("CPUExecutionProvider", {}))
        try:
            # onnxruntime prints its own "EP Error ... Falling back" banner on failures
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                session = self.ort.InferenceSession(
                    source, sess_options=self.options(), providers=providers
                )
        except Exception as exc:  # onnxruntime raises many types; the message is what matters
            return f"onnxruntime cannot create a session: {_first_line(exc)}"
        if session.get_providers()[0] != name:
            return f"{name} could not be used (onnxruntime fell back to {session.get_providers()})"
        return session

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _run(session, feeds: dict[str, np.ndarray]):
    try:
        outputs = session.get_outputs()
        values = session.run([o.name for o in outputs], feeds)
    except Exception as exc:
        return None, f"onnxruntime failed to run: {_first_line(exc)}"
    arrays: dict[str, np.ndarray] = {}
    for output, value in zip(outputs, values, strict=True):
        arrays.update(as_arrays(output.name, value, _element_dtype(output.type)))
    return arrays, None


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


# ----- comparison ------------------------------------------------------------------------------


def compare(
    provider: str,
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    calibration: float = 0.0,
) -> OutputComparison:
    """Compare one output (allclose semantics, plus `calibration` of extra absolute slack)."""
    if reference.shape != candidate.shape or reference.dtype != candidate.dtype:
        return OutputComparison(
            provider,
            name,
            False,
            int(reference.size),
            int(reference.size),
            float("inf"),
            float("inf"),
            float("inf"),
            0.0,
            tolerance.rtol,
            float("inf"),
            float("inf"),
            note=f"shape/dtype {candidate.shape}/{candidate.dtype} != reference "
            f"{reference.shape}/{reference.dtype}",
        )
    ref = np.asarray(reference, dtype=np.float64) if reference.dtype != object else reference
    cand = np.asarray(candidate, dtype=np.float64) if candidate.dtype != object else candidate
    if ref.dtype == object:
        equal = ref == cand
        mismatches = int(np.size(equal) - np.count_nonzero(equal))
        return OutputComparison(
            provider,
            name,
            mismatches == 0,
            int(ref.size),
            mismatches,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        )
    atol = tolerance.resolved_atol(ref)
    rtol = tolerance.rtol
    ref_finite = np.isfinite(ref)
    same_special = ~ref_finite & ((ref == cand) | (np.isnan(ref) & np.isnan(cand)))
    nonfinite = int(np.count_nonzero(ref_finite & ~np.isfinite(cand)))
    with np.errstate(invalid="ignore"):
        diff = np.where(same_special, 0.0, np.abs(cand - ref))
    diff = np.where(np.isnan(diff), np.inf, diff)
    magnitude = np.abs(np.where(ref_finite, ref, 0.0))
    allowed_abs = atol + calibration
    failing = (diff > allowed_abs) & (diff > rtol * magnitude + calibration)
    mismatches = int(np.count_nonzero(failing))
    max_abs = float(diff.max()) if diff.size else 0.0
    max_ref = float(magnitude.max()) if magnitude.size else 0.0
    max_rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else float("inf"))
    finite_diff = diff[np.isfinite(diff)]
    mean_abs = float(finite_diff.mean()) if finite_diff.size else 0.0
    over_rel = diff > rtol * magnitude + calibration
    passing_atol = float(diff[over_rel].max()) - calibration if np.any(over_rel) else 0.0
    over_abs = diff > allowed_abs
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = np.where(over_abs, (diff - calibration) / magnitude, 0.0)
    passing_rtol = float(np.nanmax(needed)) if needed.size else 0.0
    return OutputComparison(
        provider,
        name,
        mismatches == 0 and nonfinite == 0,
        int(ref.size),
        mismatches,
        max_abs,
        max_rel,
        mean_abs,
        atol,
        rtol,
        max(passing_atol, 0.0),
        max(passing_rtol, 0.0),
        nonfinite,
        calibration,
    )


# ----- the entry point -------------------------------------------------------------------------


def _as_source(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto | Path:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise InputError(path, "no such file")
    return path


def resolve_providers(providers) -> tuple[list[str], bool]:
    """(provider list, whether the user named them explicitly)."""
    if providers is None or providers == "auto" or providers == ["auto"]:
        return [CPU, CUDA], False
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    names = [p.lower() for p in providers]
    unknown = [p for p in names if p not in PROVIDER_NAMES]
    if unknown or not names:
        raise InputError(None, f"unknown provider(s) {unknown}; choose from cpu, cuda, auto")
    return list(dict.fromkeys(names)), True


def validate(
    reference: onnx.ModelProto | str | os.PathLike,
    candidate: onnx.ModelProto | str | os.PathLike,
    *,
    providers: str | list[str] | None = None,
    rtol: float | dict[str, float] | None = None,
    atol: float | dict[str, float] | None = None,
    inputs: dict[str, np.ndarray] | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    tf32: bool = False,
) -> ValidationReport:
    """Run `reference` and `candidate` in onnxruntime and compare every output.

    `providers`: None/"auto" = CPU, plus CUDA when usable (else reported as skipped); a list such
    as ["cpu", "cuda"] = each required (unavailable is a failure). `rtol`/`atol`: one value for
    all outputs or {output name: value}; defaults depend on the output dtype. Validates any pair
    of models with the same inputs and outputs, not only bnfold's.
    """
    names, explicit = resolve_providers(providers)
    _check_tolerances(rtol, "rtol")
    _check_tolerances(atol, "atol")
    reference_source, candidate_source = _as_source(reference), _as_source(candidate)
    in_memory = [m for m in (reference_source, candidate_source) if isinstance(m, onnx.ModelProto)]
    # Both models have the same graph inputs; read them from one already in memory.
    described = in_memory[0] if in_memory else load_model(reference_source)
    feeds, notes = generate_inputs(described, input_shapes=input_shapes, given=inputs, seed=seed)
    maker = _SessionMaker(tf32)
    settings = {
        "providers_requested": names if explicit else "auto",
        "graph_optimization_level": "ORT_DISABLE_ALL",
        "execution_mode": "ORT_SEQUENTIAL",
        "deterministic_compute": True,
        "tf32": tf32,
        "onnxruntime": maker.ort.__version__,
    }
    report = ValidationReport(
        [],
        {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()},
        seed,
        settings,
        notes,
    )
    try:
        sources = {
            "reference": maker.source(reference_source),
            "candidate": maker.source(candidate_source),
        }
        expected = _run_model(maker, sources["reference"], CPU, feeds, "reference")
        for provider in names:
            missing = maker.unavailable(provider)
            if missing:
                status = "skipped" if provider == CUDA and not explicit else "unavailable"
                report.providers.append(
                    ProviderOutcome(provider, status, missing, maker.provider_options(provider))
                )
            elif isinstance(expected, str):
                report.providers.append(ProviderOutcome(provider, "failed", expected))
            else:
                tolerances = _Tolerances(rtol, atol, tf32 and provider == CUDA)
                report.providers.append(
                    _validate_on(provider, maker, sources, feeds, expected, tolerances)
                )
    finally:
        maker.close()
    return report


def _run_model(maker: _SessionMaker, source, provider: str, feeds, role: str):
    """{output: array} or a string saying what went wrong."""
    session = maker.create(source, provider)
    if isinstance(session, str):
        return f"{role} model: {session}"
    outputs, problem = _run(session, feeds)
    return f"{role} model: {problem}" if problem else outputs


@dataclass(frozen=True)
class _Tolerances:
    rtol: float | dict[str, float] | None
    atol: float | dict[str, float] | None
    tf32: bool

    def for_output(self, name: str, dtype: np.dtype) -> Tolerance:
        base = default_tolerance(dtype, tf32=self.tf32)
        return Tolerance(
            _pick(self.rtol, name, base.rtol), _pick(self.atol, name, base.atol), base.atol_scale
        )


def _check_tolerances(option, label: str) -> None:
    values = option.values() if isinstance(option, dict) else [] if option is None else [option]
    for value in values:
        if not math.isfinite(float(value)) or float(value) < 0:
            raise InputError(None, f"{label} must be a finite number >= 0, not {value}")


def _pick(option, name: str, default):
    if isinstance(option, dict):
        return float(option[name]) if name in option else default
    return default if option is None else float(option)


def _validate_on(provider, maker, sources, feeds, expected, tolerances):
    options = maker.provider_options(provider)
    own = expected if provider == CPU else None
    if own is None:
        own = _run_model(maker, sources["reference"], provider, feeds, "reference")
        if isinstance(own, str):
            return ProviderOutcome(provider, "failed", own, options)
    got = _run_model(maker, sources["candidate"], provider, feeds, "candidate")
    if isinstance(got, str):
        return ProviderOutcome(provider, "failed", got, options)
    outcome = ProviderOutcome(provider, "passed", "", options)
    absent = sorted(set(expected) - set(got))
    if absent:
        outcome.status = "failed"
        outcome.reason = f"the candidate lacks outputs {absent}"
        return outcome
    for name, want in expected.items():
        calibration = 0.0 if provider == CPU else 2.0 * _max_abs_error(want, own[name])
        tolerance = tolerances.for_output(name, want.dtype)
        outcome.outputs.append(compare(provider, name, want, got[name], tolerance, calibration))
    if not all(o.passed for o in outcome.outputs):
        outcome.status = "failed"
    elif sum(o.elements for o in outcome.outputs) == 0:
        outcome.status = "failed"
        outcome.reason = "every output is empty: nothing was compared (give non-empty shapes)"
    return outcome


def _max_abs_error(reference: np.ndarray, other: np.ndarray) -> float:
    if reference.dtype == object or reference.shape != other.shape:
        return 0.0
    with np.errstate(invalid="ignore"):
        diff = np.abs(np.asarray(other, np.float64) - np.asarray(reference, np.float64))
    finite = diff[np.isfinite(diff)]
    return float(finite.max()) if finite.size else 0.0


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read `--inputs data.npz` (names → arrays)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except Exception as exc:
        raise InputError(path, f"is not a readable .npz file ({_first_line(exc)})") from None
