"""`validate`: run the original, the candidate and the candidate moved by rounding on each
provider, one session at a time, and hold every output to its limit."""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import InputError
from ..graphs import all_graphs
from ..model_io import load_model_and_sources, require_external_data_loaded
from ..naming import option
from .compare import compare, merged
from .criterion import (
    CALIBRATION_DRAWS,
    INSENSITIVE,
    PerOutput,
    Tolerance,
    deviation,
    explicit_tolerance,
    is_floating,
)
from .inputs import (
    Samples,
    cast_given_inputs,
    check_input_shapes,
    declared_inputs,
    load_inputs,
    make_samples,
    save_arrays,
)
from .perturb import what_the_fold_changed
from .providers import (
    CPU,
    ProviderRequest,
    SessionFactory,
    Unavailable,
    register_plugin_libraries,
    short_name,
)
from .report import Criterion, ProviderOutcome, Status, ValidationReport
from .runs import ModelSources, Outputs, moved_by_rounding, run_model


def _ort_how_to() -> str:
    return (
        "validation needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu, "
        f"onnxruntime-openvino, ...), or skip validation ({option('validate')})"
    )


def import_onnxruntime():
    """The onnxruntime module, or an `InputError` saying what to install."""
    try:
        import onnxruntime
    except ImportError:
        raise InputError(None, _ort_how_to()) from None
    if not hasattr(onnxruntime, "InferenceSession"):  # a half-removed distribution
        raise InputError(None, f"onnxruntime is broken in this environment; {_ort_how_to()}")
    onnxruntime.set_default_logger_severity(4)  # bnfold reports session errors itself
    return onnxruntime


def validate(
    reference: onnx.ModelProto | str | os.PathLike,
    candidate: onnx.ModelProto | str | os.PathLike,
    *,
    providers: str | list[str] | None = None,
    rtol: float | dict[str, float] | PerOutput | None = None,
    atol: float | dict[str, float] | PerOutput | None = None,
    inputs: dict[str, np.ndarray] | str | os.PathLike | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    samples: int = 1,
    tf32: bool = False,
    provider_options: dict[str, dict[str, str]] | None = None,
    plugin_libraries: list[str] | tuple[str, ...] = (),
    save_inputs: str | os.PathLike | None = None,
    save_outputs: str | os.PathLike | None = None,
    candidate_file: str | os.PathLike | None = None,
) -> ValidationReport:
    """Run `reference` and `candidate` in onnxruntime and hold every output to its limit.

    `providers`: None/"auto" = the CPU plus every other provider onnxruntime offers that can make
    a session here (one that cannot is reported as not used); a list of short names (cpu, cuda,
    tensorrt, openvino, dml, rocm, migraphx, coreml, qnn) or full `...ExecutionProvider` names =
    each is required. By default each floating-point output is held to a limit calibrated on the
    model (`criterion.py`); `rtol`/`atol` (one value for all, {output: value}, or both:
    `PerOutput`) switch the outputs they apply to to allclose. `samples` input sets from seeds
    `seed`...; `inputs` gives real data
    (arrays by input name, or a .npz/.npy path). `save_inputs`/`save_outputs`: folders to keep
    what was run in. `candidate_file`: the candidate (a ModelProto) as written to a file, which
    onnxruntime then runs (`fold_file` gives OUT's temporary file, before it is put in place).
    Validates any pair of models with the same inputs and outputs, not only bnfold's.
    """
    ort = import_onnxruntime()
    request = _checked_values(
        providers=providers,
        seed=seed,
        samples=samples,
        rtol=rtol,
        atol=atol,
        input_shapes=input_shapes,
        provider_options=provider_options,
    )
    reference_source, candidate_source = _as_source(reference), _as_source(candidate)
    reference_model = _described(reference_source)
    candidate_model = _described(candidate_source)
    if candidate_file is not None:
        if not isinstance(candidate_source, onnx.ModelProto):
            raise TypeError("candidate_file goes with a candidate given as a ModelProto")
        candidate_source = _as_source(candidate_file)
    _check_tolerance_names(rtol, "rtol", reference_model)
    _check_tolerance_names(atol, "atol", reference_model)
    if inputs is not None and not isinstance(inputs, dict):
        inputs = load_inputs(inputs, declared_inputs(reference_model))
    sample_set = make_samples(
        reference_model, samples=samples, seed=seed, input_shapes=input_shapes, given=inputs
    )
    factory = SessionFactory(ort, tf32, dict(provider_options or {}))
    notes = register_plugin_libraries(ort, list(plugin_libraries))
    names = list(request.providers) or factory.auto()
    changed = what_the_fold_changed(reference_model, candidate_model)
    report = ValidationReport(
        providers=[],
        inputs=_describe_inputs(sample_set),
        seed=seed,
        settings=_settings(ort, request, names, tf32, sample_set, changed),
        notes=[*sample_set.notes, *notes],
    )
    if save_inputs is not None:
        for index, feeds in enumerate(sample_set.runs):
            save_arrays(Path(save_inputs), f"inputs-{index}", feeds)
    tolerances = _Tolerances(rtol, atol)
    models = {"reference": reference_model, "candidate": candidate_model}
    sources = ModelSources(reference_source, candidate_source, models, changed)
    saver = _OutputSaver(save_outputs)
    # the original also runs once on other inputs (in the same session): does it depend on them?
    probe = _probe(reference_model, sample_set, seed, input_shapes)
    calibrates = _calibrates(tolerances, reference_model)
    context = _Context(factory, sources, sample_set, tolerances, saver, changed, calibrates)
    try:
        expected = context.original(CPU, probe, draws=CPU in names)
        probed = expected.pop() if probe and isinstance(expected, list) else None
        context.expected = expected
        for provider in names:
            report.providers.append(_validate_on(provider, request.explicit, context))
            context.forget_draws(provider)
        if not isinstance(expected, (str, Unavailable)):
            report.warnings.extend(_weak_evidence(context, report, reference_model, probed))
        report.warnings.extend(factory.untaken_warnings())
    finally:
        sources.close()
    return report


