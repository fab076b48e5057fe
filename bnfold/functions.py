"""Model-local functions (`ModelProto.functions`, as `torch.onnx.export(...,
export_modules_as_functions=...)` writes them) whose bodies hold a BatchNormalization: their call
sites are inlined before the fold pass, so each BatchNormalization becomes an ordinary graph node
that the usual rules fold (or skip, with their reason).

Guarantees:
- inlining is exact: a call node is replaced, in place, by a copy of the function's body in which
  the formal inputs and outputs are the call's actual names (an omitted optional input is ''),
  every other value (also inside the body's subgraphs) gets a fresh name unused anywhere in the
  model, and each attribute reference takes the call's attribute, else the function's default,
  else is dropped (an attribute with no value is unset);
- only calls of functions holding a BatchNormalization (directly, in a subgraph, or through the
  functions they call) are inlined, and only where a BatchNormalization in them can fold: not
  where every one of them gets a parameter the call does not make constant;
- a call is not inlined when that could change what it computes: its function imports another
  version of an opset than the model, is in the default ONNX domain, calls itself or has a
  malformed body; the call has more inputs or outputs than the function; or the node budget is
  spent. The function's BatchNormalizations are then reported skipped, with the reason;
- a function is removed from `model.functions` only when no call of it is left anywhere (graphs,
  subgraphs, the bodies of the functions that stay, training graphs); the others stay unchanged;
- the model's opset imports gain the domains the inlined nodes use (as the function imports them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import onnx

from .batchnorm import PARAMETER_NAMES
from .graph_view import GraphView, NameAllocator
from .graphs import (
    ONNX_DOMAINS,
    all_nodes,
    default_opset,
    nested_graphs,
    node_label,
    outer_references,
    subgraph_path,
    subgraphs,
)
from .naming import option
from .records import Inlined, Skipped

TRAINING_REASON = "the model carries training_info, so nothing is folded"
# Bounds the nodes inlining may add (a function calling another twice, nested 30 deep, would
# otherwise add 2^30): calls beyond it stay calls.
MAX_INLINED_NODES = 1_000_000
# What a malformed constant raises while a call site is examined: then it is inlined (exact
# anyway), and the fold pass decides.
_ANALYSIS_ERRORS = (ValueError, TypeError, IndexError, KeyError, OverflowError, RecursionError)

FunctionId = tuple[str, str, str]  # (domain, name, overload)


@dataclass
class FunctionInlining:
    """What `inline_batchnorm_functions` did: the calls inlined, the BatchNormalizations left in
    functions (skipped, with the reason), and the functions removed."""

    inlined: list[Inlined] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # output of an inlined BatchNormalization -> "domain:name at call site 'label'"
    origins: dict[str, str] = field(default_factory=dict)

    def annotate(self, records: list) -> list:
        """The records, those of inlined BatchNormalizations saying where they came from."""
        origins = self.origins
        if not origins:
            return records
        return [
            replace(r, inlined_from=origins[r.output]) if r.output in origins else r
            for r in records
        ]


def inline_batchnorm_functions(
    model: onnx.ModelProto, *, enabled: bool = True, max_nodes: int = MAX_INLINED_NODES
) -> FunctionInlining:
    """Inline, in `model`, the calls of local functions whose BatchNormalizations could fold,
    adding at most `max_nodes` nodes (calls beyond stay calls, with the reason).

    With `enabled=False` nothing changes, and every BatchNormalization inside a function is
    reported skipped. See the module docstring for what is guaranteed.
    """
    if not model.functions:
        return FunctionInlining()
    inliner = _Inliner(model, max_nodes)
    if not enabled:
        return inliner.finish(
            f"inside a model-local function, left unchanged ({option('inline_functions')})"
        )
    if model.training_info:  # the fold pass folds nothing then: inlining would not pay
        return inliner.finish(f"inside a model-local function, not inlined: {TRAINING_REASON}")
    inliner.inline_graph(model.graph, None, "")
    inliner.remove_uncalled()
    return inliner.finish(None)


def function_id(function: onnx.FunctionProto) -> FunctionId:
    return (function.domain, function.name, function.overload)


def call_id(node: onnx.NodeProto) -> FunctionId:
    return (node.domain, node.op_type, node.overload)


def describe(fid: FunctionId) -> str:
    domain, name, overload = fid
    return f"{domain}:{name}" + (f":{overload}" if overload else "")


def is_batchnorm(node: onnx.NodeProto) -> bool:
    return node.op_type == "BatchNormalization" and node.domain in ONNX_DOMAINS


class _Scope:
    """A graph being inlined into, and a GraphView of it built only when a call is examined."""

    def __init__(self, graph: onnx.GraphProto, parent: _Scope | None, path: str) -> None:
        self.graph, self.parent, self.path = graph, parent, path
        self._view: GraphView | None = None

    def view(self, model: onnx.ModelProto) -> GraphView:
        if self._view is None:
            parent = self.parent.view(model) if self.parent is not None else None
            self._view = GraphView(
                self.graph,
                ir_version=model.ir_version,
                opset=default_opset(model),
                parent=parent,
                path=self.path,
            )
        return self._view

    def changed(self) -> None:
        self._view = None


class _Inliner:
    def __init__(self, model: onnx.ModelProto, max_nodes: int = MAX_INLINED_NODES) -> None:
        self.model = model
        self.max_nodes = max_nodes
        self.functions = {function_id(f): f for f in model.functions}
        self.with_batchnorm = _holding_batchnorm(self.functions)
        self.originally_called = _calls_everywhere(model, self.functions)
        self.reasons: dict[FunctionId, str] = {}  # why (some calls of) a function stay calls
        self._problems: dict[FunctionId, str | None] = {}
        self._names: NameAllocator | None = None
        self.inlined_nodes = 0
        self.result = FunctionInlining()

    # ----- which functions ------------------------------------------------------------------

    def problem(self, fid: FunctionId) -> str | None:
        """Why inlining this function's calls could change what they compute, or None."""
        if fid not in self._problems:
            self._problems[fid] = _function_problem(self.functions[fid], self)
        return self._problems[fid]

    def calls_itself(self, fid: FunctionId) -> bool:
        pending, seen = [fid], set()
        while pending:
            current = pending.pop()
            for node in all_nodes(self.functions[current].node):
                callee = call_id(node)
                if callee == fid:
                    return True
                if callee in self.functions and callee not in seen:
                    seen.add(callee)
                    pending.append(callee)
        return False

    # ----- walking the graphs ---------------------------------------------------------------

    def inline_graph(self, graph: onnx.GraphProto, parent: _Scope | None, path: str) -> None:
        """Inline the calls in `graph` that pay, then do the same in its subgraphs."""
        scope = _Scope(graph, parent, path)
        if any(call_id(node) in self.with_batchnorm for node in graph.node):
            nodes: list[onnx.NodeProto] = []
            changed = False
            for node in graph.node:
                body = (
                    self._inline_call(node, scope) if call_id(node) in self.with_batchnorm else None
                )
                nodes.extend(body if body is not None else [node])
                changed = changed or body is not None
            if changed:
                del graph.node[:]
                graph.node.extend(nodes)
                scope.changed()
        for node in graph.node:
            for attr_name, sub in subgraphs(node):
                sub_path = subgraph_path(path, node, attr_name)
                if node.domain in ONNX_DOMAINS:
                    self.inline_graph(sub, scope, sub_path)
                else:
                    why = f"called inside a graph attribute of {node.domain}:{node.op_type}"
                    self._note_calls(sub, f"{why}, whose use is unknown")

    def _note_calls(self, graph: onnx.GraphProto, reason: str) -> None:
        for node in all_nodes(graph.node):
            if call_id(node) in self.with_batchnorm:
                self.reasons.setdefault(call_id(node), reason)

    def _inline_call(self, call: onnx.NodeProto, scope: _Scope) -> list[onnx.NodeProto] | None:
        """The nodes replacing a call of a function holding a BatchNormalization, or None (and
        the reason noted) if the call stays."""
        fid = call_id(call)
        reason = self.problem(fid) or _arity_problem(self.functions[fid], call)
        if reason is None:
            why = self._cannot_gain(self.functions[fid], call, scope)
            if why is not None:
                reason = f"at call site '{node_label(call)}', {why}"
        if reason is not None:
            self.reasons.setdefault(fid, reason)
            return None
        return self._expand(call, scope.path)

    def _cannot_gain(self, function: onnx.FunctionProto, call: onnx.NodeProto, scope: _Scope):
        """Why no BatchNormalization of the function could fold at this call, or None when one
        might: every one directly in the body has a parameter that the call makes a graph input,
        a computed value, or leaves out. Cheap and conservative: anything else might fold."""
        formal = {name: k for k, name in enumerate(function.input)}
        reasons = []
        for node in function.node:
            if call_id(node) in self.with_batchnorm or self._holds_in_subgraphs(node):
                return None
            if not is_batchnorm(node):
                continue
            why = self._parameter_not_constant(node, formal, call, scope)
            if why is None:
                return None
            reasons.append(why)
        return reasons[0] if reasons else None

    def _holds_in_subgraphs(self, node: onnx.NodeProto) -> bool:
        return any(
            is_batchnorm(inner) or call_id(inner) in self.with_batchnorm
            for _, sub in subgraphs(node)
            for inner in all_nodes(sub.node)
        )

    def _parameter_not_constant(self, bn, formal, call, scope) -> str | None:
        for role, name in zip(PARAMETER_NAMES, bn.input[1:5], strict=False):
            if name not in formal:
                continue  # computed inside the body: may be constant
            k = formal[name]
            actual = call.input[k] if k < len(call.input) else ""
            label = node_label(bn)
            if not actual:
                return f"the {role} of BatchNormalization '{label}' is not given"
            try:
                view = scope.view(self.model)
                if view.constant(actual) is None:
                    why = view.why_not_constant(actual)
                    return f"the {role} of BatchNormalization '{label}' is not constant: {why}"
            except _ANALYSIS_ERRORS:
                return None
        return None

    # ----- inlining one call ----------------------------------------------------------------

    def _expand(self, call: onnx.NodeProto, path: str) -> list[onnx.NodeProto] | None:
        """The call's body, instantiated, with the calls inside it that hold a BatchNormalization
        expanded too; None if the node budget is spent."""
        fid = call_id(call)
        function = self.functions[fid]
        if self.inlined_nodes + len(function.node) > self.max_nodes:
            self.reasons.setdefault(fid, f"inlining would add more than {self.max_nodes} nodes")
            return None
        self.inlined_nodes += len(function.node)
        body = _instantiate(function, call, self.names)
        self._import_opsets(function)
        label = node_label(call)
        origin = f"{describe(fid)} at call site '{label}'"
        batchnorms = [n for n in all_nodes(body) if is_batchnorm(n)]
        for node in batchnorms:
            if node.output and node.output[0]:
                self.result.origins[node.output[0]] = origin
        self.result.inlined.append(Inlined(label, describe(fid), len(batchnorms), path))
        nodes: list[onnx.NodeProto] = []
        for node in body:
            inner = call_id(node)
            expanded = None
            if inner in self.with_batchnorm:
                reason = self.problem(inner)
                if reason is None:
                    expanded = self._expand(node, path)
                else:
                    self.reasons.setdefault(inner, reason)
            nodes.extend(expanded if expanded is not None else [node])
        return nodes

    @property
    def names(self) -> NameAllocator:
        if self._names is None:
            self._names = NameAllocator(self.model)
        return self._names

    def _import_opsets(self, function: onnx.FunctionProto) -> None:
        imported = _opsets(self.model.opset_import)
        for domain, version in _opsets(function.opset_import).items():
            if domain not in imported:
                self.model.opset_import.append(onnx.helper.make_opsetid(domain, version))
                imported[domain] = version

    # ----- what stays -----------------------------------------------------------------------

    def remove_uncalled(self) -> None:
        """Remove the functions whose every call was inlined (repeatedly: a removed function's
        body no longer calls anything)."""
        while True:
            called = _calls_everywhere(self.model, self.functions)
            gone = [
                fid for fid in self.functions if fid in self.originally_called and fid not in called
            ]
            if not gone:
                return
            for fid in gone:
                del self.functions[fid]
                self.result.removed.append(describe(fid))
            for index in range(len(self.model.functions) - 1, -1, -1):
                if function_id(self.model.functions[index]) in gone:
                    del self.model.functions[index]

    def finish(self, reason: str | None) -> FunctionInlining:
        """Record every BatchNormalization left in a function as skipped, with `reason` or, if
        None, the reason its function stays."""
        callers = _callers(self.functions)
        for fid, function in self.functions.items():
            why = reason or self._kept_reason(fid, callers)
            where = f"function {describe(fid)}"
            _skip_batchnorms(function.node, where, why, self.result.skipped)
        return self.result

    def _kept_reason(self, fid: FunctionId, callers: dict[FunctionId, FunctionId]) -> str:
        if fid in self.reasons:
            why = self.reasons[fid]
        elif fid in callers:
            why = f"called from function {describe(callers[fid])}, which stays a function"
        elif fid not in self.originally_called:
            why = "nothing in the model calls it"
        else:
            why = "it is called where bnfold does not fold"
        return f"inside a model-local function, not inlined: {why}"


