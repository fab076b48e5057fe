"""The few edits a fold makes to a graph, keeping the index up to date and their own books:
the names that lost a reader and the tensors that no longer exist; `finish()`, once at the end,
removes what nothing reads any more, deletes the removed nodes and stale value_info, and puts
added nodes in place. `NameAllocator` hands out the fresh names new tensors get."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .graph_index import GraphIndex
from .graphs import all_graphs, node_label, nodes_with_subgraphs, subgraphs
from .protobuf_speed import NAME, listed
from .tensor_data import RAW_DTYPES, DataFile, is_on_disk, little_endian_bytes

if TYPE_CHECKING:
    from .graph_view import GraphView


class NameAllocator:
    """Hands out tensor names that no tensor of the model has.

    Taken are the names every graph and local function of the model defines or reads (inputs,
    outputs, initializers, node outputs and inputs, value_info, sparse initializers; in a model
    that passed `check_model_structure` every name read is defined) and every name handed out.
    They are collected on the first request (many models never need one). With the main graph's
    index (`index`), its node and initializer names are looked up there, not copied: a name the
    pass has removed from the graph may then be handed out again, which is safe, since nothing
    refers to it any more and the value_info of removed tensors is dropped (`GraphView.finish`).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._taken: set[str] | None = None
        self._main: GraphView | None = None

    def index(self, main: GraphView | None) -> None:
        """Look the main graph's names up in its view's index instead of walking it (None: walk
        it; the pass says so when it is done, so the index is not kept alive)."""
        if main is not self._main:
            self._taken = None  # collected again on the next request (names handed out are in
            # the model by then)
        self._main = main

    def _collect(self) -> set[str]:
        model = self._model
        taken: set[str] = set()
        if self._main is None:
            _add_graph_names(model.graph, taken)
        else:
            _add_declared_names(model.graph, taken, with_initializers=False)
            for index in self._main.holders:
                for _, sub in subgraphs(self._main.nodes[index]):
                    _add_graph_names(sub, taken)
        for function in model.functions:
            taken.update(function.input)
            taken.update(function.output)
            for node in function.node:
                taken.update(node.input)
                taken.update(node.output)
        return taken

    def _is_taken(self, name: str) -> bool:
        assert self._taken is not None  # (collected by `fresh` first)
        if name in self._taken:
            return True
        main = self._main
        return main is not None and (
            name in main.producer or name in main.consumers or name in main.initializers
        )

    def fresh(self, base: str) -> str:
        if self._taken is None:
            self._taken = self._collect()
        name, n = base, 1
        while self._is_taken(name):
            n += 1
            name = f"{base}_{n}"
        self._taken.add(name)
        return name


def _add_declared_names(
    graph: onnx.GraphProto, taken: set[str], *, with_initializers: bool = True
) -> None:
    """Names a graph declares outside its nodes: inputs, outputs, initializers, value_info."""
    taken.update(i.name for i in graph.input)
    taken.update(o.name for o in graph.output)
    if with_initializers:
        taken.update(t.name for t in graph.initializer)
    taken.update(v.name for v in graph.value_info)
    taken.update(t.values.name for t in graph.sparse_initializer)
    taken.update(t.indices.name for t in graph.sparse_initializer)


def _add_graph_names(graph: onnx.GraphProto, taken: set[str]) -> None:
    """The names a graph and its subgraphs declare, define, and (holders) read."""
    for _, inner in all_graphs(graph):
        _add_declared_names(inner, taken)
        nodes = inner.node
        taken.update(name for node in nodes for name in node.output)
        for index in nodes_with_subgraphs(nodes):
            taken.update(nodes[index].input)  # reads of the outer scope from inside stay visible


