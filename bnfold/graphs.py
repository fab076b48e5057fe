"""Walking a model's graphs, for every layer: which nodes may hold subgraphs, the subgraphs with
their labels, the names a subgraph reads from outside, a node's attributes and label, the model's
opset. No index, no I/O: `graph_view` builds the pass's index on these, `model_io` checks models
with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx

from .protobuf_speed import listed

# Default-domain ops with graph attributes; ops of other domains are always looked at.
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})
ONNX_DOMAINS = ("", "ai.onnx")


def may_hold_graphs(op_type: str, domain: str) -> bool:
    """Whether a node of this op type and domain may hold graphs (control flow, or any op of
    another domain)."""
    return op_type in CONTROL_FLOW_OPS or domain not in ONNX_DOMAINS


def subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graphs held in a node's attributes (If branches, Loop/Scan bodies, ...)."""
    if not may_hold_graphs(node.op_type, node.domain):
        return
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def all_graphs(graph: onnx.GraphProto, path: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """(path, graph) for `graph` and every graph nested in it, depth first, each after the graph
    holding it: the path of a subgraph is its holder's path, then `node label.attribute` (as
    records and messages name them: `loop.body/if.then_branch`). Only nodes that may hold graphs
    are looked into (`nodes_with_subgraphs`), so a graph of 10^5 plain nodes costs one pass."""
    yield path, graph
    yield from nested_graphs(graph.node, path)


def nested_graphs(
    nodes, path: str = "", holders: Iterable[int] | None = None
) -> Iterator[tuple[str, onnx.GraphProto]]:
    """(path, graph) for every graph nested in `nodes` (a graph's or a function body's), at any
    depth, as `all_graphs` gives them (`path`: the nodes' own). `holders`: the positions of the
    nodes that may hold graphs, when known (`GraphIndex.holders`: no scan of `nodes`)."""
    for index in nodes_with_subgraphs(nodes) if holders is None else holders:
        node = nodes[index]
        for attr_name, sub in subgraphs(node):
            yield from all_graphs(sub, subgraph_path(path, node, attr_name))


def subgraph_path(path: str, holder: onnx.NodeProto, attr_name: str) -> str:
    """The path of the graph in attribute `attr_name` of `holder`, a node of the graph at
    `path` (`all_graphs`: `loop.body/if.then_branch`; the main graph's path is "")."""
    return f"{path}/{node_label(holder)}.{attr_name}".lstrip("/")


def all_nodes(nodes) -> Iterator[onnx.NodeProto]:
    """`nodes` (a graph's or a function body's), then the nodes of every graph nested in them."""
    yield from nodes
    for _, graph in nested_graphs(nodes):
        yield from graph.node


def outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names a graph reads that it does not define (values from enclosing scopes)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.name for t in graph.sparse_initializer if t.values.name}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for _, sub in subgraphs(node):
            used |= outer_references(sub)
        defined.update(node.output)
    used.update(o.name for o in graph.output)
    return used - defined


def attributes(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (ints, floats, strings, lists, tensors)."""
    values = {}
    for attr in listed(node.attribute):
        kind = attr.type
        if kind == onnx.AttributeProto.INT:
            values[attr.name] = attr.i
        elif kind == onnx.AttributeProto.FLOAT:
            values[attr.name] = attr.f
        elif kind == onnx.AttributeProto.INTS:
            values[attr.name] = list(attr.ints)
        else:
            values[attr.name] = onnx.helper.get_attribute_value(attr)
    return values


def node_label(node: onnx.NodeProto) -> str:
    """A readable identity for a node: its name, or its op type and first output."""
    if node.name:
        return node.name
    first = node.output[0] if node.output else "?"
    return f"<{node.op_type} -> {first}>"


def nodes_with_subgraphs(nodes) -> list[int]:
    """Positions of the nodes that may hold graphs (`may_hold_graphs`)."""
    return [index for index, node in enumerate(nodes) if may_hold_graphs(node.op_type, node.domain)]


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset version for the default ONNX domain (0 if it imports none)."""
    for entry in model.opset_import:
        if entry.domain in ONNX_DOMAINS:
            return int(entry.version)
    return 0


def axis_after_transposes(nodes: Iterable[onnx.NodeProto], axis: int, rank: int) -> int | str:
    """Where `axis` of a rank-`rank` tensor is after `nodes`, in order: each Transpose moves it
    (without a perm, the axes are reversed), the others (Identity) keep it; the reason when a
    Transpose's perm is not a permutation of `rank` axes."""
    for node in nodes:
        if node.op_type != "Transpose":
            continue
        perm = [int(p) for p in attributes(node).get("perm", range(rank - 1, -1, -1))]
        if sorted(perm) != list(range(rank)):
            label = node_label(node)
            return f"Transpose '{label}' has perm {perm}, not a permutation of the {rank} axes"
        axis = perm.index(axis)
    return axis


def names_read(node: onnx.NodeProto) -> set[str]:
    """The names a node reads from its graph: its inputs, and what its subgraphs read from
    outside themselves."""
    names = {name for name in node.input if name}
    for _, sub in subgraphs(node):
        names |= outer_references(sub)
    return names


def reads_as_arithmetic(node: onnx.NodeProto) -> bool:
    """Whether a Mul/Add/Sub/Div may be read as a per-channel map: two inputs, one named output,
    and numpy-style broadcasting (not the pre-opset-7 `broadcast`/`axis` attributes, which may
    align a constant with any axis)."""
    if len(node.input) != 2 or len(node.output) != 1 or not node.output[0]:
        return False
    return not any(attr.name in ("broadcast", "axis") for attr in node.attribute)
