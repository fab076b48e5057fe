"""Tensors left in their external data file by a lazy load (what the CLI does): read when a fold
needs them, copied file to file when it does not, and the same folded model as an eager load."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import bnfold
from bnfold import model_io, tensor_data
from bnfold.errors import InputError
from bnfold.folding import fold_in_place
from tests.builders import (
    MODELS,
    assert_same_function,
    bn_node,
    bn_params,
    make_model,
    tensor,
    value_info,
)
from tests.test_cli import assert_clean_failure
from tests.test_cli import bnfold as run_bnfold
from tests.test_model_io import save_with_external_data

SHIPPED = sorted(MODELS.glob("*.onnx"))


def save_external(model, folder, location="m.onnx.data"):
    """`model` saved as exporters do: tensors of 1 KB and more in one data file."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, location=location)
    return folder / "m.onnx"


def big_model(tail: str = "Relu") -> onnx.ModelProto:
    """x → Conv(64×32×3×3, 73 KB) → BN → Relu → Conv(64×64×3×3, 147 KB) → BN → `tail`; a
    Reshape shape and BN statistics that stay small."""
    rng = np.random.default_rng(5)
    inits = [
        tensor("w0", rng.normal(0, 0.2, (64, 32, 3, 3)).astype(np.float32)),
        tensor("w1", rng.normal(0, 0.1, (64, 64, 3, 3)).astype(np.float32)),
        tensor("shape", np.array([1, 32, 8, 8], dtype=np.int64)),
        *bn_params(rng, 64, prefix="bn0"),
        *bn_params(rng, 64, prefix="bn1"),
    ]
    nodes = [
        onnx.helper.make_node("Reshape", ["x", "shape"], ["x4"]),
        onnx.helper.make_node("Conv", ["x4", "w0"], ["c0"], pads=[1] * 4, name="conv0"),
        bn_node("c0", "b0", prefix="bn0"),
        onnx.helper.make_node("Relu", ["b0"], ["r0"]),
        onnx.helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1] * 4, name="conv1"),
        bn_node("c1", "b1", prefix="bn1"),
    ]
    if tail == "Mul":  # a per-channel Mul that folds into conv1 after bn1 did
        inits.append(tensor("k", rng.uniform(0.5, 2, (1, 64, 1, 1)).astype(np.float32)))
        nodes.append(onnx.helper.make_node("Mul", ["b1", "k"], ["y"]))
    elif tail == "residual":  # an Add of two branches: nothing to fold into conv1
        nodes.append(onnx.helper.make_node("Add", ["b1", "r0"], ["y"]))
    else:
        nodes.append(onnx.helper.make_node(tail, ["b1"], ["y"]))
    return make_model(
        nodes,
        [value_info("x", onnx.TensorProto.FLOAT, [1, 2048])],
        [value_info("y", onnx.TensorProto.FLOAT, [1, 64, 8, 8])],
        inits,
    )


def lazy_and_eager(path, lazy_from=None):
    lazy = model_io.load_model_and_sources(path, lazy=True, lazy_from=lazy_from)[0]
    eager = model_io.load_model(path)
    return lazy, eager


def arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: tensor_data.tensor_to_array(t) for t in model_io.all_tensors(model)}


def test_lazy_load_leaves_big_initializers_on_disk_and_reads_the_rest(tmp_path):
    source = save_with_external_data(big_model(), tmp_path)  # every tensor in the data file
    lazy, eager = lazy_and_eager(source)
    on_disk = {t.name for t in model_io.all_tensors(lazy) if tensor_data.is_on_disk(t)}
    assert on_disk == {"w0", "w1"}  # at least LAZY_BYTES; the shape and statistics are read
    assert model_io.holds_data_on_disk(lazy) and not model_io.has_unread_external_data(lazy)
    expected = arrays(eager)
    for name, value in arrays(lazy).items():
        assert value.tobytes() == expected[name].tobytes()