# ----- instantiating a body ------------------------------------------------------------------


def _instantiate(
    function: onnx.FunctionProto, call: onnx.NodeProto, names: NameAllocator
) -> list[onnx.NodeProto]:
    """A copy of the function's body computing the call: formal names become actual ones, every
    other value a fresh name, attribute references the call's (or default) attribute values."""
    prefix = call.name or call.op_type
    mapping: dict[str, str] = {"": ""}
    for k, formal in enumerate(function.input):
        mapping[formal] = call.input[k] if k < len(call.input) else ""
    produced = {name for node in function.node for name in node.output if name}
    identities = []
    for k, formal in enumerate(function.output):
        actual = call.output[k] if k < len(call.output) else ""
        if formal in produced and formal not in mapping:
            mapping[formal] = actual or names.fresh(_join(prefix, formal))
        elif actual:  # a formal input passed through, or an output listed twice
            identities.append(onnx.helper.make_node("Identity", [mapping[formal]], [actual]))
    for name in _definitions(function.node):
        if name not in mapping:
            mapping[name] = names.fresh(_join(prefix, name))
    values = {a.name: a for a in function.attribute_proto}
    values.update((a.name, a) for a in call.attribute)
    body = [_copy_node(node, mapping, values, prefix) for node in function.node]
    return body + identities


