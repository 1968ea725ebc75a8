"""Example inputs inferred from the model: the first layer each ``forward`` argument reaches
gives its spec; an argument read only through other computation (a timestep, an edge list, a
mask, a recurrent state) is guessed by running ``forward`` with candidates."""

from __future__ import annotations

import dataclasses
import inspect
import operator
import re
import time
from collections import deque
from typing import Optional

import torch
import torch.fx
from torch import nn

from ..ops import canonical_name, is_leaf_module
from ..ops.opaque import see_through
from .inputs import (DEFAULT_BATCH, DEFAULT_SEQ_LEN, DEFAULT_SPATIAL, Arg, DictArg, InputSpec,
                     TensorSpec, Value, call_arguments, forward_parameters, uninferable_input)


def infer_input(model: nn.Module) -> Optional[InputSpec]:
    """Guess the example input from the first layer that reads each required argument.

    A symbolic trace of ``model`` (torch.fx, stopping at the layers archlint classifies, as the
    tracer does) follows each ``forward`` argument without a default to the first layer that
    consumes it; that layer's type and sizes give the spec (:func:`spec_for_layer`). When fx
    cannot trace the model, the first leaf layer in definition order reads the first argument.
    None when no such layer is found.
    """
    with see_through(model) as seen:
        return _infer_input(seen)


def _infer_input(model: nn.Module) -> Optional[InputSpec]:
    if getattr(model, "_archlint_opaque", False):  # a whole TorchScript model
        spec = spec_for_layer(model, "model")
        return InputSpec({None: spec}) if spec is not None else None
    if uninferable_input(model) is not None:
        return None
    required = [p.name for p in forward_parameters(model) if p.default is p.empty]
    specs: dict[str, TensorSpec] = {}
    #: Arguments read by their first layer only after other computation (``t`` of
    #: ``self.time_mlp(embed(t))``), or by no layer: their spec is checked by running forward.
    uncertain: list[str] = []
    fxg = _symbolic_graph(model)
    if fxg is not None:
        for node in fxg.nodes:
            name = str(node.target).lstrip("*")
            if node.op != "placeholder" or name not in required:
                continue
            keys = _string_keys(node)
            if keys:  # a mapping argument: each key's value is followed on its own
                items = {k: _first_consumer_spec(model, n)[0] for k, n in keys.items()}
                if all(v is not None for v in items.values()):
                    specs[name] = DictArg(items, origin=next(iter(items.values())).origin)
                    continue
            spec, direct = _first_consumer_spec(model, node)
            if spec is not None:
                specs[name] = spec
            if spec is None or not direct:
                uncertain.append(name)
    else:
        for name, (path, direct) in _forward_consumers(model, required).items():
            spec = _first_layer_spec(model, path)
            if spec is not None:
                specs[name] = spec
                if not direct:
                    uncertain.append(name)
    if not specs:  # the first layer in definition order reads the first argument
        for path, mod in model.named_modules():
            if mod is model or not is_leaf_module(mod):
                continue
            spec = spec_for_layer(mod, path)
            if spec is not None:
                if not required:
                    return InputSpec({None: spec})
                specs[required[0]] = spec
                if fxg is None and len(required) > 1:
                    uncertain.append(required[0])
                break
    uncertain += [n for n in required if n not in specs and n not in uncertain]
    resized = _settle_size(model, required, specs, uncertain)
    if resized is not None:
        specs = resized
    elif uncertain:
        settled = _settle_by_trial(model, required, specs, uncertain)
        if settled is not None:
            specs = settled
    if not specs or any(n not in specs for n in required):
        return None
    if len(specs) == 1:
        return InputSpec({None: next(iter(specs.values()))})
    return InputSpec(dict(specs))


