"""Reading a model file without its big tensors (`bnfold.skim`), and lazy loads built on it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import bnfold
from bnfold import model_io, skim, tensor_data
from bnfold.folding import fold_in_place
from tests.builders import bn_node, bn_params, make_model, tensor, value_info


def conv_model(channels: int = 192, seed: int = 0) -> onnx.ModelProto:
    """x → Conv(channels×channels×3×3: 1.3 MB at 192) → BN → Relu: a file big enough to be
    skimmed, with small tensors (BN statistics, a typed-field tensor) that stay in the model."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.05, (channels, channels, 3, 3)).astype(np.float32)
    typed = onnx.helper.make_tensor("unused", onnx.TensorProto.FLOAT, [4096], [0.5] * 4096)
    return make_model(
        [
            onnx.helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"),
            bn_node("c", "b"),
            onnx.helper.make_node("Relu", ["b"], ["y"]),
        ],
        [value_info("x", onnx.TensorProto.FLOAT, [1, channels, 6, 6])],
        [value_info("y", onnx.TensorProto.FLOAT, [1, channels, 6, 6])],
        [tensor("w", weight), *bn_params(rng, channels), typed],
    )


def test_skimmed_is_the_model_without_the_big_raw_data_and_says_where_it_was():
    model = conv_model()
    data = model.SerializeToString()
    encoding, spans = skim.skimmed(data, min_bytes=1024)
    assert [index for index, _, _ in spans] == [0]  # only "w": the statistics are small
    _, offset, length = spans[0]
    assert data[offset : offset + length] == model.graph.initializer[0].raw_data
    skimmed = onnx.ModelProto.FromString(encoding)
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    expected.graph.initializer[0].ClearField("raw_data")
    assert skimmed == expected
    assert encoding == expected.SerializeToString()  # (every length before it re-encoded)


def test_everything_protobuf_merges_is_followed():
    """A graph given twice (protobuf merges them: initializers append), a tensor whose raw data
    is given twice (the last wins), and fields this onnx does not know (kept)."""
    first, second = conv_model(channels=32, seed=1), conv_model(channels=32, seed=2)
    twice = onnx.TensorProto()
    twice.CopyFrom(second.graph.initializer[0])
    older = b"\1" * len(twice.raw_data)
    data = first.SerializeToString() + second.SerializeToString()
    # the tensor record with an earlier raw_data in front: field 9, then the real one
    data += _graph_with(_record(5, _record(9, older) + twice.SerializeToString()))
    data += _record(99, b"unknown field")
    merged = onnx.ModelProto.FromString(data)
    encoding, spans = skim.skimmed(data, min_bytes=1024)
    skimmed = onnx.ModelProto.FromString(encoding)
    assert [i for i, _, _ in spans] == [
        0,
        len(first.graph.initializer),
        len(merged.graph.initializer) - 1,
    ]
    for index, offset, length in spans:
        assert data[offset : offset + length] == merged.graph.initializer[index].raw_data
        merged.graph.initializer[index].ClearField("raw_data")
    assert skimmed.SerializeToString() == merged.SerializeToString()


def _record(number: int, payload: bytes) -> bytes:
    return skim.field_header(number, len(payload)) + payload


def _graph_with(payload: bytes) -> bytes:
    return _record(skim.MODEL_GRAPH, payload)


@pytest.mark.parametrize("cut", [1, 7, 1000])
def test_a_truncated_or_malformed_encoding_is_unskimmable(cut):
    data = conv_model(channels=32).SerializeToString()
    with pytest.raises(skim.Unskimmable):
        skim.skimmed(data[:-cut], min_bytes=1024)
    with pytest.raises(skim.Unskimmable):
        skim.skimmed(data + b"\x0b", min_bytes=1024)  # a group: not ONNX


def test_a_lazy_load_of_one_file_leaves_its_big_weights_in_it(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    assert path.stat().st_size >= model_io.SKIM_FROM
    lazy, sources = model_io.load_model_and_sources(path, lazy=True)
    assert sources == {path.resolve()}
    weight = lazy.graph.initializer[0]
    assert tensor_data.is_on_disk(weight) and tensor_data.disk_span(weight)[0] == str(
        path.resolve()
    )
    eager = model_io.load_model(path)
    for mine, theirs in zip(model_io.all_tensors(lazy), model_io.all_tensors(eager), strict=True):
        assert (
            tensor_data.tensor_to_array(mine).tobytes()
            == tensor_data.tensor_to_array(theirs).tobytes()
        )


def test_a_model_folded_from_a_lazy_load_is_written_byte_for_byte_as_from_a_full_one(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    out = tmp_path / "o.onnx"
    result = bnfold.fold_file(path, out, validate=False)
    assert result.written and not (tmp_path / "o.onnx.data").exists()  # one file, as the input
    eager = model_io.load_model(path)
    fold_in_place(eager)
    bnfold.save_model(eager, tmp_path / "e.onnx")
    assert out.read_bytes() == (tmp_path / "e.onnx").read_bytes()


def test_a_file_that_is_not_a_model_is_reported_as_by_a_full_parse(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(conv_model().SerializeToString()[:-100])
    with pytest.raises(bnfold.InputError, match="not an ONNX model"):
        model_io.load_model_and_sources(path, lazy=True)


def test_a_model_with_fields_onnx_does_not_know_is_still_written_whole(tmp_path):
    """Unknown fields make the encoder write the model in one piece: the weights left in the
    input file are read back into it first (not left pointing at the input)."""
    path = tmp_path / "m.onnx"
    path.write_bytes(conv_model().SerializeToString() + skim.field_header(100, 3) + b"new")
    out = tmp_path / "o.onnx"
    assert bnfold.fold_file(path, out, validate=False).written
    eager = model_io.load_model(path)
    fold_in_place(eager)
    bnfold.save_model(eager, tmp_path / "e.onnx")
    assert out.read_bytes() == (tmp_path / "e.onnx").read_bytes()


def test_raw_data_of_the_wrong_size_is_refused_by_a_lazy_load_too(tmp_path):
    model = conv_model()
    model.graph.initializer[0].raw_data += b"\0\0\0\0"
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    for lazy in (False, True):
        with pytest.raises(bnfold.InputError, match=r"declares shape .* but holds"):
            model_io.load_model_and_sources(path, lazy=lazy)
