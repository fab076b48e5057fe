"""The fold pass: find every BatchNormalization, fold those an exact rule allows, record the rest.

Guarantees:
- the model passed to `fold` is never modified; `FoldResult.model` is a new ModelProto;
- every BatchNormalization (main graph, subgraphs, local functions) gets exactly one record; a
  function's BatchNormalization inlined at two call sites is two BatchNormalizations;
- a folded producer takes over the BatchNormalization's output tensor, so graph output names,
  node names, metadata, doc strings and opset imports survive;
- weights read by anything else are never changed in place: the producer gets a new tensor;
- the result is deterministic and folding it again changes nothing.
"""

from __future__ import annotations

import contextlib
import gc
import operator
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx

from .affine import AFFINE_OPS, read_affine, read_affine_forward
from .batched import CHUNK_BYTES, checked_names, find_pairs, fold_conv_batchnorm_weights
from .batchnorm import read_batchnorm
from .constant_eval import EvaluationBudget
from .element_types import inferred_element_types
from .errors import InputError
from .functions import inline_batchnorm_functions
from .graph_view import GraphView, NameAllocator
from .graphs import (
    CONTROL_FLOW_OPS,
    ONNX_DOMAINS,
    node_label,
    nodes_with_subgraphs,
    subgraphs,
)
from .model_io import (
    check_model_opset,
    check_model_structure,
    default_opset,
    indexed_structure_problem,
    load_model_and_sources,
    require_external_data_loaded,
)
from .producers import PLANNERS, FoldPlan
from .producers.backward import BACKWARD_RULES
from .producers.base import SplitPlan, shared_output_reason
from .producers.forward import FORWARD_LAYERS, FORWARD_RULES, plan_forward
from .producers.through_reshape import LAYOUT_OPS
from .records import Folded, FoldResult, Skipped
from .tensor_data import DataFile

LINEAR_LAYERS = "a Conv, ConvTranspose, Gemm or MatMul"
# What malformed attributes or tensors raise while a fold is decided: then the node is not folded.
ANALYSIS_ERRORS = (ValueError, TypeError, IndexError, KeyError, OverflowError, RecursionError)


def fold(
    model: onnx.ModelProto | str | os.PathLike, *, inline_functions: bool = True
) -> FoldResult:
    """Fold every BatchNormalization that an exact rule allows into its producing linear layer.

    `model` is an `onnx.ModelProto` (left unmodified) or the path of an ONNX file (read with its
    external data). Returns a `FoldResult` with the new model and one record per
    BatchNormalization: `folded` (into which node, how) or `skipped` (why).

    Calls of model-local functions holding a BatchNormalization are inlined first where one could
    fold (`FoldResult.inlined` lists them); `inline_functions=False` leaves functions unchanged.
    """
    if isinstance(model, onnx.ModelProto):
        require_external_data_loaded(model)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return fold_in_place(copy, inline_functions=inline_functions)
    loaded = load_model_and_sources(model, check=False)[0]
    try:
        return fold_in_place(loaded, inline_functions=inline_functions)
    except InputError as exc:  # the graph checks, made by fold_in_place, name no file
        raise InputError(exc.path or model, exc.problem) from None


