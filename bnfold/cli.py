"""`bnfold IN -o OUT`: fold, validate, write; one line per BatchNormalization and a summary.

Exit statuses (also in `--help` and the README):
  0  success (folded and, unless --no-validate, validated; or --dry-run)
  1  validation failed (or could not be done): OUT is not written
  2  bad input or usage: unreadable/invalid model, unwritable output, bad option
  3  internal error (a bug in bnfold; please report it)
  4  --strict, and some BatchNormalization left unfolded: OUT is not written
  130, 143, 129  interrupted by Ctrl-C, SIGTERM, SIGHUP: nothing written, temporary files removed
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import click

from . import __version__
from .errors import EXIT_BAD_INPUT, BnfoldError, InputError, Unfolded, ValidationFailed
from .fold import collector_paused, fold_in_place
from .model_io import data_file_for, load_model_and_sources, save_model
from .records import FoldResult
from .tensor_data import DataFile, umask
from .validation import ProviderRequest, ValidationReport, parse_provider_options, validate
from .validation.pipeline import import_onnxruntime

EXIT_INTERNAL = 3

EPILOG = """\b
Exit status:
  0  success (folded, validated unless --no-validate; or --dry-run)
  1  validation failed or could not run: OUT is not written
  2  bad input or usage (unreadable or invalid model, unwritable output, bad option)
  3  internal error in bnfold (a bug: please report it)
  4  --strict and some BatchNormalization left unfolded: OUT is not written
  130/143/129  interrupted (Ctrl-C, SIGTERM, SIGHUP): nothing written
"""


class _Console:
    """Where lines go: records and verdicts to stdout (to stderr with --json, whose document is
    stdout), progress and errors to stderr. Commentary never stops a run: a closed or full
    stdout (`| head -1`, `> /dev/full`) is let go, and the model is still written."""

    def __init__(self, quiet: bool, verbose: bool, as_json: bool = False) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.to_stderr = as_json
        self.progress_enabled = not quiet and sys.stderr.isatty()
        self.stdout_gone = False

    def out(self, line: str) -> None:
        if not self.quiet:
            self._echo(_printable(line))

    def out_lines(self, lines) -> None:
        """Many lines in one write (one `echo` per line costs ~15 µs: 0.25 s on 16,000 records)."""
        if not self.quiet:
            text = "\n".join(_printable(line) for line in lines)
            if text:
                self._echo(text)

    def detail(self, line: str) -> None:
        if self.verbose and not self.quiet:
            self._echo(_printable(line))

    def document(self, text: str) -> None:
        """The one thing --json puts on stdout."""
        self._echo(text, err=False)

    def progress(self, line: str) -> None:
        if self.progress_enabled:
            click.echo(f"\r\033[K{line}", err=True, nl=False)

    def progress_done(self) -> None:
        if self.progress_enabled:
            click.echo("\r\033[K", err=True, nl=False)

    def _echo(self, text: str, err: bool | None = None) -> None:
        to_stderr = self.to_stderr if err is None else err
        if self.stdout_gone and not to_stderr:
            return
        try:
            click.echo(text, err=to_stderr)
        except OSError:  # a reader that went away (EPIPE), a full device (ENOSPC), ...
            if to_stderr:
                return
            self.stdout_gone = True
            _silence_stdout()


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
@click.argument("model", metavar="IN", type=click.Path(dir_okay=True, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Where to write the folded model."
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
    model: Path,
    output: Path | None,
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
    the ONNX model IN, prove the result in onnxruntime, and write it to OUT."""
    console = _Console(quiet, verbose, as_json)
    if output is None and not dry_run:
        raise click.UsageError("give -o OUT, or --dry-run to only report")
    if dry_run:
        output = None
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
    _check_not_input(model.resolve() if model.exists() else None, output, report_path)
    ProviderRequest.parse(providers)  # a bad name is a usage error before any work
    if not no_validate:
        import_onnxruntime()  # none installed: say what to install before any work
    if inputs_path is not None and not inputs_path.is_file():
        raise InputError(
            inputs_path, "no such file" if not inputs_path.exists() else "is not a file"
        )
    options = {
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
    }
    started = time.perf_counter()
    console.progress(f"loading {model} ({_size(model)})")
    # fold_in_place makes the graph checks; external data stays in its files until needed
    loaded, sources = load_model_and_sources(model, check=False, lazy=True)
    _check_not_input(sources, output, report_path)
    console.detail(f"loaded in {time.perf_counter() - started:.2f} s")
    # folded weights of an input with external data go straight to OUT's data file, being
    # written next to it (not into memory); it is deleted if OUT is not written
    spilling = output is not None and not dry_run and len(sources) > 1
    with DataFile(output.parent) if spilling else contextlib.nullcontext() as spill:
        console.progress("folding")
        mark = time.perf_counter()
        try:
            result = fold_in_place(loaded, inline_functions=not keep_functions, spill=spill)
        except InputError as exc:  # a graph check failed: name the file
            raise InputError(exc.path or model, exc.problem) from None
        console.progress_done()
        console.detail(f"folded in {time.perf_counter() - mark:.2f} s")
        console.out_lines(_inlined_line(call) for call in result.inlined)
        console.out_lines(_record_line(record) for record in result.records)
        validation = None
        left = len(result.skipped) if strict else 0
        if left:
            console.detail(f"--strict: {left} BatchNormalization left unfolded; not validating")
        elif not no_validate and not (result.folded or result.folded_affine):
            console.detail("nothing folded: the output is the input model; validation not needed")
        elif not no_validate:
            console.progress("validating in onnxruntime")
            mark = time.perf_counter()
            try:
                validation = validate(model.resolve(), result.model, **options)
            except InputError as exc:  # an input the model declares cannot be generated
                raise InputError(exc.path or model, exc.problem) from None
            console.progress_done()
            console.detail(f"validated in {time.perf_counter() - mark:.2f} s")
            for line in validation.lines(verbose=console.verbose):
                console.out(line)
        elif any(_given(v) for k, v in options.items() if k not in ("seed", "samples")) or (
            samples != 1 or providers != "auto"
        ):
            console.out("WARNING | validation options have no effect with --no-validate")
        passed = validation is None or validation.passed
        written = passed and not left and output is not None and not dry_run
        elapsed = time.perf_counter() - started
        # the report is written first, under a temporary name, and put in place once OUT is:
        # a report that cannot be written stops the run before OUT is
        report = None
        if report_path is not None or as_json:
            report = _report_text(model, output, result, validation, elapsed, written, strict)
        with _StagedFile(report_path, report if report_path else None) as staged_report:
            if written:
                console.progress(f"saving {output}")
                # an input with external data keeps it (in OUT.data); else only when over 2 GB
                external = True if len(sources) > 1 else None
                save_model(result.model, output, external_data=external, data_file=spill)
                console.progress_done()
            staged_report.publish(written_with=output if written else None)
    console.out(_summary(result, time.perf_counter() - started, validation, dry_run or not output))
    if as_json and report is not None:
        console.document(report.decode().rstrip("\n"))
    if left:
        first = result.skipped[0]
        raise Unfolded(
            f"{left} BatchNormalization left unfolded (--strict); the folded model was not "
            f"written: {first.batchnorm}: {first.reason}"
        )
    if not passed:
        ran = any(p.outputs for p in validation.providers)
        what = "failed" if ran else "could not run (use --no-validate to skip it)"
        first = next((line for line in validation.lines() if line.startswith("FAILED")), "")
        raise ValidationFailed(f"validation {what}; the folded model was not written: {first}")


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