def test_tensors_outside_the_main_graphs_initializers_are_read(tmp_path):
    """Constant values (and an If branch's) come back into the model even when everything
    else may stay on disk: saving relies on only main-graph initializers being on disk."""
    big = np.arange(64, dtype=np.float32)
    branch = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["t"], value=onnx.numpy_helper.from_array(big))],
        "branch",
        [],
        [value_info("t", onnx.TensorProto.FLOAT, [64])],
        [tensor("unused", big)],
    )
    model = make_model(
        [
            onnx.helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch),
            onnx.helper.make_node("Add", ["y", "k"], ["z"]),
        ],
        [value_info("c", onnx.TensorProto.BOOL, [])],
        [value_info("z", onnx.TensorProto.FLOAT, [64])],
        [tensor("k", big)],
    )
    source = save_with_external_data(model, tmp_path / "m", convert_attribute=True)
    lazy = model_io.load_model_and_sources(source, lazy=True, lazy_from=0)[0]
    on_disk = [t.name for t in model_io.all_tensors(lazy) if tensor_data.is_on_disk(t)]
    assert on_disk == ["k"]
    out = tmp_path / "o.onnx"
    bnfold.save_model(lazy, out, external_data=False)  # one protobuf: "k" read in first
    saved = onnx.load(out, load_external_data=False)
    assert not model_io.has_unread_external_data(saved)
    assert np.array_equal(onnx.numpy_helper.to_array(saved.graph.initializer[0]), big)


def test_lazy_load_of_tiny_tensors_leaves_them_on_disk_when_asked(tmp_path):
    source = save_with_external_data(onnx.load(MODELS / "resnet_tiny.onnx"), tmp_path)
    lazy, eager = lazy_and_eager(source, lazy_from=0)
    tensors = model_io.all_tensors(lazy)
    assert tensors and all(map(tensor_data.is_on_disk, tensors))  # (all initializers)
    assert not any(t.HasField("raw_data") for t in tensors)
    assert model_io.holds_data_on_disk(lazy)
    assert not model_io.has_unread_external_data(lazy)
    path, _, _ = tensor_data.disk_span(tensors[0])
    assert path == str((tmp_path / "weights.bin").resolve())
    expected = arrays(eager)
    for name, value in arrays(lazy).items():
        assert np.array_equal(value, expected[name])
        assert value.dtype == expected[name].dtype


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_folding_a_lazy_load_gives_the_eager_result_bit_for_bit(tmp_path, path, batched):
    source = save_with_external_data(onnx.load(path), tmp_path / "in")
    lazy, eager = lazy_and_eager(source, lazy_from=0)
    from_lazy = fold_in_place(lazy, batched=batched)
    from_eager = fold_in_place(eager, batched=batched)
    assert from_lazy.records == from_eager.records
    assert from_lazy.folded
    assert [n.SerializeToString() for n in lazy.graph.node] == [
        n.SerializeToString() for n in eager.graph.node
    ]
    folded = arrays(eager)
    assert arrays(lazy).keys() == folded.keys()
    for name, value in arrays(lazy).items():
        assert value.tobytes() == folded[name].tobytes(), name
    # the tensors a fold rewrote are in the model now; the others are still on disk
    rewritten = [t for t in lazy.graph.initializer if not tensor_data.is_on_disk(t)]
    assert rewritten and len(rewritten) < len(lazy.graph.initializer)


@pytest.mark.parametrize("external_data", [None, True, False])
def test_a_lazy_model_saves_whole_and_self_contained(tmp_path, external_data):
    source = save_with_external_data(onnx.load(MODELS / "resnet_tiny.onnx"), tmp_path / "in")
    lazy = model_io.load_model_and_sources(source, lazy=True, lazy_from=0)[0]
    fold_in_place(lazy)
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    written = bnfold.save_model(lazy, out, external_data=external_data)
    assert written[0] == out
    assert (len(written) == 2) == (external_data is True)  # None: external only over 2 GB
    on_disk = onnx.load(out, load_external_data=False)
    for saved in model_io.all_tensors(on_disk):
        for entry in saved.external_data:
            if entry.key == "location":
                assert entry.value == "folded.onnx.data"  # nothing points into the input folder
    onnx.checker.check_model(str(out))
    assert_same_function(onnx.load(MODELS / "resnet_tiny.onnx"), onnx.load(out))


