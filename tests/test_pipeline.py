"""`bnfold.fold_file`: the command's pipeline for Python callers."""

from __future__ import annotations

import json

import onnx

import bnfold
from bnfold.pipeline import Reporter
from tests.builders import MODELS, assert_same_function, bn_node, bn_params, make_model, value_info

RESNET = MODELS / "resnet_tiny.onnx"


class Recorder(Reporter):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def progress(self, text: str) -> None:
        self.seen.append(text.split()[0])

    def folded(self, result) -> None:
        self.seen.append(f"folded {len(result.folded)}")

    def validated(self, report) -> None:
        self.seen.append(report.verdict())


def test_fold_file_folds_validates_writes_and_reports(tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    recorder = Recorder()
    result = bnfold.fold_file(RESNET, out, providers="cpu", report=report, reporter=recorder)
    assert result.written and result.passed and out.exists()
    assert_same_function(onnx.load(RESNET), onnx.load(out))
    assert json.loads(report.read_text()) == json.loads(result.report_text())
    assert recorder.seen == [
        "loading",
        "folding",
        "folded 10",
        "saving",  # under a temporary name, which validation runs
        "validating",
        "validation PASSED | passed on cpu",
    ]


def test_without_a_target_nothing_is_written(tmp_path):
    result = bnfold.fold_file(RESNET, validate=False)
    assert not result.written and result.output is None and result.validation is None


def test_strict_writes_nothing_when_a_batchnorm_is_left(tmp_path, rng):
    model = make_model(
        [bn_node("x", "n"), onnx.helper.make_node("Relu", ["n"], ["y"])],
        [value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        bn_params(rng, 3),
    )
    path, out = tmp_path / "lone.onnx", tmp_path / "o.onnx"
    onnx.save(model, path)
    result = bnfold.fold_file(path, out, strict=True)
    assert result.unfolded == 1 and not result.passed and not result.written
    assert not out.exists()


def test_bad_validation_options_are_refused_before_any_work():
    recorder = Recorder()
    for options, error in (
        ({"samples": 0}, bnfold.InputError),
        ({"seed": -1}, bnfold.InputError),
        ({"rtol": "x"}, bnfold.InputError),
        ({"input_shapes": "input:1x3x32x32"}, bnfold.InputError),
        ({"providers": "tpu"}, bnfold.InputError),
        ({"bogus": 1}, TypeError),
    ):
        try:
            bnfold.fold_file(RESNET, reporter=recorder, **options)
        except error:
            pass
        else:
            raise AssertionError(f"{options} was accepted")
    assert recorder.seen == []  # nothing was loaded


def test_a_report_that_cannot_be_put_in_place_removes_only_what_this_run_wrote(
    tmp_path, monkeypatch
):
    import os

    import bnfold.pipeline

    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    out.write_bytes(b"earlier model")
    (tmp_path / "o.onnx.data").write_bytes(b"earlier data, not this run's")
    real_replace = os.replace

    def no_room(source, destination):
        if str(destination) == str(report):
            raise OSError(28, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(bnfold.pipeline.os, "replace", no_room)
    try:
        bnfold.fold_file(RESNET, out, validate=False, report=report)
    except bnfold.InputError as exc:
        assert "r.json" in str(exc)
    else:
        raise AssertionError("the report's failure was not reported")
    assert not out.exists()  # this run's OUT went with the report
    assert (tmp_path / "o.onnx.data").read_bytes() == b"earlier data, not this run's"