def check_validation_options_against(model: onnx.ModelProto, options: dict) -> dict:
    """Before folding: what `validate` checks against the original `model` alone (its graph
    inputs and outputs): names in `rtol`/`atol`, `input_shapes`, and `inputs` (read, and cast
    only where the values survive); `InputError` naming the problem, as `validate` would. The
    options to validate with: `inputs` as the arrays read (the file is read once)."""
    _check_tolerance_names(options.get("rtol"), "rtol", model)
    _check_tolerance_names(options.get("atol"), "atol", model)
    declared = declared_inputs(model)
    check_input_shapes(declared, dict(options.get("input_shapes") or {}))
    inputs = options.get("inputs")
    if inputs is None:
        return options
    given = inputs if isinstance(inputs, dict) else load_inputs(inputs, declared)
    cast_given_inputs(declared, given)
    return {**options, "inputs": given}


def check_validation_options(options: dict) -> None:
    """Before any work: `validate`'s keyword arguments as given to `fold_file` (unknown ones are
    a `TypeError`, as a call would make them), onnxruntime installed, and the simple values
    sound (`InputError`); the rest is checked against the model by `validate`."""
    known = set(inspect.signature(validate).parameters) - {
        "reference",
        "candidate",
        "candidate_file",
    }
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown validation options {unknown}; known: {sorted(known)}")
    import_onnxruntime()
    _checked_values(**options)