def _copy_node(node: onnx.NodeProto, mapping, values, prefix: str) -> onnx.NodeProto:
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[:] = [mapping.get(name, name) for name in node.input]
    new.output[:] = [mapping.get(name, name) for name in node.output]
    if node.name:
        new.name = _join(prefix, node.name)
    for attr in new.attribute:
        if attr.ref_attr_name:
            continue  # replaced below; a graph taken from the call is in the caller's scope
        if attr.type == onnx.AttributeProto.GRAPH:
            _rename_graph(attr.g, mapping, values, prefix)
        for graph in attr.graphs:
            _rename_graph(graph, mapping, values, prefix)
    if any(attr.ref_attr_name for attr in new.attribute):
        resolved = [_resolve(attr, values) for attr in new.attribute]
        del new.attribute[:]
        new.attribute.extend(attr for attr in resolved if attr is not None)
    return new


def _resolve(attr: onnx.AttributeProto, values) -> onnx.AttributeProto | None:
    """An attribute, with a reference replaced by the value it names (None: no value, unset)."""
    copy = onnx.AttributeProto()
    if not attr.ref_attr_name:
        copy.CopyFrom(attr)
        return copy
    source = values.get(attr.ref_attr_name)
    if source is None:
        return None
    copy.CopyFrom(source)
    copy.name = attr.name
    return copy


