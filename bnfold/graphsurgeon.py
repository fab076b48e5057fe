"""`fold_graph`: the same fold for an onnx-graphsurgeon `Graph`.

The rules exist once, in `bnfold.fold`: the graph is exported to a ModelProto, folded, imported
back, and the result replaces the contents of the `Graph` object the caller holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError
from .folding import fold_in_place
from .records import FoldResult

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs


def fold_graph(graph: gs.Graph, *, inline_functions: bool = True) -> FoldResult:
    """Fold the BatchNormalizations of an onnx-graphsurgeon graph, in place.

    Afterwards `graph` holds the folded graph (its nodes and tensors are new objects: keep no
    references to the old ones). Returns the same records as `bnfold.fold`; `FoldResult.model`
    is the folded graph as a ModelProto. `inline_functions` as in `bnfold.fold`.
    """
    try:
        import onnx_graphsurgeon as gs
    except ImportError:
        raise InputError(
            None, "fold_graph needs onnx-graphsurgeon: pip install onnx-graphsurgeon"
        ) from None

    model = gs.export_onnx(graph, do_type_check=False)
    result = fold_in_place(model, inline_functions=inline_functions)
    folded_graph = gs.import_onnx(result.model)
    for key, value in vars(folded_graph).items():
        setattr(graph, key, value)
    return result
