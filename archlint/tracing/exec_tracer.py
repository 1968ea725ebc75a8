"""Execution tracing: run the forward once and record every torch call and leaf module call.

The fallback when torch.fx cannot trace a model (data-dependent control flow, ``len()`` on
tensors, Hugging Face models...). A :class:`torch.overrides.TorchFunctionMode` sees every torch
function and tensor method called from user code; forward hooks on torch.nn's leaf layers record
each layer as one node and hide the operations inside it. Data flow is followed by tensor
identity. The forward runs once on the example input in the probe's mode (train), under
``no_grad``, and the model's buffers and the global RNG state are restored afterwards.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..ops import canonical_name, is_leaf_module
from ..graph.derived import PARAM_ONLY, rebuild
from ..graph.ir import Graph, Kind, Node
from ..loading.inputs import call_arguments
from ..loading.sites import user_site
from .builder import (attach_owner_sites, call_node, finalize, flatten_tensors, module_node,
                      param_owner, select_output, shape_of, TraceError)

_IGNORED = {"size", "dim", "numel", "shape", "dtype", "device", "is_floating_point", "stride",
            "data_ptr", "element_size", "requires_grad", "grad_fn", "is_contiguous", "item",
            "tolist", "get_device", "is_cuda", "ndim", "names", "layout", "storage_offset",
            "untyped_storage", "storage", "is_complex", "nbytes", "itemsize", "__format__",
            "__len__", "__bool__", "__repr__", "__hash__", "__iter__", "__get__", "grad"}


class _Env:
    """Tensor -> producing node, by identity, without keeping tensors alive."""

    def __init__(self) -> None:
        self._map: dict[int, tuple[weakref.ref, Node]] = {}

    def set(self, t: torch.Tensor, node: Node) -> None:
        self._map[id(t)] = (weakref.ref(t), node)

    def get(self, t: torch.Tensor) -> Optional[Node]:
        entry = self._map.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        return entry[1]


class _Recorder:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.nodes: list[Node] = []
        self.env = _Env()
        self.leaf_depth = 0
        self.names: dict[str, int] = {}
        self.module_names: dict[int, str] = {}
        for name, mod in model.named_modules(remove_duplicate=False):
            self.module_names.setdefault(id(mod), name)
        self.params: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.params.setdefault(id(p), name)
        for name, b in model.named_buffers(remove_duplicate=False):
            self.params.setdefault(id(b), name)
        self.pending: list[tuple[nn.Module, list[Node], Any, Any]] = []
        self.scopes: list[str] = [""]

    # ---------------------------------------------------------------------------- naming
    def fresh(self, base: str) -> str:
        base = base.replace(".", "_") or "node"
        k = self.names.get(base, 0)
        self.names[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    # ---------------------------------------------------------------------------- inputs
    def node_for(self, t: torch.Tensor) -> Node:
        node = self.env.get(t)
        if node is not None:
            return node
        qual = self.params.get(id(t))
        if qual is not None:
            node = Node(name=self.fresh(qual), kind=Kind.PARAM, op="param", target=qual,
                        tensor=t, module_path=param_owner(qual))
        else:
            node = Node(name=self.fresh("constant"), kind=Kind.CONSTANT, op="constant")
            node.grad_inputs = []
        node.shape, node.dtype = shape_of(t)
        self.nodes.append(node)
        self.env.set(t, node)
        return node

    def tensor_inputs(self, args: Any, kwargs: Any) -> list[Node]:
        seen: list[Node] = []
        for t in flatten_tensors((args, kwargs)):
            n = self.node_for(t)
            if n not in seen:
                seen.append(n)
        return seen

    def template(self, value: Any) -> Any:
        """``value`` with every tensor replaced by the node that produced it."""
        if isinstance(value, torch.Tensor):
            return self.node_for(value)
        if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
            return rebuild(value, (self.template(v) for v in value))
        if isinstance(value, dict):
            return {k: self.template(v) for k, v in value.items()}
        return value

    def bind_outputs(self, node: Node, out: Any) -> None:
        tensors = flatten_tensors(out)
        node.shape, node.dtype = shape_of(out)
        if isinstance(out, torch.Tensor):
            self.env.set(out, node)
            return
        for idx, t in enumerate(tensors):
            child = Node(name=self.fresh(f"{node.name}_{idx}"), kind=Kind.RESHAPE, op="getitem",
                         inputs=[node], attrs={"index": idx}, module_path=node.module_path,
                         site=node.site)
            child.shape, child.dtype = shape_of(t)
            child.attrs["call"] = _item
            child.attrs["recipe"] = ((node, idx), {})
            if node.attrs.get(PARAM_ONLY):
                child.attrs[PARAM_ONLY] = True
            self.nodes.append(child)
            self.env.set(t, child)

    # ---------------------------------------------------------------------------- events
    def record_call(self, func: Callable, args: Any, kwargs: Any, out: Any) -> None:
        fname = canonical_name(func)
        if fname == "get":  # a property read: x.T, x.mT
            prop = getattr(getattr(func, "__self__", None), "__name__", "")
            fname = "t" if prop in ("T", "mT", "H", "mH") else "__get__"
        if fname in _IGNORED or not flatten_tensors(out):
            return
        inputs = self.tensor_inputs(args, kwargs)
        node = call_node(self.fresh(fname), fname, inputs, user_site(), args, kwargs, call=func,
                         recipe=(self.template(args), self.template(kwargs)))
        node.scope = self.scopes[-1]
        node.input_shapes = [i.shape for i in inputs]
        self.nodes.append(node)
        self.bind_outputs(node, out)

    def pre_hook(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.leaf_depth += 1
        if self.leaf_depth == 1:
            self.pending.append((module, self.tensor_inputs(args, kwargs), args, kwargs))

    def post_hook(self, module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        self.leaf_depth -= 1
        if self.leaf_depth != 0:
            return
        mod, inputs, args, kwargs = self.pending.pop()
        path = self.module_names.get(id(mod), "")
        node = module_node(self.fresh(path or type(mod).__name__), mod, path, inputs)
        node.attrs["recipe"] = (self.template(args), self.template(kwargs))
        node.input_shapes = [i.shape for i in inputs]
        self.nodes.append(node)
        self.bind_outputs(node, out)


    def enter_scope(self, module: nn.Module, args: Any) -> None:
        self.scopes.append(self.module_names.get(id(module), ""))

    def exit_scope(self, module: nn.Module, args: Any, out: Any) -> None:
        if len(self.scopes) > 1:
            self.scopes.pop()


def _item(value: Any, index: int) -> torch.Tensor:
    return flatten_tensors(value)[index]


class _Mode(TorchFunctionMode):
    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.recorder.leaf_depth == 0:
            self.recorder.record_call(func, args, kwargs, out)
        return out


def _accepts(model: nn.Module, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def exec_trace(model: nn.Module, inputs: Mapping[str, Any]) -> Graph:
    """Trace by running ``model(**inputs)`` once; raise TraceError if the forward fails."""
    rec = _Recorder(model)
    input_nodes = []
    for name, value in inputs.items():
        for t in flatten_tensors(value):
            node = Node(name=rec.fresh(name), kind=Kind.INPUT, op="input", target=name)
            node.shape, node.dtype = shape_of(t)
            rec.nodes.append(node)
            rec.env.set(t, node)
            input_nodes.append(node)
    handles = []
    for mod in model.modules():
        if is_leaf_module(mod):
            handles.append(mod.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
            handles.append(mod.register_forward_hook(rec.post_hook, with_kwargs=True,
                                                     always_call=True))
        elif mod is not model:
            handles.append(mod.register_forward_pre_hook(rec.enter_scope))
            handles.append(mod.register_forward_hook(rec.exit_scope, always_call=True))
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    training = {m: m.training for m in model.modules()}
    rng = torch.get_rng_state()
    call_kwargs = dict(inputs)
    if _accepts(model, "use_cache") and "use_cache" not in call_kwargs:
        call_kwargs["use_cache"] = False  # Hugging Face: no KV-cache bookkeeping in the graph
    try:
        model.train()
        with torch.no_grad(), _Mode(rec):
            args, kwargs = call_arguments(model, call_kwargs)  # *args positionally
            result = model(*args, **kwargs)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        where = ""
        if rec.pending:  # the layer that was running
            mod = rec.pending[-1][0]
            where = f" in {rec.module_names.get(id(mod), '') or '<root>'} ({type(mod).__name__})"
        raise TraceError(f"forward failed{where}: {type(exc).__name__}: "
                         f"{lines[0] if lines else ''}"[:300]) from exc
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in buffers:
                    b.copy_(buffers[k])
        for m, flag in training.items():
            m.training = flag
        torch.set_rng_state(rng)
    y = select_output(result)
    out_inputs = [rec.env.get(t) for t in flatten_tensors(result)]
    output = Node(name="output", kind=Kind.OUTPUT, op="output",
                  inputs=[n for n in out_inputs if n is not None])
    rec.nodes.append(output)
    nodes = finalize(rec.nodes)
    attach_owner_sites(nodes, model)
    graph = Graph(nodes=nodes, model=model, tracer="exec", input_nodes=input_nodes)
    graph.output = rec.env.get(y) if y is not None else None
    return graph
