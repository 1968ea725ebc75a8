"""Shapes without tensors: the values shape rules compute (:class:`TensorShape`, plain Python
numbers and sizes) and the helpers the ops' shape rules share.

Running ops on the meta device is general but slow on CPU-only torch (the first meta op imports
torch._dynamo, ~1.5 s, and linear/RNN layers go through Python decompositions), so every op of
the table (:mod:`archlint.ops`) may carry a shape rule; an op without one is run alone on meta
tensors by the tracer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


@dataclass(frozen=True)
class TensorShape:
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    def dim(self) -> int:
        return len(self.shape)

    def with_shape(self, shape: Sequence[int]) -> "TensorShape":
        return TensorShape(tuple(int(s) for s in shape), self.dtype)


class NoRule(Exception):
    """No shape rule applies; the caller falls back to running the op on meta tensors."""


class ShapeMismatch(Exception):
    """The values reaching a layer cannot be what it accepts (PyTorch itself would refuse
    them): the example input does not fit the model. The message says what was expected and
    what was given."""


def describe(x: Any) -> str:
    if isinstance(x, TensorShape):
        return f"{list(x.shape)} {str(x.dtype).replace('torch.', '')}"
    return repr(x)


def expect_float(x: "TensorShape", what: str) -> None:
    if not (x.dtype.is_floating_point or x.dtype.is_complex):
        raise ShapeMismatch(f"{what} takes floating-point values, given {describe(x)}")


def norm_dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def broadcast(*shapes: Sequence[int]) -> tuple[int, ...]:
    n = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(n):
        dims = {s[len(s) - n + i] for s in shapes if len(s) - n + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise NoRule("shapes do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def promote(values: Sequence[Any]) -> torch.dtype:
    tensors = [v.dtype for v in values if isinstance(v, TensorShape)]
    if any(d.is_floating_point for d in tensors):
        return next(d for d in tensors if d.is_floating_point)
    if any(isinstance(v, float) for v in values):
        return torch.float32
    return tensors[0] if tensors else torch.float32


def shape_arg(args: Sequence[Any]) -> list[int]:
    """view(2, 3) / view((2, 3)) / view(torch.Size) -> [2, 3]."""
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return [int(a) for a in args[0]]
    return [int(a) for a in args]


def reshape_to(x: TensorShape, dims: list[int]) -> TensorShape:
    total = math.prod(x.shape)
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims = [total // known if d == -1 else d for d in dims] if known else dims
    if math.prod(dims) != total:
        raise NoRule("bad reshape")
    return x.with_shape(dims)


def reduce_shape(x: TensorShape, dim: Any, keepdim: bool) -> TensorShape:
    if dim is None:
        return x.with_shape(())
    dims = {norm_dim(d, x.dim()) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    shape = [1 if i in dims else s for i, s in enumerate(x.shape) if keepdim or i not in dims]
    return x.with_shape(shape)


def conv_out(size: int, k: int, s: int, p: int, d: int, ceil: bool = False) -> int:
    num = size + 2 * p - d * (k - 1) - 1
    return (math.ceil(num / s) if ceil else num // s) + 1


def ntuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (tuple, list)):
        return tuple(int(a) for a in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return (int(v),) * n


def conv_shape(x: TensorShape, out_ch: int, k, stride, padding, dilation, nd: int,
               transposed: bool = False, output_padding=0) -> TensorShape:
    if x.dim() < nd + 1:
        raise ShapeMismatch(f"expects {nd + 1} or {nd + 2} dimensions (channels and {nd} "
                            f"spatial), given {describe(x)}")
    spatial = x.shape[-nd:]
    k, stride, dilation = ntuple(k, nd), ntuple(stride, nd), ntuple(dilation, nd)
    if isinstance(padding, str):
        if padding == "same":
            out = list(spatial)
        else:  # "valid"
            out = [conv_out(s, kk, st, 0, dd) for s, kk, st, dd in zip(spatial, k, stride, dilation)]
    else:
        padding = ntuple(padding, nd)
        if transposed:
            op = ntuple(output_padding, nd)
            out = [(s - 1) * st - 2 * p + dd * (kk - 1) + o + 1
                   for s, kk, st, p, dd, o in zip(spatial, k, stride, padding, dilation, op)]
        else:
            out = [conv_out(s, kk, st, p, dd)
                   for s, kk, st, p, dd in zip(spatial, k, stride, padding, dilation)]
    if any(o < 1 for o in out):
        raise ShapeMismatch(f"a {'x'.join(map(str, spatial))} input is smaller than its kernel "
                            f"{'x'.join(map(str, k))} (output {'x'.join(map(str, out))})")
    return x.with_shape(tuple(x.shape[:-nd - 1]) + (out_ch,) + tuple(out))


def pool_shape(x: TensorShape, nd: int, k, stride, padding, dilation=1,
               ceil: bool = False) -> TensorShape:
    k = ntuple(k, nd)
    stride = ntuple(stride if stride not in (None, ()) else k, nd)
    padding, dilation = ntuple(padding, nd), ntuple(dilation, nd)
    out = [conv_out(s, kk, st, p, dd, ceil)
           for s, kk, st, p, dd in zip(x.shape[-nd:], k, stride, padding, dilation)]
    if any(o < 1 for o in out):
        raise ShapeMismatch(f"a {'x'.join(map(str, x.shape[-nd:]))} input is smaller than the "
                            f"pooling window {'x'.join(map(str, k))}")
    return x.with_shape(tuple(x.shape[:-nd]) + tuple(out))


def adaptive_shape(x: TensorShape, nd: int, output_size: Any) -> TensorShape:
    size = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * nd
    out = [x.shape[-nd + i] if s is None else int(s) for i, s in enumerate(size)]
    return x.with_shape(tuple(x.shape[:-nd]) + tuple(out))


def tensor_input(args: Sequence[Any], kwargs: dict) -> TensorShape:
    """The first argument, which must be a tensor shape (else there is no rule)."""
    x = args[0] if args else None
    if not isinstance(x, TensorShape):
        raise NoRule("no tensor input")
    return x


def same_shape(name: str, args: Sequence[Any], kwargs: dict) -> TensorShape:
    """Elementwise ops: the input's shape and dtype."""
    return tensor_input(args, kwargs)


def bool_same_shape(name: str, args: Sequence[Any], kwargs: dict) -> TensorShape:
    """Elementwise predicates (isnan, logical_not...): the input's shape, dtype bool."""
    return TensorShape(tensor_input(args, kwargs).shape, torch.bool)


def same_module_shape(mod: Any, args: Sequence[Any], kwargs: dict) -> TensorShape:
    """Layers whose output has their input's shape (activations, norms, dropout...)."""
    x = args[0] if args else next(iter(kwargs.values()), None)
    if not isinstance(x, TensorShape):
        raise NoRule("no tensor input")
    return x


ShapeRule = Callable[[str, Sequence[Any], dict], Any]
