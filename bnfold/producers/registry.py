"""Which rules the pass asks for which node: the rule lists by op type.

For each node kind, `NodeRules` says what the rules read from the node (once, for all of them)
and the groups of rules asked in order: backward (into the layer before), then forward (into
the layer after). Within a group the first rule with an answer decides; the first `Match` of any
group is made; otherwise the groups' `Skip` reasons are the node's record. A new rule is a
function in its own module and one line in its group's list (`BACKWARD_RULES`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import onnx

from ..affine import AFFINE_OPS
from ..batchnorm import read_batchnorm
from ..graph_view import GraphView
from . import PLANNERS
from .arithmetic import BACKWARD_AFFINE_RULES, FORWARD_AFFINE_RULES
from .backward import BACKWARD_RULES, into_layer
from .forward import FORWARD_RULES
from .rule import RankNeed, Rule, Skip


@dataclass(frozen=True)
class NodeRules:
    """The rules for one kind of node. `family`: "batchnorm" nodes are always recorded (folded
    or skipped, with the reason); "affine" ones (Mul/Add) only where a rule matched or said why
    not: an ordinary Mul/Add is no BatchNormalization."""

    read: Callable[[GraphView, int, onnx.NodeProto, int], Any]  # the subject, or a Skip
    groups: tuple[tuple[str, tuple[Rule, ...]], ...]  # (direction, rules)
    family: Literal["batchnorm", "affine"]


def _batchnorm(view: GraphView, index: int, node: onnx.NodeProto, opset: int):
    bn = read_batchnorm(node, opset, view)
    return Skip(bn) if isinstance(bn, str) else bn


def _the_node(view: GraphView, index: int, node: onnx.NodeProto, opset: int) -> onnx.NodeProto:
    return node  # (whether it reads as arithmetic at all: `affine.reads_as_arithmetic`)


_AFFINE = NodeRules(
    _the_node, (("backward", BACKWARD_AFFINE_RULES), ("forward", FORWARD_AFFINE_RULES)), "affine"
)
RULES: dict[str, NodeRules] = {
    "BatchNormalization": NodeRules(
        _batchnorm, (("backward", BACKWARD_RULES), ("forward", FORWARD_RULES)), "batchnorm"
    ),
    **dict.fromkeys(AFFINE_OPS, _AFFINE),
}


def conv_pairs_batchable(rules: Mapping[str, NodeRules] | None = None) -> bool:
    """Whether the plain Conv → BatchNormalization pairs may be folded together up front
    (`bnfold.batched`: `into_layer`'s folds, vectorised): only while every backward rule asked
    before `into_layer` declares (`rule.about_producers`) that it never answers about a Conv.
    `rules`: the rule lists the pass asks (`RULES` by default), here and below."""
    batchnorm = (RULES if rules is None else rules)["BatchNormalization"]
    if batchnorm.read is not _batchnorm:
        return False
    for rule in batchnorm.groups[0][1]:
        if rule is into_layer:
            return True
        if "Conv" in getattr(rule, "producer_ops", {"Conv"}):
            return False
    return False


def forward_folding_ops(rules: Mapping[str, NodeRules] | None = None) -> frozenset[str]:
    """The op types a forward rule may fold into the layer after them: such a node feeding a
    layer may rewrite it before anything after the layer does (in node order)."""
    listed = RULES if rules is None else rules
    return frozenset(
        op for op, kind in listed.items() if any(d == "forward" and g for d, g in kind.groups)
    )


def followed_back_through(
    rules: Mapping[str, NodeRules] | None = None, layer: str = "Conv"
) -> frozenset[str] | None:
    """The op types backward rules follow from what they fold back to a `layer` kind (the
    vectorised path's Conv unless told; what they declare with `about_producers`, the layers
    themselves aside; rules that declare they reach other layers only are left out): a node of
    these types reading the layer's output may lead a later fold to it. None when a rule that
    may fold declares nothing (it may follow anything)."""
    followed: set[str] = set()
    for kind in (RULES if rules is None else rules).values():
        for direction, group in kind.groups:
            if direction != "backward":
                continue
            for rule in group:
                if getattr(rule, "never_folds", False):
                    continue
                reaches = getattr(rule, "reaches", None)
                if reaches is not None and layer not in reaches:
                    continue
                declared = getattr(rule, "producer_ops", None)
                if declared is None:
                    return None
                followed |= declared
    return frozenset(followed - set(PLANNERS))


@dataclass(frozen=True)
class RankMeeting:
    """Where a rule needs shape inference's ranks (`rule.infers_ranks_near`): a node of `writers`
    whose output reaches an input of a node of `readers`, directly or through nodes of `through`
    (each passing on what reaches its first input)."""

    writers: frozenset[str]
    through: frozenset[str]
    readers: frozenset[str]


def rank_meetings(rules: Mapping[str, NodeRules] | None = None) -> tuple[RankMeeting, ...]:
    """Every meeting of a subject and a layer for which a rule asks for shape inference: the
    layer writing the subject's input for backward rules, the subject writing the layer's input
    for forward ones."""
    meetings: list[RankMeeting] = []
    for op, kind in (RULES if rules is None else rules).items():
        subject = frozenset((op,))
        for direction, group in kind.groups:
            for rule in group:
                need: RankNeed | None = getattr(rule, "rank_need", None)
                if need is None:
                    continue
                if direction == "backward":
                    meetings.append(RankMeeting(need.layers, need.through, subject))
                else:
                    meetings.append(RankMeeting(subject, need.through, need.layers))
    return tuple(dict.fromkeys(meetings))  # (once each, in order)