def _checked_values(
    *,
    providers=None,
    seed=0,
    samples=1,
    rtol=None,
    atol=None,
    input_shapes=None,
    provider_options=None,
    **_checked_with_the_model,
) -> ProviderRequest:
    """The options' values that need no model checked (`InputError`); the providers asked for."""
    request = ProviderRequest.parse(providers)
    for name, value, least in (("seed", seed, 0), ("samples", samples, 1)):
        if not isinstance(value, int) or value < least:
            raise InputError(None, f"{name} must be a whole number >= {least}, not {value!r}")
    for name, given in (("rtol", rtol), ("atol", atol)):
        per_output = PerOutput.of(given)
        if not isinstance(per_output.named, Mapping):
            kind = type(per_output.named).__name__
            raise InputError(None, f"{name}: PerOutput.named must be a dict, not {kind}")
        for value in per_output.values():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number) or number < 0:
                raise InputError(None, f"{name} must be a finite number >= 0, not {value!r}")
    for name, given in (("input_shapes", input_shapes), ("provider_options", provider_options)):
        if given is not None and not isinstance(given, dict):
            raise InputError(None, f"{name} must be a dict, not {type(given).__name__}")
    unasked = [p for p in provider_options or {} if request.explicit and p not in request.providers]
    if unasked:
        asked = ", ".join(map(short_name, request.providers))
        raise InputError(
            None,
            f"{option('provider_options')} for {short_name(unasked[0])}, which "
            f"{option('providers')} does not ask for ({asked})",
        )
    return request


def _as_source(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto | Path:
    if isinstance(model, onnx.ModelProto):
        require_external_data_loaded(model)
        return model
    path = Path(model)
    if not path.is_file():
        raise InputError(path, "no such file")
    return path


def _described(source: onnx.ModelProto | Path) -> onnx.ModelProto:
    """The model itself, or read from its file with big tensors left on disk."""
    if isinstance(source, onnx.ModelProto):
        return source
    return load_model_and_sources(source, check=False, lazy=True)[0]


def _settings(ort, request, names, tf32, sample_set: Samples, changed) -> dict:
    return {
        "providers_requested": [short_name(n) for n in names] if request.explicit else "auto",
        "graph_optimization_level": "ORT_DISABLE_ALL",
        "execution_mode": "ORT_SEQUENTIAL",
        "deterministic_compute": True,
        "tf32": tf32,
        "onnxruntime": ort.__version__,
        "samples": sample_set.count,
        "seeds": sample_set.seeds,
        "batched": sample_set.batched,
        "weights_written": len(changed["candidate"]),
        "weights_consumed": len(changed["reference"]),
    }


def _describe_inputs(sample_set: Samples) -> dict[str, dict]:
    first = sample_set.runs[0] if sample_set.runs else {}
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in first.items()}


# ----- tolerances ------------------------------------------------------------------------------


class _Tolerances:
    """Explicit rtol/atol per output, or None where the calibrated limit applies."""

    def __init__(self, rtol, atol) -> None:
        self.rtol, self.atol = PerOutput.of(rtol), PerOutput.of(atol)

    def for_output(self, name: str, dtype: np.dtype) -> Tolerance | None:
        base = name if self._names(name) else _ITEM_SUFFIX.sub("", name)
        rtol, atol = self.rtol.value_for(base), self.atol.value_for(base)
        if rtol is None and atol is None:
            return None
        return explicit_tolerance(dtype, rtol, atol)

    def _names(self, name: str) -> bool:
        """Whether a per-output tolerance names exactly `name`."""
        return name in self.rtol.named or name in self.atol.named


# what `runs.as_arrays` appends to an output's name: " (keys)", "[3]", "[3][0] (keys)", ...
_ITEM_SUFFIX = re.compile(r"(\[\d+\]| \(keys\))+$")


def _check_tolerance_names(values, label: str, model: onnx.ModelProto) -> None:
    """Per-output tolerances must name outputs of the model."""
    named = PerOutput.of(values).named
    if named:
        outputs = [o.name for o in model.graph.output]
        for name in named:
            if name not in outputs:
                raise InputError(
                    None,
                    f"{option(label)} names '{name}', which is not an output of the model "
                    f"(its outputs: {', '.join(outputs)})",
                )


# ----- one provider ----------------------------------------------------------------------------


