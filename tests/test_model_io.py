"""Loading and saving: external data in and out, refused data locations, atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import bnfold
from bnfold import encoding, model_io
from tests.builders import MODELS, assert_same_function, run

RESNET = MODELS / "resnet_tiny.onnx"


def save_with_external_data(model, folder, name="m.onnx", location="weights.bin", **options):
    """`model` saved with every tensor in one data file (`options`: more of `onnx.save`'s)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(
        model,
        folder / name,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
        **options,
    )
    return folder / name


def test_external_data_input_and_output_from_another_directory(tmp_path):
    source = save_with_external_data(onnx.load(RESNET), tmp_path / "in")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "bnfold", str(source), "-o", str(out)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "folded 10 of 10" in proc.stdout
    onnx.checker.check_model(str(out))
    assert (out.parent / "folded.onnx.data").exists()  # external data in, external data out
    assert_same_function(onnx.load(RESNET), onnx.load(out))


def test_save_with_external_data_writes_one_file_named_after_output(tmp_path):
    result = bnfold.fold(RESNET)
    out = tmp_path / "big.onnx"
    written = bnfold.save_model(result.model, out, external_data=True)
    assert written == [out, tmp_path / "big.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    onnx.checker.check_model(str(out))
    assert out.stat().st_size < 20_000
    assert_same_function(onnx.load(RESNET), onnx.load(out))


@pytest.mark.parametrize("failing", ["model", "data"])
def test_a_failed_save_leaves_the_earlier_out_and_out_data_as_they_were(
    tmp_path, monkeypatch, failing
):
    """A full disk when OUT (or OUT.data) is put in place: the earlier pair stays, byte for
    byte, and loads (a server may hold the old data file open)."""
    out = tmp_path / "o.onnx"
    bnfold.save_model(onnx.load(RESNET), out, external_data=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace
    target = out if failing == "model" else tmp_path / "o.onnx.data"

    failed = []

    def full_disk(source, destination):  # the first write in place fails; moving back works
        if str(destination) == str(target) and not failed:
            failed.append(destination)
            raise OSError(28, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(bnfold.InputError, match="No space left on device"):
        bnfold.save_model(bnfold.fold(RESNET).model, out, external_data=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert_same_function(onnx.load(RESNET), onnx.load(out))


def test_external_data_chosen_automatically_over_the_protobuf_limit(tmp_path):
    folded = bnfold.fold(RESNET).model
    with model_io.StagedModel(folded, tmp_path / "o.onnx", protobuf_limit=1000) as staged:
        staged.commit()  # (1000 bytes stand in for 2 GB)
    assert (tmp_path / "o.onnx.data").exists()


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "link/weights.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    model = onnx.load(RESNET)
    folder = tmp_path / "m"
    path = save_with_external_data(model, folder)
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "weights.bin").write_bytes((folder / "weights.bin").read_bytes())
    os.symlink(tmp_path / "real", folder / "link")
    loaded = onnx.load(path, load_external_data=False)
    for t in onnx.external_data_helper._get_all_tensors(loaded):
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(loaded, path)
    with pytest.raises(bnfold.InputError, match="refused"):
        bnfold.load_model(path)


def test_missing_external_data_is_a_clean_error(tmp_path):
    path = save_with_external_data(onnx.load(RESNET), tmp_path / "m")
    (tmp_path / "m" / "weights.bin").unlink()
    with pytest.raises(bnfold.InputError, match="missing"):
        bnfold.load_model(path)


def test_truncated_external_data_is_a_clean_error(tmp_path):
    path = save_with_external_data(onnx.load(RESNET), tmp_path / "m")
    data = tmp_path / "m" / "weights.bin"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(bnfold.InputError, match="beyond the end"):
        bnfold.load_model(path)


def test_a_negative_external_data_offset_is_named_as_such(tmp_path):
    path = save_with_external_data(onnx.load(RESNET), tmp_path / "m")
    model = onnx.load(path, load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.external_data)
    for entry in tensor.external_data:
        if entry.key == "offset":
            entry.value = "-4096"
    onnx.save(model, path)
    with pytest.raises(bnfold.InputError, match="has a negative offset or length"):
        bnfold.load_model(path)


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(bnfold.InputError, match="No space left"):
        bnfold.save_model(bnfold.fold(RESNET).model, tmp_path / "o.onnx", external_data=True)
    assert list(tmp_path.iterdir()) == []


def test_cycle_is_refused():
    model = onnx.parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
            a = Add(x, b)
            b = Relu(a)
            y = Identity(b)
        }"""
    )
    with pytest.raises(bnfold.InputError, match="cycle"):
        model_io.check_model_structure(model)


def test_out_of_order_graph_is_accepted():
    model = onnx.parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
            y = Relu(a)
            a = Abs(x)
        }"""
    )
    model_io.check_model_structure(model)
    np.testing.assert_array_equal(run(model, {"x": np.array([-1, 2], np.float32)})[0], [1, 2])


def test_models_are_written_in_pieces_exactly_as_serialized(tmp_path):
    """No copy of all tensors at once, and the file is the canonical encoding (readers that do
    not merge repeated messages, like Netron's, see the whole model)."""
    folded = bnfold.fold(RESNET).model
    pieces = list(encoding.Encoding(folded, chunk_bytes=1 << 12).pieces())
    assert len(pieces) > 10
    assert max(map(len, pieces)) < len(folded.SerializeToString()) / 2
    (written,) = bnfold.save_model(folded, tmp_path / "o.onnx")
    assert written.read_bytes() == folded.SerializeToString()
    onnx.checker.check_model(str(written), full_check=True)
    assert_same_function(onnx.load(RESNET), onnx.load(written))


def test_inline_output_refused_when_over_the_protobuf_limit(tmp_path):
    folded = bnfold.fold(RESNET).model
    with pytest.raises(bnfold.InputError, match="over 2 GB"):
        model_io.StagedModel(folded, tmp_path / "o.onnx", external_data=False, protobuf_limit=1000)
    assert not list(tmp_path.iterdir())


def test_tensor_attribute_ops_are_those_whose_schema_has_such_attributes():
    holding = {"TENSOR", "TENSORS", "GRAPH", "GRAPHS"}
    expected = {
        schema.name
        for schema in onnx.defs.get_all_schemas_with_history()
        if schema.domain == "" and any(a.type.name in holding for a in schema.attributes.values())
    }
    assert expected == model_io.TENSOR_ATTRIBUTE_OPS


def test_external_tensors_in_constant_attributes_are_loaded(tmp_path):
    """Constant values (also inside an If branch) saved as external data come back in memory."""
    big = np.arange(64, dtype=np.float32)
    then_graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["t"], value=onnx.numpy_helper.from_array(big))],
        "then",
        [],
        [onnx.helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [64])],
    )
    else_graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["e"], value=onnx.numpy_helper.from_array(-big))],
        "else",
        [],
        [onnx.helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [64])],
    )
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(big)),
            onnx.helper.make_node(
                "If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph
            ),
            onnx.helper.make_node("Add", ["y", "k"], ["z"]),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [64])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path / "m"
    save_with_external_data(model, folder, location="w.bin", convert_attribute=True)
    on_disk = onnx.load(folder / "m.onnx", load_external_data=False)
    assert len(list(model_io.external_tensors(on_disk))) == 3
    loaded = bnfold.load_model(folder / "m.onnx")
    tensors = model_io.all_tensors(loaded)
    assert len(tensors) == 3
    for tensor in tensors:
        assert tensor.data_location == onnx.TensorProto.DEFAULT
        assert np.array_equal(np.abs(onnx.numpy_helper.to_array(tensor)), big)


