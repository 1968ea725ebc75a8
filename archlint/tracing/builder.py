"""Shared helpers for turning a tracer's events into :mod:`archlint.graph.ir` nodes."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from .. import probe
from ..graph.derived import PARAM_ONLY, derived_weight, flatten_tensors, param_only_call
from ..graph.ir import Kind, Node, Site
from ..ops import carries_gradient, classify_call, classify_module
from ..loading.sites import module_site
from ..ops.shape import TensorShape


class TraceError(Exception):
    """A tracer could not produce a graph; the message says why in one line."""

    #: The example input does not fit the model: no other tracer will do better.
    mismatch = False


class InputMismatch(TraceError):
    """The example input does not fit a layer of the model (the message names the layer, what
    it expects and what it was given)."""

    mismatch = True


def select_output(value: Any) -> Optional[torch.Tensor]:
    """The probe's y among a forward's outputs (:func:`archlint.probe.select_output`)."""
    return probe.select_output(value, torch.is_tensor)


def module_node(name: str, module: nn.Module, path: str, inputs: list[Node]) -> Node:
    kind, op, attrs, row = classify_module(module)
    return Node(name=name, kind=kind, op=op, inputs=inputs, module_path=path, module=module,
                attrs=attrs, site=module_site(module), info=row)


def call_node(name: str, fname: str, inputs: list[Node], site: Optional[Site],
              args: Any = None, kwargs: Any = None, call: Optional[Callable] = None,
              recipe: Optional[tuple] = None) -> Node:
    """A node for a function / method call. ``call`` and ``recipe`` (its arguments with Node
    placeholders; default ``args``/``kwargs``) let a value computed from parameters alone be
    recomputed later (archlint.graph.derived)."""
    weight, transposed = _parameter_operand(inputs)
    kind, op, row = classify_call(fname, param_operand=weight is not None)
    node = Node(name=name, kind=kind, op=op, inputs=inputs, site=site, info=row,
                attrs={"args": args if args is not None else (), "kwargs": kwargs or {},
                       "function": fname})
    if weight is None and kind in (Kind.LINEAR, Kind.CONV):
        weight = _computed_weight(inputs)
    if weight is not None and kind in (Kind.LINEAR, Kind.CONV):
        node.attrs["weight_param"] = weight
        node.attrs["weight_transposed"] = transposed
    if not carries_gradient(fname):
        node.grad_inputs = []
    if call is not None:
        node.attrs["call"] = call
        if recipe is not None:
            node.attrs["recipe"] = recipe
        if param_only_call(inputs):
            node.attrs[PARAM_ONLY] = True
    # Functional weight layers belong to the module that owns their parameter.
    owners = [_owner(i) for i in inputs if _owner(i) is not None]
    if weight is not None and _owner(weight) is not None:
        owners.insert(0, _owner(weight))
    if kind in (Kind.LINEAR, Kind.CONV, Kind.EMBEDDING, Kind.NORM) and owners:
        node.module_path = owners[0]
    if node.attrs.get(PARAM_ONLY) and owners:
        node.attrs["param_owner"] = owners[0]
    return node


def _owner(node: Node) -> Optional[str]:
    """The module owning a parameter, or the parameters a parameter-only value is made of."""
    if node.kind == Kind.PARAM:
        return node.module_path
    return node.attrs.get("param_owner")


def _computed_weight(inputs: list[Node]) -> Optional[Node]:
    """A weight computed in forward from parameters (weight standardisation, weight norm...)."""
    candidates = [i for i in inputs if i.attrs.get(PARAM_ONLY) and i.shape and len(i.shape) >= 2]
    return max(candidates, key=lambda i: len(i.shape), default=None)


_TRANSPOSES = {"t", "transpose", "permute", "swapaxes", "movedim"}
_VIEWS = {"view", "reshape", "contiguous", "to", "float", "type_as", "clone", "half",
          "bfloat16", "detach"}


def _parameter_operand(inputs: list[Node]) -> tuple[Optional[Node], bool]:
    """A parameter used as a matrix operand, directly or through ``.t()``/``.T``/views:
    ``x @ W``, ``x @ W.t()``, ``x @ self.wte.weight.T`` (a tied head), or a matrix computed
    from parameters alone (``x @ (self.W * self.mask)``)."""
    for i in inputs:
        if i.kind == Kind.PARAM and i.tensor is not None and i.tensor.dim() >= 2:
            return i, False
    if len(inputs) == 2 and not all(i.attrs.get(PARAM_ONLY) for i in inputs):
        computed = _computed_weight(inputs)
        if computed is not None and len(computed.shape) == 2:
            return computed, False
    for i in inputs:
        transposed, cur = False, i
        while cur.kind == Kind.RESHAPE and cur.op in (_TRANSPOSES | _VIEWS) and cur.inputs:
            transposed ^= cur.op in _TRANSPOSES
            cur = cur.inputs[0]
        if cur is not i and cur.kind == Kind.PARAM and cur.tensor is not None and \
                cur.tensor.dim() == 2:
            return cur, transposed
    return None, False


def attach_owner_sites(nodes: list[Node], model: nn.Module) -> None:
    """A functional weight op inside its own module's forward (a custom layer such as Hugging
    Face's Conv1D) is located at that module's definition, like a built-in layer."""
    for n in nodes:
        if n.module is None and n.module_path and n.scope == n.module_path and \
                n.kind in (Kind.LINEAR, Kind.CONV, Kind.EMBEDDING, Kind.NORM):
            try:
                owner = model.get_submodule(n.module_path)
            except AttributeError:
                continue
            site = module_site(owner)
            if site is not None:
                n.site = site


def fetch_attr(model: nn.Module, qual: str) -> Any:
    """``model.a.b.c`` for ``"a.b.c"``; raises AttributeError like getattr."""
    obj: Any = model
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def param_owner(qualname: str) -> Optional[str]:
    return qualname.rsplit(".", 1)[0] if "." in qualname else ""


def finalize(nodes: list[Node]) -> list[Node]:
    """Link users, drop non-tensor nodes from the data graph, fix gradient inputs by dtype."""
    keep = [n for n in nodes if n.is_tensor]
    kept = set(map(id, keep))
    for n in keep:
        if any(id(i) not in kept for i in n.inputs):
            pairs = [(idx, i) for idx, i in enumerate(n.inputs) if id(i) in kept]
            old_grad = n.grad_inputs
            remap = {old: new for new, (old, _) in enumerate(pairs)}
            n.inputs = [i for _, i in pairs]
            if old_grad is not None:
                n.grad_inputs = [remap[g] for g in old_grad if g in remap]
            n.input_shapes = [i.shape for i in n.inputs]
    for n in keep:
        # Integer and boolean tensors (ids, masks, indices) never carry gradient.
        if _is_discrete(n.dtype):
            n.grad_inputs = []
            continue
        candidates = range(len(n.inputs)) if n.grad_inputs is None else n.grad_inputs
        n.grad_inputs = [i for i in candidates if not _is_discrete(n.inputs[i].dtype)]
    for n in keep:
        n.users = []
    for n in keep:
        for i in n.inputs:
            if n not in i.users:
                i.users.append(n)
        if n.kind in (Kind.LINEAR, Kind.CONV) and isinstance(n.attrs.get("weight_param"), Node) \
                and n.attrs["weight_param"].kind != Kind.PARAM:
            derived_weight(n)
    return keep


def _is_discrete(dtype: Optional[torch.dtype]) -> bool:
    return dtype is not None and not (dtype.is_floating_point or dtype.is_complex)


def _shaped(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, TensorShape))


def shape_of(value: Any) -> tuple[Optional[tuple[int, ...]], Optional[torch.dtype]]:
    """Shape and dtype of a tensor / TensorShape, or of the first one inside a tuple."""
    if _shaped(value):
        return tuple(int(s) for s in value.shape), value.dtype
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        for v in value:
            shape, dtype = shape_of(v)
            if shape is not None:
                return shape, dtype
    return None, None


def is_tensor_value(value: Any) -> bool:
    if _shaped(value):
        return True
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        return any(is_tensor_value(v) for v in value)
    return False
