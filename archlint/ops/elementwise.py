"""Other elementwise arithmetic (neg, sqrt, rsqrt, pow, clamp, sin/cos...), comparisons and
logic, random tensors, factories and shape-only queries that carry no gradient."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..graph.ir import Kind, Node
from ..meanfield.signal import EPS, Sig
from .base import Gains, Propagation, kw, scalars, unknown
from .joins import binary_shape
from .shape import bool_same_shape, same_module_shape, same_shape
from .shape_ops import dtype_shape
from .table import Op, family, register


def estimate_neg(prop: Propagation, node: Node) -> None:
    x = prop.s_in(node)
    prop.out(node, Sig(x.q, -x.m, x.s, prop.numel(node)), Gains([(0, 1.0)]))


def estimate_keep_scale(prop: Propagation, node: Node) -> None:
    """clamp, abs, local response norm: the input's scale (clamp_min halves the gradient)."""
    x = prop.s_in(node)
    prop.out(node, Sig(x.q, x.m, x.s, prop.numel(node)),
             Gains([(0, 1.0 if node.op != "clamp_min" else 0.5)]))


def estimate_zero(prop: Propagation, node: Node) -> None:
    """Tensors made inside forward from constants: no signal; ``torch.tensor(number)`` (a
    scale such as ``sqrt(head_dim)``) holds its value."""
    args = node.attrs.get("args") or ()
    data = args[0] if node.op == "tensor" and args else None
    values = _numbers(data)
    if values:
        q = sum(v * v for v in values) / len(values)
        m = sum(values) / len(values)
        prop.out(node, Sig(q, m, q, prop.numel(node)))
        return
    prop.out(node, Sig(0.0, 0.0, 0.0, prop.numel(node)))


def _numbers(data: object) -> list[float]:
    """The finite numbers of a (nested) list of plain numbers, [] for anything else."""
    if isinstance(data, bool):
        return []
    if isinstance(data, (int, float)):
        return [float(data)] if math.isfinite(data) else []
    if isinstance(data, (list, tuple)) and len(data) <= 4096:
        out: list[float] = []
        for d in data:
            inner = _numbers(d)
            if not inner:
                return []
            out.extend(inner)
        return out
    return []


def estimate_periodic(prop: Propagation, node: Node) -> None:
    """sin/cos of a phase spread over many periods (rotary position tables)."""
    prop.out(node, Sig(0.5, 0.0, 0.5, prop.numel(node)).with_w(0.5), Gains([(0, 0.5)]))


def estimate_power(prop: Propagation, node: Node) -> None:
    x = prop.s_in(node)
    n = prop.numel(node)
    op = node.op
    if op in ("pow", "square"):
        args = node.attrs.get("args") or ()
        p = 2.0 if op == "square" else next((float(a) for a in args[1:] if isinstance(
            a, (int, float)) and not isinstance(a, bool)), 2.0)
        if abs(p - 2.0) < 1e-9:
            prop.out(node, Sig(3 * x.q * x.q, x.q, x.q * x.q, n), Gains([(0, 4 * x.q)]))
            return
        unknown(prop, node)
        return
    base = max(x.m if x.m > 0 else x.q, EPS)
    if op == "rsqrt":
        prop.out(node, Sig(1.0 / base, 1.0 / math.sqrt(base), 1.0 / base, n),
                 Gains([(0, 0.25 / base ** 3)]))
        return
    prop.out(node, Sig(base, math.sqrt(base), base, n), Gains([(0, 0.25 / base)]))  # sqrt


def estimate_exp(prop: Propagation, node: Node) -> None:
    """``exp`` of a Gaussian ``N(m, v)``: log-normal moments ``E[e^x] = e^(m + v/2)``,
    ``E[e^2x] = e^(2m + 2v)``, and two entries sharing covariance ``c`` give
    ``E[e^x e^x'] = e^(2m + v + c)``. The derivative is the value itself: the gradient's gain
    is ``E[e^2x]``. A parameter (Mamba's ``A = -exp(A_log)``) is read exactly."""
    x = prop.s_in(node)
    n = prop.numel(node)
    src = node.inputs[0] if node.inputs else None
    t = src.tensor if src is not None and src.kind == Kind.PARAM else None
    if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.numel():
        e = t.detach().double().clamp(max=300.0).exp()
        q, m = float((e * e).mean()), float(e.mean())
        prop.out(node, Sig(q, m, m * m, n), Gains([(0, q)]))
        return
    m, v = x.m, max(x.q - x.m * x.m, 0.0)

    def ex(a: float) -> float:
        return math.exp(min(a, 300.0))

    q = ex(2 * m + 2 * v)
    cov_s, cov_w = max(x.s - m * m, 0.0), max(x.w - m * m, 0.0)
    prop.out(node, Sig(q, ex(m + v / 2), ex(2 * m + v + cov_s), n).with_w(
        ex(2 * m + v + cov_w) if x.w_ is not None else None), Gains([(0, q)]))


