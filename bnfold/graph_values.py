"""Questions about a graph's values: which tensors are constant (initializers, Constant nodes,
small constant subgraphs evaluated within a budget, through enclosing graphs), their element
types and ranks (declared, inferred, or proven from the producers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .constant_eval import EVALUATED_OPS, EvaluationBudget, evaluate
from .element_types import castlike_target_problem, declared_element_types, type_witness
from .graph_index import GraphIndex
from .graphs import (
    ONNX_DOMAINS,
    node_label,
)
from .tensor_data import is_on_disk, tensor_to_array

if TYPE_CHECKING:
    from .graph_view import GraphView

# Ops whose (first) output has the rank of their first input.
SAME_RANK_OPS = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Softplus",
        "Softsign",
        "Clip",
        "Identity",
        "Dropout",
        "Cast",
        "CastLike",
        "Neg",
        "Abs",
        "Sqrt",
        "Exp",
        "Log",
        "Erf",
        "Gelu",
        "Mish",
        "BatchNormalization",
        "Softmax",
        "LogSoftmax",
        "Transpose",
        # layers and pools keep the rank of their data input
        "Conv",
        "ConvTranspose",
        "MaxPool",
        "AveragePool",
        "LpPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "Pad",
        "LRN",
        "InstanceNormalization",
        "LayerNormalization",
    }
)
REDUCE_OPS = frozenset(
    {
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    }
)
MAX_RANK_DEPTH = 64  # producers followed back to find a rank


class GraphValues(GraphIndex):
    """The value questions of `GraphView` (`_init_values` sets up their caches)."""

    parent: GraphView | None

    def _init_values(
        self,
        inferred_ranks: Callable[[], dict[str, int]] | None,
        budget: EvaluationBudget | None,
        inferred_types: Callable[[], dict[str, int]] | None,
    ) -> None:
        self._constants: dict[str, np.ndarray | None] = {}
        self.budget = budget if budget is not None else EvaluationBudget()
        self._inferred_ranks = inferred_ranks
        self._declared_ranks: dict[str, int] | None = None
        self._proven_ranks: dict[str, int | None] = {}  # (`_rank_within`)
        self._inferred_types = inferred_types
        self._declared_types: dict[str, int] | None = None

    def is_overridable(self, name: str) -> bool:
        """An initializer that is also a graph input can be fed at run time (IR >= 4)."""
        return name in self.input_names and self.ir_version >= 4

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` if it is fixed at load time, else None.

        Constant means: a (non-overridable) initializer, the output of a `Constant` node, or
        either of these reached through `Identity` nodes, here or in an enclosing graph.
        """
        tensor = self.initializers.get(name)
        if tensor is not None:  # read afresh: caching would hold a copy of every weight
            if self.is_overridable(name) or (
                tensor.data_location == onnx.TensorProto.EXTERNAL and not is_on_disk(tensor)
            ):
                return None
            return tensor_to_array(tensor)
        if name in self._constants:
            return self._constants[name]
        value = self._find_constant(name)
        self._constants[name] = value
        return value

    def _find_constant(self, name: str) -> np.ndarray | None:
        if name in self.producer:
            node = self.nodes[self.producer[name]]
            if node.op_type == "Constant" and node.domain in ONNX_DOMAINS:
                return constant_node_value(node)
            return self._evaluate(self.producer[name], node)
        if name in self.input_names:
            return None
        if self.parent is not None:
            return self.parent.constant(name)
        return None

    def _evaluate(self, index: int, node: onnx.NodeProto) -> np.ndarray | None:
        """Fold a small constant subgraph ending at `node` (see `constant_eval`)."""
        if node.op_type not in EVALUATED_OPS or node.output[0] not in self.producer:
            return None
        budget = self.budget
        if budget.depth >= budget.max_depth:
            return None
        budget.depth += 1
        try:
            inputs = [self.constant(name) if name else None for name in node.input]
        finally:
            budget.depth -= 1
        castlike = node.op_type == "CastLike" and len(inputs) == 2
        if castlike and inputs[0] is not None and inputs[1] is None:  # it reads only the type
            inputs[1] = type_witness(self.element_type(node.input[1]))
        if any(value is None for name, value in zip(node.input, inputs, strict=True) if name):
            return None
        value = evaluate(node, inputs, self.opset, budget)
        if value is not None:
            self.evaluated_nodes.add(index)
        return value

    def why_not_constant(self, name: str) -> str:
        """A short phrase saying why `name` is not constant."""
        for _ in range(self.budget.max_depth):  # back through pure ops to a non-constant input
            node = self.nodes[self.producer[name]] if name in self.producer else None
            source = self._non_constant_input(node) if node is not None else None
            if source is None:
                break
            name = source
        if name in self.initializers and self.is_overridable(name):
            return f"'{name}' is an initializer that is also a graph input (can be overridden)"
        if name in self.input_names:
            return f"'{name}' is a graph input"
        if name in self.producer:
            node = self.nodes[self.producer[name]]
            domain = f"{node.domain}:" if node.domain not in ONNX_DOMAINS else ""
            phrase = f"'{name}' is computed by {domain}{node.op_type} '{node_label(node)}'"
            if node.op_type == "CastLike" and len(node.input) == 2 and not domain:
                like = node.input[1]
                problem = castlike_target_problem(self.element_type(like), like)
                phrase = f"{phrase}, and {problem}" if problem else phrase
            return phrase
        if self.parent is not None:
            return self.parent.why_not_constant(name)
        return f"'{name}' is not defined"

    def _non_constant_input(self, node: onnx.NodeProto) -> str | None:
        """The first input that keeps a pure op's output from being constant (of a CastLike,
        only the first input: the second gives just a type)."""
        if node.op_type not in EVALUATED_OPS or node.domain not in ONNX_DOMAINS:
            return None
        inputs = node.input[:1] if node.op_type == "CastLike" else node.input
        return next((name for name in inputs if name and self.constant(name) is None), None)

    def element_type(self, name: str) -> int | None:
        """The element type (a TensorProto data type) of `name`: of its constant value, declared
        here or in an enclosing graph, or found by shape inference; None if unknown."""
        value = self.constant(name)
        if value is not None:
            return onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        if self._declared_types is None:  # built on first use: only CastLike asks
            self._declared_types = declared_element_types(self.graph)
        found = self._declared_types.get(name)
        if found is None and self.parent is not None and name not in self.producer:
            found = self.parent.element_type(name)
        if found is None and self._inferred_types is not None:
            found = self._inferred_types().get(name)
        return found

    def rank(self, name: str) -> int | None:
        """The rank of a tensor if declared, constant, or found by shape inference; else None."""
        value = self.constant(name)
        if value is not None:
            return value.ndim
        if self._declared_ranks is None:  # built on first use: only MatMul folds need ranks
            self._declared_ranks = {
                info.name: len(info.type.tensor_type.shape.dim)
                for infos in (self.graph.value_info, self.graph.input, self.graph.output)
                for info in infos
                if info.type.tensor_type.HasField("shape")
            }
        if name in self._declared_ranks:
            return self._declared_ranks[name]
        if self._inferred_ranks is not None:
            found = self._inferred_ranks().get(name)
            if found is not None:
                return found
        return self._rank_within(name, -1)

    def _propagated_rank(self, name: str, depth: int = 0) -> int | None:
        """The rank a tensor provably has from its producer's op and inputs' ranks: ops that
        keep their input's rank (activations, casts, BatchNormalization, layers, pools), Gemm
        and Flatten (2), Squeeze/Unsqueeze and Reduce ops by their constant axes, MatMul and
        the broadcasting arithmetic of known ranks. None when not provable here."""
        index = self.producer.get(name)
        if index is None or depth > MAX_RANK_DEPTH or self.domains[index] not in ONNX_DOMAINS:
            return None
        op, node = self.op_types[index], self.nodes[index]
        if op in ("Gemm", "Flatten"):
            return 2
        if op == "Reshape" and len(node.input) > 1:
            target = self.constant(node.input[1])
            return int(target.size) if target is not None and target.ndim == 1 else None
        if op in SAME_RANK_OPS and node.input and node.output[0] == name:
            return self._rank_within(node.input[0], depth)
        if op in ("Squeeze", "Unsqueeze") and node.input:
            return self._squeezed_rank(node, depth)
        if op in REDUCE_OPS and node.input:
            return self._reduced_rank(node, depth)
        if op in ("MatMul", "Add", "Sub", "Mul", "Div") and len(node.input) == 2:
            return self._broadcast_rank(node, depth)
        return None

    def _broadcast_rank(self, node: onnx.NodeProto, depth: int) -> int | None:
        """A MatMul's or a broadcasting arithmetic op's output rank: the larger of its two
        inputs' (a MatMul with a 1-D operand drops an axis: unknown here)."""
        ranks = [self._rank_within(n, depth) for n in node.input]
        if ranks[0] is None or ranks[1] is None:
            return None
        if node.op_type == "MatMul" and min(ranks[0], ranks[1]) < 2:
            return None
        return max(ranks[0], ranks[1])

    def _squeezed_rank(self, node: onnx.NodeProto, depth: int) -> int | None:
        """A Squeeze's or Unsqueeze's output rank, when its axes are given (an input from opset
        13 on, else an attribute; a Squeeze without them drops every axis of size 1: unknown)."""
        axes = self.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if axes is None:
            listed = next((a.ints for a in node.attribute if a.name == "axes"), None)
            axes = None if listed is None else np.asarray(listed)
        rank = self._rank_within(node.input[0], depth)
        if axes is None or rank is None or axes.ndim > 1:
            return None
        if node.op_type == "Squeeze":  # (empty axes: every axis of size 1 goes, as without)
            return rank - axes.size if axes.size else None
        return rank + axes.size

    def _reduced_rank(self, node: onnx.NodeProto, depth: int) -> int | None:
        """A Reduce op's output rank: its input's with keepdims (the default), else less the
        axes it reduces (an input from opset 18 on, else an attribute; none: all of them,
        unless noop_with_empty_axes)."""
        rank = self._rank_within(node.input[0], depth)
        attrs = {a.name: a for a in node.attribute}
        if rank is None or ("keepdims" not in attrs or attrs["keepdims"].i):
            return rank
        if len(node.input) > 1 and node.input[1]:
            axes = self.constant(node.input[1])
            if axes is None or axes.ndim > 1:
                return None
            count = axes.size
        elif "axes" in attrs:
            count = len(attrs["axes"].ints)
        else:
            count = 0
        if count == 0:
            noop = "noop_with_empty_axes" in attrs and attrs["noop_with_empty_axes"].i
            return rank if noop else 0
        return rank - count

    def _rank_within(self, name: str, depth: int) -> int | None:
        value = self.constant(name)
        if value is not None:
            return value.ndim
        assert self._declared_ranks is not None
        if name in self._declared_ranks:
            return self._declared_ranks[name]
        # remembered: a residual chain reads each tensor twice (2^depth walks otherwise); a fold
        # never changes a tensor's rank
        proven = self._proven_ranks
        if name not in proven:
            proven[name] = self._propagated_rank(name, depth + 1)
        return proven[name]


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a `Constant` node, or None for sparse or string constants."""
    for attr in node.attribute:
        if attr.name == "value":
            return tensor_to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None