class _Context:
    """What every provider's validation shares."""

    def __init__(self, factory, sources, sample_set, tolerances, saver, changed, calibrates):
        self.factory = factory
        self.sources = sources
        self.samples = sample_set
        self.expected: Any = None  # the original on the CPU
        self.tolerances = tolerances
        self.saver = saver
        self.changed = changed
        self.calibrates = calibrates  # some output is held to the calibrated limit
        self._draws: dict[str, list] = {}  # the original's draws by provider, from `original`

    def original(self, provider: str, extra: list[dict] | None = None, *, draws: bool = False):
        """The original on `provider`: its runs for the samples, then for `extra`. With `draws`
        (the CPU, where the limit is calibrated and the original has movers:
        `ModelSources.switchable_reference`), from one session that then runs its draws too,
        kept for `run_moved` (switched off, the movers pass every value on bit for bit, which
        onnxruntime's CPU provider at ORT_DISABLE_ALL keeps; other providers fuse within their
        own partitions: there the plain original, its draws from a session of their own); where
        that session cannot run, the plain original (its failure kept for `run_moved`)."""
        runs = [*self.samples.runs, *(extra or [])]
        found = self.sources.switchable_reference() if draws and self.calibrates else None
        result = None
        if found is not None:
            switchable, switch = found
            off = [{**feeds, switch: np.array(False)} for feeds in runs]
            on = [{**feeds, switch: np.array(True)} for feeds in self.samples.runs]
            result = run_model(self.factory, switchable, provider, off + on * CALIBRATION_DRAWS)
            del switchable, found
            self._draws[provider] = self._split_draws(result, len(runs))
        if result is None or isinstance(result, (Unavailable, str)):
            result = run_model(self.factory, self.sources.get("reference"), provider, runs)
        samples = result[: len(self.samples.runs)] if isinstance(result, list) else result
        self.saver.save(provider, "original", samples)
        return result

    def forget_draws(self, provider: str) -> None:
        """Let a provider's draws go once its outcome is known (unused where nothing needed
        calibrating)."""
        self._draws.pop(provider, None)

    def _split_draws(self, whole, unmoved: int) -> list:
        """The draws of the switchable session's runs (after the `unmoved` ones); its failure
        alone where it did not run."""
        if isinstance(whole, (Unavailable, str)):
            return [whole]
        count = len(self.samples.runs)
        rest = whole[unmoved:]
        del whole[unmoved:]
        return [rest[i * count : (i + 1) * count] for i in range(CALIBRATION_DRAWS)]

    def run(self, role: str, provider: str):
        """The original ("reference") or the folded model ("candidate") on `provider`."""
        result = run_model(self.factory, self.sources.get(role), provider, self.samples.runs)
        self.saver.save(provider, _LABELS[role], result)
        return result

    def run_moved(self, role: str, provider: str) -> tuple[list, list | None]:
        """(CALIBRATION_DRAWS runs of `role` moved by rounding on `provider`, the unmoved runs
        of the session they came from where that is not the plain model's). The original's
        draws come from one session (its movers draw anew each run); the folded model's too on
        the CPU, fed its written weights as inputs (`fed_candidate`: once as they are, then each
        draw), elsewhere one session each (its weights fixed when the session is made: other
        providers may need constant weights, and where the fed session fails). A failure ends
        the list; an original with nothing to move has none."""
        fed = self.sources.fed_candidate() if role == "candidate" and provider == CPU else None
        results: list = []
        base = None
        if role == "reference" and provider in self._draws:  # (from `original`'s session)
            results = self._draws.pop(provider)
        elif role == "reference" or fed is not None:
            results, base = self._moved_in_one_session(provider, fed)
        if role == "candidate" and not _all_ran(results):  # (the fed session may fail alone)
            results, base = self._moved_one_session_each(provider), None
        for draw, result in enumerate(results):
            if not isinstance(result, (Unavailable, str)):
                self.saver.save(provider, f"{_LABELS[role]}-moved{draw}", result)
        return results, base

    def _moved_in_one_session(self, provider: str, fed) -> tuple[list, list | None]:
        """The original's draws (`fed` None), or the folded model's fed its written weights
        (`fed`: `ModelSources.fed_candidate`), with the fed session's unmoved runs."""
        runs = self.samples.runs
        feeds: Iterable[dict]
        if fed is None:
            source, draws = self.sources.moved_reference(), range(CALIBRATION_DRAWS)
            if source is None:  # (nothing the movers can move)
                return [], None
            feeds = runs * CALIBRATION_DRAWS
        else:
            (source, written), draws = fed, range(-1, CALIBRATION_DRAWS)
            feeds = _fed_runs(self.sources, written, runs, draws)
        whole = run_model(self.factory, source, provider, feeds)
        del source, feeds
        if isinstance(whole, (Unavailable, str)):
            return [whole], None
        results = [whole[i * len(runs) : (i + 1) * len(runs)] for i in range(len(draws))]
        return (results[1:], results[0]) if fed is not None else (results, None)

    def _moved_one_session_each(self, provider: str) -> list:
        results: list = []
        for draw in range(CALIBRATION_DRAWS):
            source = self.sources.moved_candidate(draw)
            results.append(run_model(self.factory, source, provider, self.samples.runs))
            if isinstance(results[-1], (Unavailable, str)):
                break
        return results


