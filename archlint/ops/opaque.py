"""Ops without a formula, estimated by running them alone.

An op the table has no formula for -- a TorchScript module or function, an elementwise map
nobody wrote a law for, a custom layer kept whole -- can still be estimated the way recurrent
layers are: run *that op alone* on synthetic inputs that carry the predicted statistics (real
parameters, recomputed weights), read the statistics of its outputs, and back-propagate a
synthetic gradient of the predicted scale to get what reaches its inputs and its own parameters.
What cannot be synthesised faithfully (integer or boolean tensor inputs, values without a shape,
tensors too large to run on the CPU in a moment) is left to the pass-through rule, which reports
the op as unknown.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..graph.derived import flatten_tensors, is_param_only, rebuild, replay_value
from ..graph.ir import Kind, Node
from ..meanfield.signal import Sig
from .base import Backward, Propagation, unknown
from .table import Op, register

#: Above this many input elements an op is not run (a few hundred MB of float32 at most).
MAX_ELEMENTS = 1 << 24


class Opaque(nn.Module):
    """Wraps a module archlint cannot look into (a TorchScript module) so tracers see one layer;
    it is estimated by running it. The wrapped module is not registered as a submodule, so its
    parameters keep their names in the model."""

    _archlint_opaque = True

    def __init__(self, target: nn.Module, label: str) -> None:
        super().__init__()
        self.__dict__["target"] = target
        self.label = label

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["target"](*args, **kwargs)


def _unit_dim(t: torch.Tensor) -> int:
    return 1 if t.dim() in (4, 5) else -1


def _sig_of(t: torch.Tensor) -> Sig:
    t = t.detach().float()
    if t.dim() == 0:
        v = float(t)
        return Sig(v * v, v, v * v, 1)
    q = float(t.pow(2).mean())
    m = float(t.mean())
    unit = _unit_dim(t)
    units = t.movedim(unit, -1).reshape(-1, t.shape[unit])
    s = min(float(units.mean(0).pow(2).mean()), q) if units.shape[0] > 1 else q
    sig = Sig(q, m, s, t.numel())
    if t.dim() >= 3:  # what the positions of one sample share
        per_sample = t.movedim(unit, 1).reshape(t.shape[0], t.shape[unit], -1)
        sig.with_w(float(per_sample.mean(-1).pow(2).mean()))
    return sig


def _synthetic(shape: tuple, dtype: torch.dtype, sig: Sig, gen: torch.Generator
               ) -> torch.Tensor:
    var = max(sig.q - sig.m * sig.m, 0.0)
    coh = min(max(sig.s - sig.m * sig.m, 0.0), var)
    x = torch.randn(shape, generator=gen) * math.sqrt(max(var - coh, 0.0))
    if coh > 0 and len(shape) >= 1:
        unit = 1 if len(shape) in (4, 5) else len(shape) - 1
        view = [1] * len(shape)
        view[unit] = shape[unit]
        x = x + torch.randn(view, generator=gen) * math.sqrt(coh)
    return (x + sig.m).to(dtype)


@dataclass
class _Recipe:
    call: Callable
    args: Any
    kwargs: Any
    module: Optional[nn.Module]


def _recipe(node: Node) -> Optional[_Recipe]:
    if node.module is not None:
        args, kwargs = node.attrs.get("recipe") or (node.attrs.get("args", ()),
                                                    node.attrs.get("kwargs", {}))
        return _Recipe(node.module, args, kwargs, node.module)
    call = node.attrs.get("call")
    if call is None:
        return None
    args, kwargs = node.attrs.get("recipe") or (node.attrs.get("args", ()),
                                                node.attrs.get("kwargs", {}))
    return _Recipe(call, args, kwargs, None)


class _Runner:
    """Builds the synthetic inputs of one node (the same ones every time) and runs the op."""

    def __init__(self, prop: Propagation, node: Node, recipe: _Recipe) -> None:
        self.prop, self.node, self.recipe = prop, node, recipe
        self.floats: list[tuple[Node, torch.Tensor]] = []
        self.params: list[tuple[Node, torch.Tensor]] = []

    def _value(self, n: Node, gen: torch.Generator) -> Any:
        if n.kind == Kind.PARAM and n.tensor is not None:
            leaf = n.tensor.detach().clone().requires_grad_(n.tensor.requires_grad)
            if n.tensor.requires_grad:
                self.params.append((n, leaf))
            return leaf
        if is_param_only(n):
            return replay_value(n).detach()
        if n.shape is None or n.dtype is None or not (n.dtype.is_floating_point):
            raise ValueError("an input that cannot be synthesised")
        sig = self.prop.value(n)
        if isinstance(sig, list):
            sig = sig[0] if sig else None
        t = _synthetic(tuple(n.shape), n.dtype, sig if isinstance(sig, Sig) else
                       Sig(1.0, 0.0, 0.0, 1), gen).requires_grad_(True)
        self.floats.append((n, t))
        return t

    def _fill(self, value: Any, gen: torch.Generator) -> Any:
        if isinstance(value, Node):
            return self._value(value, gen)
        if isinstance(value, torch.Tensor):  # a constant the execution tracer kept
            return value
        if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
            return rebuild(value, (self._fill(v, gen) for v in value))
        if isinstance(value, dict):
            return {k: self._fill(v, gen) for k, v in value.items()}
        return value

    def run(self) -> tuple[list[torch.Tensor], list[tuple[str, torch.Tensor]]]:
        self.floats, self.params = [], []
        gen = torch.Generator().manual_seed(4321)
        args = self._fill(self.recipe.args, gen)
        kwargs = self._fill(self.recipe.kwargs, gen)
        if sum(t.numel() for _, t in self.floats) > MAX_ELEMENTS:
            raise ValueError("too large to run alone")
        module = self.recipe.module
        own: list[tuple[str, torch.Tensor]] = []
        saved = None
        if module is not None:
            target = module.__dict__.get("target", module)
            own = [(n, p) for n, p in target.named_parameters() if p.requires_grad]
            saved = [(b, b.detach().clone()) for b in target.buffers()]
        try:
            with torch.enable_grad():
                out = self.recipe.call(*args, **kwargs)
        finally:
            if saved:
                with torch.no_grad():
                    for b, v in saved:
                        b.copy_(v)
        return [t for t in flatten_tensors(out) if t.is_floating_point()], own


@dataclass
class RunBackward(Backward):
    """Back-propagates a synthetic gradient of the predicted scale through the op run alone."""

    runner: _Runner
    per_item = True

    def apply(self, prop: Propagation, node: Node, go_: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        go = dict(items) or ({0: prop.g2.get(node, 0.0)} if prop.g2.get(node, 0.0) > 0 else {})
        if not any(v > 0 for v in go.values()):
            return
        outputs, own = self.runner.run()
        gen = torch.Generator().manual_seed(8765)
        pairs = [(t, torch.randn(t.shape, generator=gen).to(t.dtype) *
                  math.sqrt(max(go.get(k, 0.0), 0.0)))
                 for k, t in enumerate(outputs) if t.requires_grad]
        wrt = [t for _, t in self.runner.floats] + [t for _, t in self.runner.params] + \
            [p for _, p in own]
        if not pairs or not wrt:
            return
        grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                    allow_unused=True)
        parents = set(node.grad_parents())
        k = 0
        total_in = 0.0
        for n, _ in self.runner.floats:
            g = grads[k]
            k += 1
            if g is not None and n in parents:
                g2 = float(g.detach().double().pow(2).mean())
                prop.g2[n] = prop.g2.get(n, 0.0) + g2
                total_in += g2
        for n, _ in self.runner.params:
            g = grads[k]
            k += 1
            if g is not None:
                prop.g2[n] = prop.g2.get(n, 0.0) + float(g.detach().double().pow(2).mean())
        by_module: dict[str, list[float]] = {}
        for name, p in own:
            g = grads[k]
            k += 1
            if p.dim() < 2:
                continue
            owner = ".".join(filter(None, [node.module_path or "", name.rpartition(".")[0]]))
            entry = by_module.setdefault(owner, [0.0, 0])
            entry[0] += float(g.detach().double().pow(2).sum()) if g is not None else 0.0
            entry[1] += p.numel()
        for owner, (total, count) in by_module.items():
            prop.add_weight_grad(owner, total / max(count, 1), count, node, key=("run", owner))
        first_out = sum(go.values())
        if total_in > 0 and first_out > 0:
            prop.decades[node] = 0.5 * math.log10(total_in / first_out)


def estimate_by_running(prop: Propagation, node: Node) -> bool:
    """Estimate ``node`` by running its op alone; False when that cannot be done faithfully."""
    recipe = _recipe(node)
    if recipe is None:
        return False
    runner = _Runner(prop, node, recipe)
    try:
        outputs, _ = runner.run()
    except Exception:  # the op does not run alone: passed through and reported instead
        return False
    if not outputs:
        return False
    sigs = [_sig_of(t) for t in outputs]
    prop.out(node, sigs[0] if len(sigs) == 1 else sigs, RunBackward(runner))
    return True


def estimate_opaque(prop: Propagation, node: Node) -> None:
    unknown(prop, node)  # runs it alone when it can


def _opaque_shape(mod: Opaque, args: Any, kwargs: dict) -> Any:
    """Shapes by running the wrapped module on zeros (it cannot run on meta tensors)."""
    from .shape import NoRule, TensorShape

    def real(v: Any) -> Any:
        if isinstance(v, TensorShape):
            if math.prod(v.shape) > MAX_ELEMENTS:
                raise NoRule("too large to run")
            return torch.zeros(v.shape, dtype=v.dtype)
        if isinstance(v, (list, tuple)):
            return rebuild(v, (real(x) for x in v))
        return v

    def shape(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return TensorShape(tuple(v.shape), v.dtype)
        if isinstance(v, (list, tuple)):
            return rebuild(v, (shape(x) for x in v))
        return v

    with torch.no_grad():
        return shape(mod(*real(args), **{k: real(v) for k, v in kwargs.items()}))


register(Op(name="opaque", modules=(Opaque,), module_shape=_opaque_shape,
            estimate=estimate_opaque))


def _is_compiled(module: nn.Module) -> bool:
    return type(module).__name__ == "OptimizedModule" and isinstance(
        getattr(module, "_orig_mod", None), nn.Module)


def _script_functions(model: nn.Module) -> list[tuple[Any, str, Any]]:
    """TorchScript functions (``@torch.jit.script``) that the model's code reads from its
    modules' globals, with the Python function each was made from."""
    import sys

    found = []
    seen: set[str] = set()
    for m in model.modules():
        name = type(m).__module__
        if name in seen or name.startswith("torch."):
            continue
        seen.add(name)
        py = sys.modules.get(name)
        for attr, value in list(vars(py).items()) if py is not None else ():
            original = getattr(value, "_torchdynamo_inline", None)
            if isinstance(value, torch.jit.ScriptFunction) and callable(original):
                found.append((py, attr, value))
    return found


