"""torch.fx symbolic tracing into the archlint graph, with custom blocks traced through."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.fx
from torch import nn

from ..ops import canonical_name, is_leaf_module
from ..graph.ir import Graph, Kind, Node
from ..loading.sites import user_site
from ..probe import record_fields, select_output
from .builder import (attach_owner_sites, call_node, fetch_attr, finalize, is_tensor_value,
                      module_node, param_owner, shape_of, TraceError)
from .functions import functions_as_calls, fx_handler
from .shapes import propagate_values


class _ArchlintTracer(torch.fx.Tracer):
    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = False

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf_module(m)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None,
                     proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr,
                                     proxy_factory_fn)
        if kind in ("call_function", "call_method"):
            proxy.node.meta["archlint_site"] = user_site()
        return proxy


def symbolic_graph(model: nn.Module) -> torch.fx.Graph:
    """Trace ``model`` with torch.fx; raise TraceError with fx's reason on failure."""
    tracer = _ArchlintTracer()
    try:
        with functions_as_calls(fx_handler):
            return tracer.trace(model)
    except Exception as exc:  # fx raises many kinds of errors
        raise TraceError(_one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


def fx_trace(model: nn.Module, inputs: Optional[Mapping[str, Any]],
             fx_graph: Optional[torch.fx.Graph] = None) -> Graph:
    """Build the archlint graph from an fx trace; ``inputs`` (by argument name) give shapes."""
    fxg = fx_graph if fx_graph is not None else symbolic_graph(model)
    values = propagate_values(model, fxg, inputs) if inputs is not None else None
    nodes: list[Node] = []
    env: dict[torch.fx.Node, Node] = {}
    output: Optional[Node] = None
    for fxn in fxg.nodes:
        def ref(a: Any) -> Any:
            return torch.fx.node.map_arg(a, lambda n: _constant_or_node(n, env, values))

        tensor_inputs = [env[a] for a in fxn.all_input_nodes if a in env]
        if fxn.op == "placeholder":
            node = Node(name=fxn.name, kind=Kind.INPUT, op="input", target=str(fxn.target))
        elif fxn.op == "get_attr":
            qual = str(fxn.target)
            try:
                tensor = fetch_attr(model, qual)
            except AttributeError:
                tensor = None
            node = Node(name=fxn.name, kind=Kind.PARAM, op="param", target=qual,
                        tensor=tensor if isinstance(tensor, torch.Tensor) else None,
                        module_path=param_owner(qual))
        elif fxn.op == "call_module":
            mod = model.get_submodule(str(fxn.target))
            node = module_node(fxn.name, mod, str(fxn.target), tensor_inputs)
            node.attrs.setdefault("args", ref(fxn.args))
            node.attrs.setdefault("kwargs", ref(fxn.kwargs))
        elif fxn.op in ("call_function", "call_method"):
            fname = canonical_name(fxn.target)
            if fname == "getattr" and len(fxn.args) > 1 and fxn.args[1] in ("T", "mT", "H",
                                                                            "mH"):
                fname = "t"
            call = fxn.target if fxn.op == "call_function" else _method(str(fxn.target))
            node = call_node(fxn.name, fname, tensor_inputs, fxn.meta.get("archlint_site"),
                             ref(fxn.args), ref(fxn.kwargs), call=call)
            stack = fxn.meta.get("nn_module_stack")
            node.scope = list(stack.values())[-1][0] if stack else ""
        elif fxn.op == "output":
            node = Node(name="output", kind=Kind.OUTPUT, op="output", inputs=tensor_inputs)
        else:  # pragma: no cover - fx has no other opcodes
            continue
        if values is not None and fxn in values:
            value = values[fxn]
            node.shape, node.dtype = shape_of(value)
            if fxn.op != "output" and not is_tensor_value(value):
                node.is_tensor = False
        env[fxn] = node
        nodes.append(node)
        if fxn.op == "output":
            output = node
    for n in nodes:
        n.input_shapes = [i.shape for i in n.inputs]
    nodes = finalize(nodes)
    attach_owner_sites(nodes, model)
    graph = Graph(nodes=nodes, model=model, tracer="fx",
                  input_nodes=[n for n in nodes if n.kind == Kind.INPUT])
    graph.output = _probe_output_node(fxg, env, values, output)
    return graph


def _method(name: str):
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, name)(*args, **kwargs)
    return call


def _constant_or_node(n: torch.fx.Node, env: dict, values: Optional[dict]) -> Any:
    """Arguments computed from shapes (``math.sqrt(q.shape[-1])``) are plain numbers: keep the
    number so the estimator sees the constant, not a missing tensor."""
    if values is not None and n in values:
        v = values[n]
        if isinstance(v, (int, float, bool)) or (
                isinstance(v, (tuple, torch.Size)) and all(isinstance(x, int) for x in v)):
            return v
    return env.get(n)


def _probe_output_node(fxg: torch.fx.Graph, env: dict, values: Optional[dict],
                       output: Optional[Node]) -> Optional[Node]:
    """The node producing the probe's y (:func:`archlint.probe.select_output`)."""
    out_fx = next((n for n in fxg.nodes if n.op == "output"), None)
    if out_fx is None:
        return None
    def leaf(v: Any) -> bool:
        return isinstance(v, torch.fx.Node) and _record(v) is None

    value, picked = out_fx.args[0], None
    for _ in range(8):  # a record built in forward: the probe differentiates one of its fields
        record = _record(value) if isinstance(value, torch.fx.Node) else None
        if record is not None:
            value = record
        picked = select_output(value, leaf)
        if picked is not None or record is None:
            break
    if picked is not None and picked in env:
        return env[picked]
    return output


def _record(n: torch.fx.Node) -> Any:
    """The named tuple or field mapping a call building an output record makes, with the
    call's arguments (fx nodes) as its fields; None for any other node."""
    fields = record_fields(n.target) if n.op == "call_function" else None
    if fields is None:
        return None
    items = dict(zip(fields, n.args))
    items.update({k: v for k, v in n.kwargs.items() if k in fields})
    if issubclass(n.target, tuple):
        return tuple(items.get(f) for f in fields)
    return {f: items[f] for f in fields if f in items}


__all__ = ["fx_trace", "symbolic_graph"]
