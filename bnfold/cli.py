"""`bnfold IN -o OUT`: fold, validate, write (`bnfold IN... -o OUTDIR`, `bnfold DIR -o OUTDIR`:
each model so, `bnfold.batch`); the view is `bnfold.view`'s. The command only parses and prints.

Exit statuses (also in `--help` and the README):
  0  success (folded and, unless --no-validate, validated; or --dry-run)
  1  validation failed (or could not be done): OUT is not written
  2  bad input or usage: unreadable/invalid model, unwritable output, bad option
  3  internal error (a bug in bnfold; please report it)
  4  --strict, and some BatchNormalization left unfolded: OUT is not written
  130, 143, 129  interrupted by Ctrl-C, SIGTERM, SIGHUP: nothing written, temporary files removed
Several models: the worst of theirs (3, then 2, 1, 4, 0).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from . import batch, naming, view
from ._version import __version__
from .errors import (
    EXIT_BAD_INPUT,
    BnfoldError,
    InputError,
    Terminated,
    Unfolded,
    ValidationFailed,
)
from .fold import collector_paused
from .model_io import atomic_file
from .pipeline import Reporter, check_paths, fold_file, json_safe, size_text
from .records import FoldResult
from .validation import ProviderRequest, ValidationReport, parse_provider_options

EXIT_INTERNAL = 3

EPILOG = """\b
Exit status:
  0  success (folded, validated unless --no-validate; or --dry-run)
  1  validation failed or could not run: OUT is not written
  2  bad input or usage (unreadable or invalid model, unwritable output, bad option)
  3  internal error in bnfold (a bug: please report it)
  4  --strict and some BatchNormalization left unfolded: OUT is not written
  130/143/129  interrupted (Ctrl-C, SIGTERM, SIGHUP): nothing written
  Several models: the worst of theirs (3, then 2, 1, 4, 0)
