"""`GraphView`: one graph's index (`graph_index.py`), the questions about its values
(`graph_values.py`) and its editor (`graph_editor.py`), built once per graph by the pass.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from .constant_eval import EvaluationBudget
from .graph_editor import GraphEditor, NameAllocator, tensor_dtype
from .graph_index import Readers
from .graph_values import GraphValues, constant_node_value
from .tensor_data import DataFile

__all__ = ["GraphView", "NameAllocator", "Readers", "constant_node_value", "tensor_dtype"]


class GraphView(GraphEditor, GraphValues):
    """Producer/consumer index and constant lookup for one graph, and its editor.

    The edits (`set_constant_input`, `bypass`, `absorb_into_consumer`, `interpose`) keep the
    index up to date and their own books: the names that lost a reader and the tensors that no
    longer exist. `finish()`, called once at the end, removes what nothing reads any more and
    deletes the removed nodes; node positions stay valid until then. A consumer is counted once
    per input slot; a value read inside a subgraph counts as consumed by the node that holds the
    subgraph.
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
        spill: DataFile | None = None,
    ) -> None:
        super().__init__(graph, ir_version=ir_version, opset=opset, parent=parent, path=path)
        self._init_values(inferred_ranks, budget, inferred_types)
        self._init_editor(spill)