def _string_keys(node: torch.fx.Node) -> dict[str, torch.fx.Node]:
    """``{key: node}`` when every use of ``node`` is ``node["key"]`` (a mapping argument)."""
    out: dict[str, torch.fx.Node] = {}
    for user in node.users:
        if not (user.op == "call_function" and user.target is operator.getitem
                and len(user.args) == 2 and isinstance(user.args[1], str)):
            return {}
        out.setdefault(user.args[1], user)
    return out


#: Ops through which an argument reaches its first layer with its shape unchanged.
_SAME_SHAPE = {"float", "to", "type", "contiguous", "half", "double", "bfloat16", "clone",
               "detach", "dropout", "add", "sub", "mul", "truediv", "div", "neg", "iadd",
               "imul", "requires_grad_", "alpha_dropout"}


def _first_layer_spec(model: nn.Module, path: str) -> Optional[TensorSpec]:
    """The spec the first layer (in definition order) of submodule ``path`` expects."""
    try:
        sub = model.get_submodule(path)
    except AttributeError:
        return None
    for name, mod in sub.named_modules():
        if is_leaf_module(mod) or mod is sub:
            spec = spec_for_layer(mod, f"{path}.{name}" if name else path)
            if spec is not None:
                return spec
    return None


def _forward_consumers(model: nn.Module, required: list[str]) -> dict[str, tuple[str, bool]]:
    """When fx cannot trace ``forward`` (shape-dependent control flow...): from its source, the
    first ``self.<layer>(...)`` call that reads each argument, in statement order, and whether
    it reads the argument itself (``self.stem(x)``) or a value computed from it."""
    import ast
    import textwrap

    try:
        src = textwrap.dedent(inspect.getsource(type(model).forward))
        fn = ast.parse(src).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return {}
    taint: dict[str, set[str]] = {n: {n} for n in required}  # argument -> names holding it
    direct_names: dict[str, set[str]] = {n: {n} for n in required}
    found: dict[str, tuple[str, bool]] = {}

    def module_path(func: ast.expr) -> Optional[str]:
        parts = []
        while True:
            if isinstance(func, ast.Subscript) and isinstance(func.slice, ast.Constant) \
                    and isinstance(func.slice.value, int):
                parts.append(str(func.slice.value))
                func = func.value
            elif isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            else:
                break
        if isinstance(func, ast.Name) and func.id == "self" and parts:
            return ".".join(reversed(parts))
        return None

    def names_in(node: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}

    def visit(stmt: ast.stmt) -> None:
        calls = [c for c in ast.walk(stmt) if isinstance(c, ast.Call)]
        for call in reversed(calls):  # inner calls are evaluated first
            path = module_path(call.func)
            if path is None:
                continue
            for arg in list(call.args) + [k.value for k in call.keywords]:
                for name in required:
                    if name in found or not (names_in(arg) & taint[name]):
                        continue
                    direct = isinstance(arg, ast.Name) and arg.id in direct_names[name]
                    found[name] = (path, direct)
        targets: list[ast.expr] = []
        value: Optional[ast.expr] = None
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        if value is not None:
            used = names_in(value)
            for name in required:
                if used & taint[name]:
                    new = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
                    taint[name] |= new
                    if isinstance(value, ast.Name) and value.id in direct_names[name]:
                        direct_names[name] |= new
        for child in ast.iter_child_nodes(stmt):
            if isinstance(child, ast.stmt):
                visit(child)

    for stmt in getattr(fn, "body", []):
        visit(stmt)
    return found


def _mask_candidates(name: str, others: list[TensorSpec]) -> list[TensorSpec]:
    """Masks over another input (all True): its own shape for a float input, and ``[B, T]``,
    ``[B, 1, T]``, ``[B, T, T]`` for a ``[B, T]`` sequence of ids or ``[B, T, D]`` vectors."""
    why = f"guessed for {name!r}"
    out: list[TensorSpec] = []
    for other in others:
        if len(other.shape) < 2:
            continue
        b, t = other.shape[0], other.shape[1]
        shapes = [other.shape] if other.dtype.is_floating_point else []  # x.masked_fill(mask)
        if not other.dtype.is_floating_point or len(other.shape) == 3:
            shapes += [(b, t), (b, 1, t), (b, t, t)]
        for shape in shapes:
            if all(c.shape != shape for c in out):
                out.append(TensorSpec(shape, torch.bool, origin=why))
    return out


