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

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

from .batched import CHUNK_BYTES, checked_names, find_pairs, fold_conv_batchnorm_weights
from .constant_eval import EvaluationBudget
from .element_types import inferred_element_types
from .errors import InputError
from .functions import inline_batchnorm_functions
from .graph_view import GraphView, NameAllocator
from .graphs import (
    ONNX_DOMAINS,
    all_graphs,
    default_opset,
    nested_graphs,
    node_label,
    subgraph_path,
    subgraphs,
)
from .model_io import (
    check_model_opset,
    check_model_structure,
    indexed_structure_problem,
    load_model_and_sources,
    require_external_data_loaded,
)
from .producers.registry import (
    RULES,
    NodeRules,
    RankMeeting,
    conv_pairs_batchable,
    followed_back_through,
    forward_folding_ops,
    rank_meetings,
)
from .producers.rule import Match, Rule, Skip
from .protobuf_speed import DOMAIN, OP_TYPE, collector_paused
from .records import Folded, FoldResult, Skipped
from .tensor_data import DataFile

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
    rules: Mapping[str, NodeRules] | None = None,
) -> FoldResult:
    """`fold`, editing `model` itself (saves a copy of a big model when the caller owns it).

    Raises `InputError` (naming no file) if the model fails `check_model_structure`'s checks;
    for the main graph they are answered from the pass's own index, without a second walk.
    `batched=False` folds every pair one at a time, the reference the vectorised path of
    `bnfold.batched` is tested against (same model, bit for bit). `spill`: a `DataFile` where
    the new values of weights left on disk by a lazy load go (`bnfold.tensor_data`); the model
    reads them there until it is saved (pass it to `save_model` to make it the output's data
    file), so it must stay open until then. `chunk_bytes`: how much weight the vectorised path
    scales at once. `rules`: the rule lists to ask by op type (`producers.registry.RULES`)."""
    check_model_opset(model)
    ops_before = op_counts(model.graph)
    nodes_before = None  # without functions to inline, counted from the pass's index
    if model.functions:  # the inliner edits the graph before the pass indexes it
        check_model_structure(model)
        nodes_before = count_nodes(model.graph)
    functions = inline_batchnorm_functions(model, enabled=inline_functions)
    context = _Context(model, batched=batched, spill=spill, chunk_bytes=chunk_bytes)
    if rules is not None:
        context.use_rules(rules)
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
    for _, inner in all_graphs(graph):
        nodes = inner.node
        if any(map(DOMAIN, nodes)):  # some node names a domain
            counts.update(
                n.op_type if n.domain in ONNX_DOMAINS else f"{n.domain}:{n.op_type}" for n in nodes
            )
        else:
            counts.update(map(OP_TYPE, nodes))