def test_external_data_keeps_string_tensors_inline_and_typed_ones_exact(tmp_path):
    """Strings have no raw bytes to move out (they stay in the model); float_data becomes raw."""
    words = np.array([f"label-{i:04d}" for i in range(200)], dtype=object)  # over 1 KB
    floats = np.linspace(-1, 1, 512, dtype=np.float32)
    typed = onnx.helper.make_tensor("f", onnx.TensorProto.FLOAT, [512], floats.tolist())
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Identity", ["s"], ["s_out"]),
            onnx.helper.make_node("Identity", ["f"], ["f_out"]),
        ],
        "g",
        [],
        [
            onnx.helper.make_tensor_value_info("s_out", onnx.TensorProto.STRING, [200]),
            onnx.helper.make_tensor_value_info("f_out", onnx.TensorProto.FLOAT, [512]),
        ],
        [onnx.numpy_helper.from_array(words, "s"), typed],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    out = tmp_path / "m.onnx"
    bnfold.save_model(model, out, external_data=True)
    on_disk = onnx.load(out, load_external_data=False)
    kinds = {t.name: t.data_location for t in on_disk.graph.initializer}
    assert kinds == {"s": onnx.TensorProto.DEFAULT, "f": onnx.TensorProto.EXTERNAL}
    back = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    assert list(back["s"]) == [w.encode() for w in words] or list(back["s"]) == list(words)
    assert np.array_equal(back["f"], floats)


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (lambda t: t.float_data.extend([1.0, 2.0, 3.0]), "but holds 3 values in float_data"),
        (lambda t: setattr(t, "data_type", 77), "has an unknown data type 77"),
        (lambda t: setattr(t, "data_type", 0), "has an unknown data type 0"),
    ],
)
def test_typed_field_data_that_does_not_match_the_shape_is_refused(tmp_path, spoil, problem):
    model = onnx.load(RESNET)
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    spoil(weight)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(bnfold.InputError, match=problem):
        bnfold.fold(path)


