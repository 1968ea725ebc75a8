"""Elementwise activations (and softmax, GLU): their rows, their moment laws, their estimate.

For a pre-activation ``h ~ N(mean, var)`` -- ``var`` is the VARIANCE, not ``E[h^2]`` -- each
law gives ``E[phi(h)]``, ``E[phi(h)^2]`` (the next layer's input second moment) and
``E[phi'(h)^2]`` (the backward gain of the op: ``g_in = phi'(h) g_out`` with ``g_out``
independent of ``h`` in the mean-field limit). Piecewise laws (the ReLU family, ELU, SELU,
hardtanh, hardsigmoid, the shrinks...) are integrated in closed form; smooth ones (tanh, sigmoid,
GELU, SiLU, Mish, softplus...) by quadrature (:mod:`archlint.meanfield`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import numpy as np

from torch import nn

from ..graph.ir import Kind, Node
from ..meanfield.gaussian import (INF, ActMoments, Expr, Piecewise, RELU_PIECES, SIGN_PIECES,
                                  const, expo, hardtanh_law, line, rrelu_law, two_slope)
from ..meanfield.signal import GH_W, GH_Z, Sig, mean, rounded
from ..meanfield.smooth import (Smooth, gelu_fd, gelu_tanh_fd, law_moments, logsigmoid_fd,
                                mish_fd, sigmoid_fd, silu_fd, softplus_law, softsign_fd,
                                tanh_fd, tanhshrink_fd)
from .base import Gains, Propagation, passthrough, unknown
from .shape import NoRule, TensorShape, norm_dim, same_module_shape, same_shape
from .table import OPS, Op, register

_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717

_MODULE_ATTRS = ("negative_slope", "alpha", "lambd", "min_val", "max_val", "beta", "threshold",
                 "value", "lower", "upper", "approximate", "dim")


def activation_attrs(module: nn.Module) -> dict:
    attrs: dict[str, Any] = {}
    for name in _MODULE_ATTRS:
        if hasattr(module, name):
            v = getattr(module, name)
            if isinstance(v, (int, float, str)) or v is None:
                attrs[name] = v
    if isinstance(module, nn.PReLU):
        attrs["weight"] = float(module.weight.detach().float().mean())
    return attrs


# ------------------------------------------------------------------------------- the estimate

def _act_params(node: Node) -> dict:
    keep = {"negative_slope", "alpha", "lambd", "min_val", "max_val", "beta", "threshold",
            "value", "lower", "upper", "approximate", "weight"}
    params = {k: v for k, v in node.attrs.items() if k in keep and v is not None}
    kwargs = node.attrs.get("kwargs") or {}
    if isinstance(kwargs, dict):
        for k, v in kwargs.items():
            if k in keep and isinstance(v, (int, float, str)):
                params[k] = v
    args = node.attrs.get("args") or ()
    if node.module is None and isinstance(args, (list, tuple)) and len(args) > 1:
        second = args[1]
        if isinstance(second, (int, float)) and not isinstance(second, bool):
            first_param = {"leaky_relu": "negative_slope", "elu": "alpha", "celu": "alpha",
                           "softplus": "beta", "hardshrink": "lambd", "softshrink": "lambd",
                           "threshold": "threshold"}.get(node.op)
            if first_param:
                params[first_param] = float(second)
    if node.op == "hardtanh" and isinstance(args, (list, tuple)) and node.module is None:
        if len(args) > 2 and all(isinstance(a, (int, float)) for a in args[1:3]):
            params["min_val"], params["max_val"] = float(args[1]), float(args[2])
    if node.op == "rrelu":
        params.setdefault("training", True)
    if node.op in ("prelu",) and "weight" not in params:
        w = next((i.tensor for i in node.inputs if i.kind == Kind.PARAM and i.tensor is not None),
                 None)
        params["weight"] = mean(w) if w is not None else 0.25
    if node.op == "gelu" and "approximate" in params and params["approximate"] not in (
            "none", "tanh"):
        params["approximate"] = "none"
    return params


@lru_cache(maxsize=65536)
def _act_cached(op: str, q: float, m: float, s: float, params: tuple) -> tuple[float, float,
                                                                               float, float]:
    p = dict(params)
    var = max(q - m * m, 0.0)
    mom = activation_moments(op, m, var, **p)
    coh = min(max(s - m * m, 0.0), var)
    if coh <= 1e-12 * max(var, 1e-30):
        s_out = mom.mean_out ** 2
    else:
        inner = var - coh
        sd = math.sqrt(coh)
        acc = 0.0
        for z, w in zip(GH_Z, GH_W):
            acc += w * activation_moments(op, m + sd * z, inner, **p).mean_out ** 2
        s_out = acc
    return mom.second_out, mom.mean_out, s_out, mom.grad_gain


def _phi_values(op: str, key: tuple, h: "np.ndarray"
                ) -> "Optional[tuple[np.ndarray, np.ndarray]]":
    """(phi, phi'^2) at the points h."""
    law = _law_for(op, key)
    if law is None:
        return None
    if isinstance(law, Piecewise):
        f, _, g2 = law.evaluate(h)
        return np.asarray(f, dtype=float), np.asarray(g2, dtype=float)
    f, df = law.fn(h)
    return np.asarray(f, dtype=float), np.asarray(df, dtype=float) ** 2


def _law_for(op: str, key: tuple) -> "Optional[Piecewise | Smooth]":
    try:
        return _law(op, _resolve_params(op, dict(key)))
    except (TypeError, ValueError, KeyError):
        return None


@lru_cache(maxsize=4096)
def _max_after_cached(op: str, key: tuple, m: float, shared: float, fl: float,
                      k: int) -> Optional[tuple[float, float, float]]:
    grid = np.linspace(-12.0, 12.0, 2401)
    values = _phi_values(op, key, grid)
    if values is None or np.any(np.diff(values[0]) < -1e-9 * (1 + np.abs(values[0][:-1]))):
        return None  # not monotone: the max does not commute with it
    sd = math.sqrt(max(fl, 0.0))
    z = np.linspace(-8.0, 8.0, 801)
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    dens = k * pdf * np.clip(cdf, 0.0, 1.0) ** (k - 1)  # the max of k standard normals
    integrate = np.trapezoid if hasattr(np, "trapezoid") else np.trapz
    dens /= integrate(dens, z)
    first = second = slope = 0.0
    cs = math.sqrt(max(shared, 0.0))
    for gz, gw in zip(GH_Z, GH_W):
        val, g2 = _phi_values(op, key, m + cs * gz + sd * z)
        first += gw * float(integrate(dens * val, z))
        second += gw * float(integrate(dens * val * val, z))
        slope += gw * float(integrate(dens * g2, z))
    return first, second, slope


def max_after(op: str, params: dict, pre: Sig, k: int
              ) -> Optional[tuple[float, float, float]]:
    """(E[max], E[max^2], E[phi'(argmax)^2]) of ``k`` outputs of a monotone activation whose inputs share the
    per-unit part of ``pre`` and fluctuate independently around it: the max of phi(h) is
    phi(max h), so it follows from the Gaussian pre-activation (a ReLU's output is far from
    Gaussian: the max of 9 is 1.5 sd, not 0.4 + 1.5 x 0.58). The pool's gradient lands on the
    maxima, where the slope is phi'(max h) (a ReLU passes nearly all of it, not half). None for
    other activations."""
    if k <= 1 or op not in SUPPORTED_OPS:
        return None
    key = tuple(sorted(law_params(op, params).items()))
    shared = max(pre.w - pre.m * pre.m, 0.0)
    fl = max(pre.q - pre.w, 0.0)
    return _max_after_cached(op, key, rounded(pre.m), rounded(shared), rounded(fl), int(k))


def law_params(op: str, params: dict) -> dict:
    """The parameters the op's law takes (a module may carry more: ReLU6's min/max_val)."""
    try:
        activation_moments(op, 0.0, 1.0, **params)
    except TypeError:
        return {}
    return params


def activation(op: str, x: Sig, params: dict) -> tuple[Sig, float]:
    """Output statistics of an elementwise activation, and its backward gain E[phi'^2]."""
    params = law_params(op, params)
    key = tuple(sorted(params.items()))
    q, m, s, chi = _act_cached(op, rounded(x.q), rounded(x.m), rounded(x.s), key)
    out = Sig(q, m, s, x.numel)
    if x.w_ is not None:
        out.with_w(_act_cached(op, rounded(x.q), rounded(x.m), rounded(x.w), key)[2])
    return out, chi


@lru_cache(maxsize=65536)
def _dcoh_cached(op: str, q: float, m: float, s: float, params: tuple) -> float:
    p = dict(params)
    var = max(q - m * m, 0.0)
    coh = min(max(s - m * m, 0.0), var)
    inner = var - coh
    sd = math.sqrt(coh)
    h = 1e-4 * max(math.sqrt(var), 1e-3)

    def mean_slope(mu: float) -> float:
        hi = activation_moments(op, mu + h, inner, **p).mean_out
        lo = activation_moments(op, mu - h, inner, **p).mean_out
        return (hi - lo) / (2 * h)

    if coh <= 1e-12 * max(var, 1e-30):
        return mean_slope(m) ** 2
    return float(sum(w * mean_slope(m + sd * z) ** 2 for z, w in zip(GH_Z, GH_W)))


def derivative_coherence(op: str, x: Sig, params: dict) -> float:
    """E[phi'(h_a) phi'(h_b)] for two rows of one unit: how much of a gradient shared across
    rows survives the activation."""
    try:
        return _dcoh_cached(op, rounded(x.q), rounded(x.m), rounded(x.s),
                            tuple(sorted(params.items())))
    except (ValueError, ZeroDivisionError):
        return 0.0


@lru_cache(maxsize=65536)
def _curv_cached(op: str, q: float, m: float, s: float, params: tuple) -> float:
    p = dict(params)
    var = max(q - m * m, 0.0)
    coh = min(max(s - m * m, 0.0), var)
    inner = var - coh
    sd = math.sqrt(coh)
    h = 1e-2 * max(math.sqrt(inner), 1e-3)

    def curvature(mu: float) -> float:
        up = activation_moments(op, mu + h, inner, **p).mean_out
        mid = activation_moments(op, mu, inner, **p).mean_out
        down = activation_moments(op, mu - h, inner, **p).mean_out
        return (up - 2 * mid + down) / (h * h)

    if coh <= 1e-12 * max(var, 1e-30):
        return curvature(m) ** 2
    return float(sum(w * curvature(m + sd * z) ** 2 for z, w in zip(GH_Z, GH_W)))


def mean_curvature_sq(op: str, x: Sig, params: dict) -> float:
    """E[phi''(h)]^2 over the positions of one sample (averaged over what the sample shares):
    how strongly phi'(h) correlates with the inputs that made h (Stein's lemma)."""
    try:
        return _curv_cached(op, rounded(x.q), rounded(x.m), rounded(x.w),
                            tuple(sorted(params.items())))
    except (ValueError, ZeroDivisionError, TypeError):
        return 0.0


@dataclass
class ActivationBackward(Gains):
    """The activation's gains, plus the curvature term for the layer that computed its input."""

    curvature: float = 0.0

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        super().apply(prop, node, go, gso, gsco, items)
        if go > 0.0 and self.curvature > 0.0 and node.inputs and gso + gsco > 0.0:
            src = node.inputs[0]
            prop.stein[src] = prop.stein.get(src, 0.0) + min(gso + gsco, go) * self.curvature


def estimate_elementwise(prop: Propagation, node: Node) -> None:
    x = prop.s_in(node)
    op = node.op
    if op not in SUPPORTED_OPS:
        unknown(prop, node)
        return
    params = law_params(op, _act_params(node))
    out, chi = activation(op, x, params)
    prop.out(node, Sig(out.q, out.m, out.s, prop.numel(node)).with_w(out.w_),
             ActivationBackward([(0, chi)], shared=[(0, derivative_coherence(op, x, params), 0.0)],
                                curvature=mean_curvature_sq(op, x, params)))


def _softmax_len(node: Node) -> int:
    """How many values a softmax (or log_softmax) normalises over: its ``dim``'s size."""
    from .base import kw

    dim = node.attrs.get("dim", kw(node, "dim", 1, -1))
    shape = node.shape or ()
    return shape[dim] if shape and isinstance(dim, int) and -len(shape) <= dim < len(shape) \
        else (shape[-1] if shape else 1)


def estimate_softmax(prop: Propagation, node: Node) -> None:
    x = prop.s_in(node)
    T = _softmax_len(node)
    v = max(x.q - x.s, 0.0)
    sa = min(math.exp(min(v, 50.0)) / max(T, 1), 1.0)  # sum_j A_j^2
    if _causal_mask(prop, node, T):
        # query i attends i keys: sum_j A_ij^2 averages e^v / i over the queries
        harmonic = sum(1.0 / i for i in range(1, T + 1))
        sa = min(math.exp(min(v, 50.0)) * harmonic / max(T, 1), 1.0)
    q = sa / max(T, 1)
    # dS_j = A_j (g_j - sum_k A_k g_k): per element E[A^2] of the incoming gradient
    prop.out(node, Sig(q, 1.0 / max(T, 1), 1.0 / max(T, 1) ** 2, prop.numel(node)),
             Gains([(0, q * (1 - 1.0 / max(T, 1)))]))


def estimate_log_softmax(prop: Propagation, node: Node) -> None:
    """``x - logsumexp(x)``: for a row spread ``v`` around its mean, the log-sum-exp is about
    ``log T + mean + v/2``, so the output keeps the spread and shifts to ``-log T - v/2``. The
    gradient ``g_j - p_j sum_k g_k`` keeps ``1 - 2/T + sum_k p_k^2`` of an incoherent gradient
    (about all of it: not the ``p^2`` of a softmax)."""
    x = prop.s_in(node)
    T = max(_softmax_len(node), 1)
    v = max(x.q - x.s, 0.0)
    sa = min(math.exp(min(v, 50.0)) / T, 1.0)  # sum_j p_j^2
    m = -math.log(T) - 0.5 * v
    prop.out(node, Sig(v + m * m, m, m * m, prop.numel(node)),
             Gains([(0, max(1.0 - 2.0 / T + sa, 0.0))]))


def _causal_mask(prop: Propagation, node: Node, T: int) -> bool:
    """Is the softmax's input ``logits + mask`` (or ``logits.masked_fill(mask, -inf)``) with a
    square (query x key) mask that carries no signal -- the causal mask of hand-written
    attention (``finfo.min`` above the diagonal)? A padding mask is (batch, 1, 1, keys)."""
    src = node.inputs[0] if node.inputs else None
    while src is not None and src.kind == Kind.RESHAPE and src.op in ("to", "float", "type",
                                                                        "contiguous"):
        src = src.inputs[0] if src.inputs else None
    if src is None or T < 2:
        return False
    if src.op == "masked_fill":  # logits.masked_fill(causal == 0, -inf)
        masks = src.inputs[1:2]
    elif src.kind == Kind.ADD and len(src.inputs) == 2:
        masks = list(src.inputs)
    else:
        return False
    return any(i.shape and len(i.shape) >= 2 and tuple(i.shape[-2:]) == (T, T) and
               not prop.carries_signal(i) and _triangular(i) for i in masks)


_ORDERING = {"tril", "triu", "lt", "le", "gt", "ge"}


def _triangular(mask: Node) -> bool:
    """Is a mask built to depend on the query/key order: a buffer whose square is not
    constant (a tril of ones), or made with tril/triu or position comparisons? An outer
    product of padding masks (all ones here) is not."""
    seen: set[int] = set()
    stack = [mask]
    while stack and len(seen) < 64:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.op in _ORDERING:
            return True
        t = n.tensor if n.kind == Kind.PARAM else None
        if t is not None and t.dim() >= 2 and t.shape[-1] == t.shape[-2] and t.numel() and \
                t.device.type != "meta":
            square = t.detach().reshape(-1, t.shape[-2], t.shape[-1])[0]
            return bool((square != square[0, 0]).any())
        stack.extend(n.inputs)
    return False


def estimate_glu(prop: Propagation, node: Node) -> None:
    x = prop.s_in(node)
    half = Sig(x.q, x.m, x.s, x.numel // 2)
    gate, chi = activation("sigmoid", half, {})
    prop.out(node, Sig(x.q * gate.q, x.m * gate.m, x.s * gate.s, prop.numel(node)),
             Gains([(0, 0.5 * (gate.q + x.q * chi))]))


# ------------------------------------------------------------------------------- shapes

def _glu_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    x = args[0] if args else None
    if not isinstance(x, TensorShape):
        raise NoRule(name)
    d = norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", -1), x.dim())
    return x.with_shape(tuple(v // 2 if i == d else v for i, v in enumerate(x.shape)))


def _glu_module_shape(mod: nn.GLU, args: Any, kwargs: dict) -> TensorShape:
    x = same_module_shape(mod, args, kwargs)
    d = norm_dim(mod.dim, x.dim())
    return x.with_shape(tuple(s // 2 if i == d else s for i, s in enumerate(x.shape)))


# ------------------------------------------------------------------------------- the rows

def _act(name: str, modules: tuple = (), aliases: tuple = (), params: dict | None = None,
         law=None, **facts: Any) -> Op:
    return Op(name=name, kind=Kind.ACTIVATION, modules=modules, functions=(name, *aliases),
              module_attrs=activation_attrs, shape=same_shape, module_shape=same_module_shape,
              law=law, params=params or {}, estimate=estimate_elementwise, **facts)


def _relu(p: dict) -> Piecewise:
    return Piecewise.of(RELU_PIECES)


register(
    _act("relu", (nn.ReLU,), rectifier=True, homogeneous=True, law=_relu),
    _act("relu6", (nn.ReLU6,), rectifier=True,
         law=lambda p: Piecewise.of(((0.0, 6.0, line(1.0)), (6.0, INF, const(6.0))))),
    _act("leaky_relu", (nn.LeakyReLU,), rectifier=True, homogeneous=True,
         params={"negative_slope": 0.01},
         law=lambda p: two_slope(float(p["negative_slope"]), float(p["negative_slope"]) ** 2)),
    _act("prelu", (nn.PReLU,), rectifier=True, homogeneous=True, params={"weight": 0.25},
         law=lambda p: two_slope(float(p["weight"]), float(p["weight"]) ** 2)),
    _act("rrelu", (nn.RReLU,), rectifier=True,
         params={"lower": 1.0 / 8.0, "upper": 1.0 / 3.0, "training": True},
         law=lambda p: rrelu_law(float(p["lower"]), float(p["upper"]), bool(p["training"]))),
    _act("elu", (nn.ELU,), rectifier=True, params={"alpha": 1.0},
         law=lambda p: Piecewise.of(((-INF, 0.0, expo(float(p["alpha"]), 1.0)),
                                     (0.0, INF, line(1.0))))),
    _act("selu", (nn.SELU,),
         law=lambda p: Piecewise.of(((-INF, 0.0, expo(_SELU_SCALE * _SELU_ALPHA, 1.0)),
                                     (0.0, INF, line(_SELU_SCALE))))),
    _act("celu", (nn.CELU,), rectifier=True, params={"alpha": 1.0},
         law=lambda p: Piecewise.of(((-INF, 0.0, expo(float(p["alpha"]), 1.0 / float(p["alpha"]))),
                                     (0.0, INF, line(1.0))))),
    _act("gelu", (nn.GELU,), rectifier=True, params={"approximate": "none"},
         law=lambda p: Smooth(gelu_tanh_fd if p["approximate"] == "tanh" else gelu_fd,
                              _relu(p), 1.0, 10.0)),
    _act("silu", (nn.SiLU,), aliases=("swish",), rectifier=True,
         law=lambda p: Smooth(silu_fd, _relu(p), 1.0, 46.0)),
    _act("mish", (nn.Mish,), rectifier=True, law=lambda p: Smooth(mish_fd, _relu(p), 1.0, 46.0)),
    _act("sigmoid", (nn.Sigmoid,), aliases=("expit",), saturating=True, peak_derivative=0.25,
         law=lambda p: Smooth(sigmoid_fd, Piecewise.of(((0.0, INF, const(1.0)),)), 1.0, 44.0)),
    _act("tanh", (nn.Tanh,), saturating=True,
         law=lambda p: Smooth(tanh_fd, Piecewise.of(SIGN_PIECES), 1.0, 22.0)),
    _act("hardtanh", (nn.Hardtanh,), aliases=("hard_tanh",), saturating=True,
         params={"min_val": -1.0, "max_val": 1.0},
         law=lambda p: hardtanh_law(float(p["min_val"]), float(p["max_val"]))),
    _act("hardsigmoid", (nn.Hardsigmoid,), aliases=("hard_sigmoid",), saturating=True,
         peak_derivative=1 / 6,
         law=lambda p: Piecewise.of(((-3.0, 3.0, line(1.0 / 6.0, 0.5)),
                                     (3.0, INF, const(1.0))))),
    _act("hardswish", (nn.Hardswish,), aliases=("hard_swish",), rectifier=True,
         law=lambda p: Piecewise.of(((-3.0, 3.0, Expr((0.0, 0.5, 1.0 / 6.0))),
                                     (3.0, INF, line(1.0))))),
    _act("softplus", (nn.Softplus,), rectifier=True, params={"beta": 1.0, "threshold": 20.0},
         law=lambda p: softplus_law(float(p["beta"]), float(p["threshold"]))),
    _act("softsign", (nn.Softsign,), saturating=True,
         law=lambda p: Smooth(softsign_fd, Piecewise.of(SIGN_PIECES), 1.0, INF, (0.0,))),
    _act("tanhshrink", (nn.Tanhshrink,),
         law=lambda p: Smooth(tanhshrink_fd, Piecewise.of(((-INF, 0.0, line(1.0, 1.0)),
                                                           (0.0, INF, line(1.0, -1.0)))),
                              1.0, 24.0)),
    _act("softshrink", (nn.Softshrink,), params={"lambd": 0.5},
         law=lambda p: Piecewise.of(((-INF, -float(p["lambd"]), line(1.0, float(p["lambd"]))),
                                     (float(p["lambd"]), INF, line(1.0, -float(p["lambd"])))))),
    _act("hardshrink", (nn.Hardshrink,), params={"lambd": 0.5},
         law=lambda p: Piecewise.of(((-INF, -float(p["lambd"]), line(1.0)),
                                     (float(p["lambd"]), INF, line(1.0))))),
    _act("logsigmoid", (nn.LogSigmoid,), aliases=("log_sigmoid",), saturating=True,
         law=lambda p: Smooth(logsigmoid_fd, Piecewise.of(((-INF, 0.0, line(1.0)),)), 1.0,
                              44.0)),
    _act("threshold", (nn.Threshold,), rectifier=True, params={"threshold": 0.0, "value": 0.0},
         law=lambda p: Piecewise.of(((-INF, float(p["threshold"]), const(float(p["value"]))),
                                     (float(p["threshold"]), INF, line(1.0))))),
    Op(name="glu", kind=Kind.ACTIVATION, modules=(nn.GLU,), functions=("glu",),
       module_attrs=activation_attrs, shape=_glu_shape, module_shape=_glu_module_shape,
       estimate=estimate_glu),
    Op(name="softmax", kind=Kind.ACTIVATION, modules=(nn.Softmax, nn.Softmax2d),
       functions=("softmax",), module_attrs=activation_attrs, shape=same_shape,
       module_shape=same_module_shape, estimate=estimate_softmax),
    Op(name="softmin", kind=Kind.ACTIVATION, modules=(nn.Softmin,), functions=("softmin",),
       module_attrs=activation_attrs, shape=same_shape, module_shape=same_module_shape,
       estimate=estimate_softmax),
    Op(name="log_softmax", kind=Kind.ACTIVATION, modules=(nn.LogSoftmax,),
       functions=("log_softmax",), module_attrs=activation_attrs, shape=same_shape,
       module_shape=same_module_shape, estimate=estimate_log_softmax),
    # The identity: a reshape-like op, with the trivial law.
    Op(name="identity", kind=Kind.RESHAPE, modules=(nn.Identity,), functions=("identity",),
       shape=same_shape, module_shape=same_module_shape, params={}, estimate=passthrough,
       law=lambda p: Piecewise.of(((-INF, INF, line(1.0)),))),
)

#: Ops :func:`activation_moments` accepts (every row with a moment law; glu is not elementwise).
SUPPORTED_OPS: tuple[str, ...] = tuple(name for name, op in OPS.items() if op.law is not None)

_IGNORED_PARAMS = frozenset({"inplace"})


def _resolve_params(op: str, params: dict[str, object]) -> tuple[tuple[str, object], ...]:
    row = OPS.get(op)
    if row is None or row.law is None:
        raise ValueError(f"unsupported activation {op!r}; expected one of {SUPPORTED_OPS}")
    defaults = row.params or {}
    unknown_params = set(params) - set(defaults) - _IGNORED_PARAMS
    if unknown_params:
        raise TypeError(f"{op}: unexpected parameter(s) {sorted(unknown_params)}")
    resolved = {k: params.get(k, v) for k, v in defaults.items()}
    if op == "gelu" and resolved["approximate"] not in ("none", "tanh"):
        got = resolved["approximate"]
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {got!r}")
    return tuple(sorted(resolved.items()))


_DEFAULT_KEYS = {op: tuple(sorted((OPS[op].params or {}).items())) for op in SUPPORTED_OPS}


@lru_cache(maxsize=256)
def _law(op: str, key: tuple[tuple[str, object], ...]) -> Piecewise | Smooth:
    return OPS[op].law(dict(key))


@lru_cache(maxsize=1 << 16)
def _moments(op: str, mean_: float, var: float, key: tuple[tuple[str, object], ...]
             ) -> ActMoments:
    return law_moments(_law(op, key), mean_, var)


def activation_moments(op: str, mean: float, var: float, **params: object) -> ActMoments:
    """Moments of ``phi(h)`` for ``h ~ N(mean, var)``; ``var`` is the variance (not ``E[h^2]``).

    Args:
        op: canonical lowercase op name, one of :data:`SUPPORTED_OPS`.
        mean: mean of the pre-activation.
        var: variance of the pre-activation (``>= 0``; ``0`` evaluates ``phi`` at ``mean``).
        **params: the op's parameters with torch's names and defaults: ``negative_slope``
            (leaky_relu, 0.01), ``weight`` (prelu slope, 0.25), ``lower``/``upper``/``training``
            (rrelu, 1/8, 1/3, True -- training averages over the random slope), ``alpha`` (elu,
            celu, 1.0), ``approximate`` (gelu, "none" or "tanh"), ``min_val``/``max_val``
            (hardtanh, -1, 1), ``beta``/``threshold`` (softplus, 1, 20), ``lambd`` (softshrink,
            hardshrink, 0.5), ``threshold``/``value`` (threshold, 0, 0). ``inplace`` is ignored.

    Returns:
        :class:`ActMoments` with ``E[phi]``, ``E[phi^2]`` and ``E[phi'^2]``.
    """
    mean, var = float(mean), float(var)
    if not (math.isfinite(mean) and math.isfinite(var)) or var < 0.0:
        raise ValueError(f"need finite mean and var >= 0, got mean={mean}, var={var}")
    key = _resolve_params(op, params) if params else _DEFAULT_KEYS.get(op)
    if key is None:
        key = _resolve_params(op, params)  # raises for unknown ops
    return _moments(op, mean, var, key)


__all__ = ["ActMoments", "SUPPORTED_OPS", "activation_moments", "activation",
           "derivative_coherence"]
