"""Turn a model and its example input into an archlint :class:`~archlint.graph.ir.Graph`.

torch.fx first (custom blocks traced through, shapes on the meta device); when fx cannot trace
the model, an execution trace of one real forward pass. The graph says which tracer made it.
The example input is settled before tracing (:mod:`archlint.loading.inputs`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch.fx
from torch import nn

from ..graph.ir import Graph
from ..loading.inputs import InputSpec
from .builder import TraceError
from .fx_tracer import fx_trace, symbolic_graph

__all__ = ["TraceError", "trace_model"]


def trace_model(model: nn.Module, spec: Optional[InputSpec], meta: Any = None) -> Graph:
    """Trace ``model`` with the example input ``spec`` (None: there is none; the fx graph then
    has no shapes, and a model fx cannot trace cannot be traced at all).

    The spec is stored in ``graph.input_spec``. ``meta``: the model is on the meta device
    (a :class:`~archlint.loading.meta.MetaBuild`); so is the execution trace's input, its small
    values computed for real beside (``MetaBuild.shadowing``).
    """
    fx_error: Optional[str] = None
    fxg: Optional[torch.fx.Graph] = None
    try:
        fxg = symbolic_graph(model)
    except TraceError as exc:
        fx_error = str(exc)
    if fxg is not None:
        try:
            inputs = spec.bind(model, device="meta") if spec is not None else None
            graph = fx_trace(model, inputs, fxg)
            graph.input_spec = spec
            return graph
        except TraceError as exc:
            if exc.mismatch:
                raise
            fx_error = str(exc)
    if spec is None:
        raise TraceError(f"torch.fx could not trace the model ({fx_error}) and no example input "
                         "could be inferred for the execution tracer; give one with "
                         "--input-shape or 'input:' in the config")
    from .exec_tracer import exec_trace  # the fallback: imported when fx could not trace

    try:
        if meta is None:
            graph = exec_trace(model, spec.bind(model))
        else:
            inputs = spec.bind(model, device="meta")
            with meta.shadowing(inputs, spec.bind(model)):
                graph = exec_trace(model, inputs)
    except TraceError as exc:
        raise TraceError(f"torch.fx: {fx_error}; execution trace: {exc}") from exc
    graph.fallback_reasons.append(f"fx: {fx_error}")
    graph.input_spec = spec
    return graph
