"""The command line, in process (and a few real runs of the console command): outputs, reports,
exit statuses, and the failure contract (one line, no traceback, no partial output, input
untouched)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from bnfold.cli import main
from tests.builders import MODELS, assert_same_function

BNFOLD = shutil.which("bnfold", path=str(Path(sys.executable).parent)) or shutil.which("bnfold")
RESNET = MODELS / "resnet_tiny.onnx"


@dataclass
class Ran:
    """What a run of the command came to (as `subprocess.CompletedProcess` has it)."""

    returncode: int
    stdout: str
    stderr: str


def bnfold(*args, cwd=None) -> Ran:
    """The command, run in this process as the console script runs it (`bnfold.cli.main`): its
    exit status and what it printed. The few tests about the process itself (signals, pipes,
    the console script) start a real one (`bnfold_process`)."""
    out, err = io.StringIO(), io.StringIO()
    status: object = 0
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        _working_in(cwd),
    ):
        try:
            main([str(arg) for arg in args])
        except SystemExit as exc:
            status = exc.code
    code = status if isinstance(status, int) else 0 if status is None else 1
    return Ran(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _working_in(folder):
    """`contextlib.chdir` (Python 3.11+), for 3.10 too; None: where we are."""
    before = os.getcwd()
    if folder is not None:
        os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def bnfold_process(*args, cwd=None) -> subprocess.CompletedProcess:
    """The installed console script, in a process of its own."""
    assert BNFOLD, "the bnfold console script is not installed"
    return subprocess.run(
        [BNFOLD, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_clean_failure(proc, status, *, mentions):
    assert proc.returncode == status, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert mentions in lines[0], lines[0]


def test_fold_a_shipped_model(tmp_path):
    out = tmp_path / "out.onnx"
    proc = bnfold_process(RESNET, "-o", out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "resnet_tiny.onnx | 0.3 MB | opset 17 | IR 8 | from pytorch 2.13.0"
    assert not any(line.startswith(("FOLDED", "SKIPPED")) for line in lines)  # (with -v)
    assert "BatchNormalization      10       0  (-10)" in lines
    assert any(line.startswith("PASSED | cpu | output 'logits'") for line in lines)
    assert lines[-1].startswith("folded 10 of 10 BatchNormalization | 34 → 24 nodes | validated")
    assert len(lines) < 16 and not proc.stderr  # (no terminal: no progress line)
    folded = onnx.load(out)
    onnx.checker.check_model(folded, full_check=True)
    assert not [n for n in folded.graph.node if n.op_type == "BatchNormalization"]
    feeds = {"input": np.random.default_rng(0).standard_normal([2, 3, 32, 32]).astype(np.float32)}
    assert_same_function(onnx.load(RESNET), folded, feeds=feeds)


def test_python_dash_m_and_version():
    proc = subprocess.run(
        [sys.executable, "-m", "bnfold", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("bnfold ")
    help_text = bnfold("--help").stdout
    assert "Exit status" in help_text and "--no-validate" in help_text


def test_dry_run_and_json_report(tmp_path):
    report = tmp_path / "r.json"
    proc = bnfold(MODELS / "pointnet_tiny.onnx", "--dry-run", "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert "dry run: nothing written" in proc.stdout
    assert list(tmp_path.iterdir()) == [report]
    data = json.loads(report.read_text())
    assert data["batchnorm_folded"] == 5 and data["output"] is None
    assert {r["into_op"] for r in data["folded"]} == {"Conv", "Gemm"}
    assert data["validation"]["passed"] is True
    assert data["validation"]["settings"]["graph_optimization_level"] == "ORT_DISABLE_ALL"


def test_quiet_prints_nothing(tmp_path):
    proc = bnfold(RESNET, "-o", tmp_path / "o.onnx", "-q", "--no-validate")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_piped_output_has_no_progress_codes(tmp_path):
    proc = bnfold(RESNET, "-o", tmp_path / "o.onnx")
    assert "\033" not in proc.stdout + proc.stderr


def test_no_validate_skips_validation(tmp_path):
    proc = bnfold(RESNET, "-o", tmp_path / "o.onnx", "--no-validate")
    assert proc.returncode == 0
    assert "PASSED" not in proc.stdout and "validated" not in proc.stdout


def test_explicit_cuda_without_cuda_names_every_provider_and_writes_nothing(tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    proc = bnfold(RESNET, "-o", out, "--providers", "cpu,cuda", "--report", report)
    assert proc.returncode == 1
    assert "validation FAILED | passed on cpu | required but unavailable: cuda" in proc.stdout
    data = json.loads(report.read_text())
    assert data["written"] is False and not out.exists()
    assert data["validation"]["providers_used"] == ["cpu"]
    assert data["validation"]["providers_failed"] == ["cuda"]


def test_samples_and_saved_inputs_and_outputs(tmp_path):
    report = tmp_path / "r.json"
    proc = bnfold(
        RESNET,
        "-o",
        tmp_path / "o.onnx",
        "--samples",
        "3",
        "--seed",
        "5",
        "--report",
        report,
        "--save-inputs",
        tmp_path / "in",
        "--save-outputs",
        tmp_path / "out",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    settings = json.loads(report.read_text())["validation"]["settings"]
    assert settings["samples"] == 3 and settings["seeds"] == [5, 6, 7]
    saved = np.load(tmp_path / "in" / "inputs-0.npz")["input"]
    assert saved.shape[0] == 3  # one batch of three: the model's batch dim is free
    assert (tmp_path / "out" / "cpu-folded-0.npz").exists()
    again = bnfold(RESNET, "--dry-run", "--inputs", tmp_path / "in" / "inputs-0.npz")
    assert again.returncode == 0 and "validation PASSED" in again.stdout


def test_npy_inputs_and_their_errors(tmp_path):
    data = np.random.default_rng(0).standard_normal([2, 3, 32, 32])
    np.save(tmp_path / "x.npy", data)  # float64: rounded to the declared float32, with a note
    proc = bnfold(RESNET, "--dry-run", "--inputs", tmp_path / "x.npy", "-v")
    assert proc.returncode == 0, proc.stderr
    assert "NOTE | input 'input' rounded from float64 to float32" in proc.stdout
    assert_clean_failure(
        bnfold(RESNET, "--dry-run", "--inputs", tmp_path / "none.npz"), 2, mentions="no such file"
    )
    np.save(tmp_path / "bad.npy", np.zeros([1, 3, 31, 32], np.float32))
    assert_clean_failure(
        bnfold(RESNET, "--dry-run", "--inputs", tmp_path / "bad.npy"),
        2,
        mentions="the model declares batchx3x32x32",
    )


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--provider-option", "cuda"], "is not NAME:KEY=VALUE"),
        (["--providers", "auto,cpu"], "auto cannot be combined"),
        (["--input-shape", "input:1x3x31x32"], "the model declares batchx3x32x32"),
        (["--input-shape", "image:1x3x32x32"], "'image', which is not an input"),
        (["--rtol", "scores:1e-3"], "'scores', which is not an output"),
        (
            ["--input-shape", "input:1x3x32x32", "--input-shape", "input:2x3x32x32"],
            "'input' is given twice",
        ),
        (
            ["--providers", "cpu", "--provider-option", "cuda:use_tf32=1"],
            "--provider-option for cuda, which --providers does not ask for (cpu)",
        ),
    ],
)
def test_validation_usage_errors(args, mentions):
    """Found before the fold: no line of its (the op table) comes first."""
    proc = bnfold(RESNET, "--dry-run", *args)
    assert_clean_failure(proc, 2, mentions=mentions)
    assert "op type" not in proc.stdout + proc.stderr


# ----- bad input and output: exit 2, one line, nothing written, input untouched -------------


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = RESNET.read_bytes()
    files = {
        "missing": tmp_path / "nope.onnx",
        "directory": tmp_path / "adir",
        "empty": tmp_path / "empty.onnx",
        "text": tmp_path / "text.onnx",
        "truncated": tmp_path / "truncated.onnx",
    }
    files["directory"].mkdir()
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a model\n" * 20)
    files["truncated"].write_bytes(good[: len(good) // 2])
    return files


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "truncated"])
def test_bad_input_files(tmp_path, kind):
    path = _bad_inputs(tmp_path)[kind]
    before = path.read_bytes() if path.is_file() else None
    out = tmp_path / "out.onnx"
    proc = bnfold(path, "-o", out)
    assert_clean_failure(proc, 2, mentions=str(path))
    assert not out.exists()
    if before is not None:
        assert path.read_bytes() == before


def test_invalid_model_dangling_input(tmp_path):
    model = onnx.load(RESNET)
    model.graph.node[3].input[0] = "does_not_exist"
    path = tmp_path / "dangling.onnx"
    onnx.save(model, path)
    proc = bnfold(path, "-o", tmp_path / "o.onnx")
    assert_clean_failure(proc, 2, mentions="does_not_exist")


def test_unsupported_opset(tmp_path):
    model = onnx.load(RESNET)
    model.opset_import[0].version = 999
    path = tmp_path / "future.onnx"
    onnx.save(model, path)
    proc = bnfold(path, "-o", tmp_path / "o.onnx")
    assert_clean_failure(proc, 2, mentions="opset 999")


@pytest.mark.parametrize("target", ["missing_dir", "is_dir", "same_as_input"])
def test_bad_output_paths(tmp_path, target):
    source = tmp_path / "in.onnx"
    shutil.copy(RESNET, source)
    out = {
        "missing_dir": tmp_path / "no" / "such" / "out.onnx",
        "is_dir": tmp_path,
        "same_as_input": source,
    }[target]
    proc = bnfold(source, "-o", out)
    assert_clean_failure(proc, 2, mentions=str(out))
    assert source.read_bytes() == RESNET.read_bytes()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = bnfold(RESNET, "-o", locked / "o.onnx")
        assert_clean_failure(proc, 2, mentions="not writable")
    finally:
        locked.chmod(0o700)


def test_usage_errors_exit_2(tmp_path):
    assert bnfold(RESNET).returncode == 2  # neither -o nor --dry-run
    assert bnfold(RESNET, "--dry-run", "--input-shape", "bad").returncode == 2
    assert bnfold(RESNET, "--dry-run", "--providers", "tpu").returncode == 2
    assert bnfold("--no-such-option").returncode == 2


# ----- never overwrite what is not ours --------------------------------------------------------


def test_report_or_output_over_the_input_is_refused(tmp_path):
    source = tmp_path / "in.onnx"
    shutil.copy(RESNET, source)
    for args in (
        ["-o", tmp_path / "o.onnx", "--report", source],
        ["--dry-run", "--report", source],
        ["-o", tmp_path / "o.onnx", "--report", tmp_path / "o.onnx"],
        ["-o", tmp_path / "o.onnx", "--report", tmp_path / "o.onnx.data"],
    ):
        proc = bnfold(source, *args)
        assert proc.returncode == 2, proc.stderr
        assert source.read_bytes() == RESNET.read_bytes()
    assert "data file name; give the report another path" in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_output_over_the_input_external_data_is_refused(tmp_path):
    model = onnx.load(RESNET)
    onnx.save(
        model, tmp_path / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0
    )
    before = (tmp_path / "w.bin").read_bytes()
    proc = bnfold(tmp_path / "m.onnx", "-o", tmp_path / "w.bin")
    assert_clean_failure(proc, 2, mentions="data files")
    assert (tmp_path / "w.bin").read_bytes() == before


def test_special_files_are_refused(tmp_path):
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    proc = bnfold(fifo, "-o", tmp_path / "o.onnx")
    assert_clean_failure(proc, 2, mentions="not a regular file")
    proc = bnfold(RESNET, "-o", fifo)
    assert_clean_failure(proc, 2, mentions="not a regular file")


@pytest.mark.parametrize(
    "args", [["--atol", "nan"], ["--rtol", "inf"], ["--seed", "-1"], ["--rtol", "-1"], []]
)
def test_usage_errors_are_one_line(tmp_path, args):
    extra = args or ["--no-such-option"]
    proc = bnfold(RESNET, "--dry-run", *extra)
    assert_clean_failure(proc, 2, mentions="bnfold: error:")


def test_control_characters_in_names_are_escaped(tmp_path):
    model = onnx.load(RESNET)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.name = "evil\nname"
    path = tmp_path / "evil.onnx"
    onnx.save(model, path)
    proc = bnfold(path, "--dry-run", "--no-validate", "-v")
    assert proc.returncode == 0
    assert "evil\\nname" in proc.stdout


def test_zero_sized_inputs_do_not_count_as_validated(tmp_path):
    proc = bnfold(RESNET, "--dry-run", "--input-shape", "input:0x3x32x32")
    assert proc.returncode == 1
    assert "nothing was compared" in proc.stdout


def test_report_is_strict_json(tmp_path):
    report = tmp_path / "r.json"
    proc = bnfold(RESNET, "--dry-run", "--report", report, "--atol", "logits:0", "--rtol", "0")
    assert proc.returncode == 1, proc.stderr  # any difference is over a zero limit: inf × it
    data = json.loads(report.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert data["validation"]["providers"][0]["outputs"][0]["limit_used"] == "inf"
    assert data["written"] is False


@pytest.mark.parametrize(
    ("atol", "passes"), [(["1e-12", "logits:1e3"], True), (["1e3", "logits:0"], False)]
)
def test_a_tolerance_for_an_output_wins_over_the_one_for_all(tmp_path, atol, passes):
    """`--atol V --atol NAME:V`: the named output gets its own (the fold moves it by rounding:
    over 0, under 1e3); the others the global one."""
    options = [part for value in atol for part in ("--atol", value)]
    report = tmp_path / "r.json"
    proc = bnfold(RESNET, "--dry-run", "--report", report, "--rtol", "0", *options)
    assert proc.returncode == (0 if passes else 1), proc.stderr
    (output,) = json.loads(report.read_text())["validation"]["providers"][0]["outputs"]
    assert output["criterion"] == "tolerance" and output["atol"] == (1e3 if passes else 0)


def test_tolerance_for_an_output_the_model_lacks_is_a_usage_error():
    proc = bnfold(RESNET, "--dry-run", "--atol", "input:0")
    assert proc.returncode == 2
    assert "'input', which is not an output of the model (its outputs: logits)" in proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_validation_removes_temporary_files(tmp_path, signum):
    """Killed while validating: exit 128 + the signal, no OUT, nothing left behind (next to OUT,
    or in the temporary folder, where validation keeps the models it runs)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import models as benchmark_models

    source, out, scratch = tmp_path / "chain.onnx", tmp_path / "out" / "o.onnx", tmp_path / "t"
    out.parent.mkdir()
    scratch.mkdir()
    onnx.save(benchmark_models.chain(1500, channels=16), source)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)}
    proc = subprocess.Popen(
        [BNFOLD, str(source), "-o", str(out), "--providers", "cpu", "--samples", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stdout:  # the table of ops comes out once the fold is done
        if line.startswith("op type"):
            break
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == (130 if signum == signal.SIGINT else 128 + signum), stderr
    assert stderr.strip().startswith("bnfold: interrupted"), stderr
    assert "Traceback" not in stderr
    assert list(out.parent.iterdir()) == []
    # (the interpreter itself may leave a file of its own there: only bnfold's count)
    assert [p.name for p in scratch.iterdir() if "bnfold" in p.name or p.suffix == ".tmp"] == []


def test_a_fifo_where_out_data_goes_is_refused(tmp_path):
    out = tmp_path / "o.onnx"
    os.mkfifo(tmp_path / "o.onnx.data")
    proc = bnfold(RESNET, "-o", out, "--no-validate")
    assert_clean_failure(proc, 2, mentions="(the output's data file) exists and is not a regular")
    assert not out.exists()


def test_a_name_that_is_not_utf8_is_a_bad_input(tmp_path):
    model = onnx.load(RESNET)
    model.graph.output[0].name = "logitsXX"
    for node in model.graph.node:
        node.output[:] = ["logitsXX" if o == "logits" else o for o in node.output]
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString().replace(b"logitsXX", b"logits\xff\xfe"))
    proc = bnfold(path, "-o", tmp_path / "o.onnx")
    assert_clean_failure(proc, 2, mentions="graph output 0 has a name that is not valid UTF-8")


def test_a_report_that_cannot_be_written_stops_the_run_before_out(tmp_path, monkeypatch, capsys):
    import errno

    import bnfold.cli
    import bnfold.model_io

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    with pytest.raises(SystemExit) as exit_status:
        bnfold.cli.main([str(RESNET), "-o", str(out), "--report", str(report), "--no-validate"])
    assert exit_status.value.code == 2
    assert "r.json: cannot be written (No space left on device)" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ----- pipelines: pipes, a CI gate, JSON ------------------------------------------------------


def lone_batchnorm(tmp_path):
    """x → BatchNormalization → Relu: nothing to fold it into."""
    from tests.builders import bn_node, bn_params, make_model, value_info

    rng = np.random.default_rng(0)
    model = make_model(
        [bn_node("x", "n"), onnx.helper.make_node("Relu", ["n"], ["y"])],
        [value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        bn_params(rng, 3),
    )
    path = tmp_path / "lone.onnx"
    onnx.save(model, path)
    return path


def test_strict_exits_4_and_writes_nothing_when_a_batchnorm_is_left(tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    proc = bnfold(lone_batchnorm(tmp_path), "-o", out, "--strict", "--report", report)
    assert proc.returncode == 4, proc.stderr
    assert "SKIPPED | bn_node |" in proc.stdout
    assert "1 BatchNormalization left unfolded (--strict)" in proc.stderr
    assert not out.exists() and json.loads(report.read_text())["written"] is False
    assert bnfold(RESNET, "-o", out, "--strict").returncode == 0 and out.exists()


def test_json_puts_exactly_the_report_on_stdout(tmp_path):
    report = tmp_path / "r.json"
    proc = bnfold(RESNET, "-o", tmp_path / "o.onnx", "--json", "--report", report)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document == json.loads(report.read_text())
    assert document["written"] is True and document["validation"]["passed"] is True
    assert "op type" in proc.stderr and "validation PASSED" in proc.stderr


@pytest.mark.parametrize(
    ("args", "status", "problem"),
    [
        (["{garbage}", "-o", "{out}"], 2, "is not an ONNX model"),
        (["{model}", "-o", "{out}", "--input-shape", "input:1x3x8x8"], 2, "model declares"),
        (["{model}"], 2, "-o"),
        (["{model}", "-o", "{out}", "--providers", "cuda"], 1, "validation could not run"),
        (["{model}", "{model}", "-o", "{folder}"], 2, "is given twice"),
    ],
)
def test_json_gives_one_document_whatever_the_error(tmp_path, args, status, problem):
    """Where the run ends before its report exists (an unreadable model, a usage error), the
    document says so; where the report exists (validation could not run), it is the report."""
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(bytes(range(256)) * 8)
    paths = {"garbage": garbage, "out": tmp_path / "o.onnx", "model": RESNET}
    paths["folder"] = tmp_path / "many"
    proc = bnfold(*[a.format(**paths) for a in args], "--json")
    assert proc.returncode == status and problem in proc.stderr
    document = json.loads(proc.stdout)
    assert document["written"] is False
    if "error" in document:
        assert document["exit_status"] == status and problem in document["error"]
    assert not paths["out"].exists()


@pytest.mark.parametrize("sink", ["closed pipe", "full device"])
def test_the_model_is_written_whatever_happens_to_stdout(tmp_path, sink):
    out = tmp_path / "o.onnx"
    command = [BNFOLD, str(RESNET), "-o", str(out)]
    if sink == "full device":
        with open("/dev/full", "w") as full:
            proc = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True)
        stderr, code = proc.stderr, proc.returncode
    else:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # the reader went away (`| head -0`)
        stderr = proc.stderr.read()
        code = proc.wait()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert_same_function(onnx.load(RESNET), onnx.load(out))


def test_without_onnxruntime_the_command_says_what_to_install_before_any_work(
    tmp_path, without_onnxruntime, capsys
):
    import bnfold.cli

    out = tmp_path / "o.onnx"
    with pytest.raises(SystemExit) as exit_status:
        bnfold.cli.main([str(RESNET), "-o", str(out)])
    captured = capsys.readouterr()
    assert exit_status.value.code == 2 and captured.out == ""
    assert captured.err.startswith("bnfold: error: validation needs onnxruntime: pip install")
    with pytest.raises(SystemExit) as exit_status:
        bnfold.cli.main([str(RESNET), "-o", str(out), "--no-validate"])
    assert exit_status.value.code == 0 and out.exists()


def test_declared_dependencies_are_what_the_package_imports():
    """Every third-party module bnfold imports is a declared dependency, or an extra's (imported
    only where needed)."""
    import ast

    tomllib = pytest.importorskip("tomllib")  # (Python 3.11+)

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {d.split(">")[0].split("=")[0].strip().lower() for d in project["dependencies"]}
    extras = {
        d.split(">")[0].strip().lower()
        for deps in project["optional-dependencies"].values()
        for d in deps
    }
    distribution = {"google": "protobuf", "onnx_graphsurgeon": "onnx-graphsurgeon"}
    imported = set()
    package = Path(importlib.import_module("bnfold").__file__).parent  # (in CI, the wheel's too)
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            imported.update(name.split(".")[0] for name in names)
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "bnfold"}
    needed = {distribution.get(m, m).replace("_", "-").lower() for m in third_party}
    declared = {d.replace("_", "-") for d in declared}
    assert needed - declared <= {"onnxruntime", "onnx-graphsurgeon"}
    assert {"onnxruntime", "onnx-graphsurgeon"} <= extras
    assert declared <= needed  # nothing declared that is not used


@pytest.mark.parametrize("option", [["--seed", "3"], ["--rtol", "0"], ["--samples", "1"]])
def test_validation_options_typed_with_no_validate_are_warned_about(tmp_path, option):
    proc = bnfold(RESNET, "-o", tmp_path / "o.onnx", "--no-validate", *option)
    assert proc.returncode == 0
    assert "WARNING | validation options have no effect with --no-validate" in proc.stderr


def test_a_provider_option_the_provider_does_not_take_is_warned_about(tmp_path):
    """onnxruntime's CPU provider takes no options and says nothing: bnfold does."""
    proc = bnfold(RESNET, "-o", tmp_path / "o.onnx", "--provider-option", "cpu:arena=1")
    assert proc.returncode == 0 and (tmp_path / "o.onnx").exists()
    assert (
        "WARNING | CPUExecutionProvider does not report taking the option 'arena' given with "
        "--provider-option (onnxruntime ignores options a provider does not know)"
    ) in proc.stderr


def test_help_and_version_load_neither_onnx_nor_numpy():
    """Start-up stays near click's own (`benchmarks/bench.py` measures it): the heavy modules
    load only when a model is folded."""
    probe = (
        "import sys; sys.argv = ['bnfold', '{}']; import bnfold.cli\n"
        "try:\n    bnfold.cli.main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('onnx', 'numpy', 'onnxruntime', 'google.protobuf')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(heavy, file=sys.stderr)"
    )
    for flag in ("--help", "--version"):
        proc = subprocess.run(
            [sys.executable, "-c", probe.format(flag)], capture_output=True, text=True
        )
        assert proc.returncode == 0 and proc.stderr.strip() == "[]", proc.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_on_a_terminal_the_phase_and_its_seconds_are_shown(tmp_path):
    primary, secondary = os.openpty()
    proc = subprocess.Popen(
        [BNFOLD, str(RESNET), "-o", str(tmp_path / "o.onnx"), "--providers", "cpu"],
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(primary)
    shown = b"".join(chunks).decode()
    assert proc.returncode == 0
    for phase in ("loading", "folding", "saving", "validating in onnxruntime"):
        assert re.search(rf"\r\x1b\[K{phase}[^\r]* \(\d+ s\)", shown), (phase, shown)
    assert shown.endswith("\r\x1b[K")  # the line is cleared at the end