def count_nodes(graph: onnx.GraphProto) -> int:
    """Nodes in a graph and, recursively, in its subgraphs."""
    return sum(len(inner.node) for _, inner in all_graphs(graph))


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
        # what the vectorised Conv → BN folds must respect, from the rules' declarations
        self.use_rules(RULES)
        self.budget = EvaluationBudget()
        self.types: dict[str, int] | None = None
        # Training bindings name initializers that a fold would rewrite or remove.
        self.refusal = (
            "the model carries training_info (training-time bindings of its initializers)"
            if self.model.training_info
            else None
        )

    def use_rules(self, rules: Mapping[str, NodeRules]) -> None:
        """Ask `rules`, and derive from their declarations what the pass must respect."""
        self.rules = rules
        self.forward_from = forward_folding_ops(rules)
        self.followed = followed_back_through(rules)
        self.rank_meetings = rank_meetings(rules)
        self.batchable = conv_pairs_batchable(rules)

    def record(self, family: str, outcome: list[Folded] | Skipped | None) -> None:
        """Keep a node's records with its family's (BatchNormalization, or Mul/Add)."""
        if outcome is None:
            return
        affine = family == "affine"
        if isinstance(outcome, Skipped):
            (self.skipped_affine if affine else self.skipped).append(outcome)
        else:
            (self.folded_affine if affine else self.folded).extend(outcome)

    def forget(self, family: str, record: Skipped) -> None:
        """Take back a node's `Skipped` record (a later fold let it fold after all)."""
        kept = self.skipped_affine if family == "affine" else self.skipped
        kept.remove(record)

    def inferred_ranks(self) -> dict[str, int]:
        return self.ranks

    def find_ranks(self, main: GraphView) -> None:
        """Run onnx's shape inference on the model as it is, if a rule will need ranks."""
        graph, meetings = self.model.graph, self.rank_meetings
        if _needs_ranks(graph, meetings, set(main.op_types), main.holders):
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
        spill=context.spill,
    )
    # The plain Conv -> BatchNormalization pairs get their weights vectorised up front; every
    # fold is completed (or decided, for the rest) one by one, in node order.
    batchable = context.batched and not context.refusal and context.batchable
    pairs = find_pairs(view, context.opset, context.forward_from) if batchable else []
    if parent is None:  # the main graph, before any edit
        problem = indexed_structure_problem(view, checked_names(pairs))
        if problem:
            raise InputError(None, problem)
        context.find_ranks(view)
        context.names.index(view)
        inner = (g for i in view.holders for _, g in subgraphs(view.nodes[i]))
        context.nodes_indexed = len(view.nodes) + sum(map(count_nodes, inner))
    pending = fold_conv_batchnorm_weights(
        view, pairs, context.spill, context.chunk_bytes, context.followed
    )
    del pairs
    # nodes left so far (their Skipped record; None: an ordinary Mul/Add, said nothing of), by
    # position: a later fold may free them
    left: dict[int, Skipped | None] = {}
    for index in _visited_positions(view, context.rules):
        if index in view.removed_nodes:  # (a Mul/Add folded forward with the one before it)
            continue
        rules = context.rules[view.op_types[index]]
        if index in pending:  # (popped: each pair's memory goes as its fold completes)
            context.record(rules.family, [pending.pop(index).finish(view, context.names)])
            continue
        inputs = list(view.nodes[index].input)  # (before a fold rewires them)
        outcome = _fold_node(view, index, rules, context)
        context.record(rules.family, outcome)
        if isinstance(outcome, list):
            _look_again(view, inputs, left, context)
        else:
            left[index] = outcome
    for index in view.holders:
        if index in view.removed_nodes:
            continue
        node = view.nodes[index]
        for attr_name, sub in subgraphs(node):
            sub_path = subgraph_path(path, node, attr_name)
            if node.domain in ONNX_DOMAINS:
                _fold_graph(sub, context, view, sub_path)
            else:
                reason = (
                    f"inside a graph attribute of {node.domain}:{node.op_type}, "
                    "whose use of it is unknown"
                )
                _skip_all(sub, context, sub_path, reason)
    view.finish()
    context.removed += view.nodes_removed


def _look_again(
    view: GraphView, folded_inputs: list[str], left: dict[int, Skipped | None], context: _Context
) -> None:
    """After a fold of a node that read `folded_inputs`: a node left earlier (`left`: its
    Skipped record, or None for an ordinary Mul/Add) that writes one of them may fold now
    (BN → BN → layer, Mul → BN → layer: the later one folded forward, the earlier now reads
    into the layer), and so on back; its fold's records take the place of its Skipped one (they
    come after the records made so far)."""
    waiting = [view.producer.get(name) for name in folded_inputs]
    while waiting:
        index = waiting.pop()
        if index is None or index not in left or index in view.removed_nodes:
            continue
        inputs = list(view.nodes[index].input)
        rules = context.rules[view.op_types[index]]
        outcome = _fold_node(view, index, rules, context)
        if isinstance(outcome, list) and outcome:
            record = left.pop(index)
            if record is not None:
                context.forget(rules.family, record)
            context.record(rules.family, outcome)
            waiting.extend(view.producer.get(name) for name in inputs)


def _visited_positions(view: GraphView, rules: Mapping[str, NodeRules]) -> list[int]:
    """Positions of the default-domain nodes `rules` have rules for (BatchNormalization, Mul,
    Add, ...), in node order (a fold never turns a node into one of these or one of these into
    something else)."""
    wanted = tuple(rules)
    return [
        index
        for index, (op_type, domain) in enumerate(zip(view.op_types, view.domains, strict=True))
        if op_type in wanted and domain in ONNX_DOMAINS
    ]


def _fold_node(
    view: GraphView, index: int, rules: NodeRules, context: _Context
) -> list[Folded] | Skipped | None:
    """Ask the node's rules (`producers.registry`) and make the first fold they match: its
    records; else the node's `Skipped` record (None: nothing to say, an ordinary Mul/Add)."""
    node = view.nodes[index]
    if context.refusal:
        answer: Match | Skip | None = Skip(context.refusal) if rules.family == "batchnorm" else None
    else:
        answer = _decide(view, index, node, rules, context.opset)
    if isinstance(answer, Match):
        return answer.apply(view, context.names)
    if answer is None:
        return None
    return Skipped(
        node_label(node), node.output[0] if node.output else "", answer.reason, view.path
    )


