"""`fold_file`: what the `bnfold` command does, from file to file, for Python callers too.

The input is read with its big tensors left in its files (`bnfold.skim`, `bnfold.tensor_data`),
folded, written as OUT under a temporary name beside OUT (`model_io.StagedModel`; the input's
external data goes to OUT.data as it is written, folded weights straight from the fold), and
validated by running that very file; OUT is put in place only when everything passed. The report,
when one is asked for, is written first under a temporary name and put in place with OUT: a
failed run writes nothing new but the report of what failed. Paths are checked before any work:
OUT, OUT.data and the report never replace the input, its data files, each other or anything but
a regular file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._version import __version__
from .errors import InputError
from .folding import fold_in_place
from .model_io import StagedFile, StagedModel, data_file_for, load_model_and_sources
from .records import FoldResult
from .reporting import Reporter
from .tensor_data import DataFile
from .validation import (
    ValidationReport,
    check_validation_options,
    check_validation_options_against,
)
from .validation import validate as validate_models


@dataclass
class FileResult:
    """What `fold_file` did: the fold, the validation (None: not run), whether OUT was
    written."""

    source: Path
    output: Path | None
    fold: FoldResult
    validation: ValidationReport | None
    written: bool
    seconds: float
    strict: bool = False

    @property
    def unfolded(self) -> int:
        """BatchNormalizations (and BN-like Mul/Add next to a layer) left: counted only with
        `strict`, where they stop the write."""
        return len(self.fold.left) if self.strict else 0

    @property
    def passed(self) -> bool:
        """Validation passed (or did not run), and with `strict` nothing was left unfolded."""
        return (self.validation is None or self.validation.passed) and not self.unfolded

    def to_dict(self) -> dict:
        """What `--report` writes."""
        return {
            "bnfold": __version__,
            "input": str(self.source),
            "output": None if self.output is None else str(self.output),
            "written": self.written,
            "strict": self.strict,
            **self.fold.to_dict(),
            "seconds": round(self.seconds, 4),
            "validation": None if self.validation is None else self.validation.to_dict(),
        }

    def report_dict(self) -> dict:
        """`to_dict` with NaN and infinities as strings, as the JSON report has them."""
        return json_safe(self.to_dict())

    def report_text(self) -> str:
        """`to_dict` as strict JSON (NaN and infinities as strings)."""
        return json.dumps(self.report_dict(), indent=2, allow_nan=False) + "\n"


def fold_file(
    source: str | os.PathLike,
    target: str | os.PathLike | None = None,
    *,
    validate: bool = True,
    strict: bool = False,
    inline_functions: bool = True,
    report: str | os.PathLike | None = None,
    reporter: Reporter | None = None,
    **validation_options,
) -> FileResult:
    """Fold the ONNX file `source` and write `target` (None: fold and validate, write nothing),
    as the command does. `validate=False` skips validation; `validation_options` are
    `bnfold.validate`'s keyword arguments (providers, rtol, atol, inputs, samples, ...).
    `strict=True` writes nothing when a BatchNormalization is left unfolded. `report`: a JSON
    file for `FileResult.to_dict()`. Bad input raises `InputError`; a failed validation or a
    strict refusal returns a result with `written=False` (see `FileResult.passed`)."""
    source, output = Path(source), None if target is None else Path(target)
    report_path = None if report is None else Path(report)
    reporter = reporter or Reporter()
    check_paths(source, output, report_path)
    if validate:
        check_validation_options(validation_options)
    started = time.perf_counter()
    reporter.progress(f"loading {source} ({_size(source)})")
    # fold_in_place makes the graph checks; external data stays in its files until needed
    loaded, sources = load_model_and_sources(source, check=False, lazy=True)
    _check_not_input(sources, output, report_path)
    if validate:  # (names and shapes the options give: before the fold, not after)
        with _naming(source):
            validation_options = check_validation_options_against(loaded, validation_options)
    reporter.progress_done()
    reporter.loaded(source, loaded, sum(_file_size(path) for path in sources))
    reporter.detail(f"loaded in {time.perf_counter() - started:.2f} s")
    # folded weights of an input with external data go straight to OUT's data file, being
    # written next to it (not into memory); it is deleted if OUT is not written
    spilling = output is not None and len(sources) > 1
    # an input with external data keeps it (in OUT.data); else only when over 2 GB
    external = True if len(sources) > 1 else None
    with (
        DataFile(output.parent) if spilling and output else contextlib.nullcontext() as spill,
        contextlib.ExitStack() as stack,
    ):
        reporter.progress("folding")
        mark = time.perf_counter()
        with _naming(source):  # (a graph check failed)
            folded = fold_in_place(loaded, inline_functions=inline_functions, spill=spill)
        reporter.progress_done()
        reporter.detail(f"folded in {time.perf_counter() - mark:.2f} s")
        reporter.folded(folded)
        result = FileResult(
            source=source,
            output=output,
            fold=folded,
            validation=None,
            written=False,
            seconds=0.0,
            strict=strict,
        )

        def staged() -> StagedModel:
            """OUT, written under a temporary name (put in place only if all passes)."""
            assert output is not None
            reporter.progress(f"saving {output}")
            # (entered at once: an interrupt right after still removes what it wrote)
            model = stack.enter_context(
                StagedModel(folded.model, output, external_data=external, data_file=spill)
            )
            reporter.progress_done()
            return model

        written_out = None
        if validate and not result.unfolded and _needs_validation(folded, reporter):
            # validation runs OUT's file as written (the folded model is not encoded twice)
            written_out = staged() if output is not None else None
            result.validation = _validated(
                source, folded, reporter, validation_options, written_out
            )
        result.written = result.passed and output is not None
        result.seconds = time.perf_counter() - started
        text = result.report_text().encode() if report_path is not None else None
        with _staged(report_path, text) as staged_report:
            written: list[Path] = []
            if result.written:
                written = (written_out or staged()).commit()
            _publish(staged_report, written_with=written)
    return result


@contextlib.contextmanager
def _naming(source: Path) -> Iterator[None]:
    """An `InputError` that names no file names `source`."""
    try:
        yield
    except InputError as exc:
        raise InputError(exc.path or source, exc.problem) from None


def _needs_validation(folded: FoldResult, reporter: Reporter) -> bool:
    if folded.folded or folded.folded_affine:
        return True
    reporter.detail("nothing folded: the output is the input model; validation not needed")
    return False


def _validated(
    source: Path, folded: FoldResult, reporter: Reporter, options, out: StagedModel | None
) -> ValidationReport:
    reporter.progress("validating in onnxruntime")
    mark = time.perf_counter()
    candidate_file = None if out is None else out.readable
    with _naming(source):  # (an input the model declares cannot be generated, ...)
        report = validate_models(
            source.resolve(), folded.model, candidate_file=candidate_file, **options
        )
    reporter.progress_done()
    reporter.detail(f"validated in {time.perf_counter() - mark:.2f} s")
    reporter.validated(report)
    return report


def check_paths(source: Path, output: Path | None, report_path: Path | None) -> None:
    """Refuse (`InputError`) outputs that would replace the input, each other, or anything but a
    regular file, or go to a folder that is missing or read-only."""
    _check_target(output)
    _check_target(report_path)
    if output is not None:
        _check_data_target(data_file_for(output))
    if output is not None and report_path is not None and _same(output, report_path):
        raise InputError(report_path, "is also the output model; give the report another path")
    if output is not None and report_path is not None and _same(data_file_for(output), report_path):
        raise InputError(
            report_path, "is the output model's data file name; give the report another path"
        )
    _check_not_input(source.resolve() if source.exists() else None, output, report_path)


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _check_not_input(sources, output: Path | None, report_path: Path | None) -> None:
    """Refuse to write over the input model or any of its external data files."""
    if sources is None:
        return
    protected = {sources} if isinstance(sources, Path) else set(sources)
    for path, what in ((output, "output"), (report_path, "report")):
        if path is not None and path.resolve() in protected:
            raise InputError(
                path, f"is the input model or one of its data files; give the {what} another path"
            )
    # (an OUT that is a symbolic link is replaced, not followed: its data file is beside it)
    if output is not None and data_file_for(output.parent.resolve() / output.name) in protected:
        raise InputError(
            output,
            f"its data file {data_file_for(output).name} would replace the input's; "
            "give the output another path",
        )


def _check_target(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        raise InputError(path, "is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise InputError(path, "exists and is not a regular file; refusing to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(path, f"its folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(path, f"its folder '{parent}' is not writable")


def _check_data_target(path: Path) -> None:
    """OUT.data, if OUT gets one, replaces what is there: only a regular file may be."""
    if path.exists() and not path.is_file():
        raise InputError(path, "(the output's data file) exists and is not a regular file")


def _size(path: Path) -> str:
    return size_text(_file_size(path))


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def size_text(size: int) -> str:
    """Bytes, as people read them: "1.2 MB", "34.5 kB"."""
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


@contextlib.contextmanager
def _staged(path: Path | None, payload: bytes | None) -> Iterator[StagedFile | None]:
    """`payload` written to a `StagedFile` next to `path` (an `InputError` if it cannot be);
    with no path, nothing."""
    if path is None or payload is None:
        yield None
        return
    try:
        staged = StagedFile(path)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    with staged:
        try:
            staged.handle.write(payload)
            staged.handle.flush()
        except OSError as exc:
            raise _cannot_write(path, exc) from None
        yield staged


def _publish(staged: StagedFile | None, written_with: list[Path]) -> None:
    """Put the staged report in place; if that fails, the files `written_with` (just written:
    OUT, and OUT.data if this run wrote one) are removed too, so that a failed run leaves
    nothing new."""
    if staged is None:
        return
    try:
        staged.commit()
    except OSError as exc:
        for path in written_with:
            with contextlib.suppress(OSError):
                path.unlink()
        raise _cannot_write(staged.path, exc) from None


def _cannot_write(path: Path, exc: OSError) -> InputError:
    return InputError(path, f"cannot be written ({exc.strerror or exc})")


def json_safe(value):
    """JSON has no NaN or infinity: write those as the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