def _all_ran(results: list) -> bool:
    return bool(results) and not any(isinstance(r, (Unavailable, str)) for r in results)


def _fed_runs(sources, written, runs: list[dict], draws: range) -> Iterator[dict]:
    """Each run's feeds with the written weights added: their own values for draw -1, then
    moved by rounding for each draw (one draw's arrays made at a time, from the own values read
    once)."""
    own = sources.fed_weights(written, None)
    for draw in draws:
        weights = own if draw < 0 else moved_by_rounding(own, draw)
        for feeds in runs:
            yield {**feeds, **weights}
        del weights


_LABELS = {"reference": "original", "candidate": "folded"}


def _validate_on(provider: str, explicit: bool, context: _Context) -> ProviderOutcome:
    factory = context.factory
    options = factory.provider_options(provider)
    missing = factory.missing(provider)
    if missing:
        return _unusable(provider, explicit, missing, options)

    def failed(reason: str) -> ProviderOutcome:
        return ProviderOutcome(
            provider=provider, status=Status.FAILED, reason=reason, options=options
        )

    if isinstance(context.expected, (Unavailable, str)):
        return failed(f"original model: {_reason(context.expected)}")
    own = context.expected if provider == CPU else context.original(provider)
    if isinstance(own, Unavailable):
        return _unusable(provider, explicit, own, options)
    if isinstance(own, str):
        return failed(f"original model: {own}")
    got = context.run("candidate", provider)
    if isinstance(got, (Unavailable, str)):
        return failed(f"folded model: {_reason(got)}")
    return _compared(provider, options, context, own, got)


def _unusable(provider, explicit, why: Unavailable, options) -> ProviderOutcome:
    status = Status.UNAVAILABLE if explicit else Status.NOT_USED
    return ProviderOutcome(provider=provider, status=status, reason=why.reason, options=options)


def _compared(provider, options, context: _Context, own, got) -> ProviderOutcome:
    outcome = ProviderOutcome(provider=provider, status=Status.PASSED, options=options)
    absent = sorted(set(own[0]) - set(got[0]))
    if absent:
        outcome.status = Status.FAILED
        outcome.reason = f"the folded model lacks outputs {absent}"
        return outcome
    moved = _moved_runs(provider, context, own, outcome)
    for name in dict.fromkeys(name for outputs in own for name in outputs):
        per_sample = [
            _compared_output(provider, context, own, got, moved, k, name)
            for k in range(len(own))
            if name in own[k]
        ]
        outcome.outputs.append(merged(per_sample))
    if not all(o.passed for o in outcome.outputs):
        outcome.status = Status.FAILED
    elif sum(o.elements for o in outcome.outputs) == 0:
        outcome.status = Status.FAILED
        outcome.reason = "every output is empty: nothing was compared (give non-empty shapes)"
    return outcome


