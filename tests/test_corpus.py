"""Real models from other projects' test suites (`../shared/corpus`, see its README): every
file goes through the CLI without a traceback, and each does what the README expects."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import bnfold
from tests.builders import CORPUS, assert_same_function, op_types, run
from tests.test_cli import bnfold as run_command

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason="../shared/corpus is not beside the repo"
)

FUSION = CORPUS / "onnxruntime/onnxruntime/test/testdata/transform/fusion"
LIGHT = CORPUS / "onnx/onnx/backend/test/data/light"
NODE = CORPUS / "onnx/onnx/backend/test/data/node"
CONVERTED = CORPUS / "onnx/onnx/backend/test/data/pytorch-converted"
BURN = CORPUS / "burn-onnx"


def all_corpus_models() -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(CORPUS / "**" / "*.onnx"), recursive=True))


@pytest.mark.parametrize(
    "path", all_corpus_models(), ids=lambda p: str(p.relative_to(CORPUS)) if CORPUS.is_dir() else ""
)
def test_every_corpus_file_through_the_cli(tmp_path, path):
    """Every file folds, validates (where anything folded) and is written: exit 0, pinned (the
    training-mode, opset-1 and quantised files included: what is left is reported, not an
    error)."""
    before = path.read_bytes()
    out = tmp_path / "out.onnx"
    proc = run_command(path, "-o", out)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.exists()
    assert "validation FAILED" not in proc.stdout
    assert path.read_bytes() == before


def fold_counts(path: Path) -> tuple[int, int]:
    result = bnfold.fold(path)
    return len(result.folded), len(result.skipped)


@pytest.mark.parametrize(
    ("name", "folded"),
    [
        ("fuse-conv-bn-no-bias.onnx", 1),
        ("fuse-conv-bn-mul-add-unsqueeze-no-bias.onnx", 1),
        ("fuse-conv-bn-mul-add-unsqueeze.onnx", 1),
        ("fuse-conv-bn-mul-add-unsqueeze.negative_axes.onnx", 1),
        ("fuse-matmul-bn-directly.onnx", 1),
        ("fuse-matmul-bn-directly-dont-fuse.onnx", 0),
        ("fuse-matmul-bn-only-reshape.onnx", 0),
        ("fuse-matmul-bn-only-transpose.onnx", 0),
        ("fuse-matmul-bn-with-reshape.onnx", 1),  # [1, 5] -> [1, 1, 1, 5] -> [1, 5, 1, 1]
        ("fuse-matmul-bn-non-ignorable-node.onnx", 1),  # an Identity between
    ],
)
def test_onnxruntime_fusion_cases(name, folded):
    path = FUSION / name
    result = bnfold.fold(path)
    assert len(result.folded) == folded, result.skipped
    if folded:
        assert "BatchNormalization" not in op_types(result.model)
        original = onnx.load(path)
        assert_same_function(original, result.model)


@pytest.mark.parametrize("kind", ["reshape", "transpose"])
def test_onnxruntime_matmul_layout_cases_skipped_with_the_axis(kind):
    """[1, 5] -> Reshape [-1, 1, 1, 5] or Transpose: the columns leave the channel axis."""
    (record,) = bnfold.fold(FUSION / f"fuse-matmul-bn-only-{kind}.onnx").skipped
    assert "columns of MatMul" in record.reason and "not on its channel axis 1" in record.reason


def test_fp16_conv_bn_add_mul_still_six():
    path = FUSION / "fuse-conv-bn-add-mul-float16.onnx"
    result = bnfold.fold(path)
    assert len(result.folded) == 1
    x = next(i for i in result.model.graph.input)
    outputs = run(result.model, {x.name: np.ones([1, 1, 3, 3], np.float16)})
    for output in outputs:
        assert np.all(output == 6.0)


@pytest.mark.parametrize(
    ("name", "folded", "total"),
    [
        ("resnet50", 53, 53),
        ("inception_v2", 69, 69),
        ("shufflenet", 49, 49),
        ("densenet121", 59, 121),
    ],
)
def test_light_zoo_models(name, folded, total):
    """Weights and BN parameters come from ConstantOfShape nodes; DenseNet's other 62 BN follow
    Concat or pooling and have no linear layer before them."""
    path = LIGHT / f"light_{name}.onnx"
    result = bnfold.fold(path)
    assert (len(result.folded), result.batchnorm_count) == (folded, total)
    for record in result.skipped:
        assert "follows" in record.reason, record
    original = onnx.load(path)
    assert_same_function(original, result.model, rtol=1e-5)


@pytest.mark.parametrize(
    "folder",
    sorted(p.parent for p in NODE.glob("test_batchnorm_*/model.onnx"))
    + sorted(p.parent for p in CONVERTED.glob("test_BatchNorm*/model.onnx")),
    ids=lambda p: p.name,
)
def test_standalone_batchnorm_tests_untouched_and_correct(folder):
    result = bnfold.fold(folder / "model.onnx")
    assert not result.folded and len(result.skipped) == 1
    if folder.name.endswith("training_mode"):
        assert "training mode" in result.skipped[0].reason
    assert result.model.SerializeToString() == onnx.load(folder / "model.onnx").SerializeToString()
    if bnfold.graphs.default_opset(result.model) < 7:
        return  # onnxruntime has no BatchNormalization-6 kernel; unchanged bytes are the check
    data = folder / "test_data_set_0"
    model = result.model
    feeds = {}
    for i, info in enumerate(model.graph.input):
        tensor_file = data / f"input_{i}.pb"
        if tensor_file.exists():
            feeds[info.name] = numpy_helper.to_array(onnx.load_tensor(str(tensor_file)))
    feeds = {k: v for k, v in feeds.items() if k not in {t.name for t in model.graph.initializer}}
    got = run(model, feeds)
    expected = numpy_helper.to_array(onnx.load_tensor(str(data / "output_0.pb")))
    np.testing.assert_allclose(got[0], expected, rtol=1e-4, atol=1e-5)


def test_burn_batch_norm_fold_nothing_not_constant():
    folder = BURN / "crates/onnx-tests/tests/batch_norm"
    for name in ("batch_norm_runtime.onnx", "batch_norm_partial_constant.onnx"):
        result = bnfold.fold(folder / name)
        assert not result.folded
        assert all("not constant" in r.reason for r in result.skipped)


def test_burn_mnist_gemm_bn_and_bn_flatten_gemm_both_folded():
    """Gemm -> BN folds backward; Relu -> BN -> Flatten -> Gemm folds forward, each channel into
    its block of the Gemm's input features."""
    path = BURN / "examples/onnx-inference/src/model/mnist.onnx"
    result = bnfold.fold(path)
    assert [r.into_op for r in result.folded] == ["Gemm", "Gemm"] and not result.skipped
    assert "BatchNormalization" not in op_types(result.model)
    assert_same_function(onnx.load(path), result.model)


def test_qonnx_custom_quant_op_left_intact():
    for path in sorted((CORPUS / "qonnx").rglob("*.onnx")):
        original = onnx.load(path)
        result = bnfold.fold(path)
        assert not result.folded
        assert [(n.domain, n.op_type) for n in result.model.graph.node] == [
            (n.domain, n.op_type) for n in original.graph.node
        ]


def test_training_mode_and_old_opsets_never_folded():
    paths = sorted((CORPUS / "openvino").rglob("*.onnx")) + sorted(
        (BURN / "crates/onnx-ir/tests/fixtures/opset_compliance").glob("*.onnx")
    )
    for path in paths:
        result = bnfold.fold(path)
        assert not result.folded, path