def _decide(
    view: GraphView, index: int, node: onnx.NodeProto, rules: NodeRules, opset: int
) -> Match | Skip | None:
    """The first Match of the rule groups, in order (within a group the first rule with an
    answer decides); else the groups' reasons as one Skip; None if no rule applies. Malformed
    attributes or tensors (a rule raising) mean: do not fold; a BatchNormalization says so."""
    reasons: list[str] = []
    try:
        subject = rules.read(view, index, node, opset)
        if isinstance(subject, Skip):
            return subject
        for direction, group in rules.groups:
            answer = _first_answer(group, view, index, subject, opset, rules.family)
            if isinstance(answer, Match):
                return answer
            if answer is not None:
                reasons.append(f"; and {direction}: {answer.reason}" if reasons else answer.reason)
    except ANALYSIS_ERRORS as exc:
        return Skip(f"its attributes or constants are malformed ({_plain_message(exc)})")
    return Skip("".join(reasons)) if reasons else None


def _first_answer(
    group: tuple[Rule, ...], view: GraphView, index: int, subject: Any, opset: int, family: str
) -> Match | Skip | None:
    for rule in group:
        try:
            answer = rule(view, index, subject, opset)
        except ANALYSIS_ERRORS:
            if family == "batchnorm":
                raise
            answer = None  # (a Mul/Add that trips a rule is no BatchNormalization to it)
        if answer is not None:
            return answer
    return None


def _skip_all(graph: onnx.GraphProto, context: _Context, path: str, reason: str) -> None:
    """Record every BatchNormalization in `graph` (and its subgraphs) as skipped."""
    for where, inner in all_graphs(graph, path):
        for node in inner.node:
            if node.op_type == "BatchNormalization" and node.domain in ONNX_DOMAINS:
                output = node.output[0] if node.output else ""
                context.skipped.append(Skipped(node_label(node), output, reason, where))


def _plain_message(exc: BaseException) -> str:
    """An exception's message for a user: its first line, without the exception's type."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "unreadable"


def _needs_ranks(
    graph: onnx.GraphProto,
    meetings: tuple[RankMeeting, ...],
    op_types: set[str] | None = None,
    holders: Iterable[int] | None = None,
) -> bool:
    """Whether a graph or one of its subgraphs holds one of `meetings` (`registry.rank_meetings`:
    where a rule asks for shape inference's ranks). `op_types` and `holders` (the positions of
    the nodes holding subgraphs): the graph's, when known."""
    if op_types is None:
        op_types = set(map(OP_TYPE, graph.node))
    if any(_meets(graph, meeting, op_types) for meeting in meetings):
        return True
    for _, inner in nested_graphs(graph.node, holders=holders):
        inner_ops = set(map(OP_TYPE, inner.node))
        if any(_meets(inner, meeting, inner_ops) for meeting in meetings):
            return True
    return False


def _meets(graph: onnx.GraphProto, meeting: RankMeeting, op_types: set[str]) -> bool:
    """Whether a node of `meeting.writers` writes, directly or through `meeting.through`, an
    input of a node of `meeting.readers` in this graph (not its subgraphs): its first, or any
    other (a BN feeding the right operand of a MatMul with its weight on the left)."""
    if not (op_types & meeting.writers and op_types & meeting.readers):
        return False
    reached: set[str] = set()  # written by a writer, or passed on by a `through` node
    for node in graph.node:
        first = node.input[0] if node.input else None
        if node.op_type in meeting.readers and not reached.isdisjoint(node.input):
            return True
        if node.op_type in meeting.writers:
            reached.update(node.output)
        elif node.op_type in meeting.through and first in reached:
            reached.update(node.output[:1])
    return False


def _shape_inference_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Ranks of all tensors onnx's shape inference can find (empty if it cannot run)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is a hint here; without it MatMul folds are skipped
        return {}
    return {
        info.name: len(info.type.tensor_type.shape.dim)
        for _, graph in all_graphs(inferred.graph)
        for info in (*graph.value_info, *graph.input, *graph.output)
        if info.type.tensor_type.HasField("shape")
    }