class GraphEditor(GraphIndex):
    """The edits of `GraphView` (`_init_editor` opens their books)."""

    parent: GraphView | None

    def _init_editor(self, spill: DataFile | None = None) -> None:
        self.spill = spill  # where new values of weights on disk go (they stay on disk)
        self._orphaned: set[str] = set()  # lost a reader to an edit: removed if unread at the end
        self._vanished: set[str] = set()  # no longer exist: their value_info goes at the end
        self._placed_after: dict[int, int] = {}  # a node added by `interpose`: after which node
        self._labels: dict[int, str] = {}  # a node `interpose` renamed the output of: its label

    def set_constant_input(
        self, node_index: int, slot: int, value: np.ndarray, base_name: str, names: NameAllocator
    ) -> str:
        """Make input `slot` of a node the constant `value`; return the tensor name used.

        An initializer read only by this node is overwritten in place; anything else (shared
        weights, Constant nodes, outer-scope values) gets a new initializer with a fresh name, so
        no other reader ever sees a changed value. With a `spill` file, the new value of a
        weight on disk goes there (and stays on disk), as the vectorised path's do.
        """
        inputs = self.nodes[node_index].input
        old = inputs[slot] if slot < len(inputs) else ""
        spilled = self.spill is not None and bool(old) and self._on_disk(old)
        if old and self._exclusively_owned(old, node_index, value):
            tensor = self.initializers[old]
            if spilled:
                self._spill(tensor, value)
            else:
                _overwrite_tensor(tensor, value)
            return old
        name = self.add_constant(value, base_name, names)
        if spilled:
            self._spill(self._home_for_new_constants().initializers[name], value)
        if slot < len(inputs):
            inputs[slot] = name
        else:
            inputs.extend([""] * (slot - len(inputs)) + [name])
        self.consumers.add(name, node_index)
        if old:
            self.consumers.remove(old, node_index)
            self._orphaned.add(old)
        return name

    def label(self, index: int) -> str:
        """How records name node `index` (`node_label`): as it was named before `interpose`
        renamed its output (an unnamed node is named by its output)."""
        return self._labels.get(index) or node_label(self.nodes[index])

    def set_op_type(self, node_index: int, op_type: str) -> None:
        """Make a node another op (a MatMul that takes a bias becomes a Gemm), index included."""
        self.nodes[node_index].op_type = self.op_types[node_index] = op_type

    def set_attribute(self, node_index: int, name: str, value: object) -> None:
        """Give a node the attribute `name` = `value`, replacing one of that name."""
        node = self.nodes[node_index]
        new = onnx.helper.make_attribute(name, value)
        for attr in node.attribute:
            if attr.name == name:
                attr.CopyFrom(new)
                return
        node.attribute.append(new)

    def add_constant(self, value: np.ndarray, base_name: str, names: NameAllocator) -> str:
        """A new initializer holding `value` under a fresh name (this graph's, or the main
        graph's where this one cannot hold it: `_home_for_new_constants`); the name."""
        name = names.fresh(base_name)
        self._home_for_new_constants()._add_initializer(name, value)
        return name

    def interpose(
        self,
        index: int,
        op_type: str,
        operands: list[str],
        names: NameAllocator,
        attributes: dict[str, object] | None = None,
    ) -> int:
        """Put a new default-domain node right after node `index`: that node's first output
        takes a fresh name, which the new node reads, then `operands`; the new node writes the
        old name, so whatever read it (nodes, subgraphs, the graph's outputs) reads the new
        node's output. The new node's position."""
        layer = self.nodes[index]
        old = layer.output[0]
        self._labels.setdefault(index, node_label(layer))
        fresh = names.fresh(f"{old}_bnfold_before_{op_type.lower()}")
        layer.output[0] = fresh
        node = self.graph.node.add(op_type=op_type, input=[fresh, *operands], output=[old])
        node.name = names.fresh(f"{old}_bnfold_{op_type.lower()}")
        for name, value in (attributes or {}).items():
            node.attribute.append(onnx.helper.make_attribute(name, value))
        added = len(self.nodes)
        self.nodes.append(node)
        self.op_types.append(op_type)
        self.domains.append("")
        self._placed_after[added] = self._placed_after.get(index, index)
        self.producer[fresh] = index
        self.producer[old] = added
        for name in node.input:
            self.consumers.add(name, added)
        return added

    def _on_disk(self, name: str) -> bool:
        """Whether `name` is an initializer of this graph (or one around it) left on disk."""
        tensor = self.initializers.get(name)
        if tensor is not None:
            return is_on_disk(tensor)
        return self.parent is not None and self.parent._on_disk(name)

    def _spill(self, tensor: onnx.TensorProto, value: np.ndarray) -> None:
        """Make `value` the contents of `tensor`, in the spill file (it stays on disk)."""
        assert self.spill is not None
        self.spill.put(tensor, little_endian_bytes(value))

    def _home_for_new_constants(self) -> GraphEditor:
        """Where a new initializer goes: this graph, except an IR < 4 subgraph that does not list
        its initializers as inputs (onnxruntime requires that, and subgraph inputs are
        positional): then the main graph, whose values every subgraph can read."""
        if self.ir_version >= 4 or self.parent is None or self.lists_initializers_as_inputs:
            return self
        return self.parent._home_for_new_constants()

    def _add_initializer(self, name: str, value: np.ndarray) -> None:
        data_type = tensor_dtype(value.dtype)
        tensor = self.graph.initializer.add(
            name=name, data_type=data_type, dims=value.shape, raw_data=little_endian_bytes(value)
        )
        self.initializers[name] = tensor
        if self.lists_initializers_as_inputs:
            self.graph.input.append(
                onnx.helper.make_tensor_value_info(name, data_type, list(value.shape))
            )
            self.input_names.add(name)

    def _exclusively_owned(self, name: str, node_index: int, value: np.ndarray) -> bool:
        """An initializer of this graph read only by this node, with the new value's shape and
        dtype (so no value_info describing it goes stale)."""
        tensor = self.initializers.get(name)
        return (
            tensor is not None
            and tuple(tensor.dims) == value.shape
            and tensor.data_type == tensor_dtype(value.dtype)
            and self.consumers.only(name) == node_index
            and name not in self.output_names
            and name not in self.input_names
        )

    def bypass(self, bn_index: int, producer_index: int, inputs: list[str] | None = None) -> str:
        """Remove a folded node (BatchNormalization, Mul, Add): its producer takes over its
        output tensor (the producer's own output vanishes); its other inputs lose a reader.
        `inputs`: the node's inputs, when the caller has them. Returns the output taken over."""
        bn = self.nodes[bn_index]
        outputs = self.nodes[producer_index].output
        old_output, new_output = outputs[0], bn.output[0]
        outputs[0] = new_output
        producer = self.producer
        producer[new_output] = producer_index
        del producer[old_output]
        consumers = self.consumers
        consumers.pop(old_output, None)
        orphaned = self._orphaned
        for name in listed(bn.input) if inputs is None else inputs:
            if name and name != old_output:
                consumers.remove(name, bn_index)
                orphaned.add(name)
        self._vanished.add(old_output)
        self.removed_nodes.add(bn_index)
        return new_output

    def absorb_into_consumer(
        self, bn_index: int, consumer_index: int, source: str | None = None
    ) -> None:
        """Remove a node folded forward (a BatchNormalization; a Mul/Add, whose data input is
        `source`): its consumer reads the node's data input instead of its output (in whichever
        of its inputs read that)."""
        bn = self.nodes[bn_index]
        consumer = self.nodes[consumer_index]
        source = bn.input[0] if source is None else source
        output = bn.output[0]
        for slot, name in enumerate(listed(consumer.input)):
            if name == output:
                consumer.input[slot] = source
        self.consumers.remove(source, bn_index)
        self.consumers.add(source, consumer_index)
        for name in listed(bn.input):
            if name and name != source:
                self.consumers.remove(name, bn_index)
                self._orphaned.add(name)
        del self.producer[output]
        self.consumers.pop(output, None)
        self._vanished.add(output)
        self.removed_nodes.add(bn_index)

    @property
    def nodes_removed(self) -> int:
        """How many fewer nodes the graph has after the edits (removed less added)."""
        return len(self.removed_nodes) - len(self._placed_after)

    def finish(self) -> None:
        """End the edits: remove what they left unread (initializers, Constant and evaluated
        nodes, transitively), delete the removed nodes and the value_info of every tensor that
        no longer exists."""
        self._vanished |= self._remove_dead(self._orphaned)
        self._commit(self._vanished)

    def _remove_dead(self, candidates: set[str]) -> set[str]:
        """Remove the initializers and Constant/evaluated nodes among `candidates` (and their
        inputs, transitively) that nothing reads any more. Returns the names that disappeared."""
        unread = candidates - self.consumers.keys() - self.output_names
        gone = unread & self.initializers.keys()  # set algebra: there may be 10^5 of them
        if not self.lists_initializers_as_inputs:
            gone -= self.input_names
        pending = list(unread & self.producer.keys())
        while pending:
            name = pending.pop()
            if name in self.consumers or name in self.output_names or name in gone:
                continue
            if name in self.producer:
                index = self.producer[name]
                node = self.nodes[index]
                removable = node.op_type == "Constant" or index in self.evaluated_nodes
                if not removable or index in self.removed_nodes:
                    continue
                if any(out in self.consumers or out in self.output_names for out in node.output):
                    continue
                self.removed_nodes.add(index)
                for out in node.output:
                    self.producer.pop(out, None)
                    gone.add(out)
                for source in node.input:
                    if source:
                        self.consumers.remove(source, index)
                        pending.append(source)
            elif name in self.initializers and (
                name not in self.input_names or self.lists_initializers_as_inputs
            ):
                gone.add(name)
        self._drop_initializers(gone & self.initializers.keys())
        return gone

    def _drop_initializers(self, names: set[str]) -> None:
        if not names:
            return
        repeated = self.graph.initializer
        # the index lists each initializer once, in order (a name given twice, refused by the
        # structure checks, would leave it shorter: then the names are read again)
        order: Iterable[str] = self.initializers
        if len(self.initializers) != len(repeated):
            order = map(NAME, repeated)
        _delete_flagged(repeated, [name in names for name in order])
        for name in names:
            del self.initializers[name]
        if self.lists_initializers_as_inputs:
            _delete_flagged(self.graph.input, [info.name in names for info in self.graph.input])
            self.input_names -= names

    def _commit(self, vanished: set[str]) -> None:
        """Delete the removed nodes and the value_info of tensors that no longer exist; move
        the nodes `interpose` added to right after the nodes they follow."""
        if self.removed_nodes:
            removed = self.removed_nodes
            _delete_flagged(self.graph.node, [i in removed for i in range(len(self.nodes))])
        if self._placed_after:
            placed = self._placed_after
            kept = (i for i in range(len(self.nodes)) if i not in self.removed_nodes)
            keys = [(placed[i], 1, i) if i in placed else (i, 0, 0) for i in kept]
            self.graph.node.sort(key=functools.partial(next, iter(keys)))
        if vanished:
            infos = self.graph.value_info
            _delete_flagged(infos, [info.name in vanished for info in infos])


