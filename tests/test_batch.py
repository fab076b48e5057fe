"""Many models in one command: `bnfold A B ... -o OUTDIR`, `bnfold DIR -o OUTDIR [-r] [-j N]`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from bnfold import batch
from tests.builders import MODELS
from tests.test_cli import BNFOLD
from tests.test_fuzz import run_in_process
from tests.test_model_io import save_with_external_data

SHIPPED = sorted(MODELS.glob("*.onnx"))


@pytest.fixture
def folder(tmp_path) -> Path:
    """The shipped models, one of them in a sub-folder, and a file that is not a model."""
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    for path in SHIPPED:
        shutil.copy(path, source / path.name)
    shutil.copy(MODELS / "resnet_tiny.onnx", source / "sub" / "deep.onnx")
    (source / "broken.onnx").write_bytes(b"not a model")
    return source


def single(path: Path, out: Path, capsys, *options) -> bytes:
    status, _, _ = run_in_process([str(path), "-o", str(out), *options], capsys)
    assert status == 0
    return out.read_bytes()


def test_a_folder_goes_to_a_folder_each_model_as_a_single_run_writes_it(folder, tmp_path, capsys):
    out = tmp_path / "out" / "new"  # (created)
    status, stdout, stderr = run_in_process([str(folder), "-o", str(out), "-r"], capsys)
    assert status == 2  # the worst: broken.onnx is bad input
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == sorted([p.name for p in SHIPPED] + ["sub/deep.onnx"])
    for path in SHIPPED:
        alone = single(folder / path.name, tmp_path / "alone.onnx", capsys)
        assert (out / path.name).read_bytes() == alone
    table = stdout.splitlines()[-(len(SHIPPED) + 4) :]
    assert table[0] == table[0].rstrip() and table[0].startswith("model")
    assert table[0].split()[1:] == [
        *("BN", "folded", "BN", "left", "arithmetic", "folded"),
        *("validation", "seconds", "result"),
    ]
    assert table[-1] == f"{len(SHIPPED) + 2} models: {len(SHIPPED) + 1} written, 1 failed"
    broken = next(line for line in table if "broken.onnx" in line)
    assert "exit 2: is not an ONNX model" in broken
    resnet = next(line for line in table if line.startswith(str(folder / "resnet_tiny.onnx")))
    assert resnet.split()[1:5] == ["10", "0", "0", "passed"] and resnet.endswith("written")
    errors = stderr.splitlines()
    assert errors[0].startswith(f"bnfold: error: {folder / 'broken.onnx'}: is not an ONNX model")
    assert errors[-1] == f"bnfold: error: 1 of {len(SHIPPED) + 2} models failed (exit status 2)"


def test_without_r_sub_folders_are_left_and_an_empty_folder_is_bad_input(folder, tmp_path, capsys):
    (folder / "broken.onnx").unlink()
    out = tmp_path / "out"
    status, _, _ = run_in_process([str(folder), "-o", str(out), "--no-validate"], capsys)
    assert status == 0 and not (out / "sub").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, stderr = run_in_process([str(empty), "-o", str(out)], capsys)
    assert status == 2 and "holds no *.onnx file (-r also looks in sub-folders)" in stderr


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["{a}", "{b}", "-o", "{out}"], "would both be written as resnet_tiny.onnx"),
        (["{a}", "{a}", "-o", "{out}"], "is given twice"),
        (
            ["{a}", "{c}", "-o", "{file}"],
            "is not a folder (several models are written to a folder)",
        ),
        (
            ["{folder}", "-o", "{folder}"],
            "is the input folder: the outputs would replace the inputs",
        ),
        (
            ["{folder}", "-o", "{folder}/sub", "-r"],
            "is inside the input folder " + "{folder}" + ", which -r searches",
        ),
        (["{b}", "{c}", "-o", "{folder}"], "is one of the input models: it would be replaced"),
    ],
)
def test_outputs_that_would_collide_are_refused_before_any_work(
    tmp_path, capsys, arguments, problem
):
    paths = {
        "a": MODELS / "resnet_tiny.onnx",
        "b": tmp_path / "other" / "resnet_tiny.onnx",
        "c": MODELS / "mobilenet_tiny.onnx",
        "out": tmp_path / "out",
        "file": tmp_path / "a_file",
        "folder": tmp_path / "other",
    }
    paths["b"].parent.mkdir()
    shutil.copy(paths["a"], paths["b"])
    paths["file"].write_text("")
    status, _, stderr = run_in_process([a.format(**paths) for a in arguments], capsys)
    assert status == 2 and problem.format(**paths) in stderr and len(stderr.splitlines()) == 1
    assert not paths["out"].exists() and sorted(p.name for p in paths["b"].parent.iterdir()) == [
        "resnet_tiny.onnx"
    ]


def test_workers_write_the_same_files_and_print_the_same_lines(folder, tmp_path, capsys):
    (folder / "broken.onnx").unlink()
    lines = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}"
        status, stdout, _ = run_in_process(
            [str(folder), "-r", "-j", jobs, "-o", str(out), "--providers", "cpu"], capsys
        )
        assert status == 0
        lines[jobs] = [
            re.sub(r"\d+\.\d+ s|\d+\.\d\d(?!\d)", "#", line) for line in stdout.splitlines()
        ]
    assert lines["1"] == lines["2"]
    for path in (tmp_path / "out1").rglob("*.onnx"):
        assert (
            path.read_bytes()
            == (tmp_path / "out2" / path.relative_to(tmp_path / "out1")).read_bytes()
        )


def test_one_report_for_all_models_in_json_and_by_report(folder, tmp_path, capsys):
    report = tmp_path / "r.json"
    status, stdout, _ = run_in_process(
        [str(folder), "--dry-run", "--json", "--report", str(report), "--no-validate"], capsys
    )
    assert status == 2
    document = json.loads(stdout)
    assert document == json.loads(report.read_text())
    assert document["exit_status"] == 2
    by_input = {Path(m["input"]).name: m for m in document["models"]}
    assert by_input["broken.onnx"]["exit_status"] == 2 and "error" in by_input["broken.onnx"]
    resnet = by_input["resnet_tiny.onnx"]
    assert resnet["exit_status"] == 0 and resnet["batchnorm_folded"] == 10
    assert resnet["written"] is False and resnet["output"] is None


def test_external_data_and_kept_inputs_stay_with_each_model(tmp_path, capsys):
    source = tmp_path / "in"
    save_with_external_data(
        onnx.load(MODELS / "resnet_tiny.onnx"), source, name="a.onnx", location="a.bin"
    )
    shutil.copy(MODELS / "mobilenet_tiny.onnx", source / "b.onnx")
    out, kept = tmp_path / "out", tmp_path / "kept"
    status, _, _ = run_in_process(
        [str(source), "-o", str(out), "--providers", "cpu", "--save-inputs", str(kept)], capsys
    )
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.onnx", "a.onnx.data", "b.onnx"]
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*.npz")) == [
        "a/inputs-0.npz",
        "b/inputs-0.npz",
    ]


def test_strict_and_validation_failures_and_errors_rank_by_severity():
    assert batch.worst_status([0, 4, 1]) == 1
    assert batch.worst_status([4, 0]) == 4
    assert batch.worst_status([1, 2, 4]) == 2
    assert batch.worst_status([2, 3, 0]) == 3
    assert batch.worst_status([]) == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_signal_stops_every_worker_and_leaves_nothing_behind(tmp_path):
    """SIGTERM while two workers validate: exit 143, each worker removes its temporary files."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import models as benchmark_models

    source, out, scratch = tmp_path / "in", tmp_path / "out", tmp_path / "t"
    source.mkdir()
    scratch.mkdir()
    for name in ("a", "b"):
        onnx.save(benchmark_models.chain(1500, channels=16), source / f"{name}.onnx")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)}
    proc = subprocess.Popen(
        [BNFOLD, str(source), "-o", str(out), "-j", "2", "--providers", "cpu", "--samples", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for_staged_outputs(out, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "bnfold: interrupted (SIGTERM)"
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == []
    assert [p.name for p in scratch.iterdir() if "bnfold" in p.name or p.suffix == ".tmp"] == []


def _wait_for_staged_outputs(out: Path, proc: subprocess.Popen) -> None:
    """Until both workers have written their OUT under a temporary name (validation runs it)."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len([p for p in out.iterdir() if p.suffix == ".tmp"]) >= 2:
            return
        time.sleep(0.05)
    pytest.fail("the workers did not get to validation")


def crash_on_b(job: batch.Job) -> batch.Outcome:
    """A worker that dies on model b (the OOM killer, a crash in a provider)."""
    if job.label == "b":
        os._exit(137)
    return batch.Outcome(job.label, 0)


def test_a_worker_that_dies_costs_only_its_own_model():
    jobs = [batch.Job(Path(name), None, name, Path(name)) for name in "abcd"]
    outcomes = list(batch.run_jobs(jobs, crash_on_b, workers=2))
    assert [(o.label, o.status) for o in outcomes] == [("a", 0), ("b", 3), ("c", 0), ("d", 0)]
    assert "the worker process folding it died" in outcomes[1].message


def test_weights_spilled_once_where_a_concat_refolds_them(tmp_path, capsys):
    """Conv → BN → Concat → BN: both BN fold into the Convs; the first fold must not spill the
    weights it writes to OUT.data (the second rewrites them): OUT.data holds each weight once."""
    import numpy as np
    from onnx import helper

    from tests.builders import bn_node, bn_params, make_model, tensor, value_info

    rng = np.random.default_rng(0)
    channels = 256  # (weights of 256 KB: left on disk by the load, spilled by the fold)
    inits = [
        tensor(f"W{i}", rng.normal(0, 0.3, [channels, channels, 1, 1]).astype(np.float32))
        for i in (1, 2)
    ]
    inits += bn_params(rng, channels, prefix="a") + bn_params(rng, channels, prefix="b")
    inits += bn_params(rng, 2 * channels, prefix="c")
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"]),
        bn_node("c1", "y1", prefix="a"),
        helper.make_node("Conv", ["x", "W2"], ["c2"]),
        bn_node("c2", "y2", prefix="b"),
        helper.make_node("Concat", ["y1", "y2"], ["cat"], axis=1),
        bn_node("cat", "y", prefix="c"),
    ]
    model = make_model(
        nodes,
        [value_info("x", onnx.TensorProto.FLOAT, [1, channels, 2, 2])],
        [value_info("y", onnx.TensorProto.FLOAT, [1, 2 * channels, 2, 2])],
        inits,
    )
    source = save_with_external_data(model, tmp_path / "in")
    out = tmp_path / "o.onnx"
    status, _, _ = run_in_process([str(source), "-o", str(out), "--no-validate"], capsys)
    assert status == 0
    saved = onnx.load(out, load_external_data=False)
    lengths = [
        int({e.key: e.value for e in t.external_data}["length"])
        for t in saved.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    data = (tmp_path / "o.onnx.data").stat().st_size
    assert data < sum(lengths) + 4096 * len(lengths)  # (each page-aligned), not twice the weights
