"""Edits on a copy of a traced graph: what a fix would change, for the estimate to re-run on.

:func:`copy_graph` copies the nodes (the modules and tensors they point at are shared, never
changed); the edits below change the copy only:

- :func:`set_activation`: a node becomes another elementwise activation (every use of an
  activation module changes with it, as replacing the module would);
- :func:`set_weight`: a weight layer gets a new weight tensor (a shallow clone of its module
  holding the new parameter; a functional layer's parameter node gets the tensor);
- :func:`insert_after`: a new node (a normalisation layer) takes a node's output and its users;
- :func:`add_skip`: a node's data input gets another node's data input added to it (an identity
  skip around the layers between them).

The user's model is never touched: prediction edits the graph, ``--measure`` edits a deep copy
of the model (:mod:`archlint.fixes.live`).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn

from ..graph.derived import is_param_only
from ..graph.ir import Graph, Kind, Node
from ..ops import op_info
from ..ops.activations import activation_attrs


def copy_graph(graph: Graph) -> tuple[Graph, dict[Node, Node]]:
    """A copy of ``graph`` whose nodes can be edited, and the map original -> copy."""
    mapping: dict[Node, Node] = {}
    nodes = []
    for n in graph.nodes:
        c = copy.copy(n)
        mapping[n] = c
        nodes.append(c)
    for c in nodes:
        c.inputs = [mapping.get(i, i) for i in c.inputs]
        c.grad_inputs = list(c.grad_inputs) if c.grad_inputs is not None else None
        c.input_shapes = list(c.input_shapes)
        c.attrs = _remap(c.attrs, mapping)
    out = Graph(nodes=nodes, model=graph.model, tracer=graph.tracer,
                input_nodes=[mapping.get(i, i) for i in graph.input_nodes],
                output=mapping.get(graph.output) if graph.output is not None else None,
                fallback_reasons=list(graph.fallback_reasons), input_spec=graph.input_spec)
    out.link_users()
    return out, mapping


def _remap(value: Any, mapping: dict[Node, Node]) -> Any:
    if isinstance(value, Node):
        return mapping.get(value, value)
    if isinstance(value, dict):
        return {k: _remap(v, mapping) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_remap(v, mapping) for v in value)
    if isinstance(value, list):
        return [_remap(v, mapping) for v in value]
    return value


def data_input(node: Node) -> int:
    """Index of a weight layer's data input (not a parameter, not computed from parameters)."""
    for k, i in enumerate(node.inputs):
        if i.kind not in (Kind.PARAM, Kind.CONSTANT) and not is_param_only(i):
            return k
    return 0


# --------------------------------------------------------------------------- activations

ACTIVATION_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU,
                      "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def set_activation(graph: Graph, node: Node, op: str,
                   modules: Optional[dict[int, nn.Module]] = None) -> None:
    """Make ``node`` (and every node calling the same activation module) the activation ``op``."""
    modules = {} if modules is None else modules
    targets = [node]
    if node.module is not None:
        targets = [n for n in graph.nodes if n.module is node.module]
    for n in targets:
        args = n.attrs.get("args") or ()
        attrs: dict[str, Any] = {"args": tuple(args[:1]), "kwargs": {}}
        if n.module is not None:
            new = modules.get(id(n.module))
            if new is None:
                new = modules[id(n.module)] = ACTIVATION_MODULES[op]()
            n.module = new
            attrs.update(activation_attrs(new))
        else:
            attrs["function"] = op
        n.op, n.kind, n.info, n.attrs = op, Kind.ACTIVATION, op_info(op), attrs
        n.grad_inputs = [0] if n.inputs else []


# --------------------------------------------------------------------------- weights

def weight_param_node(node: Node) -> Optional[Node]:
    """The parameter node holding a functional weight layer's weight."""
    wp = node.attrs.get("weight_param")
    if isinstance(wp, Node) and wp.kind == Kind.PARAM and wp.tensor is not None:
        return wp
    for p in node.inputs:
        if p.kind == Kind.PARAM and p.tensor is not None and p.tensor.dim() >= 2:
            return p
    return None