def _moved_runs(provider, context: _Context, own: list[Outputs], outcome) -> _MovedRuns:
    """The runs with what the fold changed moved by rounding: the original's (its values
    entering the arithmetic the fold replaced: in-graph movers); the folded model's (the
    weights it wrote) only where the original's cannot run (an operator the provider lacks for
    a mover, say: said in a note), have nothing to move, or moved no output at all (a mover
    too fine for the values it met, as float32 statistics meeting float16 data)."""
    moved = _MovedRuns({"reference": [], "candidate": []})
    if not _needs_calibration(context, own[0]):
        return moved
    for role in ("reference", "candidate"):
        if not context.changed[role] or (role == "candidate" and moved.draws["reference"]):
            continue
        results, base = context.run_moved(role, provider)
        if role == "reference" and results and all(_same_runs(r, own) for r in results):
            continue  # (moved nothing: the folded model's draws are asked instead)
        for result in results:
            if isinstance(result, (Unavailable, str)):
                outcome.notes.append(
                    f"the {_LABELS[role]} model moved by rounding could not run, so its rounding "
                    f"is not in the limit: {_reason(result).splitlines()[0]}"
                )
                break
            moved.draws[role].append(result)
        if role == "candidate" and moved.draws[role]:
            moved.candidate_base = base
    return moved


def _same_runs(draw, own: list[Outputs]) -> bool:
    """Whether a draw's runs gave exactly the unmoved runs' outputs (a failure is not)."""
    if isinstance(draw, (Unavailable, str)) or len(draw) != len(own):
        return False
    return all(
        name in moved and moved[name].tobytes() == value.tobytes()
        for moved, unmoved in zip(draw, own, strict=True)
        for name, value in unmoved.items()
        if isinstance(value, np.ndarray)
    )


@dataclass
class _MovedRuns:
    """Per model, the outputs of each draw moved by rounding; and the folded model's unmoved
    outputs from the session its draws came from, when that is not the folded model's own."""

    draws: dict[str, list]
    candidate_base: list | None = None


def _compared_output(provider, context: _Context, own, got, moved: _MovedRuns, k: int, name):
    reference = own[k][name]
    if name not in got[k]:
        return compare(provider, name, reference, np.empty(0, dtype=reference.dtype))

    def draws(role: str, base: np.ndarray) -> list[np.ndarray]:
        """The draws' outputs that can be set against `base` (shapes that depend on the
        values can come out otherwise)."""
        found = [run[k].get(name) for run in moved.draws[role] if k < len(run)]
        return [a for a in found if a is not None and a.shape == base.shape]

    candidate = got[k][name]
    base = None if moved.candidate_base is None else moved.candidate_base[k].get(name)
    if base is not None and base.shape != candidate.shape:
        base = None
    perturbed = draws("candidate", candidate if base is None else base)
    return compare(
        provider,
        name,
        reference,
        candidate,
        perturbed=perturbed,
        perturbed_reference=draws("reference", reference),
        tolerance=context.tolerances.for_output(name, reference.dtype),
        provider_gap=_gap(context, provider, own, k, name),
        perturbed_base=base if perturbed else None,
    )


def _reason(result: Unavailable | str) -> str:
    return result.reason if isinstance(result, Unavailable) else result


def _calibrates(tolerances: _Tolerances, model: onnx.ModelProto) -> bool:
    """Whether some output of the model may be held to the calibrated limit (no explicit
    tolerance; a floating, integer or boolean tensor, or a type not declared)."""
    for output in model.graph.output:
        kind = output.type.WhichOneof("value")
        if kind != "tensor_type":
            return True
        try:
            dtype = np.dtype(
                onnx.helper.tensor_dtype_to_np_dtype(output.type.tensor_type.elem_type)
            )
        except (KeyError, TypeError, ValueError):
            return True
        calibrated = is_floating(dtype) or dtype.kind in "iub"
        if calibrated and tolerances.for_output(output.name, dtype) is None:
            return True
    return False