def estimate_factory(prop: Propagation, node: Node) -> None:
    """Tensors filled with a constant (``zeros_like``, ``new_ones``, ``full``...): what they
    hold, not their template's statistics (an accumulator made by ``zeros_like(x)`` holds 0)."""
    op = node.op
    if "ones" in op:
        v = 1.0
    elif "full" in op:
        vals = scalars(node)
        v = kw(node, "fill_value", 2 if op == "new_full" else 1, vals[-1] if vals else 0.0)
        v = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0
    else:  # zeros, empty (uninitialised: whatever it holds is overwritten before it is read)
        v = 0.0
    prop.out(node, Sig(v * v, v, v * v, prop.numel(node)))


def estimate_bernoulli(prop: Propagation, node: Node) -> None:
    """``t.bernoulli_(p)`` / ``torch.bernoulli(probs)``: ones with probability p (a drop-path or
    dropout mask, scaled afterwards by 1/p): q = m = p; no gradient."""
    vals = scalars(node)
    p = kw(node, "p", 1, vals[0] if vals else None)
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 < p <= 1.0:
        x = prop.s_in(node)
        p = x.m if 0.0 < x.m <= 1.0 else 0.5
    p = float(p)
    prop.out(node, Sig(p, p, p * p, prop.numel(node)))


_RANDOM_SECOND_MOMENT = {"rand": 1 / 3, "rand_like": 1 / 3}


def estimate_random(prop: Propagation, node: Node) -> None:
    """Random tensors drawn inside forward (noise, masks): their known moments."""
    if node.grad_inputs != []:
        unknown(prop, node)
        return
    q = _RANDOM_SECOND_MOMENT.get(node.op, 1.0)
    mean = 0.5 if node.op.startswith("rand") and "n" not in node.op else 0.0
    prop.out(node, Sig(q, mean, mean * mean, prop.numel(node)))


register(
    Op(name="neg", functions=("neg",), shape=same_shape, estimate=estimate_neg),
    Op(name="clamp", functions=("clamp", "clip"), shape=same_shape, estimate=estimate_keep_scale),
    *family(Kind.OTHER, ("clamp_min", "abs"), shape=same_shape, estimate=estimate_keep_scale),
    Op(name="local_response_norm", modules=(nn.LocalResponseNorm,),
       functions=("local_response_norm",), module_shape=same_module_shape,
       estimate=estimate_keep_scale),
    *family(Kind.OTHER, ("sqrt", "rsqrt", "square"), shape=same_shape, estimate=estimate_power),
    Op(name="pow", functions=("pow",), shape=binary_shape, estimate=estimate_power),
    *family(Kind.OTHER, ("sin", "cos"), shape=same_shape, estimate=estimate_periodic),
    # elementwise maps without a formula: passed through and reported
    Op(name="exp", functions=("exp",), shape=same_shape, estimate=estimate_exp),
    *family(Kind.OTHER, ("log", "erf", "reciprocal", "log1p", "expm1", "clamp_max",
                         "nan_to_num", "requires_grad", "fill", "zero", "softmax2d",
                         "sort_values"), shape=same_shape),
    *family(Kind.OTHER, ("maximum", "minimum", "atan2", "fmod", "lerp", "addcdiv",
                         "hypot", "and", "or", "xor"), shape=binary_shape),
    *family(Kind.OTHER, ("normal", "uniform"), shape=same_shape, estimate=estimate_random),
    *family(Kind.OTHER, ("bernoulli",), grad=False, estimate=estimate_bernoulli),
    # no gradient: random draws, factories, comparisons, rounding, casts to integers
    *family(Kind.OTHER, ("rand_like", "randn_like"), grad=False, shape=same_shape,
            estimate=estimate_random),
    *family(Kind.OTHER, ("rand", "randn"), grad=False, estimate=estimate_random),
    *family(Kind.OTHER, ("tensor", "arange"), grad=False, estimate=estimate_zero),
    *family(Kind.OTHER, ("zeros_like", "ones_like", "empty_like", "full_like"), grad=False,
            shape=same_shape, estimate=estimate_factory),
    *family(Kind.OTHER, ("detach", "sign", "floor", "ceil", "round", "trunc", "bitwise_not"),
            grad=False, shape=same_shape),
    *family(Kind.OTHER, ("isnan", "isinf", "logical_not"), grad=False, shape=bool_same_shape),
    *family(Kind.OTHER, ("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
                         "bitwise_and", "bitwise_or", "mod", "remainder"), grad=False,
            shape=binary_shape),
    *family(Kind.OTHER, ("long", "int", "bool"), grad=False, shape=dtype_shape),
    *family(Kind.OTHER, ("new_zeros", "new_ones", "new_empty", "new_full", "zeros", "ones",
                         "empty", "full"), grad=False, estimate=estimate_factory),
    *family(Kind.OTHER, ("argsort", "new_tensor", "randint",
                         "randint_like", "as_tensor", "triu_indices", "tril_indices", "nonzero",
                         "topk_indices", "is_floating_point", "is_contiguous", "get_device",
                         "item", "tolist", "stride", "lshift", "rshift", "invert", "isfinite"),
            grad=False),
)
