"""What the command does once its options are parsed: fold one model (IN to OUT) or several (to
a folder, `bnfold.batch`), print through the console, and end with the error that sets the exit
status."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from . import batch, naming, view
from ._version import __version__
from .console import Console
from .errors import (
    BnfoldError,
    InputError,
    Unfolded,
    ValidationFailed,
    failure,
)
from .model_io import atomic_file
from .pipeline import FileResult, check_paths, fold_file, json_safe


def fold_models(
    models: tuple[Path, ...],
    output: Path | None,
    report_path: Path | None,
    settings: Settings,
    *,
    recursive: bool = False,
    workers: int = 1,
    warnings: tuple[str, ...] = (),
) -> None:
    """Fold `models` as the command does: one to the file `output`, several (or a folder) to
    the folder `output` (None: a dry run). Raises the error the command ends with."""
    console = Console(settings.quiet, settings.verbose, settings.as_json)
    try:
        for warning in warnings:
            console.out(warning)
        if batch.is_batch(models):
            _fold_many(models, output, recursive, workers, report_path, settings, console)
        else:
            _fold_one_file(models[0], output, report_path, settings, console)
    finally:  # (an error's line must not land after a progress line)
        console.progress_done()


def _fold_one_file(
    source: Path, output: Path | None, report_path: Path | None, settings: Settings, console
) -> None:
    """One model to the file `output`, as `fold_models` says."""
    check_paths(source, output, report_path)
    started = time.perf_counter()
    result = fold_file(source, output, report=report_path, reporter=console, **settings.fold)
    elapsed = time.perf_counter() - started
    console.out(view.summary_line(result.fold, elapsed, result.validation, output is None))
    if settings.as_json:
        console.document(result.report_text().rstrip("\n"))
    refusal = _refusal(source, result)
    if refusal is not None:
        raise refusal


@dataclass(frozen=True)
class Settings:
    """What folding one model takes, as the options gave it (plain data: it goes to worker
    processes)."""

    validate: bool
    strict: bool
    inline_functions: bool
    quiet: bool
    verbose: bool
    as_json: bool
    options: dict

    @property
    def fold(self) -> dict:
        """`fold_file`'s keyword arguments, the report and reporter aside."""
        return {
            "validate": self.validate,
            "strict": self.strict,
            "inline_functions": self.inline_functions,
            **self.options,
        }


def _refusal(source: Path, result: FileResult) -> BnfoldError | None:
    """Why OUT was not written (--strict, or validation), as the error the command ends with,
    naming the input model."""
    if result.unfolded:
        first = result.fold.left[0]
        kind = "BatchNormalization" if result.fold.skipped else "BN-like Mul/Add"
        return Unfolded(
            f"{source}: {result.unfolded} {kind} left unfolded (--strict); the folded model "
            f"was not written: {first.batchnorm}: {first.reason}"
        )
    if not result.passed and result.validation is not None:
        validation = result.validation
        ran = any(p.outputs for p in validation.providers)
        what = "failed" if ran else "could not run (use --no-validate to skip it)"
        first_line = next((ln for ln in validation.lines() if ln.startswith("FAILED")), "")
        return ValidationFailed(
            f"{source}: validation {what}; the folded model was not written: {first_line}"
        )
    return None


# ----- several models --------------------------------------------------------------------------


def _fold_many(models, out_dir, recursive, workers, report_path, settings, console) -> None:
    """Each model to its own output under `out_dir`, one after the other or `workers` at a time;
    its lines as they come, then a table of all; exit status the worst of them."""
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "is not a folder (several models are written to a folder)")
    if report_path is not None:
        check_paths(models[0], None, report_path)
    found = batch.find_jobs(models, out_dir, recursive)
    for job in found:
        if job.target is not None:
            job.target.parent.mkdir(parents=True, exist_ok=True)
    here = functools.partial(_fold_one, settings=settings, console=console)
    elsewhere = functools.partial(_fold_one, settings=settings)
    outcomes = []
    for outcome in batch.run_jobs(found, here if workers == 1 else elsewhere, workers):
        if workers > 1:
            console.replay(outcome.lines)
        outcomes.append(outcome)
    status = batch.worst_status([o.status for o in outcomes])
    console.out_lines(view.batch_table(outcomes))
    document = _batch_document(outcomes, status)
    if report_path is not None:
        with atomic_file(report_path) as handle:
            handle.write(document.encode())
    if settings.as_json:
        console.document(document.rstrip("\n"))
    if status:
        failed = sum(1 for o in outcomes if o.status)
        error = BnfoldError(f"{failed} of {len(outcomes)} models failed (exit status {status})")
        error.exit_status = status
        raise error


def _fold_one(job: batch.Job, settings: Settings, console: Console | None = None):
    """One model of several, as a command of its own would fold it (messages name options as
    the command does, in a worker process too); its failure is an outcome, not an exception (an
    interrupt still goes up)."""
    with naming.command_line():
        return _folded_outcome(job, settings, console)


def _folded_outcome(job: batch.Job, settings: Settings, console: Console | None):
    console = console or Console(settings.quiet, settings.verbose, settings.as_json, keep=True)
    outcome = batch.Outcome(job.label, 0)
    try:
        options = _options_for(job, settings)
        started = time.perf_counter()
        result = fold_file(job.source, job.target, reporter=console, **options)
        elapsed = time.perf_counter() - started
        console.out(view.summary_line(result.fold, elapsed, result.validation, job.target is None))
        outcome.report = result.report_dict()
        refusal = _refusal(job.source, result)
        if refusal is not None:
            raise refusal
    except Exception as exc:
        outcome.status, outcome.message = failure(exc)
        console.progress_done()  # (the phase it failed in is over)
        console.error(outcome.message)
    if outcome.report is not None:
        outcome.report["exit_status"] = outcome.status
    outcome.lines = console.kept
    return outcome


def _options_for(job: batch.Job, settings: Settings) -> dict:
    """`fold_file`'s options for one model of several: what validation keeps goes to a folder
    of its own under DIR, named after the model."""
    options = dict(settings.fold)
    for kept in ("save_inputs", "save_outputs"):
        if options.get(kept) is None:
            continue
        base = Path(options[kept])
        try:
            base.mkdir(exist_ok=True)  # (as a single model's: its parent must exist)
            (base / job.name.parent).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(base, f"cannot be written ({exc.strerror or exc})") from None
        options[kept] = base / job.name.with_suffix("")
    return options


def _batch_document(outcomes, status: int) -> str:
    """What --report writes and --json prints for several models."""
    models = [
        o.report
        if o.report is not None
        else {"input": o.label, "error": o.message, "exit_status": o.status}
        for o in outcomes
    ]
    document = {"bnfold": __version__, "models": models, "exit_status": status}
    return json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n"
