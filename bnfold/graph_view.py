"""An index over one ONNX graph, built once: who produces and who consumes each tensor,
which tensors are constant, and the few edits the fold makes.

The fold works directly on the `GraphProto` (no conversion to another representation), so the
cost of a fold is the cost of the index plus the edits, not of copying the model.
"""

from __future__ import annotations

import functools
import operator
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from itertools import repeat

import numpy as np
import onnx

from .constant_eval import EVALUATED_OPS, EvaluationBudget, evaluate
from .element_types import castlike_target_problem, declared_element_types, type_witness
from .graphs import (
    ONNX_DOMAINS,
    may_hold_graphs,
    node_label,
    nodes_with_subgraphs,
    outer_references,
    subgraphs,
)
from .tensor_data import RAW_DTYPES, is_on_disk, little_endian_bytes, tensor_to_array

# Ops whose (first) output has the rank of their first input.
SAME_RANK_OPS = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Softplus",
        "Softsign",
        "Clip",
        "Identity",
        "Dropout",
        "Cast",
        "CastLike",
        "Neg",
        "Abs",
        "Sqrt",
        "Exp",
        "Log",
        "Erf",
        "Gelu",
        "Mish",
        "BatchNormalization",
        "Softmax",
        "LogSoftmax",
        "Transpose",
    }
)
MAX_RANK_DEPTH = 64  # producers followed back to find a rank


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
    _add_declared_names(graph, taken)
    nodes = graph.node
    taken.update(name for node in nodes for name in node.output)
    for index in nodes_with_subgraphs(nodes):
        node = nodes[index]
        taken.update(node.input)  # reads of the outer scope from inside stay visible
        for _, sub in subgraphs(node):
            _add_graph_names(sub, taken)


_OP_TYPE = operator.attrgetter("op_type")
_NAME = operator.attrgetter("name")
_DOMAIN = operator.attrgetter("domain")
_INPUT = operator.attrgetter("input")
_OUTPUT = operator.attrgetter("output")
# `field[:]` copies a repeated protobuf field into a list in one call; iterating the field instead
# goes item by item until protobuf raises IndexError, and formatting that error's message costs
# more than reading a short field (a node's inputs, outputs, attributes; a tensor's dims)
_ALL = operator.itemgetter(slice(None))


def _flattened(name_lists: list) -> tuple[list[str], list[int]]:
    """The names of `name_lists` (nodes' inputs or outputs) in one list, and beside each the
    position of the node it belongs to."""
    names: list[str] = []
    positions: list[int] = []
    for index, listed in enumerate(name_lists):
        names.extend(listed)
        positions.extend([index] * len(listed))
    return names, positions


class Readers(dict):
    """Which nodes read each tensor: `{name: position}` for a tensor one node reads once (the
    usual case, kept as a bare int: a list per tensor would be a third of the index's memory),
    `{name: [positions]}` in node order when it is read more often. A name nothing reads is not
    a key, so unread names are a set difference away."""

    def of(self, name: str) -> list[int]:
        """The positions of the nodes reading `name`, once per read."""
        found = self.get(name)
        if found is None:
            return []
        return [found] if type(found) is int else list(found)

    def only(self, name: str) -> int | None:
        """The node reading `name`, if exactly one node reads it exactly once."""
        found = self.get(name)
        return found if type(found) is int else None

    def add(self, name: str, index: int) -> None:
        found = self.get(name)
        if found is None:
            self[name] = index
        elif type(found) is int:
            self[name] = [found, index]
        else:
            found.append(index)

    def remove(self, name: str, index: int) -> None:
        """Node `index` reads `name` once less."""
        found = self[name]
        if type(found) is int:
            if found != index:
                raise ValueError(f"node {index} does not read '{name}'")
            del self[name]
            return
        found.remove(index)
        if len(found) == 1:
            self[name] = found[0]

    @classmethod
    def of_reads(cls, names: list[str], positions: list[int]) -> Readers:
        """The readers of every name in `names` (read by the node at the same place in
        `positions`, in node order); empty names are absent inputs, not reads."""
        readers = cls(zip(names, positions, strict=True))  # the last reader of each name
        readers.pop("", None)
        if len(readers) != len(names) - names.count(""):  # some names are read more than once
            repeated = Counter(names)
            several = {name for name, count in repeated.items() if count > 1 and name}
            lists = defaultdict(list)
            for name, index in zip(names, positions, strict=True):
                if name in several:
                    lists[name].append(index)
            readers.update(lists)
        return readers


