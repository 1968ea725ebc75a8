"""Turn a model and its example input into an archlint :class:`~archlint.graph.ir.Graph`.

torch.fx first (custom blocks traced through, shapes on the meta device); when fx cannot trace
the model, an execution trace of one real forward pass. The graph says which tracer made it.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

import torch.fx
from torch import nn

from ..ops import canonical_name, is_leaf_module
from ..graph.ir import Graph
from ..loading.inputs import InputSpec, TensorSpec, forward_parameters, spec_for_layer, spec_for_weight
from .builder import TraceError, fetch_attr
from .exec_tracer import exec_trace
from .fx_tracer import fx_trace, symbolic_graph

__all__ = ["TraceError", "trace_model", "infer_input"]


def trace_model(model: nn.Module, spec: Optional[InputSpec]) -> Graph:
    """Trace ``model``; ``spec`` may be None, in which case it is inferred where possible.

    The spec actually used (or None) is stored in ``graph.input_spec``.
    """
    fx_error: Optional[str] = None
    fxg: Optional[torch.fx.Graph] = None
    try:
        fxg = symbolic_graph(model)
    except TraceError as exc:
        fx_error = str(exc)
    if spec is None:
        spec = infer_input(model, fxg)
    if fxg is not None:
        try:
            inputs = spec.bind(model, device="meta") if spec is not None else None
            graph = fx_trace(model, inputs, fxg)
            graph.input_spec = spec
            return graph
        except TraceError as exc:
            fx_error = str(exc)
    if spec is None:
        raise TraceError(f"torch.fx could not trace the model ({fx_error}) and no example input "
                         "could be inferred for the execution tracer; give one with "
                         "--input-shape or 'input:' in the config")
    try:
        graph = exec_trace(model, spec.bind(model))
    except TraceError as exc:
        raise TraceError(f"torch.fx: {fx_error}; execution trace: {exc}") from exc
    graph.fallback_reasons.append(f"fx: {fx_error}")
    graph.input_spec = spec
    return graph


def infer_input(model: nn.Module, fxg: Optional[torch.fx.Graph]) -> Optional[InputSpec]:
    """Guess the example input from the first layer that reads each required argument."""
    required = [p.name for p in forward_parameters(model) if p.default is p.empty]
    if fxg is not None:
        specs: dict[Optional[str], TensorSpec] = {}
        for node in fxg.nodes:
            if node.op != "placeholder":
                continue
            name = str(node.target).lstrip("*")
            if name not in required:
                continue
            spec = _first_consumer_spec(model, node)
            if spec is None:
                return None
            specs[name] = spec
        if specs:
            if len(specs) == 1:
                return InputSpec({None: next(iter(specs.values()))})
            return InputSpec(specs)
    # No fx graph: the first leaf layer in definition order reads the first argument.
    for path, mod in model.named_modules():
        if mod is model or not is_leaf_module(mod):
            continue
        spec = spec_for_layer(mod, path)
        if spec is not None:
            return InputSpec({None: spec})
    return None


def _first_consumer_spec(model: nn.Module, placeholder: torch.fx.Node) -> Optional[TensorSpec]:
    queue = deque([placeholder])
    seen = {placeholder}
    while queue:
        node = queue.popleft()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_module":
                mod = model.get_submodule(str(user.target))
                spec = spec_for_layer(mod, str(user.target))
                if spec is not None:
                    return spec
            elif user.op == "call_function" or user.op == "call_method":
                fname = canonical_name(user.target)
                weights = [a for a in user.all_input_nodes if a.op == "get_attr"]
                if weights and fname in ("linear", "conv1d", "conv2d", "conv3d", "embedding",
                                         "matmul"):
                    w = _fetch(model, str(weights[0].target))
                    op = {"conv1d": "conv", "conv2d": "conv", "conv3d": "conv",
                          "matmul": "linear"}.get(fname, fname)
                    if op == "linear" and fname == "matmul" and w is not None and w.dim() == 2:
                        w = w.t()  # x @ W: W is (in, out)
                    if w is not None:
                        spec = spec_for_weight(w, op, str(weights[0].target))
                        if spec is not None:
                            return spec
            queue.append(user)
    return None


def _fetch(model: nn.Module, qual: str):
    try:
        obj = fetch_attr(model, qual)
    except AttributeError:
        return None
    return obj if hasattr(obj, "dim") else None
