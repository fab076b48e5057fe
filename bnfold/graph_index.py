"""The index over one ONNX graph, built once: who produces and who reads each tensor, each
node's op type and domain, which nodes may hold graphs. `GraphView` (`graph_view.py`) adds the
questions about values (`graph_values.py`) and the edits (`graph_editor.py`).

The fold works directly on the `GraphProto` (no conversion to another representation), so the
cost of a fold is the cost of the index plus the edits, not of copying the model. The index is
built with the protobuf speed tricks of `protobuf_speed.py` (`field[:]` copies, attribute
getters mapped over nodes).
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict
from itertools import repeat
from typing import TYPE_CHECKING

import onnx

from .graphs import may_hold_graphs, outer_references, subgraphs
from .protobuf_speed import ALL, DOMAIN, INPUT, NAME, OP_TYPE, OUTPUT

if TYPE_CHECKING:
    from .graph_view import GraphView


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


class GraphIndex:
    """Producer/consumer index for one graph. Node positions stay valid until the editor's
    `finish()`. A consumer is counted once per input slot; a value read inside a subgraph counts
    as consumed by the node that holds the subgraph."""

    def __init__(
        self,
        graph: onnx.GraphProto,
        *,
        ir_version: int,
        opset: int,
        parent: GraphView | None = None,
        path: str = "",
    ) -> None:
        self.graph = graph
        self.parent = parent
        self.path = path
        self.ir_version = ir_version
        self.opset = opset
        self.nodes = list(graph.node)
        tensors = list(graph.initializer)  # one wrapper per tensor, made once
        # by name, in the order of graph.initializer (new ones are appended to both)
        self.initializers = dict(zip(map(NAME, tensors), tensors, strict=True))
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
        self.evaluated_nodes: set[int] = set()  # pure nodes computed at fold time
        self.removed_nodes: set[int] = set()

    def _index_nodes(self) -> None:
        nodes = self.nodes
        written, writers = _flattened(list(map(ALL, map(OUTPUT, nodes))))
        self.producer = producer = dict(zip(written, writers, strict=True))
        producer.pop("", None)
        read, readers = _flattened(list(map(ALL, map(INPUT, nodes))))
        self.consumers = Readers.of_reads(read, readers)
        # What `model_io.indexed_structure_problem` needs to vouch for the graph without a walk
        self.defines_twice = len(producer) != len(written) - written.count("")
        position = producer.get
        self.reads_in_order = all(map(operator.lt, map(position, read, repeat(-1)), readers))
        # Each node's op type and domain, read once for the pass's loops (each distinct value
        # kept once, not once per node; protobuf gives bytes for a string that is not UTF-8)
        op_types, domains = list(map(OP_TYPE, nodes)), list(map(DOMAIN, nodes))
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

    def sole_consumer(self, name: str) -> int | None:
        """The one node reading `name` once, if it is neither a graph output nor used elsewhere."""
        if name in self.output_names:
            return None
        return self.consumers.only(name)
