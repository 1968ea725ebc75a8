"""Weights computed in ``forward`` from parameters: weight standardisation (NF-ResNets, BiT),
weight normalisation, spectral normalisation, masked or scaled weights.

A layer that overrides ``forward`` to transform its weight before ``F.conv2d`` / ``F.linear``
is traced through; the transformed weight is then a node computed from parameters alone (no
input reaches it). Both tracers keep, on such *parameter-only* nodes, the callable and the
arguments that produced them, so the weight can be recomputed from the real parameters -- with
autograd, so that the gradient predicted for the transformed weight can be carried back to the
parameters that are actually trained (:func:`derived_weight`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from .ir import Kind, Node

#: Node attribute: the node's value is computed from parameters only. Call nodes keep, in
#: ``attrs["call"]``, the callable they ran and, in ``attrs["recipe"]`` (or ``args``/``kwargs``),
#: its arguments with Node placeholders for tensors.
PARAM_ONLY = "param_only"


def is_param_only(node: Node) -> bool:
    return node.kind == Kind.PARAM or bool(node.attrs.get(PARAM_ONLY))


def param_only_call(inputs: list[Node]) -> bool:
    """Would a call on these inputs be computed from parameters alone?"""
    return bool(inputs) and all(
        (i.kind == Kind.PARAM and i.tensor is not None) or i.attrs.get(PARAM_ONLY)
        for i in inputs)


def rebuild(value: Any, items: Any) -> Any:
    """A list or tuple like ``value`` holding ``items``: a named tuple (``PackedSequence``,
    ``torch.return_types.max``) keeps its type, built from its fields."""
    items = list(items)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        # tuple.__new__: a class's own __new__ may check its fields (PackedSequence reads
        # its indices' device), and here they may be graph nodes or shapes
        return tuple.__new__(type(value), items)
    if isinstance(value, tuple) and type(value) is not tuple:  # torch.return_types...
        try:
            return type(value)(items)
        except TypeError:
            return tuple(items)
    return type(value)(items)


def _substitute(value: Any, memo: dict) -> Any:
    if isinstance(value, Node):
        return _replay(value, memo)
    if isinstance(value, (list, tuple)):
        return rebuild(value, (_substitute(v, memo) for v in value))
    if isinstance(value, dict):
        return {k: _substitute(v, memo) for k, v in value.items()}
    return value


def _replay(node: Node, memo: dict) -> Any:
    if node in memo:
        return memo[node]
    if node.kind == Kind.PARAM:
        value = node.tensor
    else:
        fn = node.attrs.get("call")
        if fn is None:
            raise ValueError(f"{node.name} cannot be recomputed")
        args, kwargs = node.attrs.get("recipe") or (node.attrs.get("args", ()),
                                                    node.attrs.get("kwargs", {}))
        value = fn(*_substitute(args, memo), **_substitute(kwargs, memo))
    memo[node] = value
    return value


def replay_value(node: Node) -> Any:
    """Recompute a parameter-only value from the real parameters (with autograd)."""
    with torch.enable_grad():
        return _replay(node, {})


def flatten_tensors(value: Any) -> list[torch.Tensor]:
    """All tensors inside a (nested) tuple/list/dict/ModelOutput, in order."""
    out: list[torch.Tensor] = []

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, Mapping):
            for x in v.values():
                walk(x)
        elif hasattr(v, "keys") and hasattr(v, "__getitem__"):
            for k in v.keys():
                walk(v[k])

    walk(value)
    return out


def derived_weight(node: Node) -> Optional[torch.Tensor]:
    """The weight a functional weight layer reads when it is computed from parameters, with
    autograd back to them (computed once); None when the weight is a parameter itself or cannot
    be recomputed."""
    if "derived_weight" in node.attrs:
        return node.attrs["derived_weight"]
    source = node.attrs.get("weight_param")
    if not isinstance(source, Node):
        source = next((i for i in node.inputs if i.attrs.get(PARAM_ONLY) and i.shape
                       and len(i.shape) >= 2), None)
    weight = None
    if isinstance(source, Node) and source.kind != Kind.PARAM and source.attrs.get(PARAM_ONLY):
        try:
            with torch.enable_grad():
                value = _replay(source, {})
            if isinstance(value, torch.Tensor) and value.is_floating_point() and \
                    value.device.type != "meta":
                weight = value
        except Exception:  # an odd recipe: the layer is then read as unknown
            weight = None
    node.attrs["derived_weight"] = weight
    node.attrs["weight_source"] = source if weight is not None else None
    return weight


def source_params(node: Node) -> list[Node]:
    """The parameter nodes a derived weight is computed from."""
    source = node.attrs.get("weight_source")
    out: list[Node] = []
    stack = [source] if isinstance(source, Node) else []
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.kind == Kind.PARAM:
            out.append(n)
        else:
            stack.extend(n.inputs)
    return out
