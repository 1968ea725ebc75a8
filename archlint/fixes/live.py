"""``--measure`` for fixes: carry a fix out on a deep copy of the live model and run the probe.

The actions are the ones the prediction carried out on the graph (:mod:`archlint.fixes.plan`),
now on modules: an activation module is swapped for ``nn.ReLU()``/``nn.GELU()``; a new weight
(the very tensor the prediction used) is copied into the layer; a normalisation layer runs
after a layer's call (a forward hook), an identity skip adds one layer's input to another's (a
forward pre-hook saves it, another adds it). A functional call (``torch.sigmoid(x)`` in
``forward``, ``F.linear(x, self.w)``) is found at run time by its line and how many times that
line has called it, through a :class:`~torch.overrides.TorchFunctionMode`. Every action must
have happened exactly where the graph said; otherwise the fix is not measured (None), never
measured on something else.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..graph.ir import Graph, Node
from ..loading.inputs import InputSpec
from ..loading.sites import user_site
from ..measure import measure_grad_rms
from ..ops import canonical_name
from .graphedit import ACTIVATION_MODULES, data_input, weight_param_node
from .plan import Action, Candidate

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_FUNCTIONS: dict[str, Callable] = {"relu": torch.relu, "gelu": F.gelu,
                                   "leaky_relu": F.leaky_relu}


class LiveEditError(Exception):
    """The fix cannot be carried out on the model as the graph describes it."""


class _Calls(TorchFunctionMode):
    """Runs ``handler(args, kwargs, call)`` instead of the ``occurrence``-th call of a function
    at a source line (calls inside torch's own layers do not count)."""

    def __init__(self) -> None:
        super().__init__()
        #: (path, line, column, function) -> {occurrence: handler}
        self.rules: dict[tuple, dict[int, Callable]] = {}
        self.counts: dict[tuple, int] = {}
        self.names: set[str] = set()

    def add(self, node: Node, occurrence: int, handler: Callable) -> None:
        key = _call_key(node)
        self.rules.setdefault(key, {})[occurrence] = handler
        self.names.add(key[3])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.rules:
            return func(*args, **kwargs)
        name = canonical_name(func)
        if name not in self.names:
            return func(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(_TORCH_DIR):
            if frame.f_code.co_name == "forward" and \
                    isinstance(frame.f_locals.get("self"), nn.Module):
                return func(*args, **kwargs)  # inside a torch layer: not a call of forward's
            frame = frame.f_back
        site = user_site(frame) if frame is not None else None
        if site is None:
            return func(*args, **kwargs)
        key = (site.path, site.line, site.column, name)
        k = self.counts.get(key, 0)
        self.counts[key] = k + 1
        handler = self.rules.get(key, {}).get(k)
        if handler is None:
            return func(*args, **kwargs)
        return handler(func, args, kwargs)


def _call_key(node: Node) -> tuple:
    if node.site is None:
        raise LiveEditError(f"{node.name}: a call without a source line")
    return (node.site.path, node.site.line, node.site.column,
            node.attrs.get("function") or node.op)


class LiveFix:
    """A deep copy of the model with one candidate's actions in place."""

    def __init__(self, model: nn.Module, graph: Graph, candidate: Candidate) -> None:
        self.model = copy.deepcopy(model)
        self.calls = _Calls()
        self.expected: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        self._modules = _module_map(model, self.model)
        self._params = _param_map(model, self.model)
        self._graph = graph
        self._swapped: dict[int, nn.Module] = {}
        self._hooks: dict[int, dict[int, list[Callable]]] = {}
        self._pre: dict[int, dict[int, list[Callable]]] = {}
        self._saved: dict[int, Any] = {}
        for k, action in enumerate(candidate.actions):
            self._apply(k, action)
        for mid, per_call in self._pre.items():
            self._register(mid, per_call, pre=True)
        for mid, per_call in self._hooks.items():
            self._register(mid, per_call, pre=False)

    # ------------------------------------------------------------------ bookkeeping
    def _expect(self, tag: str) -> str:
        self.expected[tag] = self.expected.get(tag, 0) + 1
        return tag

    def _hit(self, tag: str) -> None:
        self.hits[tag] = self.hits.get(tag, 0) + 1

    def complete(self) -> bool:
        return self.hits == self.expected

    def _occurrence(self, node: Node) -> int:
        if node.module is not None:
            same = [n for n in self._graph.nodes if n.module is node.module]
        else:
            key = _call_key(node)
            same = [n for n in self._graph.nodes if n.module is None and n.site is not None
                    and _call_key(n) == key]
        return same.index(node)

    def _copy_of(self, module: nn.Module) -> nn.Module:
        found = self._modules.get(id(module))
        if found is None:
            raise LiveEditError(f"{type(module).__name__} is not a module of the model")
        return found

    # ------------------------------------------------------------------ the actions
    def _apply(self, k: int, a: Action) -> None:
        node = a.node
        if a.kind == "activation":
            self._activation(k, node, a.op)
        elif a.kind in ("weight", "norm_scale"):
            self._set_weight(node, a.value())
        elif a.kind == "bias":
            with torch.no_grad():
                self._copy_of(node.module).bias.copy_(a.value())
        elif a.kind == "norm_after":
            norm = a.make()
            norm.train()
            tag = self._expect(f"{k}:norm")

            def after(out: torch.Tensor, tag=tag, norm=norm) -> torch.Tensor:
                self._hit(tag)
                return norm(out)
            self._after(node, after)
        elif a.kind == "skip":
            tag_save, tag_add = self._expect(f"{k}:save"), self._expect(f"{k}:add")

            def save(x: torch.Tensor, k=k, tag=tag_save) -> torch.Tensor:
                self._hit(tag)
                self._saved[k] = x
                return x

            def add(x: torch.Tensor, k=k, tag=tag_add) -> torch.Tensor:
                if k not in self._saved:
                    raise LiveEditError("skip: the block's input was never seen")
                self._hit(tag)
                return x + self._saved.pop(k)
            self._before(node, save)
            self._before(a.other, add)
        else:  # pragma: no cover
            raise LiveEditError(f"unknown action {a.kind!r}")

    def _activation(self, k: int, node: Node, op: str) -> None:
        if node.module is not None:
            old = node.module
            if id(old) in self._swapped:
                return
            new = self._swapped[id(old)] = ACTIVATION_MODULES[op]()
            target = self._copy_of(old)
            replaced = 0
            for parent in self.model.modules():
                for name, child in list(parent._modules.items()):
                    if child is target:
                        parent._modules[name] = new
                        replaced += 1
            if not replaced:
                raise LiveEditError(f"{node.module_path}: not found in the copy")
            return
        fn = _FUNCTIONS[op]
        tag = self._expect(f"{k}:act")

        def replace(func, args, kwargs, tag=tag, fn=fn):
            self._hit(tag)
            x = args[0] if args else kwargs.get("input")
            if getattr(func, "__name__", "").endswith("_") and op == "relu":
                return torch.relu_(x)
            return fn(x)
        self.calls.add(node, self._occurrence(node), replace)

    def _set_weight(self, node: Node, tensor: torch.Tensor) -> None:
        if node.module is not None:
            target = self._copy_of(node.module).weight
        else:
            param = weight_param_node(node)
            target = self._params.get(id(param.tensor)) if param is not None else None
            if target is None:
                raise LiveEditError(f"{node.name}: its weight is not a parameter of the model")
        with torch.no_grad():
            target.copy_(tensor.to(target.dtype))

    def _after(self, node: Node, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if node.module is not None:
            mid = id(self._copy_of(node.module))
            self._hooks.setdefault(mid, {}).setdefault(self._occurrence(node), []).append(fn)
            return

        def call(func, args, kwargs):
            return fn(func(*args, **kwargs))
        self.calls.add(node, self._occurrence(node), call)

    def _before(self, node: Node, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if node.module is not None:
            mid = id(self._copy_of(node.module))
            self._pre.setdefault(mid, {}).setdefault(self._occurrence(node), []).append(fn)
            return
        data = node.inputs[data_input(node)]
        args = node.attrs.get("args") or ()
        position = next((i for i, a in enumerate(args) if a is data), None)
        if position is None:
            raise LiveEditError(f"{node.name}: its data input is not a positional argument")

        def call(func, args, kwargs, position=position):
            original = args[position]
            x = fn(original)
            args = [x if a is original else a for a in args]
            kwargs = {k: (x if v is original else v) for k, v in kwargs.items()}
            return func(*args, **kwargs)
        self.calls.add(node, self._occurrence(node), call)

    def _register(self, mid: int, per_call: dict[int, list[Callable]], pre: bool) -> None:
        module = next(m for m in self.model.modules() if id(m) == mid)
        count = [0]

        if pre:
            def pre_hook(mod, args, kwargs):
                k = count[0]
                count[0] += 1
                fns = per_call.get(k)
                if not fns:
                    return None
                if not args:
                    raise LiveEditError("a layer called without positional input")
                x = original = args[0]
                for fn in fns:
                    x = fn(x)
                # the same tensor passed twice (attention's query, key and value) changes alike
                args = tuple(x if a is original else a for a in args)
                kwargs = {k: (x if v is original else v) for k, v in kwargs.items()}
                return args, kwargs
            module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:
            def hook(mod, args, out):
                k = count[0]
                count[0] += 1
                for fn in per_call.get(k, ()):
                    out = fn(out)
                return out
            module.register_forward_hook(hook)


def _module_map(model: nn.Module, twin: nn.Module) -> dict[int, nn.Module]:
    return {id(a): b for (_, a), (_, b) in zip(model.named_modules(remove_duplicate=False),
                                              twin.named_modules(remove_duplicate=False))}


def _param_map(model: nn.Module, twin: nn.Module) -> dict[int, torch.Tensor]:
    out: dict[int, torch.Tensor] = {}
    for (_, a), (_, b) in zip(model.named_parameters(remove_duplicate=False),
                              twin.named_parameters(remove_duplicate=False)):
        out[id(a)] = b
    for (_, a), (_, b) in zip(model.named_buffers(remove_duplicate=False),
                              twin.named_buffers(remove_duplicate=False)):
        out[id(a)] = b
    return out


_FLOOR = 1e-300


def flow_decades(rms: dict[str, Optional[float]], earliest: list[str], last: list[str]
                 ) -> Optional[float]:
    """log10 of the earliest layers' gradient over the last layers' (geometric means), from
    measured per-layer RMS; None when a layer has no figure."""
    try:
        head = [math.log10(max(float(rms[m]), _FLOOR)) for m in earliest]
        tail = [math.log10(max(float(rms[m]), _FLOOR)) for m in last]
    except (KeyError, TypeError):
        return None
    if not head or not tail:
        return None
    return sum(head) / len(head) - sum(tail) / len(tail)


def measure_fix(model: nn.Module, graph: Graph, candidate: Candidate, spec: InputSpec,
                earliest: list[str], last: list[str]) -> Optional[float]:
    """The measured ``gradient_decades`` of ``model`` with ``candidate`` carried out (on a
    copy), over the layers the prediction compared; None when the fix could not be carried
    out faithfully."""
    live = LiveFix(model, graph, candidate)
    inputs = spec.bind(live.model)
    with live.calls:
        rms = measure_grad_rms(live.model, inputs).rms
    if not live.complete():
        raise LiveEditError(f"the fix's edits ran {live.hits} times, expected {live.expected}")
    return flow_decades(rms, earliest, last)