"""


class _Console(Reporter):
    """Where lines go: the view (`bnfold.view`) and verdicts to stdout (to stderr with --json,
    whose document is stdout), warnings, progress and errors to stderr. Commentary never stops a
    run: a closed or full stdout (`| head -1`, `> /dev/full`) is let go, and the model is still
    written."""

    def __init__(
        self, quiet: bool, verbose: bool, as_json: bool = False, keep: bool = False
    ) -> None:
        """`keep`: hold the lines in `kept` as (text, to stderr) instead of printing them (a
        worker's, printed by the command with `replay`)."""
        self.quiet = quiet
        self.verbose = verbose
        self.to_stderr = as_json
        self.stdout_gone = False
        self.keep = keep
        self.kept: list[tuple[str, bool]] = []
        on_terminal = not quiet and not keep and sys.stderr.isatty()
        self.ticker = _Ticker() if on_terminal else None

    def out(self, line: str) -> None:
        if not self.quiet:
            self._echo(_printable(line), err=True if line.startswith("WARNING") else None)

    def out_lines(self, lines) -> None:
        """Many lines in one write (one `echo` per line costs ~15 µs: 0.25 s on 16,000 records)."""
        if not self.quiet:
            text = "\n".join(_printable(line) for line in lines)
            if text:
                self._echo(text)

    def detail(self, line: str) -> None:
        if self.verbose and not self.quiet:
            self._echo(_printable(line))

    def loaded(self, source: Path, model, size: int) -> None:
        self.out(view.header_line(source, model, size_text(size)))

    def folded(self, result: FoldResult) -> None:
        self.out_lines(view.record_lines(result, self.verbose))
        self.out_lines(view.op_table(result.ops_before, result.ops_after))

    def validated(self, report: ValidationReport) -> None:
        for line in report.lines(verbose=self.verbose):
            self.out(line)

    def document(self, text: str) -> None:
        """The one thing --json puts on stdout."""
        self._echo(text, err=False)

    def error(self, line: str) -> None:
        """A model's one-line error, among several models' lines."""
        self._echo(_printable(line), err=True)

    def replay(self, lines: list[tuple[str, bool]]) -> None:
        """Print lines another console kept."""
        for text, to_stderr in lines:
            self._echo(text, err=to_stderr)

    def progress(self, line: str) -> None:
        if self.ticker is not None:
            self.ticker.start(line)

    def progress_done(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()

    def _echo(self, text: str, err: bool | None = None) -> None:
        to_stderr = self.to_stderr if err is None else err
        if self.keep:
            self.kept.append((text, to_stderr))
            return
        if self.stdout_gone and not to_stderr:
            return
        try:
            click.echo(text, err=to_stderr)
        except OSError:  # a reader that went away (EPIPE), a full device (ENOSPC), ...
            if to_stderr:
                return
            self.stdout_gone = True
            _silence_stdout()


class _Ticker:
    """The phase on a terminal's last line, with the seconds it has taken, updated every
    second by a thread of its own (validation of a big model takes minutes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._began = 0.0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, phase: str) -> None:
        with self._lock:
            self._phase, self._began = phase, time.perf_counter()
            self._draw()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bnfold-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            if self._phase is not None:
                self._phase = None
                self._write("\r\033[K")

    def _run(self) -> None:
        while not self._wake.wait(1.0):
            with self._lock:
                if self._phase is not None:
                    self._draw()

    def _draw(self) -> None:
        seconds = time.perf_counter() - self._began
        self._write(f"\r\033[K{self._phase} ({seconds:.0f} s)")

    @staticmethod
    def _write(text: str) -> None:
        with contextlib.suppress(OSError):
            click.echo(text, err=True, nl=False)


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that what Python still holds for stdout (and
    flushes at exit) goes nowhere instead of failing again."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
            if any(d < 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise click.BadParameter(
                f"'{value}' is not NAME:DxDxD", param_hint="--input-shape"
            ) from None
    return shapes


def _parse_tolerance(values: tuple[str, ...], option: str) -> float | dict[str, float] | None:
    if not values:
        return None
    per_output: dict[str, float] = {}
    global_value = None
    for value in values:
        name, sep, number = value.rpartition(":")
        try:
            parsed = float(number)
            if not math.isfinite(parsed) or parsed < 0:
                raise ValueError
        except ValueError:
            raise click.BadParameter(
                f"'{value}' is not VALUE or NAME:VALUE", param_hint=option
            ) from None
        if sep:
            per_output[name] = parsed
        else:
            global_value = parsed
    if per_output:
        return per_output if global_value is None else _DefaultDict(global_value, per_output)
    return global_value


class _DefaultDict(dict):
    """Per-output tolerances with a global fallback (`--atol 1e-5 --atol logits:1e-3`)."""

    def __init__(self, default: float, values: dict[str, float]) -> None:
        super().__init__(values)
        self.default = default


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", metavar="IN...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Where to write the folded model; a folder for several models or a folder IN.",
)
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="With a folder IN: its sub-folders' *.onnx files too (their layout kept under OUT).",
)
@click.option(
    "-j",
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Fold this many models at a time, each in a process of its own.",
)
@click.option("--dry-run", is_flag=True, help="Fold and report, write no model.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    help="Write the records (and validation) as JSON.",
)
@click.option(
    "--no-validate", is_flag=True, help="Do not run the models in onnxruntime to prove the fold."
)
@click.option(
    "--providers",
    default="auto",
    show_default=True,
    help="Comma-separated: cpu, cuda, tensorrt, openvino, dml, rocm, migraphx, coreml, qnn or "
    "full ...ExecutionProvider names. auto = the CPU plus every other provider that can run "
    "here. A provider named explicitly is required.",
)
@click.option(
    "--provider-option",
    multiple=True,
    metavar="NAME:KEY=VALUE",
    help="An option for one provider, e.g. cuda:device_id=1 (repeatable).",
)
@click.option(
    "--ep-library",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A plugin execution provider library to register (repeatable); installed "
    "onnxruntime_ep_* packages are registered by themselves.",
)
@click.option("--tf32", is_flag=True, help="Allow TF32 on CUDA (the limit calibrates to it).")
@click.option(
    "--rtol",
    multiple=True,
    metavar="[NAME:]VALUE",
    help="Relative tolerance, global or per output (repeatable); replaces the calibrated "
    "limit for the outputs it covers.",
)
@click.option(
    "--atol",
    multiple=True,
    metavar="[NAME:]VALUE",
    help="Absolute tolerance, global or per output (repeatable); like --rtol.",
)
@click.option(
    "--input-shape",
    multiple=True,
    metavar="NAME:DxDxD",
    help="Shape for an input with symbolic dims (repeatable).",
)
@click.option(
    "--inputs",
    "inputs_path",
    type=click.Path(path_type=Path),
    help="Validate on real data: .npz of input name -> array, or .npy for a one-input model.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**32 - 1),
    help="Seed of the generated validation inputs.",
)
@click.option(
    "--samples",
    default=1,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Validate on this many generated input sets (seeds SEED, SEED+1, ...); one batch "
    "when every input's first dim is free.",
)
@click.option(
    "--save-inputs",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the validation inputs in DIR (inputs-K.npz), to reproduce a failure.",
)
@click.option(
    "--save-outputs",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep every run's outputs in DIR (PROVIDER-ROLE-K.npz).",
)
@click.option(
    "--keep-functions",
    is_flag=True,
    help="Leave model-local functions as they are (by default calls of those holding a "
    "BatchNormalization that could fold are inlined).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 4, writing no model, when any BatchNormalization is left unfolded (a CI gate).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the report (what --report writes) on stdout as one JSON document; the lines "
    "go to stderr.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Print more detail (timings, notes, onnxruntime's full messages).",
)
@click.version_option(__version__, "--version", prog_name="bnfold", message="%(prog)s %(version)s")
def command(
    models: tuple[Path, ...],
    output: Path | None,
    recursive: bool,
    jobs: int,
    dry_run: bool,
    report_path: Path | None,
    no_validate: bool,
    providers: str,
    provider_option: tuple[str, ...],
    ep_library: tuple[Path, ...],
    tf32: bool,
    rtol: tuple[str, ...],
    atol: tuple[str, ...],
    input_shape: tuple[str, ...],
    inputs_path: Path | None,
    seed: int,
    samples: int,
    save_inputs: Path | None,
    save_outputs: Path | None,
    keep_functions: bool,
    strict: bool,
    as_json: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Fold BatchNormalization into neighbouring Conv, ConvTranspose, Gemm and MatMul layers of
    the ONNX model IN, prove the result in onnxruntime, and write it to OUT. Several models (or
    a folder of them) go to the folder OUT, one output per model."""
    console = _Console(quiet, verbose, as_json)
    if output is None and not dry_run:
        raise click.UsageError("give -o OUT, or --dry-run to only report")
    if dry_run:
        output = None
    ProviderRequest.parse(providers)  # a bad name is a usage error, --no-validate or not
    if inputs_path is not None and not inputs_path.is_file():
        raise InputError(
            inputs_path, "no such file" if not inputs_path.exists() else "is not a file"
        )
    settings = _Settings(
        validate=not no_validate,
        strict=strict,
        inline_functions=not keep_functions,
        quiet=quiet,
        verbose=verbose,
        as_json=as_json,
        options={
            "providers": providers,
            "provider_options": parse_provider_options(provider_option),
            "plugin_libraries": [str(p) for p in ep_library],
            "rtol": _parse_tolerance(rtol, "--rtol"),
            "atol": _parse_tolerance(atol, "--atol"),
            "input_shapes": _parse_shapes(input_shape),
            "inputs": inputs_path,
            "seed": seed,
            "samples": samples,
            "tf32": tf32,
            "save_inputs": save_inputs,
            "save_outputs": save_outputs,
        },
    )
    if no_validate and _given_on_the_command_line(VALIDATION_OPTIONS):
        console.out("WARNING | validation options have no effect with --no-validate")
    if batch.is_batch(models):
        _fold_many(models, output, recursive, jobs, report_path, settings, console)
        return
    check_paths(models[0], output, report_path)
    started = time.perf_counter()
    result = fold_file(models[0], output, report=report_path, reporter=console, **settings.fold)
    elapsed = time.perf_counter() - started
    console.out(view.summary_line(result.fold, elapsed, result.validation, output is None))
    if as_json:
        console.document(result.report_text().rstrip("\n"))
    refusal = _refusal(result)
    if refusal is not None:
        raise refusal


@dataclass(frozen=True)
class _Settings:
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


def _refusal(result) -> BnfoldError | None:
    """Why OUT was not written (--strict, or validation), as the error the command ends with."""
    if result.unfolded:
        first = result.fold.skipped[0]
        return Unfolded(
            f"{result.unfolded} BatchNormalization left unfolded (--strict); the folded model "
            f"was not written: {first.batchnorm}: {first.reason}"
        )
    if not result.passed and result.validation is not None:
        validation = result.validation
        ran = any(p.outputs for p in validation.providers)
        what = "failed" if ran else "could not run (use --no-validate to skip it)"
        first_line = next((ln for ln in validation.lines() if ln.startswith("FAILED")), "")
        return ValidationFailed(
            f"validation {what}; the folded model was not written: {first_line}"
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


def _fold_one(job: batch.Job, settings: _Settings, console: _Console | None = None):
    """One model of several, as a command of its own would fold it (messages name options as
    the command does, in a worker process too); its failure is an outcome, not an exception (an
    interrupt still goes up)."""
    with naming.command_line():
        return _folded_outcome(job, settings, console)


def _folded_outcome(job: batch.Job, settings: _Settings, console: _Console | None):
    console = console or _Console(settings.quiet, settings.verbose, settings.as_json, keep=True)
    outcome = batch.Outcome(job.label, 0)
    try:
        options = _options_for(job, settings)
        started = time.perf_counter()
        result = fold_file(job.source, job.target, reporter=console, **options)
        elapsed = time.perf_counter() - started
        console.out(view.summary_line(result.fold, elapsed, result.validation, job.target is None))
        outcome.report = result.report_dict()
        refusal = _refusal(result)
        if refusal is not None:
            raise refusal
    except Exception as exc:
        outcome.status, outcome.message = _failure(exc)
        console.error(outcome.message)
    if outcome.report is not None:
        outcome.report["exit_status"] = outcome.status
    outcome.lines = console.kept
    return outcome


def _options_for(job: batch.Job, settings: _Settings) -> dict:
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


def _failure(exc: Exception) -> tuple[int, str]:
    """The exit status and the one line a command of its own would end with."""
    if isinstance(exc, BnfoldError):
        return exc.exit_status, f"bnfold: error: {exc}"
    if isinstance(exc, UnicodeDecodeError):
        return (
            EXIT_BAD_INPUT,
            f"bnfold: error: the model holds text that is not valid UTF-8 ({exc})",
        )
    if isinstance(exc, RecursionError):
        return EXIT_BAD_INPUT, "bnfold: error: the model's graphs are nested too deeply to process"
    return EXIT_INTERNAL, f"bnfold: internal error: {type(exc).__name__}: {exc}"


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


VALIDATION_OPTIONS = (
    "providers",
    "provider_option",
    "ep_library",
    "tf32",
    "rtol",
    "atol",
    "input_shape",
    "inputs_path",
    "seed",
    "samples",
    "save_inputs",
    "save_outputs",
)


def _given_on_the_command_line(names) -> bool:
    """Whether the user typed any of these options (a default value typed counts too)."""
    context = click.get_current_context()
    return any(
        context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        for name in names
    )


def _printable(text: str) -> str:
    """Escape control characters (names in hostile models can hold newlines)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@contextlib.contextmanager
def signals_as_interrupts():
    """Within the block, SIGTERM and SIGHUP raise `Terminated` (default: the process dies where
    it stands, leaving temporary files next to OUT and in the temporary folder)."""

    def terminated(signum, frame):
        raise Terminated(signum)

    previous = {}
    for number in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # (not the main thread: left as is)
            previous[number] = signal.signal(number, terminated)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps errors to one line on stderr and the documented exit status."""
    # A run makes hundreds of thousands of objects and no cycles worth the collector's passes.
    # Called from the console (argv None), the process ends with the command: the collector
    # stays off (turning it back on would walk everything still alive once more).
    paused = collector_paused() if argv is not None else contextlib.nullcontext()
    if argv is None:
        gc.disable()
    try:
        with paused, signals_as_interrupts(), naming.command_line():
            command.main(args=argv, prog_name="bnfold", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(
            _printable(f"bnfold: error: {exc.format_message()} (see bnfold --help)"), err=True
        )
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("bnfold: interrupted", err=True)
        sys.exit(130)
    except BnfoldError as exc:
        click.echo(_printable(f"bnfold: error: {exc}"), err=True)
        sys.exit(exc.exit_status)
    except UnicodeDecodeError as exc:  # a name protobuf could not decode: the model's text
        click.echo(f"bnfold: error: the model holds text that is not valid UTF-8 ({exc})", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except RecursionError:
        click.echo("bnfold: error: the model's graphs are nested too deeply to process", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        click.echo("bnfold: interrupted", err=True)
        sys.exit(130)
    except Terminated as exc:
        click.echo(f"bnfold: interrupted ({signal.Signals(exc.signum).name})", err=True)
        sys.exit(128 + exc.signum)
    except Exception as exc:  # a bug: say so in one line; the traceback only with -v
        if "-v" in (argv or sys.argv) or "--verbose" in (argv or sys.argv):
            traceback.print_exc()
        click.echo(_printable(f"bnfold: internal error: {type(exc).__name__}: {exc}"), err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(0)
