"""Decisions as data: what was folded, what was skipped and why.

Every BatchNormalization the pass sees ends in exactly one record. The CLI prints them, `--report`
writes them as JSON, and the tests assert on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx


@dataclass(frozen=True)
class Folded:
    """A BatchNormalization removed by folding it into a neighbouring linear layer."""

    batchnorm: str  # node name, or "<BatchNormalization -> output>" when the node has none
    output: str  # the BatchNormalization's output tensor (now produced by `into`)
    into: str  # name of the node that absorbed it
    into_op: str  # its op type after the fold ("Conv", "Gemm", ...)
    how: str  # one readable sentence
    graph: str = ""  # "" for the main graph, else the path of the subgraph

    kind = "folded"

    def to_dict(self) -> dict:
        return {"status": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Skipped:
    """A BatchNormalization left in place, with the reason it could not be folded exactly."""

    batchnorm: str
    output: str
    reason: str
    graph: str = ""

    kind = "skipped"

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

    @property
    def records(self) -> list[Folded | Skipped]:
        return [*self.folded, *self.folded_affine, *self.skipped]

    @property
    def batchnorm_count(self) -> int:
        return len(self.folded) + len(self.skipped)

    def to_dict(self) -> dict:
        return {
            "folded": [r.to_dict() for r in self.folded],
            "skipped": [r.to_dict() for r in self.skipped],
            "folded_affine": [r.to_dict() for r in self.folded_affine],
            "batchnorm_total": self.batchnorm_count,
            "batchnorm_folded": len(self.folded),
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
        }