def test_small_tensors_on_disk_come_back_into_the_model(tmp_path):
    """The input put every tensor in its data file (threshold 0); the output keeps those under
    1 KB in the model, like any other."""
    source = save_with_external_data(onnx.load(MODELS / "resnet_tiny.onnx"), tmp_path / "in")
    lazy = model_io.load_model_and_sources(source, lazy=True, lazy_from=0)[0]
    out = tmp_path / "o.onnx"
    bnfold.save_model(lazy, out, external_data=True)
    on_disk = onnx.load(out, load_external_data=False)
    sizes = {t.name: t.data_location for t in on_disk.graph.initializer}
    for saved in on_disk.graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(saved.data_type).itemsize
        small = itemsize * np.prod(saved.dims) < model_io.EXTERNAL_THRESHOLD
        assert (saved.data_location == onnx.TensorProto.DEFAULT) == small, saved.name
    assert len(set(sizes.values())) == 2  # some of each
    assert_same_function(onnx.load(source), onnx.load(out))


@pytest.mark.parametrize("kernel", ["refuses", "copies part, then refuses", "missing"])
def test_copy_through_memory_where_the_kernel_will_not(tmp_path, monkeypatch, kernel):
    source = save_with_external_data(onnx.load(MODELS / "resnet_tiny.onnx"), tmp_path / "in")
    lazy = model_io.load_model_and_sources(source, lazy=True, lazy_from=0)[0]
    real = os.copy_file_range
    calls = []

    def copy_file_range(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if kernel == "copies part, then refuses" and len(calls) % 2:
            return real(src, dst, min(count, 100), offset_src, offset_dst)
        raise OSError(18, "Invalid cross-device link")

    if kernel == "missing":
        monkeypatch.delattr(os, "copy_file_range")
    else:
        monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    out = tmp_path / "o.onnx"
    pieces = tensor_data.DataFile(tmp_path, copy_step=1000)  # several pieces per tensor
    bnfold.save_model(lazy, out, external_data=True, data_file=pieces)
    assert bool(calls) == (kernel != "missing")
    expected = arrays(onnx.load(source))
    for name, value in arrays(onnx.load(out)).items():
        assert value.tobytes() == expected[name].tobytes(), name


def test_external_data_of_the_wrong_size_is_refused_by_a_lazy_load(tmp_path):
    source = save_with_external_data(onnx.load(MODELS / "resnet_tiny.onnx"), tmp_path)
    model = onnx.load(source, load_external_data=False)
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
    for entry in weight.external_data:
        if entry.key == "length":
            entry.value = str(int(entry.value) - 4)
    onnx.save(model, source)
    with pytest.raises(InputError, match=f"'{weight.name}' declares shape .* holds"):
        model_io.load_model_and_sources(source, lazy=True, lazy_from=0)
    with pytest.raises(InputError, match="declares shape"):  # the eager load says so too
        model_io.load_model(source)


def test_a_data_file_that_changes_after_loading_is_a_clean_error(tmp_path):
    source = save_with_external_data(onnx.load(MODELS / "resnet_tiny.onnx"), tmp_path)
    lazy = model_io.load_model_and_sources(source, lazy=True, lazy_from=0)[0]
    os.truncate(tmp_path / "weights.bin", 100)
    with pytest.raises(InputError, match=r"weights\.bin: changed while bnfold used it"):
        fold_in_place(lazy)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(InputError, match=r"weights\.bin: cannot be read"):
        bnfold.save_model(lazy, tmp_path / "o.onnx", external_data=True)
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "o.onnx.data").exists()


def test_other_tensor_types_on_disk_read_through_numpy_helper(tmp_path):
    values = np.arange(-300, 300, dtype=np.int32)
    tensor = onnx.numpy_helper.from_array(values, "v")
    path = tmp_path / "v.bin"
    path.write_bytes(b"\0" * 8 + tensor.raw_data)
    tensor_data.put_on_disk(tensor, tensor_data.DiskSpan(str(path.resolve()), 8, values.nbytes))
    assert tensor_data.is_on_disk(tensor)
    assert np.array_equal(tensor_data.tensor_to_array(tensor), values)
    assert tensor_data.data_size(tensor) == values.nbytes
    assert tensor_data.is_on_disk(tensor)  # reading leaves it on disk


