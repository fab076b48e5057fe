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
import json
import math
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import naming
from ._version import __version__
from .errors import EXIT_BAD_INPUT, BnfoldError, InputError, Terminated, failure
from .naming import printable
from .protobuf_speed import collector_paused

if TYPE_CHECKING:
    from .validation.criterion import PerOutput

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


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            if name in shapes:
                raise click.BadParameter(f"'{name}' is given twice", param_hint="--input-shape")
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
            if any(d < 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise click.BadParameter(
                f"'{value}' is not NAME:DxDxD", param_hint="--input-shape"
            ) from None
    return shapes


def _parse_tolerance(values: tuple[str, ...], option: str) -> PerOutput | None:
    """`--atol 1e-5 --atol logits:1e-3`: one value for every output, values by name, or both."""
    from .validation.criterion import PerOutput

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
    return PerOutput(per_output, global_value)


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
    "limit for the outputs it covers. An element fails only if it exceeds both; the one not "
    "given defaults to rtol 1e-4 / atol 1e-5 x max|output| (float32; README).",
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
    help="Exit 4, writing no model, when any BatchNormalization (or BN-like Mul/Add next to a "
    "layer) is left unfolded (a CI gate).",
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
    from .run import Settings, fold_models  # (here: --help and --version load nothing more)
    from .validation import ProviderRequest, parse_provider_options

    if output is None and not dry_run:
        raise click.UsageError("give -o OUT, or --dry-run to only report")
    if dry_run:
        output = None
    ProviderRequest.parse(providers)  # a bad name is a usage error, --no-validate or not
    if inputs_path is not None and not inputs_path.is_file():
        raise InputError(
            inputs_path, "no such file" if not inputs_path.exists() else "is not a file"
        )
    settings = Settings(
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
    ignored = no_validate and _given_on_the_command_line(VALIDATION_OPTIONS)
    warnings = (
        ("WARNING | validation options have no effect with --no-validate",) if ignored else ()
    )
    fold_models(
        models,
        output,
        report_path,
        settings,
        recursive=recursive,
        workers=jobs,
        warnings=warnings,
    )


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


def _documents_printed() -> int:
    """How many --json documents this process has printed (none before the console exists)."""
    console = sys.modules.get("bnfold.console")
    return 0 if console is None else console.documents_printed


def _json_error(argv: list[str] | None, before: int, line: str, status: int) -> None:
    """With --json, a run that ends with an error before printing its document prints one
    saying so: stdout is always one JSON document (`{"bnfold", "error", "exit_status",
    "written": false}`)."""
    if "--json" not in (sys.argv[1:] if argv is None else argv) or _documents_printed() > before:
        return
    document = {"bnfold": __version__, "error": line, "exit_status": status, "written": False}
    with contextlib.suppress(OSError):  # (a reader that went away)
        click.echo(json.dumps(document, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps errors to one line on stderr and the documented exit status."""
    # Called from the console (argv None), the process ends with the command: the collector
    # stays off after it.
    documents = _documents_printed()
    try:
        with (
            collector_paused(resume=argv is not None),
            signals_as_interrupts(),
            naming.command_line(),
        ):
            command.main(args=argv, prog_name="bnfold", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        line = printable(f"bnfold: error: {exc.format_message()} (see bnfold --help)")
        click.echo(line, err=True)
        _json_error(argv, documents, line, EXIT_BAD_INPUT)
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("bnfold: interrupted", err=True)
        sys.exit(130)
    except (BnfoldError, UnicodeDecodeError, RecursionError) as exc:
        status, line = failure(exc)
        click.echo(printable(line), err=True)
        _json_error(argv, documents, printable(line), status)
        sys.exit(status)
    except KeyboardInterrupt:
        click.echo("bnfold: interrupted", err=True)
        sys.exit(130)
    except Terminated as exc:
        click.echo(f"bnfold: interrupted ({signal.Signals(exc.signum).name})", err=True)
        sys.exit(128 + exc.signum)
    except Exception as exc:  # a bug: say so in one line; the traceback only with -v
        if "-v" in (argv or sys.argv) or "--verbose" in (argv or sys.argv):
            traceback.print_exc()
        status, line = failure(exc)
        click.echo(printable(line), err=True)
        sys.exit(status)
    sys.exit(0)
