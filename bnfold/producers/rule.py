"""The rule protocol: every rule, whatever it folds, has one shape.

    rule(view, index, subject, opset) -> Match | Skip | None

`index` is the position of the node to fold (a BatchNormalization, or a Mul/Add written as one),
`subject` what was read from it once for every rule (the `BatchNorm` of a BatchNormalization;
the node itself for a Mul/Add). None: the rule does not apply (the next is asked); `Skip`: it
applies, and the fold is not exact (the reason is the node's record); `Match`: the fold is exact,
and `Match.apply` makes it. Rules only read the graph; `apply` is the one place a rule's fold
edits it, through the view's editor (which keeps its own books of what the edit leaves unread).
The vectorised Conv → BatchNormalization pairs (`bnfold.batched`) make `into_layer`'s edits and
records directly, in bulk (tested bit for bit against this path).

A rule module holds the rule function, its maths in the docstring; it is added with one line in
its ordered list (`backward.BACKWARD_RULES`, `forward.FORWARD_RULES`, the lists of
`arithmetic.py`), which `registry.RULES` gives the pass by op type. A rule declares what the pass
must know about it: which producers it answers about (`about_producers`), that it never folds
(`never_folds`), and near which layers it needs ranks only shape inference finds
(`infers_ranks_near`). A rule asked before `into_layer` that declares neither `about_producers`
nor `never_folds` might answer about a plain Conv → BN pair: the pass then folds every pair one
at a time (still exact, but big models lose the vectorised path's speed and its low-memory
writes); `tests/test_rule_protocol.py` keeps the shipped lists vectorisable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..graph_view import GraphView, NameAllocator
from ..graphs import node_label
from ..records import Folded
from .base import FoldPlan, SplitPlan


@dataclass(frozen=True)
class Skip:
    """The rule applies, and the fold is not exact: why."""

    reason: str


@dataclass(frozen=True)
class Bypass:
    """The folded node leaves the graph: `writer` (the layer, or the last layout node after
    it) takes over its output tensor."""

    node: int
    writer: int
    how: str


@dataclass(frozen=True)
class Absorb:
    """The folded node leaves the graph: `reader` (the layer after it, or a Flatten before the
    layer) reads the node's data input (`source`; None: its first input) instead."""

    node: int
    reader: int
    how: str
    source: str | None = None


@dataclass(frozen=True)
class Match:
    """An exact fold: each layer's plan (new constants, op type, attributes), then the folded
    nodes removed in this order; one `Folded` record per removed node, in node order, naming
    `into` (the layer; the Concat whose inputs' layers took a split) as what they were folded
    into."""

    layers: tuple[tuple[int, FoldPlan], ...]
    removals: tuple[Bypass | Absorb, ...]
    into: int

    def apply(self, view: GraphView, names: NameAllocator) -> list[Folded]:
        """Make the fold in `view` (new constants get names from `names`); its records."""
        into = view.label(self.into)  # (before a bypass renames its output)
        said = [
            (node_label(view.nodes[r.node]), view.nodes[r.node].output[0]) for r in self.removals
        ]
        # a layer given a new bias Add (`FoldPlan.added_bias`) writes through it: where that
        # layer takes over a removed node's output, the Add does
        writers = {index: _rewrite(view, index, plan, names) for index, plan in self.layers}
        into_op = view.op_types[self.into]  # (after the rewrite: a MatMul may be a Gemm now)
        for removal in self.removals:
            if isinstance(removal, Bypass):
                view.bypass(removal.node, writers.get(removal.writer, removal.writer))
            else:
                view.absorb_into_consumer(removal.node, removal.reader, source=removal.source)
        records = [
            (r.node, Folded(label, output, into, into_op, r.how, view.path))
            for r, (label, output) in zip(self.removals, said, strict=True)
        ]
        return [record for _, record in sorted(records, key=lambda pair: pair[0])]


Rule = Callable[[GraphView, int, Any, int], "Match | Skip | None"]
_R = TypeVar("_R")


def about_producers(*op_types: str, reaching: Iterable[str] | None = None) -> Callable[[_R], _R]:
    """Declare that a rule answers None unless the node computing its subject's input is one of
    `op_types` (default domain), and (`reaching`) that its folds only reach layers of these kinds
    through them (default: any layer). What the pass may do without asking it: the vectorised
    Conv → BatchNormalization folds (`registry.conv_pairs_batchable`) skip rules that declare
    they never answer about a Conv, and write a folded weight to its final place unless a rule
    that may reach a Conv follows a node reading it (`registry.followed_back_through`). An
    undeclared rule may answer about anything."""

    def declared(rule: _R) -> _R:
        rule.producer_ops = frozenset(op_types)  # type: ignore[attr-defined]
        rule.reaches = None if reaching is None else frozenset(reaching)  # type: ignore[attr-defined]
        return rule

    return declared


def never_folds(rule: _R) -> _R:
    """Declare that a rule only ever says why not (a `Skip`, or None), never a `Match`: it
    leads no fold back to a layer (`registry.followed_back_through`)."""
    rule.never_folds = True  # type: ignore[attr-defined]
    return rule


@dataclass(frozen=True)
class RankNeed:
    """Ranks a rule reads that only onnx's shape inference may know: those of the tensors around
    a layer of `layers` meeting the rule's subject, directly or through nodes of `through` (a
    MatMul's input: whether it is 2-D decides how a fold applies)."""

    layers: frozenset[str]
    through: frozenset[str]


def infers_ranks_near(*layers: str, through: Iterable[str] = ()) -> Callable[[_R], _R]:
    """Declare that a rule needs ranks that neither the graph declares nor its producers prove
    (`RankNeed`): where a graph holds the rule's subject next to one of `layers` (the layer's
    output an input of its subject for a backward rule, the subject's output an input of the
    layer for a forward one; `through` nodes may sit between them), the pass runs onnx's shape
    inference once, before it edits anything (`registry.rank_meetings`). Undeclared rules read
    the ranks that are declared or proven, and what an inference run for another rule found:
    inference costs about as much as the pass on a large model, so it runs only where asked."""

    def declared(rule: _R) -> _R:
        rule.rank_need = RankNeed(frozenset(layers), frozenset(through))  # type: ignore[attr-defined]
        return rule

    return declared


def bypassing(node: int, writer: int, layer: int, plan: FoldPlan | SplitPlan) -> Match:
    """The fold of a node into the layer(s) before it (`plan`: one layer's, or a split's over
    several), `writer` taking over its output."""
    layers = plan.parts if isinstance(plan, SplitPlan) else ((layer, plan),)
    return Match(layers, (Bypass(node, writer, plan.how),), layer)


def _rewrite(view: GraphView, index: int, plan: FoldPlan, names: NameAllocator) -> int:
    """Give a layer its plan's constants, op type and attributes; the node that now writes the
    layer's output (a new bias Add after it, else the layer)."""
    layer = view.nodes[index]
    stem = layer.name or layer.output[0]
    for update in plan.updates:
        view.set_constant_input(
            index, update.slot, update.value, f"{stem}_bnfold_{update.role}", names
        )
    if plan.new_op_type:
        view.set_op_type(index, plan.new_op_type)
    for name, value in plan.new_attributes.items():
        view.set_attribute(index, name, value)
    if plan.added_bias is not None:  # (Add-1/6 broadcast only when told to)
        bias = view.add_constant(plan.added_bias, f"{stem}_bnfold_bias", names)
        attributes: dict[str, object] = {"broadcast": 1} if view.opset < 7 else {}
        return view.interpose(index, "Add", [bias], names, attributes)
    return index