def test_a_tensor_on_disk_maps_read_only_without_a_copy(tmp_path):
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    tensor = onnx.numpy_helper.from_array(values, "v")
    path = tmp_path / "v.bin"
    path.write_bytes(b"\0" * 100 + tensor.raw_data)
    tensor_data.put_on_disk(tensor, tensor_data.DiskSpan(str(path.resolve()), 100, values.nbytes))
    view = tensor_data.mapped(tensor)
    assert view is not None and np.array_equal(view, values) and view.shape == (2, 3, 4)
    assert not view.flags.writeable
    assert tensor_data.mapped(onnx.numpy_helper.from_array(values, "w")) is None  # in the model
    ints = onnx.numpy_helper.from_array(np.arange(4, dtype=np.int32), "i")
    tensor_data.put_on_disk(ints, tensor_data.DiskSpan(str(path.resolve()), 0, 16))
    assert tensor_data.mapped(ints) is None  # (a type numpy reads otherwise: read, not mapped)


def test_fold_accepts_a_lazily_loaded_model(tmp_path):
    source = save_with_external_data(onnx.load(MODELS / "resnet_tiny.onnx"), tmp_path)
    lazy, eager = lazy_and_eager(source, lazy_from=0)
    result = bnfold.fold(lazy)
    assert len(result.folded) == len(bnfold.fold(eager).folded) > 0
    assert model_io.holds_data_on_disk(lazy)  # `fold` left its argument alone
    unread = onnx.load(source, load_external_data=False)
    with pytest.raises(InputError, match="external data is not loaded"):
        bnfold.fold(unread)


def test_output_whose_data_file_is_the_inputs_is_refused(tmp_path):
    source = save_with_external_data(
        onnx.load(MODELS / "resnet_tiny.onnx"), tmp_path, name="a.onnx", location="b.onnx.data"
    )
    before = (tmp_path / "b.onnx.data").read_bytes()
    proc = run_bnfold(source, "-o", tmp_path / "b.onnx")
    assert_clean_failure(proc, 2, mentions="would replace the input's")
    assert proc.stderr.strip().endswith(
        "its data file b.onnx.data would replace the input's; give the output another path"
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "b.onnx").exists()
    assert (tmp_path / "b.onnx.data").read_bytes() == before


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_folded_weights_on_disk_go_to_the_spill_file(tmp_path, path):
    source = save_with_external_data(onnx.load(path), tmp_path / "in")
    lazy, eager = lazy_and_eager(source, lazy_from=0)
    fold_in_place(eager)
    with tensor_data.DataFile(tmp_path) as spill:
        result = fold_in_place(lazy, spill=spill)
        spilled = [
            t
            for t in lazy.graph.initializer
            if tensor_data.is_on_disk(t) and tensor_data.disk_span(t)[0] == spill.path
        ]
        # every folded weight (all were on disk: lazy_from=0), by the vectorised Conv path or
        # a rule (the generator's ConvTranspose folds), read from the input's data file and
        # written there; in the model only biases (the vectorised path writes them there)
        assert bool(spilled) == bool(result.folded)
        assert not any(t.HasField("raw_data") for t in spilled)
        original = {t.name for t in onnx.load(path).graph.initializer}
        in_model = [t for t in lazy.graph.initializer if t.HasField("raw_data")]
        assert all(len(t.dims) == 1 for t in in_model if t.name in original)
        expected = arrays(eager)
        for name, value in arrays(lazy).items():
            assert value.tobytes() == expected[name].tobytes(), name
        copied = tmp_path / "copied" / "out.onnx"  # another folder: the tensors are copied
        copied.parent.mkdir()
        copy = onnx.ModelProto()
        copy.CopyFrom(lazy)  # (saving with external data moves a model's tensors out)
        bnfold.save_model(copy, copied, external_data=True)
        out = tmp_path / "out.onnx"  # the spill file becomes out.onnx.data
        bnfold.save_model(lazy, out, external_data=True, data_file=spill)
    assert not list(tmp_path.glob(".bnfold-*"))  # nothing temporary left
    for saved in (copied, out):
        for name, value in arrays(onnx.load(saved)).items():
            assert value.tobytes() == expected[name].tobytes(), name