@pytest.mark.parametrize("location", ["a" * 300, "/".join(["b" * 200] * 30)])
def test_external_data_locations_too_long_for_the_file_system_are_refused(tmp_path, location):
    model = onnx.load(RESNET)
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(bnfold.InputError, match=f"tensor '{weight.name}' cannot be read"):
        bnfold.load_model(path)


@pytest.mark.parametrize("external_data", [False, True])
def test_a_staged_model_runs_before_it_is_put_in_place_and_commits_what_save_model_writes(
    tmp_path, external_data
):
    import onnxruntime

    out, elsewhere = tmp_path / "o.onnx", tmp_path / "saved"
    elsewhere.mkdir()
    bnfold.save_model(bnfold.fold(RESNET).model, elsewhere / "o.onnx", external_data=external_data)
    model = bnfold.fold(RESNET).model
    with model_io.StagedModel(model, out, external_data=external_data) as staged:
        assert not out.exists() and staged.readable.parent == tmp_path
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = onnxruntime.InferenceSession(
            staged.readable, options, providers=["CPUExecutionProvider"]
        )
        feeds = {"input": np.random.default_rng(0).standard_normal([1, 3, 32, 32], np.float32)}
        expected = run(bnfold.fold(RESNET).model, feeds)[0]
        assert session.run(None, feeds)[0].tobytes() == expected.tobytes()
        written = staged.commit()
    assert written == [out, *([tmp_path / "o.onnx.data"] if external_data else [])]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [p.name for p in written]
    for path in written:
        assert path.read_bytes() == (elsewhere / path.name).read_bytes()


def test_a_staged_model_not_committed_leaves_the_earlier_files_and_nothing_else(tmp_path):
    out = tmp_path / "o.onnx"
    bnfold.save_model(onnx.load(RESNET), out, external_data=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with model_io.StagedModel(bnfold.fold(RESNET).model, out, external_data=True) as staged:
        assert staged.readable.exists() and len(list(tmp_path.iterdir())) == 4
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