def _given(value) -> bool:
    if isinstance(value, (dict, list, tuple)):
        return bool(value)
    return value not in (None, False, "auto")


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
    try:
        size = path.stat().st_size
    except OSError:
        return "?"
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _record_line(record) -> str:
    where = f"{record.graph}/" if record.graph else ""
    if record.kind == "folded":
        into = f"into {record.into_op} '{record.into}'"
        return f"FOLDED  | {where}{record.batchnorm} | {into} | {record.how}"
    return f"SKIPPED | {where}{record.batchnorm} | {record.reason}"


def _inlined_line(call) -> str:
    where = f"{call.graph}/" if call.graph else ""
    count = f"{call.batchnorms} BatchNormalization" if call.batchnorms else "calls others"
    return f"INLINED | {where}{call.call} | function {call.function} | {count}"


def _summary(
    result: FoldResult, elapsed: float, validation: ValidationReport | None, dry_run: bool
) -> str:
    parts = [
        f"folded {len(result.folded)} of {result.batchnorm_count} BatchNormalization",
        f"{result.nodes_before} → {result.nodes_after} nodes",
    ]
    if result.folded_affine:
        parts[0] += f" (+ {len(result.folded_affine)} Mul/Add)"
    if result.inlined:
        calls = len(result.inlined)
        parts.insert(1, f"inlined {calls} function call{'s' if calls != 1 else ''}")
    if validation is not None:
        parts.append("validated" if validation.passed else "validation FAILED")
    if dry_run:
        parts.append("dry run: nothing written")
    parts.append(f"{elapsed:.2f} s")
    return " | ".join(parts)


def _report_text(model, output, result, validation, elapsed, written: bool, strict) -> bytes:
    report = {
        "bnfold": __version__,
        "input": str(model),
        "output": None if output is None else str(output),
        "written": written,
        "strict": strict,
        **result.to_dict(),
        "seconds": round(elapsed, 4),
        "validation": None if validation is None else validation.to_dict(),
    }
    return (json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n").encode()


class _StagedFile:
    """`payload` written to a temporary file next to `path` on entry (an `InputError` if it
    cannot be), put in place by `publish`, removed if the block ends without it. With no path,
    nothing."""

    def __init__(self, path: Path | None, payload: bytes | None) -> None:
        self.path, self.payload = path, payload
        self.temporary: str | None = None

    def __enter__(self) -> _StagedFile:
        if self.path is None or self.payload is None:
            return self
        try:
            descriptor, self.temporary = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(self.payload)
        except OSError as exc:
            self._remove()
            raise InputError(self.path, f"cannot be written ({exc.strerror or exc})") from None
        return self

    def publish(self, written_with: Path | None) -> None:
        """Put the file in place; if that fails, the model `written_with` (just written) is
        removed too, so that a failed run leaves nothing new."""
        if self.temporary is None or self.path is None:
            return
        try:
            os.chmod(self.temporary, 0o666 & ~umask())
            os.replace(self.temporary, self.path)
            self.temporary = None
        except OSError as exc:
            if written_with is not None:
                for path in (written_with, data_file_for(written_with)):
                    with contextlib.suppress(OSError):
                        path.unlink()
            raise InputError(self.path, f"cannot be written ({exc.strerror or exc})") from None

    def __exit__(self, *exc_info) -> None:
        self._remove()

    def _remove(self) -> None:
        if self.temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temporary)
            self.temporary = None


def _json_safe(value):
    """JSON has no NaN or infinity: write those as the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _printable(text: str) -> str:
    """Escape control characters (names in hostile models can hold newlines)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: the run unwinds like Ctrl-C (temporary files are removed on
    the way out) and exits with 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


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
        with paused, signals_as_interrupts():
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
