"""Pooling layers and reductions (mean, sum, max... over dimensions).

Averaging K values keeps what they share and divides the rest by K; its backward hands each
input ``1/K`` of the gradient of each output it feeds. Max pooling keeps the largest of K values
(the moments of a Gaussian maximum) and routes the gradient to it alone.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Optional

import torch
from torch import nn

from ..graph.ir import Kind, Node
from ..meanfield.signal import Sig, max_moments, max_second_moment, top_moments
from .activations import ActivationBackward, _act_params, max_after
from .base import Gains, Propagation, kw, unknown
from .shape import (NoRule, TensorShape, adaptive_shape, broadcast, pool_shape, reduce_shape,
                    same_module_shape, same_shape)
from .table import Op, family, register


def _pool_attrs(module: nn.Module) -> dict:
    attrs: dict[str, Any] = {}
    for name in ("kernel_size", "stride", "output_size", "padding"):
        if hasattr(module, name):
            attrs[name] = getattr(module, name)
    return attrs


def _pool_kernel(node: Node, default: float) -> float:
    m = node.module
    k = getattr(m, "kernel_size", None) if m is not None else kw(node, "kernel_size", 1, None)
    if k is None:
        return default
    if isinstance(k, (tuple, list)):
        return float(math.prod(k))
    shape = node.shape or ()
    nd = max(len(shape) - 2, 1)
    return float(k) ** nd


def _adaptive_windows(node: Node) -> Optional[tuple[float, float]]:
    """An adaptive average pool's exact windows, dim by dim (output i reads inputs
    floor(i*n/m) to ceil((i+1)*n/m)): the mean over outputs of 1/window, and the mean over
    inputs of the sum of 1/window^2 over the outputs that read each -- a pool that upsamples
    (1x1 to 6x6) hands every input the gradients of all its copies."""
    shape_in = node.input_shapes[0] if node.input_shapes else None
    shape_out = node.shape
    if not shape_in or not shape_out or len(shape_in) != len(shape_out):
        return None
    name = type(node.module).__name__ if node.module is not None else str(node.target or "")
    nd = int(name[-2]) if name[-2:-1].isdigit() else len(shape_out) - 2
    if nd < 1:
        return None
    inv_size, gain = 1.0, 1.0
    for n_in, n_out in zip(shape_in[-nd:], shape_out[-nd:]):
        if n_in <= 0 or n_out <= 0:
            return None
        reads = [0.0] * n_in
        total_inv = 0.0
        for i in range(n_out):
            lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            size = hi - lo
            total_inv += 1.0 / size
            for j in range(lo, hi):
                reads[j] += 1.0 / (size * size)
        inv_size *= total_inv / n_out
        gain *= sum(reads) / n_in
    return inv_size, gain


def estimate_pool(prop: Propagation, node: Node) -> None:
    x = prop.s_in(node)
    n = prop.numel(node)
    K = max(x.numel / max(n, 1), 1.0)
    # an adaptive pool's argument is its output size: each output reads K inputs
    kernel = K if node.op.startswith("adaptive") else _pool_kernel(node, K)
    if "avg" in node.op or node.op == "lp_pool":
        q = x.w + (x.q - x.w) / kernel
        # each input element feeds (kernel / K) outputs, weight 1/kernel each
        gain = (kernel / K) / (kernel * kernel)
        windows = _adaptive_windows(node) if node.op.startswith("adaptive") else None
        if windows is not None:  # exact windows: they overlap, or repeat inputs when upsampling
            inv_size, gain = windows
            q = x.w + (x.q - x.w) * inv_size
        # a global average hands every position of a sample the same gradient
        spatial = (node.shape or ())[2:]
        shared = [(0, gain, gain)] if spatial and all(d == 1 for d in spatial) else None
        prop.out(node, Sig(q, x.m, x.s, n).with_w(x.w_), Gains([(0, gain)], shared=shared))
        return
    k = int(round(kernel))
    q = max_second_moment(x, k)
    m_out = x.m + math.sqrt(max(x.q - x.s, 0.0)) * max_moments(k)[0]
    src = node.inputs[0] if node.inputs else None
    if src is not None and src.info is not None and src.info.law is not None and \
            src.inputs and isinstance(prop.sig.get(src.inputs[0]), Sig):
        # max(phi(h)) = phi(max(h)) for a monotone activation: from its Gaussian input
        found = max_after(src.op, _act_params(src), prop.s_in(src), k)
        if found is not None:
            m_out, q = float(found[0]), float(found[1])
            rule = prop.backward_of.get(src)
            if src.users == [node] and isinstance(rule, ActivationBackward) and \
                    len(rule.entries) == 1 and len(rule.entries[0]) == 2:
                # the activation's gradient all comes from the maxima: their slope
                prop.backward_of[src] = replace(rule, entries=[(rule.entries[0][0],
                                                                float(found[2]))])
    prop.out(node, Sig(q, m_out, max(x.s, m_out * m_out), n), Gains([(0, n / max(x.numel, 1))]))


def estimate_topk(prop: Propagation, node: Node) -> None:
    """``torch.topk``: the k largest values along a dim (and their indices). The values are
    order statistics of the input; the gradient goes back to the k selected elements."""
    x = prop.s_in(node)
    shape = node.input_shapes[0] if node.input_shapes else None
    dim = kw(node, "dim", 2, -1)
    k = kw(node, "k", 1, None)
    if not shape or not isinstance(k, int) or not isinstance(dim, int):
        unknown(prop, node)
        return
    n_along = shape[dim]
    largest = bool(kw(node, "largest", 3, True))
    first, second = top_moments(n_along, k)
    sd = math.sqrt(max(x.q - x.s, 0.0))
    shift = max(x.s - x.m * x.m, 0.0)
    mean_out = x.m + (sd * first if largest else -sd * first)
    q = x.m * x.m + 2 * x.m * sd * (first if largest else -first) + sd * sd * second + shift
    out_numel = x.numel * k // max(n_along, 1)
    values = Sig(max(q, 0.0), mean_out, max(x.s, mean_out * mean_out), out_numel)
    prop.out(node, [values, Sig(1.0, 1.0, 1.0, out_numel)],
             Gains([(0, out_numel / max(x.numel, 1))]))


def _reduces_positions(node: Node) -> bool:
    """Does a mean/sum reduce over positions (not over the unit axis)?"""
    shape = node.input_shapes[0] if node.input_shapes else None
    if not shape:
        return False
    n = len(shape)
    dim = kw(node, "dim", 1, None)
    if dim is None:
        return False
    dims = dim if isinstance(dim, (tuple, list)) else [dim]
    try:
        dims = {d + n if d < 0 else d for d in dims}
    except TypeError:
        return False
    unit = 1 if n in (4, 5) else n - 1
    return unit not in dims and 0 not in dims


def estimate_reduce(prop: Propagation, node: Node) -> None:
    x = prop.s_in(node)
    n = prop.numel(node)
    K = max(x.numel // max(n, 1), 1)
    op = node.op
    over_positions = _reduces_positions(node)
    if op in ("mean", "nanmean"):
        base = x.w if over_positions else x.s
        q = base + (x.q - base) / K
        shared = [(0, 1.0 / (K * K), 1.0 / (K * K))] if over_positions else None
        prop.out(node, Sig(q, x.m, x.s, n), Gains([(0, 1.0 / (K * K))], shared=shared))
        return
    if op == "sum":
        base = x.w if over_positions else x.s
        q = K * K * base + K * (x.q - base)
        shared = [(0, 1.0, 1.0)] if over_positions else None
        prop.out(node, Sig(q, K * x.m, K * K * x.s, n), Gains([(0, 1.0)], shared=shared))
        return
    if op in ("norm", "vector_norm"):
        p = kw(node, "ord" if op == "vector_norm" else "p", 1, 2)
        if p in (2, 2.0, "fro"):
            # sqrt of a sum of K squares: E[out^2] = K q, concentrated for large K; the
            # gradient x / |x| gives each element 1/K of the incoming energy
            q = K * x.q
            prop.out(node, Sig(q, math.sqrt(q), q, n), Gains([(0, 1.0 / K)]))
            return
    if op in ("amax", "max", "amin", "min"):
        # the shared part plus the largest of K independent fluctuations (E[Z_max], E[Z_max^2]
        # of K standard normals); the gradient reaches the one element that won
        base = min(x.w if over_positions else x.s, x.q)
        sd = math.sqrt(max(x.q - base, 0.0))
        e1, e2 = max_moments(K)
        if op in ("amin", "min"):
            e1 = -e1
        q = base + 2 * x.m * sd * e1 + sd * sd * e2
        shared = x.s + 2 * x.m * sd * e1 + sd * sd * e1 * e1
        prop.out(node, Sig(q, x.m + sd * e1, min(shared, q), n),
                 Gains([(0, n / max(x.numel, 1))]))
        return
    unknown(prop, node)


# ------------------------------------------------------------------------------- shapes

def _reduction_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    x = args[0] if args else None
    if not isinstance(x, TensorShape):
        raise NoRule(name)
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if name == "norm":
        dim = args[2] if len(args) > 2 else kwargs.get("dim")
    if isinstance(dim, torch.dtype):
        dim = None
    keep = kwargs.get("keepdim", args[2] if len(args) > 2 and name != "norm"
                      and isinstance(args[2], bool) else False)
    out = reduce_shape(x, dim, bool(keep))
    return TensorShape(out.shape, torch.bool if name in ("any", "all") else x.dtype)


def _max_shape(name: str, args: Any, kwargs: dict) -> Any:
    x = args[0] if args else None
    if not isinstance(x, TensorShape):
        raise NoRule(name)
    if len(args) > 1 or "dim" in kwargs:
        other = args[1] if len(args) > 1 else None
        if isinstance(other, TensorShape):
            return TensorShape(broadcast(x.shape, other.shape), x.dtype)
        out = reduce_shape(x, other if other is not None else kwargs["dim"],
                           bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False)))
        return (out, TensorShape(out.shape, torch.int64))
    return x.with_shape(())


def _argmax_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    x = args[0] if args else None
    if not isinstance(x, TensorShape):
        raise NoRule(name)
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    out = reduce_shape(x, dim, bool(kwargs.get("keepdim", False)))
    return TensorShape(out.shape, torch.int64)


def _adaptive_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    x = args[0] if args else None
    if not isinstance(x, TensorShape):
        raise NoRule(name)
    return adaptive_shape(x, int(name[-2]), args[1] if len(args) > 1 else kwargs["output_size"])


_PLAIN_POOLS = ("avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
                "max_pool3d")


def _pool_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    x = args[0] if args else None
    if name not in _PLAIN_POOLS or not isinstance(x, TensorShape):
        raise NoRule(name)

    def get(i: int, key: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    avg = name.startswith("avg")
    dil = 1 if avg else get(4, "dilation", 1)
    ceil = get(4 if avg else 5, "ceil_mode", False)
    return pool_shape(x, int(name[-2]), get(1, "kernel_size", None), get(2, "stride", None),
                      get(3, "padding", 0), dil, bool(ceil))


def _adaptive_module_shape(mod: nn.Module, args: Any, kwargs: dict) -> Any:
    x = same_module_shape(mod, args, kwargs)
    out = adaptive_shape(x, int(type(mod).__name__[-2]), mod.output_size)
    return (out, out.with_shape(out.shape)) if getattr(mod, "return_indices", False) else out


def _pool_module_shape(mod: nn.Module, args: Any, kwargs: dict) -> Any:
    if not isinstance(mod, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        raise NoRule(type(mod).__name__)
    x = same_module_shape(mod, args, kwargs)
    out = pool_shape(x, int(type(mod).__name__[-2]), mod.kernel_size, mod.stride, mod.padding,
                     getattr(mod, "dilation", 1), mod.ceil_mode)
    return (out, out) if getattr(mod, "return_indices", False) else out


def _pool(name: str, modules: tuple, functions: tuple, shape, module_shape) -> Op:
    return Op(name=name, kind=Kind.POOL, modules=modules, functions=functions,
              module_attrs=_pool_attrs, shape=shape, module_shape=module_shape,
              estimate=estimate_pool)


_dims = ("1d", "2d", "3d")
register(
    _pool("max_pool", (nn.modules.pooling._MaxPoolNd, nn.FractionalMaxPool2d,
                       nn.FractionalMaxPool3d),
          tuple(f"max_pool{d}" for d in _dims) + ("max_pool1d_with_indices",
                                                  "max_pool2d_with_indices"),
          _pool_shape, _pool_module_shape),
    _pool("avg_pool", (nn.modules.pooling._AvgPoolNd,), tuple(f"avg_pool{d}" for d in _dims),
          _pool_shape, _pool_module_shape),
    _pool("adaptive_avg_pool", (nn.modules.pooling._AdaptiveAvgPoolNd,),
          tuple(f"adaptive_avg_pool{d}" for d in _dims), _adaptive_shape,
          _adaptive_module_shape),
    _pool("adaptive_max_pool", (nn.modules.pooling._AdaptiveMaxPoolNd,),
          tuple(f"adaptive_max_pool{d}" for d in _dims), _adaptive_shape,
          _adaptive_module_shape),
    _pool("lp_pool", (nn.modules.pooling._LPPoolNd,), ("lp_pool1d", "lp_pool2d"), None, None),
    *family(Kind.REDUCE, ("mean", "sum", "amax", "amin", "logsumexp", "prod", "nanmean", "norm",
                          "vector_norm", "std", "var"), shape=_reduction_shape,
            estimate=estimate_reduce),
    *family(Kind.REDUCE, ("max", "min"), shape=_max_shape, estimate=estimate_reduce),
    *family(Kind.REDUCE, ("cumsum",), shape=same_shape, estimate=estimate_reduce),
    *family(Kind.OTHER, ("any", "all"), grad=False, shape=_reduction_shape),
    *family(Kind.OTHER, ("topk",), estimate=estimate_topk),
    *family(Kind.OTHER, ("argmax", "argmin"), grad=False, shape=_argmax_shape),
)