def _length_candidates(name: str, others: list[TensorSpec]) -> list[TensorSpec]:
    """Sequence lengths for another input (``pack_padded_sequence(x, lengths)``): one per
    sample, every sequence full (so also sorted), for either layout of a ``[B, T]`` or
    ``[T, B]`` input."""
    why = f"guessed for {name!r}"
    out: list[TensorSpec] = []
    for other in others:
        if len(other.shape) < 2:
            continue
        a, b = other.shape[0], other.shape[1]
        for n, length in ((a, b), (b, a)):
            if all(c.shape != (n,) or c.low != length for c in out):
                out.append(TensorSpec((n,), torch.int64, low=length, high=length + 1,
                                      origin=why))
    return out


def _candidates(name: str, spec: Optional[TensorSpec], batch: int,
                widths: list[int], others: list[TensorSpec]) -> list[TensorSpec]:
    """What an argument read only through other computation may be: what its first layer
    expects; that less an embedding's width (``cat([noise, label_emb(y)])`` feeding a Linear);
    a few coordinates its width is a multiple of (a positional encoding's input);
    a per-sample scalar (a diffusion timestep, a noise level), as floats and as integers; a
    graph's edge list."""
    why = f"guessed for {name!r}"
    out = [spec] if spec is not None else []
    if spec is not None and len(spec.shape) == 2 and spec.dtype.is_floating_point:
        out += [TensorSpec((spec.shape[0], spec.shape[1] - w), origin=why)
                for w in widths if 0 < w < spec.shape[1]]
    if spec is not None and len(spec.shape) == 2 and spec.dtype.is_floating_point:
        # coordinates expanded by a positional / Fourier encoding (NeRF: 3 -> 3 * (1 + 2L))
        out += [TensorSpec((spec.shape[0], d), origin=why) for d in (3, 2, 4, 6)
                if d < spec.shape[1] and spec.shape[1] % d == 0]
    if spec is not None and len(spec.shape) >= 3 and spec.dtype.is_floating_point \
            and spec.shape[1] % 2 == 0:
        # two images concatenated along channels (pix2pix's discriminator reads cat([x, y]))
        out.append(TensorSpec((spec.shape[0], spec.shape[1] // 2) + spec.shape[2:],
                              origin=why))
    out += [TensorSpec((batch,), origin=why),
            TensorSpec((batch,), torch.int64, high=10, origin=why),
            TensorSpec((batch, 1), origin=why),
            # a graph's edge list [2, E] (node ids index the first input's rows)
            TensorSpec((2, 4 * batch), torch.int64, high=batch, origin=why)]
    masks = _mask_candidates(name, others)
    out = masks + out if "mask" in name.lower() else out + masks
    lengths = _length_candidates(name, others)
    out = lengths + out if re.search(r"len", name, re.IGNORECASE) else out + lengths
    # None: an optional state or mask passed as a required argument (an RNN's hidden state,
    # which None starts at zeros)
    return out + [Value(None, origin=why)]


def _settle_by_trial(model: nn.Module, required: list[str], specs: dict[str, Arg],
                     uncertain: list[str]) -> Optional[dict[str, Arg]]:
    """The specs with each uncertain argument's replaced by the first candidate the model's
    ``forward`` runs with (a real forward without gradients, buffers and random state put
    back); integer ids may also be one per sample (a class label). None when none runs."""
    import itertools

    batch = next((s.shape[0] for s in specs.values() if isinstance(s, TensorSpec) and s.shape),
                 DEFAULT_BATCH)
    widths = sorted({int(m.embedding_dim) for m in model.modules()
                     if isinstance(m, nn.Embedding)})[:4]
    if not any(isinstance(specs.get(n), (TensorSpec, DictArg)) for n in required):
        return None  # nothing to go by: shapes that merely broadcast would "run"
    options: list[list[Arg]] = []
    for name in required:
        spec = specs.get(name)
        if name in uncertain:
            others = [s for n, s in specs.items() if n != name and isinstance(s, TensorSpec)]
            options.append(_candidates(name, spec if isinstance(spec, TensorSpec) else None,
                                       batch, widths, others))
        elif isinstance(spec, TensorSpec) and spec.high is not None and len(spec.shape) == 2:
            options.append([spec, TensorSpec((spec.shape[0],), spec.dtype, high=spec.high,
                                             low=spec.low, origin=f"guessed for {name!r}")])
        elif spec is not None:
            options.append([spec])
        else:
            return None
    for i, combo in enumerate(itertools.product(*options)):
        if i >= 64:
            break
        trial = dict(zip(required, combo))
        if _forward_runs(model, InputSpec(dict(trial))):
            return trial
    for name in uncertain:  # a spec read off a layer the argument only reaches indirectly,
        specs.pop(name, None)  # which forward does not run with, is no inference
    return None


#: Image sizes tried, in order, when forward does not run at the default one (a position
#: embedding made for 224 x 224, a DiT's latent 16 x 16...).
_SIDES = (224, 64, 16, 28, 96, 128, 256, 384, 8, 48, 512)


def _settle_size(model: nn.Module, required: list[str], specs: dict[str, Arg],
                 uncertain: list[str]) -> Optional[dict[str, Arg]]:
    """For arguments whose spatial size was read off nothing (a convolution's input gets the
    default 32 x 32): the specs at the first size forward runs with (each uncertain argument
    settled by trial at that size). None when no argument has a default size, or when forward
    runs at none of the sizes (the caller goes on as before)."""
    def inferred(sp: Arg) -> bool:
        return isinstance(sp, TensorSpec) and sp.high is None and sp.origin.startswith("inferred")

    sized = [n for n, sp in specs.items() if inferred(sp) and len(sp.shape) >= 3
             and tuple(sp.shape[2:]) == DEFAULT_SPATIAL.get(len(sp.shape) - 2)]
    # a linear layer's input [B, features] may also be a sequence or a grid of feature
    # vectors ([B, H, W, features]: a neural operator's channels-last field)
    flat = [n for n, sp in specs.items() if inferred(sp) and len(sp.shape) == 2]
    if not (sized or flat) or not all(n in specs or n in uncertain for n in required):
        return None

    deadline = time.monotonic() + _TRIAL_SECONDS

    def attempt(trial: dict[str, Arg]) -> Optional[dict[str, Arg]]:
        if time.monotonic() > deadline:  # a model no size fits: stop guessing
            return None
        # by trial: uncertain arguments' candidates, and token ids that may be one per sample
        return _settle_by_trial(model, required, dict(trial), list(uncertain))

    def variants():  # each: the changed specs, the default size first
        yield {}
        for side in _SIDES if sized else ():
            yield {n: dataclasses.replace(
                specs[n], shape=tuple(specs[n].shape[:2]) + (side,) * (len(specs[n].shape) - 2),
                origin=f"guessed for {n!r}: {side} wide, {specs[n].origin}") for n in sized}
        for extra in _POSITIONS if flat else ():
            yield {n: dataclasses.replace(
                specs[n], shape=(specs[n].shape[0],) + extra + (specs[n].shape[1],),
                origin=f"guessed for {n!r}: {specs[n].origin}") for n in flat}

    for changed in variants():
        done = attempt({**specs, **changed})
        if done is not None:
            return done
    return None


#: How long the sizes may be tried for, in seconds (each try is a forward pass).
_TRIAL_SECONDS = 10.0

#: Positions tried between the batch and the features of a linear layer's input.
_POSITIONS = ((DEFAULT_SEQ_LEN,), (32, 32), (16, 16), (64, 64), (8, 8, 8))


def _forward_runs(model: nn.Module, spec: InputSpec) -> bool:
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            args, kwargs = call_arguments(model, spec.bind(model))
            model(*args, **kwargs)
        return True
    except Exception:  # any failure means: not this input
        return False
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                if k in buffers and v.shape == buffers[k].shape:
                    v.copy_(buffers[k])


class _LayerTracer(torch.fx.Tracer):
    """torch.fx with archlint's leaves: torch.nn's own layers; custom blocks traced through."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf_module(m)


def _symbolic_graph(model: nn.Module) -> Optional[torch.fx.Graph]:
    try:
        return _LayerTracer().trace(model)
    except Exception:  # fx raises many kinds of errors; the tracer reports them
        return None


#: Functional weight layers: canonical call name -> the op :func:`spec_for_weight` knows.
_FUNCTIONAL_LAYERS = {"linear": "linear", "conv1d": "conv", "conv2d": "conv", "conv3d": "conv",
                      "embedding": "embedding", "matmul": "linear"}


def _first_consumer_spec(model: nn.Module, placeholder: torch.fx.Node
                         ) -> tuple[Optional[TensorSpec], bool]:
    """Breadth-first from an argument: the spec the first recognised layer reading it expects,
    and whether the argument reaches that layer with its shape unchanged."""
    queue = deque([(placeholder, True)])
    seen = {placeholder}
    while queue:
        node, direct = queue.popleft()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            passes = False
            if user.op == "call_module":
                mod = model.get_submodule(str(user.target))
                if isinstance(mod, (nn.RNNBase, nn.RNNCellBase)) and user.args \
                        and user.args[0] is not node:
                    return None, False  # the recurrent layer's state, not its input
                spec = spec_for_layer(mod, str(user.target))
                if spec is not None:
                    return spec, direct
                passes = isinstance(mod, (nn.Dropout, nn.Identity))
            elif user.op == "call_function" or user.op == "call_method":
                fname = canonical_name(user.target)
                weights = [a for a in user.all_input_nodes if a.op == "get_attr"]
                if fname in _FUNCTIONAL_LAYERS and fname != "matmul":
                    weights = _computed_from(user, node) or weights  # the weight argument
                if weights and fname in _FUNCTIONAL_LAYERS:
                    w = _tensor_attribute(model, str(weights[0].target))
                    if fname == "matmul" and w is not None and w.dim() == 2:
                        w = w.t()  # x @ W: W is (in, out)
                    if w is not None:
                        spec = spec_for_weight(w, _FUNCTIONAL_LAYERS[fname],
                                               str(weights[0].target))
                        if spec is not None:
                            return spec, direct
                passes = str(fname).split(".")[-1] in _SAME_SHAPE
            queue.append((user, direct and passes))
    return None, False


def _computed_from(call: torch.fx.Node, data: torch.fx.Node) -> list[torch.fx.Node]:
    """The parameter a functional layer's weight argument is (or is computed from:
    ``F.conv2d(x, self.weight - self.weight.mean(...))``), when the input is not."""
    weight = call.args[1] if len(call.args) > 1 else call.kwargs.get("weight")
    if not isinstance(weight, torch.fx.Node) or weight is data:
        return []
    queue, seen = deque([weight]), {weight}
    while queue:
        node = queue.popleft()
        if node.op == "get_attr":
            return [node]
        if node.op == "placeholder":
            return []
        for a in node.all_input_nodes:
            if a not in seen:
                seen.add(a)
                queue.append(a)
    return []


def _tensor_attribute(model: nn.Module, qualified_name: str) -> Optional[torch.Tensor]:
    try:
        obj = operator.attrgetter(qualified_name)(model)
    except AttributeError:
        return None
    return obj if hasattr(obj, "dim") else None


def spec_for_layer(module: nn.Module, where: str) -> Optional[TensorSpec]:
    """The example input a first layer expects, with archlint's default sizes."""
    B, T = DEFAULT_BATCH, DEFAULT_SEQ_LEN
    origin = f"inferred from {where} ({type(module).__name__})"
    if getattr(module, "_archlint_opaque", False):  # a TorchScript module: its first layer
        for name, inner in module.__dict__["target"].named_modules():
            kind = getattr(inner, "original_name", "")
            if kind in ("Linear", "Embedding") or kind.startswith("Conv"):
                n_in = getattr(inner, "in_features", None) or getattr(inner, "in_channels", None)
                origin = f"inferred from {where}.{name} (scripted {kind})"
                if kind == "Embedding":
                    return TensorSpec((B, T), torch.int64, high=int(inner.num_embeddings),
                                      origin=origin)
                if kind == "Linear" and n_in:
                    return TensorSpec((B, int(n_in)), origin=origin)
                if n_in:
                    nd = len(inner.kernel_size)
                    return TensorSpec((B, int(n_in)) + DEFAULT_SPATIAL.get(nd, (32,) * nd),
                                      origin=origin)
        return None
    if isinstance(module, nn.Embedding) or isinstance(module, nn.EmbeddingBag):
        return TensorSpec((B, T), torch.int64, high=module.num_embeddings, origin=origin)
    if isinstance(module, nn.Linear):
        return TensorSpec((B, module.in_features), origin=origin)
    if isinstance(module, nn.Bilinear):
        return TensorSpec((B, module.in1_features), origin=origin)
    if isinstance(module, nn.modules.conv._ConvNd):
        nd = len(module.kernel_size)
        return TensorSpec((B, module.in_channels) + DEFAULT_SPATIAL.get(nd, (32,) * nd),
                          origin=origin)
    if isinstance(module, nn.RNNBase):
        shape = (B, T, module.input_size) if module.batch_first else (T, B, module.input_size)
        return TensorSpec(shape, origin=origin)
    if isinstance(module, nn.RNNCellBase):
        return TensorSpec((B, module.input_size), origin=origin)
    if isinstance(module, nn.MultiheadAttention):
        e = module.embed_dim
        return TensorSpec((B, T, e) if module.batch_first else (T, B, e), origin=origin)
    if isinstance(module, nn.LayerNorm):
        return TensorSpec((B, T) + tuple(module.normalized_shape), origin=origin)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        extra = {nn.BatchNorm1d: (), nn.BatchNorm2d: (32, 32), nn.BatchNorm3d: (16, 16, 16)}
        return TensorSpec((B, module.num_features) + extra.get(type(module), (32, 32)),
                          origin=origin)
    if isinstance(module, nn.GroupNorm):
        return TensorSpec((B, module.num_channels, 32, 32), origin=origin)
    return None


def spec_for_weight(weight: torch.Tensor, op: str, where: str) -> Optional[TensorSpec]:
    """Inference for functional first layers (F.linear / F.conv / F.embedding on a parameter)."""
    origin = f"inferred from {where} (functional {op})"
    if op == "linear" and weight.dim() == 2:
        return TensorSpec((DEFAULT_BATCH, int(weight.shape[1])), origin=origin)
    if op == "conv" and weight.dim() >= 3:
        nd = weight.dim() - 2
        return TensorSpec((DEFAULT_BATCH, int(weight.shape[1])) + DEFAULT_SPATIAL.get(nd, ()),
                          origin=origin)
    if op == "embedding" and weight.dim() == 2:
        return TensorSpec((DEFAULT_BATCH, DEFAULT_SEQ_LEN), torch.int64,
                          high=int(weight.shape[0]), origin=origin)
    return None