def _delete_flagged(repeated, flags: list[bool]) -> None:
    """Delete the items of a repeated protobuf field whose flag is set, keeping the order of the
    rest, in one pass: a stable sort moves them to the end (the messages are not copied), then one
    slice deletion. (Deleting items one by one shifts the field each time.)"""
    doomed = sum(flags)
    if not doomed:
        return
    # the key is called once per item, in order: `next(flags, item)` gives the item's flag
    repeated.sort(key=functools.partial(next, iter(flags)))
    del repeated[len(flags) - doomed :]


def tensor_dtype(dtype: np.dtype) -> int:
    """The TensorProto data type of a numpy dtype."""
    found = _TENSOR_DTYPES.get(dtype)
    return found if found is not None else onnx.helper.np_dtype_to_tensor_dtype(dtype)


_TENSOR_DTYPES = {np.dtype(d).newbyteorder("="): t for t, d in RAW_DTYPES.items()}


def _overwrite_tensor(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    """Give a tensor new contents of the same shape and dtype."""
    if tensor.HasField("raw_data"):  # the usual case: only the bytes change
        tensor.raw_data = little_endian_bytes(value)
    else:
        _fill_tensor(tensor, value)


def _fill_tensor(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    """Overwrite a TensorProto's contents with `value` (raw little-endian bytes)."""
    name = tensor.name
    tensor.Clear()
    tensor.name = name
    tensor.data_type = tensor_dtype(value.dtype)
    tensor.dims.extend(value.shape)
    tensor.raw_data = little_endian_bytes(value)
