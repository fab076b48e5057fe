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
        "validating",
        "validation PASSED | passed on cpu",
        "saving",
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
