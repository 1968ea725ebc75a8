"""Shape propagation over an fx graph, never touching the model's real activations.

Each node's output shape comes from its op's shape rule (:mod:`archlint.ops`); an op without a
rule runs alone on meta tensors (leaf modules through ``torch.func.functional_call`` with meta copies of their
parameters, so the user's model is never modified). Python values (sizes, ints) are evaluated.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx
from torch import nn

from ..graph.derived import rebuild
from ..ops import canonical_name, function_op, module_op
from ..ops.shape import NoRule, ShapeMismatch, TensorShape
from ..paths import display_path
from .builder import InputMismatch, TraceError, fetch_attr


def to_shape(value: Any) -> Any:
    """Tensors (real or meta) -> TensorShape, recursively; other values unchanged."""
    if isinstance(value, torch.Tensor):
        return TensorShape(tuple(int(s) for s in value.shape), value.dtype)
    if isinstance(value, torch.Size):
        return value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return tuple(to_shape(v) for v in value)
    if isinstance(value, (list, tuple)):
        return rebuild(value, (to_shape(v) for v in value))
    if isinstance(value, dict):
        return {k: to_shape(v) for k, v in value.items()}
    return value


def to_meta(value: Any) -> Any:
    if isinstance(value, TensorShape):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return rebuild(value, (to_meta(v) for v in value))
    if isinstance(value, dict):
        return {k: to_meta(v) for k, v in value.items()}
    return value


def _has_shape(value: Any) -> bool:
    if isinstance(value, TensorShape):
        return True
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return any(_has_shape(v) for v in value)
    if isinstance(value, dict):
        return any(_has_shape(v) for v in value.values())
    return False


def _run_on_meta(node: torch.fx.Node, model: nn.Module, args: Any, kwargs: Any) -> Any:
    from torch.func import functional_call

    margs, mkwargs = to_meta(args), to_meta(kwargs)
    if node.op == "call_module":
        mod = model.get_submodule(str(node.target))
        state = dict(mod.named_parameters(remove_duplicate=False))
        state.update(mod.named_buffers(remove_duplicate=False))
        meta_state = {k: torch.empty(v.shape, dtype=v.dtype, device="meta")
                      for k, v in state.items()}
        out = functional_call(mod, meta_state, tuple(margs), dict(mkwargs), strict=False)
    elif node.op == "call_method":
        out = getattr(margs[0], str(node.target))(*margs[1:], **mkwargs)
    else:
        out = node.target(*margs, **mkwargs)
    return to_shape(out)


def propagate_values(model: nn.Module, fxg: torch.fx.Graph,
                     inputs: Mapping[str, Any]) -> dict[torch.fx.Node, Any]:
    """Shapes (TensorShape) or Python values of every fx node for the given example inputs."""
    env: dict[torch.fx.Node, Any] = {}
    for node in fxg.nodes:
        try:
            env[node] = _value(node, model, env, inputs)
        except TraceError:
            raise
        except ShapeMismatch as exc:
            raise InputMismatch(f"the example input does not fit {_where(node, model)}: "
                                f"{exc}"[:400]) from None
        except Exception as exc:
            msg = str(exc).strip().splitlines()
            raise TraceError(f"shape propagation failed at {node.format_node()}: "
                             f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]) from exc
    return env


def _where(node: torch.fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        mod = model.get_submodule(str(node.target))
        return f"{node.target} ({type(mod).__name__})"
    site = node.meta.get("archlint_site")
    what = getattr(node.target, "__name__", str(node.target))
    return f"{what} at {display_path(Path(site.path))}:{site.line}" if site else what


def _value(node: torch.fx.Node, model: nn.Module, env: dict, inputs: Mapping[str, Any]) -> Any:
    if node.op == "placeholder":
        name = str(node.target).lstrip("*")
        if name in inputs:
            return to_shape(inputs[name])
        if node.args:
            return to_shape(node.args[0])
        raise TraceError(f"no example input for argument {name!r} of forward()")
    if node.op == "get_attr":
        return to_shape(fetch_attr(model, str(node.target)))
    if node.op == "output":
        return torch.fx.node.map_arg(node.args[0], lambda n: env[n])
    args = torch.fx.node.map_arg(node.args, lambda n: env[n])
    kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
    try:
        if node.op == "call_module":
            return module_shape(model.get_submodule(str(node.target)), args, kwargs)
        if not _has_shape((args, kwargs)):
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            return python_value(node.target, args, kwargs)
        # a real tensor made from constants (torch.arange(64)) meets the traced ones: its shape
        args, kwargs = to_shape(args), to_shape(kwargs)
        if node.op == "call_function" and (
                node.target is getattr or (node.target is operator.getitem
                                           and isinstance(args[0], (tuple, list, dict)))):
            return python_value(node.target, args, kwargs)
        target = node.target if node.op == "call_function" else str(node.target)
        return function_shape(target, args, kwargs)
    except (NoRule, KeyError, IndexError, TypeError, ValueError, AttributeError, StopIteration):
        return _run_on_meta(node, model, args, kwargs)


def function_shape(target: Any, args: Any, kwargs: dict) -> Any:
    """The value of a function / method call on shapes, by its op's shape rule."""
    name = canonical_name(target)
    row = function_op(name)
    if row is None or row.shape is None:
        raise NoRule(name)
    return row.shape(name, args, kwargs)


def module_shape(mod: nn.Module, args: Any, kwargs: dict) -> Any:
    """The value of a layer call on shapes, by its op's shape rule."""
    row = module_op(mod)
    if row is None or row.module_shape is None:
        raise NoRule(type(mod).__name__)
    return row.module_shape(mod, args, kwargs)


def python_value(target: Callable, args: Sequence[Any], kwargs: dict) -> Any:
    """Ops on plain Python values (sizes, ints) are simply evaluated."""
    if target is getattr and isinstance(args[0], TensorShape):
        attr = args[1]
        if attr == "shape":
            return torch.Size(args[0].shape)
        if attr == "dtype":
            return args[0].dtype
        if attr == "ndim":
            return args[0].dim()
        if attr == "device":
            return torch.device("cpu")
        if attr in ("T", "mT"):
            s = args[0].shape
            return args[0].with_shape(s[::-1] if attr == "T" else s[:-2] + s[-2:][::-1])
        raise NoRule(f"attribute {attr}")
    if target is operator.getitem and isinstance(args[0], (tuple, list, torch.Size)):
        return args[0][args[1]]
    return target(*args, **kwargs)