def _needs_calibration(context: _Context, outputs: Outputs) -> bool:
    return any(
        context.tolerances.for_output(name, value.dtype) is None
        and (is_floating(value.dtype) or value.dtype.kind in "iub")
        for name, value in outputs.items()
    )


def _gap(context: _Context, provider: str, own, k: int, name: str) -> np.ndarray | None:
    """The original on `provider` against the original on the CPU (None on the CPU)."""
    if provider == CPU:
        return None
    cpu = context.expected[k].get(name)
    mine = own[k][name]
    if cpu is None or cpu.shape != mine.shape or mine.dtype == object:
        return None
    return deviation(mine, cpu)


# ----- weak evidence ---------------------------------------------------------------------------


def _probe(model, sample_set: Samples, seed: int, input_shapes) -> list[dict]:
    """One more run's inputs, generated from the seed after the samples' and shaped like the
    first run (nothing when the user gave any data: it may fix shapes a generator cannot)."""
    if sample_set.given:
        return []
    count = sample_set.count
    batch = count if sample_set.batched else 1
    other = make_samples(model, samples=batch, seed=seed + count, input_shapes=input_shapes)
    return other.runs[:1]


def _weak_evidence(context: _Context, report: ValidationReport, model, probed) -> list:
    """Warnings when the comparison proves little: outputs that hardly depend on the inputs
    (`probed`: the original's outputs on other inputs), or none that responds to the weights
    the fold changed."""
    warnings = []
    if _has_op(model.graph, "If"):
        warnings.append(
            "the model has If nodes: the inputs exercise only the branches they select "
            f"(give real data with {option('inputs')} to cover others)"
        )
    if probed is not None:
        warnings.extend(_insensitive_outputs(context.expected[0], probed))
    calibrated = [
        c
        for p in report.providers
        for c in p.outputs
        if p.provider == CPU and c.criterion is Criterion.CALIBRATED
    ]
    changed = context.changed["candidate"] or context.changed["reference"]
    for comparison in calibrated if changed else []:
        if comparison.rounding_noise == 0:
            warnings.append(
                f"output '{comparison.output}' does not respond to what the fold changed on "
                "these inputs: its comparison proves little; give real data with "
                f"{option('inputs')}"
            )
    return warnings


def _insensitive_outputs(first_outputs: Outputs, probed: Outputs) -> list[str]:
    warnings = []
    for name, first in first_outputs.items():
        second = probed.get(name)
        if second is None or not is_floating(first.dtype) or first.shape != second.shape:
            continue
        finite = np.isfinite(first) & np.isfinite(second)
        if first.size and not finite.any():
            warnings.append(
                f"output '{name}' has no finite value on these inputs: this validation proves "
                f"little; give real data with {option('inputs')}"
            )
            continue
        scale = float(np.max(np.abs(first[finite]))) if finite.any() else 0.0
        change = float(np.max(deviation(first[finite], second[finite]))) if finite.any() else 0.0
        if scale > 0 and change <= INSENSITIVE * scale:
            warnings.append(
                f"output '{name}' hardly depends on the inputs (moves {change / scale:.1g} "
                "relative between two random inputs): this validation proves little; "
                f"give real data with {option('inputs')}"
            )
    return warnings


class _OutputSaver:
    """`--save-outputs DIR`: each run's outputs as DIR/{provider}-{role}-{sample}.npz."""

    def __init__(self, folder) -> None:
        self.folder = None if folder is None else Path(folder)

    def save(self, provider: str, role: str, result) -> None:
        if self.folder is None or isinstance(result, (Unavailable, str)):
            return
        for index, outputs in enumerate(result):
            save_arrays(self.folder, f"{short_name(provider)}-{role}-{index}", outputs)


def _has_op(graph: onnx.GraphProto, op_type: str) -> bool:
    return any(node.op_type == op_type for _, g in all_graphs(graph) for node in g.node)