class GraphView:
    """Producer/consumer index and constant lookup for one graph, and its editor.

    The edits (`set_constant_input`, `bypass`, `absorb_into_consumer`) keep the index up to
    date and their own books: the names that lost a reader and the tensors that no longer exist.
    `finish()`, called once at the end, removes what nothing reads any more and deletes the
    removed nodes; node positions stay valid until then. A consumer is counted once per input
    slot; a value read inside a subgraph counts as consumed by the node that holds the subgraph.
    """

    def __init__(
        self,
        graph: onnx.GraphProto,
        *,
        ir_version: int,
        opset: int,
        parent: GraphView | None = None,
        path: str = "",
        inferred_ranks: Callable[[], dict[str, int]] | None = None,
        budget: EvaluationBudget | None = None,
        inferred_types: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.graph = graph
        self.parent = parent
        self.path = path
        self.ir_version = ir_version
        self.opset = opset
        self.nodes = list(graph.node)
        tensors = list(graph.initializer)  # one wrapper per tensor, made once
        # by name, in the order of graph.initializer (new ones are appended to both)
        self.initializers = dict(zip(map(_NAME, tensors), tensors, strict=True))
        self.input_names = {i.name for i in graph.input}
        self.output_names = {o.name for o in graph.output}
        # IR < 4: the main graph lists every initializer among its inputs; a subgraph follows
        # its own convention (its inputs are positional, so only add where it already lists them)
        self.lists_initializers_as_inputs = ir_version < 4 and (
            parent is None
            or (bool(self.initializers) and self.initializers.keys() <= self.input_names)
        )
        self.producer: dict[str, int] = {}
        self.consumers = Readers()
        self._index_nodes()
        self._constants: dict[str, np.ndarray | None] = {}
        self.budget = budget if budget is not None else EvaluationBudget()
        self.evaluated_nodes: set[int] = set()  # pure nodes computed at fold time
        self.removed_nodes: set[int] = set()
        self._orphaned: set[str] = set()  # lost a reader to an edit: removed if unread at the end
        self._vanished: set[str] = set()  # no longer exist: their value_info goes at the end
        self._placed_after: dict[int, int] = {}  # a node added by `interpose`: after which node
        self._inferred_ranks = inferred_ranks
        self._declared_ranks: dict[str, int] | None = None
        self._proven_ranks: dict[str, int | None] = {}  # (`_rank_within`)
        self._inferred_types = inferred_types
        self._declared_types: dict[str, int] | None = None

    def _index_nodes(self) -> None:
        nodes = self.nodes
        written, writers = _flattened(list(map(_ALL, map(_OUTPUT, nodes))))
        self.producer = producer = dict(zip(written, writers, strict=True))
        producer.pop("", None)
        read, readers = _flattened(list(map(_ALL, map(_INPUT, nodes))))
        self.consumers = Readers.of_reads(read, readers)
        # What `model_io.indexed_structure_problem` needs to vouch for the graph without a walk
        self.defines_twice = len(producer) != len(written) - written.count("")
        position = producer.get
        self.reads_in_order = all(map(operator.lt, map(position, read, repeat(-1)), readers))
        # Each node's op type and domain, read once for the pass's loops (each distinct value
        # kept once, not once per node; protobuf gives bytes for a string that is not UTF-8)
        op_types, domains = list(map(_OP_TYPE, nodes)), list(map(_DOMAIN, nodes))
        distinct: dict[str, str] = {}
        self.op_types = list(map(distinct.setdefault, op_types, op_types))
        self.domains = list(map(distinct.setdefault, domains, domains))
        self.holders = [  # positions of nodes that may hold graphs (`nodes_with_subgraphs`)
            index
            for index, holds in enumerate(map(may_hold_graphs, self.op_types, self.domains))
            if holds
        ]
        for index in self.holders:
            for _, sub in subgraphs(self.nodes[index]):
                for name in outer_references(sub):
                    self.consumers.add(name, index)
                    if position(name, -1) >= index:  # a subgraph's read counts as its holder's
                        self.reads_in_order = False

    # ----- questions -------------------------------------------------------------------------

    def is_overridable(self, name: str) -> bool:
        """An initializer that is also a graph input can be fed at run time (IR >= 4)."""
        return name in self.input_names and self.ir_version >= 4

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` if it is fixed at load time, else None.

        Constant means: a (non-overridable) initializer, the output of a `Constant` node, or
        either of these reached through `Identity` nodes, here or in an enclosing graph.
        """
        tensor = self.initializers.get(name)
        if tensor is not None:  # read afresh: caching would hold a copy of every weight
            if self.is_overridable(name) or (
                tensor.data_location == onnx.TensorProto.EXTERNAL and not is_on_disk(tensor)
            ):
                return None
            return tensor_to_array(tensor)
        if name in self._constants:
            return self._constants[name]
        value = self._find_constant(name)
        self._constants[name] = value
        return value

    def _find_constant(self, name: str) -> np.ndarray | None:
        if name in self.producer:
            node = self.nodes[self.producer[name]]
            if node.op_type == "Constant" and node.domain in ONNX_DOMAINS:
                return constant_node_value(node)
            return self._evaluate(self.producer[name], node)
        if name in self.input_names:
            return None
        if self.parent is not None:
            return self.parent.constant(name)
        return None

    def _evaluate(self, index: int, node: onnx.NodeProto) -> np.ndarray | None:
        """Fold a small constant subgraph ending at `node` (see `constant_eval`)."""
        if node.op_type not in EVALUATED_OPS or node.output[0] not in self.producer:
            return None
        budget = self.budget
        if budget.depth >= budget.max_depth:
            return None
        budget.depth += 1
        try:
            inputs = [self.constant(name) if name else None for name in node.input]
        finally:
            budget.depth -= 1
        castlike = node.op_type == "CastLike" and len(inputs) == 2
        if castlike and inputs[0] is not None and inputs[1] is None:  # it reads only the type
            inputs[1] = type_witness(self.element_type(node.input[1]))
        if any(value is None for name, value in zip(node.input, inputs, strict=True) if name):
            return None
        value = evaluate(node, inputs, self.opset, budget)
        if value is not None:
            self.evaluated_nodes.add(index)
        return value

    def why_not_constant(self, name: str) -> str:
        """A short phrase saying why `name` is not constant."""
        for _ in range(self.budget.max_depth):  # back through pure ops to a non-constant input
            node = self.nodes[self.producer[name]] if name in self.producer else None
            source = self._non_constant_input(node) if node is not None else None
            if source is None:
                break
            name = source
        if name in self.initializers and self.is_overridable(name):
            return f"'{name}' is an initializer that is also a graph input (can be overridden)"
        if name in self.input_names:
            return f"'{name}' is a graph input"
        if name in self.producer:
            node = self.nodes[self.producer[name]]
            domain = f"{node.domain}:" if node.domain not in ONNX_DOMAINS else ""
            phrase = f"'{name}' is computed by {domain}{node.op_type} '{node_label(node)}'"
            if node.op_type == "CastLike" and len(node.input) == 2 and not domain:
                like = node.input[1]
                problem = castlike_target_problem(self.element_type(like), like)
                phrase = f"{phrase}, and {problem}" if problem else phrase
            return phrase
        if self.parent is not None:
            return self.parent.why_not_constant(name)
        return f"'{name}' is not defined"

    def _non_constant_input(self, node: onnx.NodeProto) -> str | None:
        """The first input that keeps a pure op's output from being constant (of a CastLike,
        only the first input: the second gives just a type)."""
        if node.op_type not in EVALUATED_OPS or node.domain not in ONNX_DOMAINS:
            return None
        inputs = node.input[:1] if node.op_type == "CastLike" else node.input
        return next((name for name in inputs if name and self.constant(name) is None), None)

    def element_type(self, name: str) -> int | None:
        """The element type (a TensorProto data type) of `name`: of its constant value, declared
        here or in an enclosing graph, or found by shape inference; None if unknown."""
        value = self.constant(name)
        if value is not None:
            return onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        if self._declared_types is None:  # built on first use: only CastLike asks
            self._declared_types = declared_element_types(self.graph)
        found = self._declared_types.get(name)
        if found is None and self.parent is not None and name not in self.producer:
            found = self.parent.element_type(name)
        if found is None and self._inferred_types is not None:
            found = self._inferred_types().get(name)
        return found

    def sole_consumer(self, name: str) -> int | None:
        """The one node reading `name` once, if it is neither a graph output nor used elsewhere."""
        if name in self.output_names:
            return None
        return self.consumers.only(name)

    def rank(self, name: str) -> int | None:
        """The rank of a tensor if declared, constant, or found by shape inference; else None."""
        value = self.constant(name)
        if value is not None:
            return value.ndim
        if self._declared_ranks is None:  # built on first use: only MatMul folds need ranks
            self._declared_ranks = {
                info.name: len(info.type.tensor_type.shape.dim)
                for infos in (self.graph.value_info, self.graph.input, self.graph.output)
                for info in infos
                if info.type.tensor_type.HasField("shape")
            }
        if name in self._declared_ranks:
            return self._declared_ranks[name]
        if self._inferred_ranks is not None:
            found = self._inferred_ranks().get(name)
            if found is not None:
                return found
        return self._rank_within(name, -1)

    def _propagated_rank(self, name: str, depth: int = 0) -> int | None:
        """The rank a tensor provably has from its producer's op and inputs' ranks: ops that
        keep their input's rank (activations, casts, BatchNormalization), Gemm and Flatten (2),
        MatMul and the broadcasting arithmetic of known ranks. None when not provable here."""
        index = self.producer.get(name)
        if index is None or depth > MAX_RANK_DEPTH or self.domains[index] not in ONNX_DOMAINS:
            return None
        op, node = self.op_types[index], self.nodes[index]
        if op in ("Gemm", "Flatten"):
            return 2
        if op == "Reshape" and len(node.input) > 1:
            target = self.constant(node.input[1])
            return int(target.size) if target is not None and target.ndim == 1 else None
        if op in SAME_RANK_OPS and node.input and node.output[0] == name:
            return self._rank_within(node.input[0], depth)
        if op in ("MatMul", "Add", "Sub", "Mul", "Div") and len(node.input) == 2:
            ranks = [self._rank_within(n, depth) for n in node.input]
            if None in ranks:
                return None
            known = [r for r in ranks if r is not None]
            if op == "MatMul" and min(known) < 2:
                return None  # (a 1-D operand drops an axis)
            return max(known)
        return None

    def _rank_within(self, name: str, depth: int) -> int | None:
        value = self.constant(name)
        if value is not None:
            return value.ndim
        assert self._declared_ranks is not None
        if name in self._declared_ranks:
            return self._declared_ranks[name]
        # remembered: a residual chain reads each tensor twice (2^depth walks otherwise); a fold
        # never changes a tensor's rank
        proven = self._proven_ranks
        if name not in proven:
            proven[name] = self._propagated_rank(name, depth + 1)
        return proven[name]

    # ----- edits -----------------------------------------------------------------------------

    def set_constant_input(
        self, node_index: int, slot: int, value: np.ndarray, base_name: str, names: NameAllocator
    ) -> str:
        """Make input `slot` of a node the constant `value`; return the tensor name used.

        An initializer read only by this node is overwritten in place; anything else (shared
        weights, Constant nodes, outer-scope values) gets a new initializer with a fresh name, so
        no other reader ever sees a changed value.
        """
        inputs = self.nodes[node_index].input
        old = inputs[slot] if slot < len(inputs) else ""
        if old and self._exclusively_owned(old, node_index, value):
            _overwrite_tensor(self.initializers[old], value)
            return old
        name = self.add_constant(value, base_name, names)
        if slot < len(inputs):
            inputs[slot] = name
        else:
            inputs.extend([""] * (slot - len(inputs)) + [name])
        self.consumers.add(name, node_index)
        if old:
            self.consumers.remove(old, node_index)
            self._orphaned.add(old)
        return name

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
        """Put a new default-domain node right after node `index`: it reads that node's first
        output, then `operands`, and writes a fresh name, which the old output's readers read
        instead. Every reader must read the old output as a plain input (not from a subgraph),
        and it must not be a graph output. The new node's position."""
        old = self.nodes[index].output[0]
        readers = self.consumers.of(old)
        if old in self.output_names or any(old not in self.nodes[r].input for r in readers):
            raise ValueError(f"cannot put a node after the one writing '{old}': read otherwise")
        output = names.fresh(f"{old}_bnfold_{op_type.lower()}")
        node = self.graph.node.add(op_type=op_type, input=[old, *operands], output=[output])
        node.name = names.fresh(f"{output}_node")
        for name, value in (attributes or {}).items():
            node.attribute.append(onnx.helper.make_attribute(name, value))
        added = len(self.nodes)
        self.nodes.append(node)
        self.op_types.append(op_type)
        self.domains.append("")
        self._placed_after[added] = self._placed_after.get(index, index)
        for reader in list(dict.fromkeys(readers)):
            inputs = self.nodes[reader].input
            for slot, name in enumerate(inputs[:]):
                if name == old:
                    inputs[slot] = output
                    self.consumers.remove(old, reader)
                    self.consumers.add(output, reader)
        self.producer[output] = added
        for name in node.input:
            self.consumers.add(name, added)
        return added

    def _home_for_new_constants(self) -> GraphView:
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
        for name in bn.input[:] if inputs is None else inputs:
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
        `source`): its consumer reads the node's data input instead of its output."""
        bn = self.nodes[bn_index]
        consumer = self.nodes[consumer_index]
        source = bn.input[0] if source is None else source
        output = bn.output[0]
        consumer.input[0] = source
        self.consumers.remove(source, bn_index)
        self.consumers.add(source, consumer_index)
        for name in bn.input[:]:
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
            order = map(_NAME, repeated)
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


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a `Constant` node, or None for sparse or string constants."""
    for attr in node.attribute:
        if attr.name == "value":
            return tensor_to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None