def _rename_graph(graph: onnx.GraphProto, mapping, values, prefix: str) -> None:
    """Rename, in a subgraph of the body, every value and substitute attribute references."""
    for infos in (graph.input, graph.output, graph.value_info):
        for info in infos:
            info.name = mapping.get(info.name, info.name)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = mapping.get(sparse.values.name, sparse.values.name)
        sparse.indices.name = mapping.get(sparse.indices.name, sparse.indices.name)
    nodes = [_copy_node(node, mapping, values, prefix) for node in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)


def _join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name.lstrip('/')}"


def _definitions(nodes) -> list[str]:
    """Every name a body defines: node outputs, and the inputs, initializers and node outputs of
    its subgraphs (sibling subgraphs may reuse a name: one fresh name serves them all)."""
    names = [name for node in all_nodes(nodes) for name in node.output if name]
    for _, sub in nested_graphs(nodes):
        names.extend(i.name for i in sub.input)
        names.extend(t.name for t in sub.initializer)
        names.extend(t.values.name for t in sub.sparse_initializer)
    return names


# ----- questions about functions and graphs -------------------------------------------------


def _function_problem(function: onnx.FunctionProto, inliner: _Inliner) -> str | None:
    fid = function_id(function)
    if function.domain in ONNX_DOMAINS:
        return "it is in the default ONNX domain, where its name could mean a standard operator"
    model_opsets = _opsets(inliner.model.opset_import)
    for domain, version in _opsets(function.opset_import).items():
        if model_opsets.get(domain, version) != version:
            name = domain or "ai.onnx"
            return (
                f"it imports {name} opset {version} and the model {name} opset "
                f"{model_opsets[domain]}, so its nodes would mean other operator versions"
            )
    if inliner.calls_itself(fid):
        return "it calls itself (directly or through other functions)"
    return _malformed_body(function)