@pytest.mark.parametrize("tail", ["Relu", "Mul", "residual"])
@pytest.mark.parametrize("args", [[], ["--no-validate"], ["--providers", "cuda"]])
def test_the_command_writes_each_weight_once_and_leaves_nothing_behind(tmp_path, args, tail):
    """With a Mul after the last BN, that Conv's weight changes twice: it is not put in OUT.data
    before its last change (no unused bytes); a failed validation leaves no file at all."""
    source = save_external(big_model(tail), tmp_path / "in")
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    proc = run_bnfold(source, "-o", out, *args)
    cuda = "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers()
    failed = args == ["--providers", "cuda"] and not cuda
    assert proc.returncode == (1 if failed else 0), proc.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == (
        [] if failed else ["folded.onnx", "folded.onnx.data"]
    )
    if failed:
        return
    assert "folded 2 of 2 BatchNormalization" in proc.stdout
    assert_same_function(big_model(tail), onnx.load(out))
    spans = [
        tensor_data.disk_span(t)[1:]
        for t in onnx.load(out, load_external_data=False).graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert sorted(spans) == [(0, 64 * 32 * 9 * 4), (73728, 64 * 64 * 9 * 4)]  # w0, then w1
    assert (out.parent / "folded.onnx.data").stat().st_size == 73728 + 64 * 64 * 9 * 4


def test_small_tensors_are_read_for_shape_inference(tmp_path):
    """A Reshape's shape in the data file, with everything else: the MatMul after it still gets
    its rank from onnx's shape inference, which reads no external data."""
    rng = np.random.default_rng(2)
    model = make_model(
        [
            onnx.helper.make_node("Reshape", ["x", "shape"], ["x2"]),
            onnx.helper.make_node("MatMul", ["x2", "w"], ["m"]),
            bn_node("m", "y"),
        ],
        [value_info("x", onnx.TensorProto.FLOAT, [3, 4, 4])],
        [value_info("y", onnx.TensorProto.FLOAT, [3, 8])],
        [
            tensor("shape", np.array([3, -1], dtype=np.int64)),
            tensor("w", rng.normal(0, 1, (16, 8)).astype(np.float32)),
            *bn_params(rng, 8),
        ],
    )
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    source = save_with_external_data(model, tmp_path / "in")
    out = tmp_path / "o.onnx"
    # (onnxruntime cannot run a Reshape whose shape is external data)
    proc = run_bnfold(source, "-o", out, "--no-validate")
    assert proc.returncode == 0, proc.stderr
    assert "folded 1 of 1" in proc.stdout
    assert_same_function(expected, onnx.load(out))


def test_an_output_linked_elsewhere_cannot_replace_the_inputs_data(tmp_path):
    """OUT is a symbolic link: it is replaced, not followed, so its data file is beside it."""
    folder, elsewhere = tmp_path / "f", tmp_path / "g"
    elsewhere.mkdir()
    source = save_external(big_model(), folder, location="sym.onnx.data")
    (folder / "sym.onnx").symlink_to(elsewhere / "o.onnx")
    before = (folder / "sym.onnx.data").read_bytes()
    proc = run_bnfold(source, "-o", folder / "sym.onnx")
    assert_clean_failure(proc, 2, mentions="would replace the input's")
    assert (folder / "sym.onnx.data").read_bytes() == before


def test_a_spill_file_that_cannot_be_made_is_a_clean_error(tmp_path):
    with pytest.raises(InputError, match="no-such-folder: cannot be written"):
        tensor_data.DataFile(tmp_path / "no-such-folder")


def test_a_data_file_from_another_folder_is_a_usage_error(tmp_path):
    (tmp_path / "a").mkdir()
    with tensor_data.DataFile(tmp_path / "a") as data, pytest.raises(ValueError, match="made in"):
        bnfold.save_model(
            onnx.load(MODELS / "resnet_tiny.onnx"), tmp_path / "o.onnx", data_file=data
        )


@pytest.mark.parametrize(("tail", "spilled"), [("Relu", True), ("residual", True), ("Mul", False)])
def test_a_weight_that_may_change_again_is_not_put_in_the_data_file(tmp_path, tail, spilled):
    source = save_external(big_model(tail), tmp_path / "in")
    lazy = model_io.load_model_and_sources(source, lazy=True)[0]
    with tensor_data.DataFile(tmp_path) as data:
        fold_in_place(lazy, spill=data)
        weights = {t.name: t for t in lazy.graph.initializer}
        assert data.holds(weights["w0"])  # a Relu follows its BN
        assert data.holds(weights["w1"]) == spilled


def test_only_put_on_disk_makes_an_on_disk_tensor(tmp_path):
    """The mark of an on-disk tensor is written in one place: a relative reference (what a saved
    model holds) is external data, not a tensor this process may read from its file."""
    tensor = onnx.numpy_helper.from_array(np.ones(4, np.float32), "v")
    tensor_data.refer_to(tensor, "v.bin", 0, 16)
    assert tensor.data_location == onnx.TensorProto.EXTERNAL
    assert not tensor_data.is_on_disk(tensor) and tensor_data.data_size(tensor) == 0
    with pytest.raises(ValueError, match="absolute path"):
        tensor_data.put_on_disk(tensor, tensor_data.DiskSpan("v.bin", 0, 16))
    tensor_data.put_on_disk(tensor, tensor_data.DiskSpan(str(tmp_path / "v.bin"), 0, 16))
    assert tensor_data.disk_span(tensor) == (str(tmp_path / "v.bin"), 0, 16)


def test_same_raw_data_compares_a_piece_at_a_time_in_the_model_or_on_disk(tmp_path):
    values = np.arange(64, dtype=np.float32)
    path = tmp_path / "v.bin"
    path.write_bytes(values.tobytes()[:128])  # half of it: the second piece is not there
    on_disk = onnx.numpy_helper.from_array(values, "v")
    tensor_data.put_on_disk(on_disk, tensor_data.DiskSpan(str(path), 0, values.nbytes))
    differing = onnx.numpy_helper.from_array(values + 1, "v")
    assert not tensor_data.same_raw_data(differing, on_disk, step=128)  # (first piece only)
    equal = onnx.numpy_helper.from_array(values, "v")
    with pytest.raises(InputError, match="changed while bnfold used it"):
        tensor_data.same_raw_data(equal, on_disk, step=128)
    path.write_bytes(values.tobytes())
    assert tensor_data.same_raw_data(equal, on_disk, step=100)
    assert not tensor_data.same_raw_data(equal, onnx.numpy_helper.from_array(values[:-1], "v"))


def test_a_rule_folding_a_weight_on_disk_twice_writes_it_once_in_place(tmp_path):
    """One at a time (the rules' path, `batched=False`): conv1's weight goes to the data file at
    bn1's fold and is overwritten there, in place, at the Mul's; each weight's bytes once."""
    source = save_external(big_model("Mul"), tmp_path / "in")
    lazy, eager = lazy_and_eager(source)
    fold_in_place(eager)
    with tensor_data.DataFile(tmp_path) as data:
        result = fold_in_place(lazy, spill=data, batched=False)
        assert len(result.folded) + len(result.folded_affine) == 3
        weights = {t.name: t for t in lazy.graph.initializer}
        assert data.holds(weights["w0"]) and data.holds(weights["w1"])
        first = -(-64 * 32 * 9 * 4 // 4096) * 4096  # w0, page-aligned
        assert os.path.getsize(data.path) == first + 64 * 64 * 9 * 4
        expected = arrays(eager)
        for name, value in arrays(lazy).items():
            assert value.tobytes() == expected[name].tobytes(), name