def fold_in_place(
    model: onnx.ModelProto,
    *,
    inline_functions: bool = True,
    batched: bool = True,
    spill: DataFile | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> FoldResult:
    """`fold`, editing `model` itself (saves a copy of a big model when the caller owns it).

    Raises `InputError` (naming no file) if the model fails `check_model_structure`'s checks;
    for the main graph they are answered from the pass's own index, without a second walk.
    `batched=False` folds every pair one at a time, the reference the vectorised path of
    `bnfold.batched` is tested against (same model, bit for bit). `spill`: a `DataFile` where
    the new values of weights left on disk by a lazy load go (`bnfold.tensor_data`); the model
    reads them there until it is saved (pass it to `save_model` to make it the output's data
    file), so it must stay open until then. `chunk_bytes`: how much weight the vectorised path
    scales at once."""
    check_model_opset(model)
    ops_before = op_counts(model.graph)
    nodes_before = None  # without functions to inline, counted from the pass's index
    if model.functions:  # the inliner edits the graph before the pass indexes it
        check_model_structure(model)
        nodes_before = count_nodes(model.graph)
    functions = inline_batchnorm_functions(model, enabled=inline_functions)
    context = _Context(model, batched=batched, spill=spill, chunk_bytes=chunk_bytes)
    with collector_paused():
        _fold_graph(model.graph, context, parent=None, path="")
    context.names.index(None)  # let the main graph's index go now, not at the next collection
    nodes_inlined = context.nodes_indexed
    return FoldResult(
        model=model,
        folded=functions.annotate(context.folded),
        skipped=functions.annotate(context.skipped) + functions.skipped,
        nodes_before=nodes_inlined if nodes_before is None else nodes_before,
        nodes_after=nodes_inlined - context.removed,
        folded_affine=context.folded_affine,
        skipped_affine=context.skipped_affine,
        inlined=functions.inlined,
        functions_removed=functions.removed,
        ops_before=ops_before,
        ops_after=op_counts(model.graph),
    )


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection during the pass: it makes objects by the hundred thousand
    (index entries, records) and no cycles, and each collection would walk all of them again
    (about 10% of the pass on a 48,000-node graph). The CLI pauses it for its whole run (loading
    and saving make as many protobuf wrappers)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def op_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """Nodes by op type (`domain:op` outside the default domain), subgraphs' included, sorted."""
    counts: Counter[str] = Counter()
    _count_ops(graph, counts)
    as_text: Counter[str] = Counter()
    for op, count in counts.items():
        as_text[_text(op)] += count
    return dict(sorted(as_text.items()))


def _text(name: str | bytes) -> str:
    """A name protobuf could not decode (it hands back bytes) as text."""
    return name if isinstance(name, str) else name.decode("utf-8", "replace")


def _count_ops(graph: onnx.GraphProto, counts: Counter[str]) -> None:
    nodes = graph.node
    if any(map(_DOMAIN, nodes)):  # some node names a domain
        counts.update(
            n.op_type if n.domain in ONNX_DOMAINS else f"{n.domain}:{n.op_type}" for n in nodes
        )
    else:
        counts.update(map(_OP_TYPE, nodes))
    for index in nodes_with_subgraphs(nodes):
        for _, sub in subgraphs(nodes[index]):
            _count_ops(sub, counts)


_OP_TYPE = operator.attrgetter("op_type")
_DOMAIN = operator.attrgetter("domain")


def count_nodes(graph: onnx.GraphProto) -> int:
    """Nodes in a graph and, recursively, in its subgraphs."""
    nodes = graph.node
    inner = (count_nodes(g) for i in nodes_with_subgraphs(nodes) for _, g in subgraphs(nodes[i]))
    return len(nodes) + sum(inner)


@dataclass
class _Context:
    model: onnx.ModelProto
    folded: list[Folded] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    folded_affine: list[Folded] = field(default_factory=list)
    skipped_affine: list[Skipped] = field(default_factory=list)
    removed: int = 0  # nodes removed, all graphs
    nodes_indexed: int = 0  # nodes of the main graph and its subgraphs, before the pass
    batched: bool = True  # plain Conv -> BatchNormalization pairs through `bnfold.batched`
    spill: DataFile | None = None  # where folded weights that were on disk go
    chunk_bytes: int = CHUNK_BYTES  # weights the vectorised path scales at once

    def __post_init__(self) -> None:
        self.opset = default_opset(self.model)
        self.names = NameAllocator(self.model)
        self.ranks: dict[str, int] = {}  # set by `find_ranks`, before the main graph changes
        self.budget = EvaluationBudget()
        self.types: dict[str, int] | None = None
        # Training bindings name initializers that a fold would rewrite or remove.
        self.refusal = (
            "the model carries training_info (training-time bindings of its initializers)"
            if self.model.training_info
            else None
        )

    def inferred_ranks(self) -> dict[str, int]:
        return self.ranks

    def find_ranks(self, main: GraphView) -> None:
        """Run onnx's shape inference on the model as it is, if a rule will need ranks."""
        if _needs_ranks(self.model.graph, set(main.op_types)):
            self.ranks = _shape_inference_ranks(self.model)

    def inferred_types(self) -> dict[str, int]:
        """Element types from shape inference, run on first use (a CastLike typed like a tensor
        that nothing declares)."""
        if self.types is None:
            self.types = inferred_element_types(self.model)
        return self.types


def _fold_graph(
    graph: onnx.GraphProto, context: _Context, parent: GraphView | None, path: str
) -> None:
    view = GraphView(
        graph,
        ir_version=context.model.ir_version,
        opset=context.opset,
        parent=parent,
        path=path,
        inferred_ranks=context.inferred_ranks,
        budget=context.budget,
        inferred_types=context.inferred_types,
    )
    # The plain Conv -> BatchNormalization pairs get their weights vectorised up front; every
    # fold is completed (or decided, for the rest) one by one, in node order.
    pairs = [] if context.refusal or not context.batched else find_pairs(view, context.opset)
    if parent is None:  # the main graph, before any edit
        problem = indexed_structure_problem(view, checked_names(pairs))
        if problem:
            raise InputError(None, problem)
        context.find_ranks(view)
        context.names.index(view)
        inner = (g for i in view.holders for _, g in subgraphs(view.nodes[i]))
        context.nodes_indexed = len(view.nodes) + sum(map(count_nodes, inner))
    pending = fold_conv_batchnorm_weights(view, pairs, context.spill, context.chunk_bytes)
    del pairs
    for index in _visited_positions(view):
        if view.op_types[index] == "BatchNormalization":
            record: Folded | Skipped
            if index in pending:  # (popped: each pair's memory goes as its fold completes)
                record = pending.pop(index).finish(view, context.names)
            else:
                record = _fold_one(view, index, context)
            if isinstance(record, Folded):
                context.folded.append(record)
            else:
                context.skipped.append(record)
        elif not context.refusal and index not in view.removed_nodes:
            _fold_affine_either_way(view, index, context)
    for index in view.holders:
        if index in view.removed_nodes:
            continue
        node = view.nodes[index]
        for attr_name, sub in subgraphs(node):
            sub_path = f"{path}/{node_label(node)}.{attr_name}".lstrip("/")
            if node.domain in ONNX_DOMAINS:
                _fold_graph(sub, context, view, sub_path)
            else:
                reason = (
                    f"inside a graph attribute of {node.domain}:{node.op_type}, "
                    "whose use of it is unknown"
                )
                _skip_all(sub, context, sub_path, reason)
    view.finish()
    context.removed += len(view.removed_nodes)


def _visited_positions(view: GraphView) -> list[int]:
    """Positions of the default-domain BatchNormalization, Mul and Add nodes, in node order
    (a fold never turns a node into one of these or one of these into something else)."""
    wanted = ("BatchNormalization", *AFFINE_OPS)
    return [
        index
        for index, (op_type, domain) in enumerate(zip(view.op_types, view.domains, strict=True))
        if op_type in wanted and domain in ONNX_DOMAINS
    ]


def _fold_affine(view: GraphView, index: int, context: _Context) -> Folded | Skipped | None:
    """Fold a Mul/Add by a per-channel constant into the linear layer before it, if exact;
    Skipped (with the reason) where such a Mul/Add cannot fold into the layer before it. Ordinary
    Mul/Add nodes are not recorded."""
    node = view.nodes[index]
    try:
        found = read_affine(node, view, PLANNERS)
        if found is None:
            return None
        producer_index, affine, data = found.layer, found.affine, found.data
        producer = view.nodes[producer_index]
        if view.sole_consumer(data) != index:
            plan: FoldPlan | str = shared_output_reason(view, data, producer)
        else:
            plan = PLANNERS[producer.op_type](producer, view, affine, context.opset)
    except ANALYSIS_ERRORS:
        return None
    if isinstance(plan, str):
        what = "a Mul by" if node.op_type == "Mul" else "an Add of"
        reason = f"{what} a per-channel constant after {producer.op_type}: {plan}"
        return Skipped(node_label(node), node.output[0], reason, view.path)
    into = node_label(producer)
    into_op = _apply(plan, view, producer_index, context)
    view.bypass(index, found.writer)  # the layer, or the last Transpose after it
    how = (
        f"Mul by a per-channel constant; {plan.how}"
        if node.op_type == "Mul"
        else "Add of a per-channel constant, moved into the bias"
    )
    if found.path:
        how += f"; through {found.path}, unchanged"
    return Folded(node_label(node), node.output[0], into, into_op, how, view.path)


def _fold_affine_either_way(view: GraphView, index: int, context: _Context) -> None:
    """A Mul/Add: into the layer before it, else into the Gemm/MatMul after it; recorded as left
    only where it is BN-like next to a layer and neither way folds."""
    backward = _fold_affine(view, index, context)
    if isinstance(backward, Folded):
        context.folded_affine.append(backward)
        return
    forward = _fold_affine_forward(view, index, context)
    context.folded_affine.extend(forward)
    if backward is not None and not forward:
        context.skipped_affine.append(backward)


def _fold_affine_forward(view: GraphView, index: int, context: _Context) -> list[Folded]:
    """Fold a run of Mul/Add by per-feature constants into the Gemm/MatMul reading it, if exact
    (`affine.read_affine_forward`): one record per node. Ordinary Mul/Add are not recorded."""
    try:
        found = read_affine_forward(index, view)
        if found is None:
            return []
        run, affine, data, layer_index = found
        plan = plan_forward(view.nodes[layer_index], view, affine, context.opset, view.rank(data))
    except ANALYSIS_ERRORS:
        return []
    if isinstance(plan, str):
        return []
    layer = view.nodes[layer_index]
    into = node_label(layer)
    into_op = _apply(plan, view, layer_index, context)
    records = []
    for position in reversed(run):  # the layer reads the run's data, node by node
        node = view.nodes[position]
        source = data if position == run[0] else view.nodes[run[run.index(position) - 1]].output[0]
        view.absorb_into_consumer(position, layer_index, source=source)
        what = "Mul by" if node.op_type == "Mul" else "Add of"
        how = f"{what} a per-feature constant before it, folded forward; {plan.how}"
        records.append(Folded(node_label(node), node.output[0], into, into_op, how, view.path))
    return records[::-1]


def _skip_all(graph: onnx.GraphProto, context: _Context, path: str, reason: str) -> None:
    """Record every BatchNormalization in `graph` (and its subgraphs) as skipped."""
    for node in graph.node:
        if node.op_type == "BatchNormalization" and node.domain in ONNX_DOMAINS:
            output = node.output[0] if node.output else ""
            context.skipped.append(Skipped(node_label(node), output, reason, path))
        for attr_name, sub in subgraphs(node):
            _skip_all(sub, context, f"{path}/{node_label(node)}.{attr_name}", reason)


def _plain_message(exc: BaseException) -> str:
    """An exception's message for a user: its first line, without the exception's type."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "unreadable"


def _fold_one(view: GraphView, index: int, context: _Context) -> Folded | Skipped:
    bn_node = view.nodes[index]
    label = node_label(bn_node)
    output = bn_node.output[0] if bn_node.output else ""

    forward = None
    try:
        decision = context.refusal or _decide(view, index, bn_node, context.opset)
        if isinstance(decision, str) and not context.refusal:
            forward = _decide_forward(view, index, bn_node, context.opset)
    except ANALYSIS_ERRORS as exc:
        # Malformed attributes or tensors (e.g. dims that do not match the data): when in doubt,
        # do not fold.
        decision = f"its attributes or constants are malformed ({_plain_message(exc)})"
    if isinstance(forward, tuple):
        return _apply_forward(forward, view, index, context)
    if isinstance(decision, str):
        reason = decision if forward is None else f"{decision}; and forward: {forward}"
        return Skipped(label, output, reason, view.path)
    producer_index, plan, bn = decision
    into = node_label(view.nodes[producer_index])  # before the fold renames its output
    if isinstance(plan, SplitPlan):  # the layers before a Concat, each with its slice
        folded = [_apply(part, view, layer, context) for layer, part in plan.parts]
        into_op = "+".join(dict.fromkeys(folded))
    else:
        into_op = _apply(plan, view, producer_index, context)
    view.bypass(index, view.producer[bn.input])  # the producer, or the Reshape after it
    return Folded(label, output, into, into_op, plan.how, view.path)


def _decide_forward(view: GraphView, index: int, bn_node: onnx.NodeProto, opset: int):
    """(linear index, plan, BatchNorm, reader index) to fold the BN into the layer after it (a
    forward rule's decision); a reason if such a layer follows but the fold is not exact; None
    if no such layer follows."""
    bn = read_batchnorm(bn_node, opset, view)
    if isinstance(bn, str):
        return None
    reader_index = view.sole_consumer(bn.output)
    if reader_index is None:
        return _shared_forward_reason(view, bn_node)
    if view.domains[reader_index] not in ONNX_DOMAINS:
        return None
    for rule in FORWARD_RULES:
        decision = rule(view, reader_index, bn, opset)
        if decision is not None:
            if isinstance(decision, str):
                return decision
            layer_index, plan, reader = decision
            return layer_index, plan, bn, reader
    return None


def _shared_forward_reason(view: GraphView, bn_node: onnx.NodeProto) -> str | None:
    """Why a linear layer reading the BN output cannot absorb it when others read it too."""
    output = bn_node.output[0]
    readers = [view.nodes[i] for i in view.consumers.of(output)]
    linear = [r.op_type for r in readers if r.op_type in FORWARD_LAYERS]
    if not linear:
        return None
    if output in view.output_names:
        return f"its output '{output}' is also a graph output"
    times = len(readers)
    return f"its output '{output}' is read {times} times, not only by the {linear[0]} after it"


def _apply_forward(forward, view, index, context) -> Folded:
    linear_index, plan, bn, reader_index = forward  # reader: the linear layer or a Flatten
    bn_node = view.nodes[index]
    into = node_label(view.nodes[linear_index])
    into_op = _apply(plan, view, linear_index, context)
    view.absorb_into_consumer(index, reader_index)
    return Folded(node_label(bn_node), bn.output, into, into_op, plan.how, view.path)


def _decide(view: GraphView, index: int, bn_node: onnx.NodeProto, opset: int):
    """(producer index, plan, BatchNorm) if a backward rule allows the fold, else the reason."""
    bn = read_batchnorm(bn_node, opset, view)
    if isinstance(bn, str):
        return bn
    producer_index = view.producer.get(bn.input)
    if producer_index is None:
        return _no_producer_reason(view, bn.input)
    for rule in BACKWARD_RULES:
        decision = rule(view, index, bn, opset)
        if decision is not None:
            return decision if isinstance(decision, str) else (*decision, bn)
    producer = view.nodes[producer_index]
    return f"it follows {producer.op_type} '{node_label(producer)}', not {LINEAR_LAYERS}"


def _no_producer_reason(view: GraphView, name: str) -> str:
    if name in view.input_names:
        where = "a graph input"
    elif name in view.initializers:
        where = "an initializer"
    else:
        where = "a value of the enclosing graph"
    return f"its input '{name}' is {where}: no layer before it to fold into"


def _apply(plan: FoldPlan, view: GraphView, producer_index: int, context: _Context) -> str:
    producer = view.nodes[producer_index]
    stem = producer.name or producer.output[0]
    for update in plan.updates:
        view.set_constant_input(
            producer_index, update.slot, update.value, f"{stem}_bnfold_{update.role}", context.names
        )
    if plan.new_op_type:
        producer.op_type = view.op_types[producer_index] = plan.new_op_type
    for name, value in plan.new_attributes.items():
        _set_attribute(producer, name, value)
    return producer.op_type


def _set_attribute(node: onnx.NodeProto, name: str, value: object) -> None:
    new = onnx.helper.make_attribute(name, value)
    for attr in node.attribute:
        if attr.name == name:
            attr.CopyFrom(new)
            return
    node.attribute.append(new)


def _needs_ranks(graph: onnx.GraphProto, op_types: set[str] | None = None) -> bool:
    """Whether a BatchNormalization and a MatMul meet, directly or through Reshape/Transpose/
    Identity (the only rules that need ranks). `op_types`: the graph's, when known."""
    if op_types is None:
        op_types = set(map(operator.attrgetter("op_type"), graph.node))
    if not op_types & CONTROL_FLOW_OPS and not {"MatMul", "BatchNormalization"} <= op_types:
        return False  # cheap answer for the usual graph; custom-domain holders are walked below
    matmul_outputs: set[str] = set()
    bn_outputs: set[str] = set()
    for node in graph.node:
        if node.op_type == "MatMul":
            matmul_outputs.update(node.output)
            if node.input and node.input[0] in bn_outputs:
                return True
        elif node.op_type in LAYOUT_OPS and node.input and node.input[0] in matmul_outputs:
            matmul_outputs.update(node.output[:1])  # MatMul -> Reshape/Transpose -> BN
        elif node.op_type == "BatchNormalization" and node.input:
            bn_outputs.update(node.output[:1])
            if node.input[0] in matmul_outputs:
                return True
        if any(_needs_ranks(sub) for _, sub in subgraphs(node)):
            return True
    return False


def _shape_inference_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Ranks of all tensors onnx's shape inference can find (empty if it cannot run)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is a hint here; without it MatMul folds are skipped
        return {}
    ranks: dict[str, int] = {}

    def collect(graph: onnx.GraphProto) -> None:
        for info in (*graph.value_info, *graph.input, *graph.output):
            if info.type.tensor_type.HasField("shape"):
                ranks[info.name] = len(info.type.tensor_type.shape.dim)
        for node in graph.node:
            for _, sub in subgraphs(node):
                collect(sub)

    collect(inferred.graph)
    return ranks