def _arity_problem(function: onnx.FunctionProto, call: onnx.NodeProto) -> str | None:
    """A call with more inputs or outputs than the function has (what would they mean?)."""
    for what, given, declared in (
        ("inputs", call.input, function.input),
        ("outputs", call.output, function.output),
    ):
        if len(given) > len(declared):
            return (
                f"call site '{node_label(call)}' has {len(given)} {what}, "
                f"the function {len(declared)}"
            )
    return None


def _malformed_body(function: onnx.FunctionProto) -> str | None:
    defined = set(function.input)
    for node in function.node:
        reads = {n for n in node.input if n}
        for _, sub in subgraphs(node):
            reads |= outer_references(sub)
        missing = sorted(reads - defined)
        if missing:
            return f"its body reads '{missing[0]}' before or without defining it"
        for name in node.output:
            if name in defined:
                return f"its body defines '{name}' twice"
        defined.update(n for n in node.output if n)
    missing = [name for name in function.output if name not in defined]
    if missing:
        return f"its output '{missing[0]}' is not computed by its body"
    return None


def _opsets(entries) -> dict[str, int]:
    return {("" if e.domain == "ai.onnx" else e.domain): int(e.version) for e in entries}


def _holding_batchnorm(functions) -> set[FunctionId]:
    """The functions holding a BatchNormalization: in their body, its subgraphs, or a function
    they call (a fixed point, so shared callees are looked at once)."""
    calls = {fid: {call_id(n) for n in all_nodes(f.node)} for fid, f in functions.items()}
    holding = {fid for fid, f in functions.items() if any(map(is_batchnorm, all_nodes(f.node)))}
    while True:
        more = {fid for fid, callees in calls.items() if fid not in holding and callees & holding}
        if not more:
            return holding
        holding |= more


def _calls_everywhere(model: onnx.ModelProto, functions) -> set[FunctionId]:
    """Functions called from the graph, its subgraphs, training graphs or function bodies."""
    graphs = [model.graph]
    for info in model.training_info:
        graphs.extend((info.initialization, info.algorithm))
    nodes = [n for g in graphs for n in all_nodes(g.node)]
    nodes.extend(n for f in functions.values() for n in all_nodes(f.node))
    return {call_id(node) for node in nodes} & functions.keys()


def _callers(functions) -> dict[FunctionId, FunctionId]:
    """For each function called by another, one caller."""
    callers: dict[FunctionId, FunctionId] = {}
    for fid, function in functions.items():
        for node in all_nodes(function.node):
            if call_id(node) in functions and call_id(node) != fid:
                callers.setdefault(call_id(node), fid)
    return callers


def _skip_batchnorms(nodes, where: str, reason: str, out: list[Skipped]) -> None:
    """Record every BatchNormalization of a function body, its subgraphs' too, as skipped."""
    for path, inner in [(where, nodes), *((p, g.node) for p, g in nested_graphs(nodes, where))]:
        for node in inner:
            if is_batchnorm(node):
                output = node.output[0] if node.output else ""
                out.append(Skipped(node_label(node), output, reason, path))