def _eager_modules(root: nn.Module) -> list[nn.Module]:
    """The modules of ``root`` whose children can be replaced: not the insides of TorchScript
    modules (their children are scripted too)."""
    out, stack = [], [root]
    while stack:
        m = stack.pop()
        if isinstance(m, torch.jit.ScriptModule):
            continue
        out.append(m)
        stack.extend(c for c in m._modules.values() if c is not None)
    return out


def _scripted_root(script: nn.Module) -> nn.Module:
    """A whole TorchScript model as an eager model of one opaque layer, whose forward takes the
    arguments the scripted forward names (so example inputs bind by name)."""
    try:
        names = [a.name for a in script.forward.schema.arguments[1:]]
    except (AttributeError, RuntimeError):
        names = []
    if not names or not all(n.isidentifier() for n in names):
        names = ["input"]
    signature = ", ".join(names)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {signature}):\n    return self.__dict__['target']({signature})\n",
         namespace)
    cls = type("ScriptedModel", (Opaque,), {"forward": namespace["forward"]})
    return cls(script, getattr(script, "original_name", type(script).__name__))


def named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()``, including the insides of opaque layers under their names."""
    for name, mod in model.named_modules():
        yield name, mod
        if getattr(mod, "_archlint_opaque", False):
            for sub, inner in mod.__dict__["target"].named_modules():
                yield ".".join(filter(None, [name, sub])), inner


def weight_owners(model: nn.Module) -> Iterator[tuple[str, nn.Module, list[nn.Parameter]]]:
    """Every module that owns a weight matrix (a parameter of 2+ dims), by its name, with those
    matrices. A parametrized layer (``parametrizations.weight_norm``, ``spectral_norm``) owns
    the originals its weight is computed from, under its own name (not its
    ``parametrizations.weight`` list)."""
    for name, mod in named_modules(model):
        if ".parametrizations." in f".{name}.":
            continue
        params = [p for p in mod.parameters(recurse=False) if p.dim() >= 2]
        plists = getattr(mod, "parametrizations", None)
        if isinstance(plists, nn.ModuleDict):
            params += [p for plist in plists.values() for p in plist.parameters()
                       if p.dim() >= 2]
        if params:
            yield name, mod, params


@contextlib.contextmanager
def see_through(model: nn.Module, wrap_scripts: bool = True) -> Iterator[nn.Module]:
    """For the time of a trace: ``torch.compile``'d modules replaced by the modules they wrap
    (nothing is compiled), TorchScript functions the model's code calls replaced by the Python
    functions they were made from, and TorchScript modules (whose insides tracers cannot see)
    wrapped as one :class:`Opaque` layer each (``wrap_scripts``). Yields the model to use;
    everything is put back afterwards."""
    root = model
    while _is_compiled(root):
        root = root._orig_mod
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    globals_: list[tuple[Any, str, Any]] = []
    try:
        for parent in _eager_modules(root):
            for name, child in list(parent._modules.items()):
                new = child
                while new is not None and _is_compiled(new):
                    new = new._orig_mod
                if wrap_scripts and isinstance(new, torch.jit.ScriptModule):
                    new = Opaque(new, getattr(new, "original_name", type(new).__name__))
                if new is not child:
                    parent._modules[name] = new
                    swaps.append((parent, name, child))
        for py, attr, value in _script_functions(root):
            setattr(py, attr, value._torchdynamo_inline)
            globals_.append((py, attr, value))
        if wrap_scripts and isinstance(root, torch.jit.ScriptModule):
            root = _scripted_root(root)
        yield root
    finally:
        for py, attr, value in reversed(globals_):
            setattr(py, attr, value)
        for parent, name, child in reversed(swaps):
            parent._modules[name] = child
