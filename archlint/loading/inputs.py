"""Example inputs: parse specs (config / CLI), infer them from the first layer, build tensors.

The input of a target is settled here, before tracing starts: the one given (config, command
line, Python API), else :func:`infer_input`; the tracer receives it, or None when there is none.
"""

from __future__ import annotations

import inspect
import operator
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.fx
from torch import nn

from ..ops import canonical_name, is_leaf_module
from ..ops.opaque import see_through

DEFAULT_BATCH = 8
DEFAULT_SEQ_LEN = 32
DEFAULT_SPATIAL = {1: (128,), 2: (32, 32), 3: (16, 16, 16)}

_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64,
    "double": torch.float64, "float16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "long": torch.int64, "int32": torch.int32,
    "int": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}


class InputError(ValueError):
    """A bad input spec; the message names the offending value."""


@dataclass
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    high: Optional[int] = None  # integer inputs: ids drawn from [low, high)
    low: int = 0
    #: Where the spec came from ("config", "command line", "inferred from body.0 (Linear)").
    origin: str = "config"

    def describe(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        extra = f", ids in [{self.low}, {self.high})" if self.high is not None else ""
        return f"{list(self.shape)} {dt}{extra}"

    def make(self, device: str = "cpu", seed: int = 0) -> torch.Tensor:
        if device == "meta":
            return torch.empty(self.shape, dtype=self.dtype, device="meta")
        g = torch.Generator().manual_seed(seed)
        if self.dtype.is_floating_point or self.dtype.is_complex:
            return torch.randn(self.shape, generator=g).to(self.dtype)
        if self.dtype == torch.bool:
            return torch.ones(self.shape, dtype=torch.bool)
        high = self.high if self.high is not None else 2
        return torch.randint(self.low, high, self.shape, generator=g, dtype=self.dtype)


@dataclass
class InputSpec:
    """Example inputs for one target, by forward() argument name (None = the first argument)."""

    tensors: dict[Optional[str], TensorSpec] = field(default_factory=dict)

    def describe(self) -> str:
        if list(self.tensors) == [None]:
            return self.tensors[None].describe()
        return ", ".join(f"{k}={v.describe()}" for k, v in self.tensors.items())

    @property
    def origin(self) -> str:
        return next(iter(self.tensors.values())).origin if self.tensors else ""

    def bind(self, model: nn.Module, device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
        """Tensors by argument name of ``model.forward``."""
        out: dict[str, torch.Tensor] = {}
        first = first_argument(model)
        for i, (name, spec) in enumerate(self.tensors.items()):
            key = name if name is not None else first
            if key is None:
                raise InputError(f"{type(model).__name__}.forward() takes no tensor argument")
            out[key] = spec.make(device=device, seed=seed + i)
        return out


def forward_parameters(model: nn.Module) -> list[inspect.Parameter]:
    if getattr(model, "_archlint_opaque", False):  # a wrapped TorchScript module
        model = model.__dict__["target"]
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def first_argument(model: nn.Module) -> Optional[str]:
    params = forward_parameters(model)
    return params[0].name if params else None


def parse_dtype(text: Any, where: str) -> torch.dtype:
    if isinstance(text, torch.dtype):
        return text
    key = str(text).replace("torch.", "").strip().lower()
    if key not in _DTYPES:
        raise InputError(f"{where}: unknown dtype {text!r} (use one of: "
                         f"{', '.join(sorted(set(_DTYPES)))})")
    return _DTYPES[key]


def parse_shape(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in re.split(r"[,x]", value.strip())]
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()  # a trailing comma
        try:  # an empty field ("8,,32", "2,x,4") is an error, not a dimension to drop
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(f"{where}: shape {value!r} is not a list of integers") from None
    elif isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value):
        dims = tuple(value)
    else:
        raise InputError(f"{where}: shape must be a list of integers, got {value!r}")
    if not dims or any(d <= 0 for d in dims):
        raise InputError(f"{where}: shape must have positive dimensions, got {list(dims)}")
    return dims


_TENSOR_KEYS = {"shape", "dtype", "high", "low"}


def parse_tensor_spec(raw: Any, where: str, origin: str = "config") -> TensorSpec:
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: expected a mapping with 'shape' (and 'dtype', 'high')")
    unknown = set(raw) - _TENSOR_KEYS
    if unknown:
        raise InputError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                         f"(allowed: {', '.join(sorted(_TENSOR_KEYS))})")
    if "shape" not in raw:
        raise InputError(f"{where}: missing 'shape'")
    spec = TensorSpec(shape=parse_shape(raw["shape"], f"{where}.shape"),
                      dtype=parse_dtype(raw.get("dtype", "float32"), f"{where}.dtype"),
                      origin=origin)
    for key in ("high", "low"):
        if key in raw:
            v = raw[key]
            if not isinstance(v, int) or isinstance(v, bool):
                raise InputError(f"{where}.{key}: expected an integer, got {v!r}")
            setattr(spec, key, v)
    if spec.high is not None and spec.high <= spec.low:
        raise InputError(f"{where}: high ({spec.high}) must be greater than low ({spec.low})")
    if not (spec.dtype.is_floating_point or spec.dtype == torch.bool) and spec.high is None:
        spec.high = 2
    return spec


def parse_input(raw: Any, where: str, origin: str = "config") -> InputSpec:
    """Either one tensor spec or a mapping from argument name to tensor spec."""
    if isinstance(raw, Mapping) and "shape" in raw:
        return InputSpec({None: parse_tensor_spec(raw, where, origin)})
    if isinstance(raw, Mapping) and raw:
        return InputSpec({str(k): parse_tensor_spec(v, f"{where}.{k}", origin)
                          for k, v in raw.items()})
    raise InputError(f"{where}: expected {{shape: [...], dtype: ...}} or a mapping from argument "
                     "name to such specs")


# ------------------------------------------------------------------------------------------
# Inference from the first layer
# ------------------------------------------------------------------------------------------

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
    required = [p.name for p in forward_parameters(model) if p.default is p.empty]
    fxg = _symbolic_graph(model)
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
    for path, mod in model.named_modules():
        if mod is model or not is_leaf_module(mod):
            continue
        spec = spec_for_layer(mod, path)
        if spec is not None:
            return InputSpec({None: spec})
    return None


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


def _first_consumer_spec(model: nn.Module, placeholder: torch.fx.Node) -> Optional[TensorSpec]:
    """Breadth-first from an argument: the spec the first recognised layer reading it expects."""
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
                if weights and fname in _FUNCTIONAL_LAYERS:
                    w = _tensor_attribute(model, str(weights[0].target))
                    if fname == "matmul" and w is not None and w.dim() == 2:
                        w = w.t()  # x @ W: W is (in, out)
                    if w is not None:
                        spec = spec_for_weight(w, _FUNCTIONAL_LAYERS[fname],
                                               str(weights[0].target))
                        if spec is not None:
                            return spec
            queue.append(user)
    return None


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
