"""Shape inference without running the model: per-op shape rules over an fx graph.

Running the graph on the meta device is general but slow on CPU-only torch (the first meta op
imports torch._dynamo, ~1.5 s, and linear/RNN layers go through Python decompositions). So shapes
are computed from rules for the layers and functions models are made of; an op without a rule is
run alone on meta tensors, so the cost is paid only when needed. Values are
:class:`TensorShape` (shape and dtype, no storage) or plain Python values (sizes, ints).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..graph.classify import canonical_name


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


def _norm_dim(d: int, n: int) -> int:
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


def _promote(values: Sequence[Any]) -> torch.dtype:
    tensors = [v.dtype for v in values if isinstance(v, TensorShape)]
    if any(d.is_floating_point for d in tensors):
        return next(d for d in tensors if d.is_floating_point)
    if any(isinstance(v, float) for v in values):
        return torch.float32
    return tensors[0] if tensors else torch.float32


def _shape_arg(args: Sequence[Any]) -> list[int]:
    """view(2, 3) / view((2, 3)) / view(torch.Size) -> [2, 3]."""
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return [int(a) for a in args[0]]
    return [int(a) for a in args]


def _reshape(x: TensorShape, dims: list[int]) -> TensorShape:
    total = math.prod(x.shape)
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims = [total // known if d == -1 else d for d in dims] if known else dims
    if math.prod(dims) != total:
        raise NoRule("bad reshape")
    return x.with_shape(dims)


def _reduce(x: TensorShape, dim: Any, keepdim: bool) -> TensorShape:
    if dim is None:
        return x.with_shape(())
    dims = {_norm_dim(d, x.dim()) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    shape = [1 if i in dims else s for i, s in enumerate(x.shape) if keepdim or i not in dims]
    return x.with_shape(shape)


def _conv_out(size: int, k: int, s: int, p: int, d: int, ceil: bool = False) -> int:
    num = size + 2 * p - d * (k - 1) - 1
    return (math.ceil(num / s) if ceil else num // s) + 1


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (tuple, list)):
        return tuple(int(a) for a in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return (int(v),) * n


def conv_shape(x: TensorShape, out_ch: int, k, stride, padding, dilation, nd: int,
               transposed: bool = False, output_padding=0) -> TensorShape:
    spatial = x.shape[-nd:]
    k, stride, dilation = _tuple(k, nd), _tuple(stride, nd), _tuple(dilation, nd)
    if isinstance(padding, str):
        if padding == "same":
            out = list(spatial)
        else:  # "valid"
            out = [_conv_out(s, kk, st, 0, dd) for s, kk, st, dd in zip(spatial, k, stride, dilation)]
    else:
        padding = _tuple(padding, nd)
        if transposed:
            op = _tuple(output_padding, nd)
            out = [(s - 1) * st - 2 * p + dd * (kk - 1) + o + 1
                   for s, kk, st, p, dd, o in zip(spatial, k, stride, padding, dilation, op)]
        else:
            out = [_conv_out(s, kk, st, p, dd)
                   for s, kk, st, p, dd in zip(spatial, k, stride, padding, dilation)]
    return x.with_shape(tuple(x.shape[:-nd - 1]) + (out_ch,) + tuple(out))


def pool_shape(x: TensorShape, nd: int, k, stride, padding, dilation=1,
               ceil: bool = False) -> TensorShape:
    k = _tuple(k, nd)
    stride = _tuple(stride if stride not in (None, ()) else k, nd)
    padding, dilation = _tuple(padding, nd), _tuple(dilation, nd)
    out = [_conv_out(s, kk, st, p, dd, ceil)
           for s, kk, st, p, dd in zip(x.shape[-nd:], k, stride, padding, dilation)]
    return x.with_shape(tuple(x.shape[:-nd]) + tuple(out))


def adaptive_shape(x: TensorShape, nd: int, output_size: Any) -> TensorShape:
    size = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * nd
    out = [x.shape[-nd + i] if s is None else int(s) for i, s in enumerate(size)]
    return x.with_shape(tuple(x.shape[:-nd]) + tuple(out))


# ---------------------------------------------------------------------------- modules

def module_shape(mod: nn.Module, args: Sequence[Any], kwargs: dict) -> Any:
    x = args[0] if args else next(iter(kwargs.values()), None)
    if not isinstance(x, TensorShape):
        raise NoRule("no tensor input")
    if isinstance(mod, (nn.Linear, nn.Bilinear)):
        return x.with_shape(x.shape[:-1] + (mod.out_features,))
    if isinstance(mod, nn.modules.conv._ConvTransposeNd):
        nd = len(mod.kernel_size)
        return conv_shape(x, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                          mod.dilation, nd, transposed=True, output_padding=mod.output_padding)
    if isinstance(mod, nn.modules.conv._ConvNd):
        nd = len(mod.kernel_size)
        return conv_shape(x, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                          mod.dilation, nd)
    if isinstance(mod, nn.Embedding):
        return TensorShape(x.shape + (mod.embedding_dim,), mod.weight.dtype)
    if isinstance(mod, nn.EmbeddingBag):
        return TensorShape((x.shape[0] if x.dim() == 2 else 1, mod.embedding_dim),
                           mod.weight.dtype)
    if isinstance(mod, nn.GLU):
        d = _norm_dim(mod.dim, x.dim())
        return x.with_shape(tuple(s // 2 if i == d else s for i, s in enumerate(x.shape)))
    if isinstance(mod, nn.modules.pooling._AdaptiveAvgPoolNd) or \
            isinstance(mod, nn.modules.pooling._AdaptiveMaxPoolNd):
        nd = int(type(mod).__name__[-2])
        out = adaptive_shape(x, nd, mod.output_size)
        return (out, out.with_shape(out.shape)) if getattr(mod, "return_indices", False) else out
    if isinstance(mod, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        nd = int(type(mod).__name__[-2])
        out = pool_shape(x, nd, mod.kernel_size, mod.stride, mod.padding,
                         getattr(mod, "dilation", 1), mod.ceil_mode)
        return (out, out) if getattr(mod, "return_indices", False) else out
    if isinstance(mod, nn.Flatten):
        n = x.dim()
        s, e = _norm_dim(mod.start_dim, n), _norm_dim(mod.end_dim, n)
        return x.with_shape(x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])
    if isinstance(mod, nn.RNNBase):
        return _rnn_shape(mod, x)
    if isinstance(mod, nn.RNNCellBase):
        h = x.with_shape(x.shape[:-1] + (mod.hidden_size,))
        return (h, h) if isinstance(mod, nn.LSTMCell) else h
    if isinstance(mod, nn.MultiheadAttention):
        if len(args) < 1:
            raise NoRule("MHA without positional query")
        q = args[0]
        v = args[2] if len(args) > 2 and isinstance(args[2], TensorShape) else \
            kwargs.get("value", q)
        need = kwargs.get("need_weights", args[4] if len(args) > 4 else True)
        out = q.with_shape(q.shape[:-1] + (mod.embed_dim,))
        if not need:
            return (out, None)
        bdim = 0 if mod.batch_first else 1
        if q.dim() == 3:
            L, S = q.shape[1 - bdim], v.shape[1 - bdim] if isinstance(v, TensorShape) else q.shape[1 - bdim]
            w = q.with_shape((q.shape[bdim], L, S))
        else:
            w = q.with_shape((q.shape[0], v.shape[0] if isinstance(v, TensorShape) else q.shape[0]))
        return (out, w)
    same = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
            nn.modules.instancenorm._InstanceNorm, nn.modules.dropout._DropoutNd, nn.Identity,
            nn.LocalResponseNorm, nn.ChannelShuffle)
    if isinstance(mod, same):
        return x
    if hasattr(nn, "RMSNorm") and isinstance(mod, nn.RMSNorm):
        return x
    from ..graph.classify import classify_known_module
    known = classify_known_module(mod)
    if known is not None and known[0] == "activation" and known[1] not in ("glu",):
        return x
    raise NoRule(type(mod).__name__)


def _rnn_shape(mod: nn.RNNBase, x: TensorShape) -> Any:
    d = 2 if mod.bidirectional else 1
    hidden = mod.proj_size if getattr(mod, "proj_size", 0) else mod.hidden_size
    out = x.with_shape(x.shape[:-1] + (d * hidden,))
    if x.dim() == 3:
        batch = x.shape[0] if mod.batch_first else x.shape[1]
        h = x.with_shape((d * mod.num_layers, batch, hidden))
        c = x.with_shape((d * mod.num_layers, batch, mod.hidden_size))
    else:
        h = x.with_shape((d * mod.num_layers, hidden))
        c = x.with_shape((d * mod.num_layers, mod.hidden_size))
    return (out, (h, c)) if isinstance(mod, nn.LSTM) else (out, h)


# ---------------------------------------------------------------------------- functions

_SAME_SHAPE = {
    "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu",
    "mish", "sigmoid", "tanh", "hardtanh", "hardsigmoid", "hardswish", "softplus", "softsign",
    "tanhshrink", "softshrink", "hardshrink", "logsigmoid", "threshold", "softmax", "softmin",
    "log_softmax", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "clone", "contiguous", "detach", "neg", "exp", "log", "sqrt",
    "rsqrt", "abs", "clamp", "clamp_min", "clamp_max", "erf", "sin", "cos", "square", "log1p",
    "expm1", "reciprocal", "tril", "triu", "masked_fill", "layer_norm", "batch_norm",
    "group_norm", "instance_norm", "rms_norm", "normalize", "cumsum", "flip", "roll",
    "nan_to_num", "sign", "floor", "ceil", "round", "trunc", "zeros_like", "ones_like",
    "empty_like", "rand_like", "randn_like", "full_like", "requires_grad", "fill", "zero",
    "uniform", "normal", "identity", "logical_not", "bitwise_not", "isnan", "isinf",
    "softmax2d", "sort_values", "channel_shuffle",
}
_BINARY = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "floordiv", "mod",
           "remainder", "atan2", "fmod", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
           "logical_or", "bitwise_and", "bitwise_or", "and", "or", "lerp", "addcmul", "addcdiv",
           "where", "rsub", "hypot", "xor"}
_BOOL_OUT = {"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not",
             "isnan", "isinf", "and", "or", "xor"}
_DTYPE_METHODS = {"float": torch.float32, "double": torch.float64, "half": torch.float16,
                  "bfloat16": torch.bfloat16, "long": torch.int64, "int": torch.int32,
                  "bool": torch.bool}


def function_shape(target: Any, args: Sequence[Any], kwargs: dict) -> Any:
    name = canonical_name(target)
    x = args[0] if args else None
    if name in _DTYPE_METHODS and isinstance(x, TensorShape):
        return TensorShape(x.shape, _DTYPE_METHODS[name])
    if name in ("to", "type") and isinstance(x, TensorShape):
        dtype = next((a for a in list(args[1:]) + list(kwargs.values())
                      if isinstance(a, torch.dtype)), None)
        other = next((a for a in args[1:] if isinstance(a, TensorShape)), None)
        return TensorShape(x.shape, dtype or (other.dtype if other else x.dtype))
    if name == "type_as" and isinstance(x, TensorShape):
        return TensorShape(x.shape, args[1].dtype)
    if name in _SAME_SHAPE and isinstance(x, TensorShape):
        if name == "masked_fill" or name in _BOOL_OUT:
            return TensorShape(x.shape, torch.bool if name in _BOOL_OUT else x.dtype)
        return x
    if name in _BINARY:
        tensors = [a for a in args if isinstance(a, TensorShape)]
        if not tensors:
            raise NoRule("no tensors")
        shape = broadcast(*[t.shape for t in tensors])
        dtype = torch.bool if name in _BOOL_OUT else _promote(list(args))
        if name == "where" and len(args) == 3:
            dtype = _promote([a for a in args[1:]])
        return TensorShape(shape, dtype)
    if name in ("cat", "concat", "concatenate"):
        return _cat(args, kwargs)
    if name == "stack":
        seq = list(args[0])
        d = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), seq[0].dim() + 1)
        s = seq[0].shape
        return seq[0].with_shape(s[:d] + (len(seq),) + s[d:])
    if not isinstance(x, TensorShape):
        raise NoRule(name)
    n = x.dim()
    if name in ("view", "reshape"):
        if len(args) == 2 and isinstance(args[1], torch.dtype):
            raise NoRule("view as dtype")
        return _reshape(x, _shape_arg(args[1:] or kwargs.get("shape", ())))
    if name in ("view_as", "reshape_as", "expand_as"):
        return x.with_shape(args[1].shape)
    if name == "flatten":
        s = _norm_dim(args[1] if len(args) > 1 else kwargs.get("start_dim", 0), max(n, 1))
        e = _norm_dim(args[2] if len(args) > 2 else kwargs.get("end_dim", -1), max(n, 1))
        if n == 0:
            return x.with_shape((1,))
        return x.with_shape(x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])
    if name == "unflatten":
        d = _norm_dim(args[1], n)
        sizes = list(args[2])
        if -1 in sizes:
            known = math.prod(v for v in sizes if v != -1)
            sizes = [x.shape[d] // known if v == -1 else v for v in sizes]
        return x.with_shape(x.shape[:d] + tuple(sizes) + x.shape[d + 1:])
    if name == "permute":
        order = _shape_arg(args[1:] or kwargs.get("dims", ()))
        return x.with_shape(tuple(x.shape[_norm_dim(i, n)] for i in order))
    if name in ("transpose", "swapaxes", "swapdims"):
        a, b = _norm_dim(args[1], n), _norm_dim(args[2], n)
        s = list(x.shape)
        s[a], s[b] = s[b], s[a]
        return x.with_shape(s)
    if name == "t":
        return x.with_shape(x.shape[::-1])
    if name in ("movedim", "moveaxis"):
        s = list(x.shape)
        src, dst = _norm_dim(args[1], n), _norm_dim(args[2], n)
        v = s.pop(src)
        s.insert(dst, v)
        return x.with_shape(s)
    if name == "unsqueeze":
        d = _norm_dim(args[1] if len(args) > 1 else kwargs["dim"], n + 1)
        return x.with_shape(x.shape[:d] + (1,) + x.shape[d:])
    if name == "squeeze":
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if dim is None:
            return x.with_shape(tuple(s for s in x.shape if s != 1))
        dims = {_norm_dim(d, n) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
        return x.with_shape(tuple(s for i, s in enumerate(x.shape) if not (i in dims and s == 1)))
    if name in ("expand", "broadcast_to"):
        dims = _shape_arg(args[1:] or kwargs.get("size", ()))
        pad = len(dims) - n
        return x.with_shape(tuple(x.shape[i - pad] if d == -1 else d for i, d in enumerate(dims)))
    if name in ("repeat", "tile"):
        reps = _shape_arg(args[1:])
        shape = (1,) * (len(reps) - n) + x.shape
        return x.with_shape(tuple(s * r for s, r in zip(shape, reps)))
    if name in ("size", "shape"):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        return torch.Size(x.shape) if dim is None else x.shape[_norm_dim(dim, n)]
    if name == "dim":
        return n
    if name == "numel":
        return math.prod(x.shape)
    if name in ("mean", "sum", "amax", "amin", "logsumexp", "prod", "nanmean", "std", "var",
                "norm", "any", "all"):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if name == "norm":
            dim = args[2] if len(args) > 2 else kwargs.get("dim")
        if isinstance(dim, torch.dtype):
            dim = None
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 and name != "norm"
                          and isinstance(args[2], bool) else False)
        out = _reduce(x, dim, bool(keep))
        return TensorShape(out.shape, torch.bool if name in ("any", "all") else x.dtype)
    if name in ("max", "min") and (len(args) > 1 or "dim" in kwargs):
        other = args[1] if len(args) > 1 else None
        if isinstance(other, TensorShape):
            return TensorShape(broadcast(x.shape, other.shape), x.dtype)
        out = _reduce(x, other if other is not None else kwargs["dim"],
                      bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False)))
        return (out, TensorShape(out.shape, torch.int64))
    if name in ("max", "min"):
        return x.with_shape(())
    if name in ("argmax", "argmin"):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        out = _reduce(x, dim, bool(kwargs.get("keepdim", False)))
        return TensorShape(out.shape, torch.int64)
    if name in ("matmul", "mm", "bmm"):
        return _matmul(x, args[1])
    if name == "linear":
        w = args[1] if len(args) > 1 else kwargs["weight"]
        return TensorShape(x.shape[:-1] + ((w.shape[0],) if w.dim() == 2 else ()),
                           _promote([x, w]))
    if name in ("conv1d", "conv2d", "conv3d"):
        w = args[1] if len(args) > 1 else kwargs["weight"]
        nd = int(name[-2])
        get = lambda i, k, d: args[i] if len(args) > i else kwargs.get(k, d)  # noqa: E731
        return conv_shape(x, w.shape[0], w.shape[2:], get(3, "stride", 1), get(4, "padding", 0),
                          get(5, "dilation", 1), nd)
    if name == "embedding":
        w = args[1] if len(args) > 1 else kwargs["weight"]
        return TensorShape(x.shape + (w.shape[1],), w.dtype)
    if name == "scaled_dot_product_attention":
        v = args[2] if len(args) > 2 else kwargs["value"]
        return TensorShape(x.shape[:-1] + (v.shape[-1],), x.dtype)
    if name in ("split", "chunk", "tensor_split", "unbind"):
        return _split(name, x, args, kwargs)
    if name == "getitem":
        return _getitem(x, args[1])
    if name in ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"):
        return adaptive_shape(x, int(name[-2]), args[1] if len(args) > 1 else
                              kwargs["output_size"])
    if name in ("avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
                "max_pool3d"):
        get = lambda i, k, d: args[i] if len(args) > i else kwargs.get(k, d)  # noqa: E731
        k = get(1, "kernel_size", None)
        stride = get(2, "stride", None)
        dil = 1 if name.startswith("avg") else get(4, "dilation", 1)
        ceil = get(4 if name.startswith("avg") else 5, "ceil_mode", False)
        return pool_shape(x, int(name[-2]), k, stride, get(3, "padding", 0), dil, bool(ceil))
    if name == "pad":
        pads = list(args[1] if len(args) > 1 else kwargs["pad"])
        s = list(x.shape)
        for i in range(len(pads) // 2):
            s[n - 1 - i] += pads[2 * i] + pads[2 * i + 1]
        return x.with_shape(s)
    if name == "glu":
        d = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", -1), n)
        return x.with_shape(tuple(v // 2 if i == d else v for i, v in enumerate(x.shape)))
    raise NoRule(name)


def _matmul(a: TensorShape, b: TensorShape) -> TensorShape:
    sa, sb = list(a.shape), list(b.shape)
    if len(sa) == 1 and len(sb) == 1:
        return a.with_shape(())
    if len(sa) == 1:
        return a.with_shape(tuple(sb[:-2]) + (sb[-1],))
    if len(sb) == 1:
        return a.with_shape(tuple(sa[:-1]))
    batch = broadcast(sa[:-2], sb[:-2])
    return TensorShape(batch + (sa[-2], sb[-1]), _promote([a, b]))


def _cat(args: Sequence[Any], kwargs: dict) -> TensorShape:
    seq = [t for t in args[0] if isinstance(t, TensorShape) and t.shape != (0,)]
    d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    d = _norm_dim(d, seq[0].dim())
    s = list(seq[0].shape)
    s[d] = sum(t.shape[d] for t in seq)
    return TensorShape(tuple(s), _promote(seq))


def _split(name: str, x: TensorShape, args: Sequence[Any], kwargs: dict) -> tuple:
    n = x.dim()
    if name == "unbind":
        d = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), n)
        return tuple(x.with_shape(x.shape[:d] + x.shape[d + 1:]) for _ in range(x.shape[d]))
    d = _norm_dim(args[2] if len(args) > 2 else kwargs.get("dim", 0), n)
    size = x.shape[d]
    arg = args[1] if len(args) > 1 else kwargs.get("split_size_or_sections",
                                                    kwargs.get("chunks", kwargs.get("split_size")))
    if name == "chunk":
        step = math.ceil(size / int(arg))
        sizes = [min(step, size - i) for i in range(0, size, step)]
    elif isinstance(arg, (list, tuple)):
        sizes = [int(a) for a in arg]
    else:
        if name == "tensor_split":
            raise NoRule("tensor_split")
        sizes = [min(int(arg), size - i) for i in range(0, size, int(arg))]
    return tuple(x.with_shape(x.shape[:d] + (s,) + x.shape[d + 1:]) for s in sizes)


def _getitem(x: TensorShape, idx: Any) -> TensorShape:
    if not isinstance(idx, tuple):
        idx = (idx,)
    if any(isinstance(i, (TensorShape, list)) for i in idx):
        raise NoRule("advanced indexing")
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    out: list[int] = []
    dim = 0
    for i in idx:
        if i is Ellipsis:
            keep = x.dim() - n_real
            out.extend(x.shape[dim:dim + keep])
            dim += keep
        elif i is None:
            out.append(1)
        elif isinstance(i, int):
            dim += 1
        elif isinstance(i, slice):
            out.append(len(range(*i.indices(x.shape[dim]))))
            dim += 1
        else:
            raise NoRule("index type")
    out.extend(x.shape[dim:])
    return x.with_shape(out)


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
