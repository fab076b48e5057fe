"""Decisions as data: what was folded, what was skipped and why.

Every BatchNormalization the pass sees ends in exactly one record. The CLI prints them, `--report`
writes them as JSON, and the tests assert on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx


@dataclass(slots=True)
class Folded:
    """A BatchNormalization removed by folding it into a neighbouring linear layer."""

    batchnorm: str  # node name, or "<BatchNormalization -> output>" when the node has none
    output: str  # the BatchNormalization's output tensor (now produced by `into`)
    into: str  # name of the node that absorbed it (the Concat whose inputs' layers took a split)
    into_op: str  # its op type after the fold ("Conv", "Gemm", ..., "Concat": `how` names them)
    how: str  # one readable sentence
    graph: str = ""  # "" for the main graph, else the path of the subgraph
    # "domain:name at call site 'label'" when the BN came from an inlined model-local function
    inlined_from: str = ""

    kind = "folded"

    def to_dict(self) -> dict:
        return {"status": self.kind, **asdict(self)}


@dataclass(slots=True)
class Skipped:
    """A BatchNormalization left in place, with the reason it could not be folded exactly."""

    batchnorm: str
    output: str
    reason: str
    graph: str = ""
    inlined_from: str = ""  # as in `Folded`

    kind = "skipped"

    def to_dict(self) -> dict:
        return {"status": self.kind, **asdict(self)}


@dataclass(slots=True)
class Inlined:
    """A call of a model-local function replaced by the function's body, so that the
    BatchNormalizations inside it are folded like any other."""

    call: str  # the call node's name, or "<op_type -> output>"
    function: str  # "domain:name"
    batchnorms: int  # BatchNormalizations in the body (not counting the functions it calls)
    graph: str = ""  # where the call was: "" for the main graph, else the subgraph's path

    kind = "inlined"

    def to_dict(self) -> dict:
        return {"status": self.kind, **asdict(self)}


@dataclass
class FoldResult:
    """Outcome of `bnfold.fold`: the folded model and one record per BatchNormalization.

    `model` is a new `ModelProto`; the model passed in is never modified.
    """

    model: onnx.ModelProto
    folded: list[Folded] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    # Mul/Add by a per-channel constant right after a linear layer (a BatchNormalization written
    # as arithmetic), folded the same way; `batchnorm` then names the Mul/Add node.
    folded_affine: list[Folded] = field(default_factory=list)
    # such Mul/Add left where they are (the layer's output is read elsewhere, the layer refuses)
    skipped_affine: list[Skipped] = field(default_factory=list)
    # Calls of model-local functions inlined so that their BatchNormalizations could be folded,
    # and the functions removed because no call of them was left.
    inlined: list[Inlined] = field(default_factory=list)
    functions_removed: list[str] = field(default_factory=list)
    # nodes by op type (subgraphs' included) in the model as given and as folded
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)

    @property
    def records(self) -> list[Folded | Skipped]:
        return [*self.folded, *self.folded_affine, *self.skipped, *self.skipped_affine]

    @property
    def left(self) -> list[Skipped]:
        """Every BatchNormalization, and BN-like Mul/Add next to a layer, left unfolded."""
        return [*self.skipped, *self.skipped_affine]

    @property
    def batchnorm_count(self) -> int:
        return len(self.folded) + len(self.skipped)

    def to_dict(self) -> dict:
        return {
            "folded": [r.to_dict() for r in self.folded],
            "skipped": [r.to_dict() for r in self.skipped],
            "folded_affine": [r.to_dict() for r in self.folded_affine],
            "skipped_affine": [r.to_dict() for r in self.skipped_affine],
            "batchnorm_total": self.batchnorm_count,
            "batchnorm_folded": len(self.folded),
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "inlined": [r.to_dict() for r in self.inlined],
            "functions_removed": list(self.functions_removed),
            "ops_before": dict(self.ops_before),
            "ops_after": dict(self.ops_after),
        }