def clone_module(module: nn.Module, **params: torch.Tensor) -> nn.Module:
    """A shallow clone of ``module`` whose named parameters are replaced (children shared)."""
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    for name, value in params.items():
        new._parameters[name] = nn.Parameter(value.detach(),
                                             requires_grad=module._parameters[name].requires_grad)
    return new


def set_weight(graph: Graph, node: Node, tensor: torch.Tensor, name: str = "weight",
               clones: Optional[dict[int, nn.Module]] = None) -> None:
    """Give the weight layer (or normalisation layer: ``name="weight"`` is its scale) ``node``
    the parameter ``tensor``, in every node that uses it."""
    clones = {} if clones is None else clones
    if node.module is not None and isinstance(node.module._parameters.get(name), torch.Tensor):
        old = node.module
        new = clones.get(id(old))
        if new is None:
            new = clones[id(old)] = clone_module(old, **{name: tensor})
        else:
            new._parameters[name] = nn.Parameter(tensor.detach())
        for n in graph.nodes:
            if n.module is old:
                n.module = new
        return
    param = weight_param_node(node) if name == "weight" else None
    if param is None:
        raise ValueError(f"{node.name}: no parameter {name!r} to replace")
    old_t = param.tensor
    new_t = nn.Parameter(tensor.detach(), requires_grad=old_t.requires_grad)
    for n in graph.nodes:
        if n.kind == Kind.PARAM and n.tensor is old_t:
            n.tensor = new_t


# --------------------------------------------------------------------------- new nodes

def _fresh(graph: Graph, base: str) -> str:
    names = {n.name for n in graph.nodes}
    k, name = 0, base
    while name in names:
        k += 1
        name = f"{base}_{k}"
    return name


def _replace_input(user: Node, old: Node, new: Node) -> None:
    user.inputs = [new if i is old else i for i in user.inputs]
    user.attrs = _swap(user.attrs, old, new)


def _swap(value: Any, old: Node, new: Node) -> Any:
    if value is old:
        return new
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_swap(v, old, new) for v in value)
    if isinstance(value, list):
        return [_swap(v, old, new) for v in value]
    return value


def insert_after(graph: Graph, node: Node, module: nn.Module, op: str, label: str) -> Node:
    """Put a new layer (``module``, op ``op``) right after ``node``: it takes ``node``'s output
    and every user of it."""
    row = op_info(op)
    new = Node(name=_fresh(graph, f"{node.name}_{label}"), kind=row.kind, op=op,
               inputs=[node], grad_inputs=[0], module=module, scope=node.scope,
               attrs={"args": (node,), "kwargs": {}}, shape=node.shape, dtype=node.dtype,
               input_shapes=[node.shape], site=node.site, info=row)
    users = [u for u in node.users]
    for u in users:
        _replace_input(u, node, new)
        u.input_shapes = [i.shape for i in u.inputs]
    if graph.output is node:
        graph.output = new
    graph.nodes.insert(graph.nodes.index(node) + 1, new)
    graph.link_users()
    return new


def add_skip(graph: Graph, start: Node, end: Node) -> Node:
    """``end``'s data input becomes itself plus ``start``'s data input: an identity skip around
    the layers from ``start`` up to ``end`` (shapes must match)."""
    src = start.inputs[data_input(start)]
    k = data_input(end)
    dst = end.inputs[k]
    row = op_info("add")
    new = Node(name=_fresh(graph, f"{end.name}_skip"), kind=row.kind, op="add",
               inputs=[dst, src], grad_inputs=[0, 1], scope=end.scope,
               attrs={"args": (dst, src), "kwargs": {}, "function": "add"}, shape=dst.shape,
               dtype=dst.dtype, input_shapes=[dst.shape, src.shape], site=end.site, info=row)
    end.inputs = [new if i is dst else i for i in end.inputs]  # q, k and v of attention alike
    end.attrs = _swap(end.attrs, dst, new)
    graph.nodes.insert(graph.nodes.index(end), new)
    graph.link_users()
    return new
