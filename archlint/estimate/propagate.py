"""Predict every layer's weight-gradient RMS at initialisation, without a backward pass.

Mean-field propagation over the traced graph (SIGNAL.md). Forward, each tensor carries three
scalars: ``q = E[h^2]`` (per element), ``m = E[h]`` and ``s``, the covariance of two different
rows (samples/positions) of the same unit plus ``m^2`` -- the part of the signal shared across
rows, which batch normalisation removes and pooling keeps. Backward, each tensor carries
``g2 = E[(dL/dh)^2]`` per element, starting from the probe's ``1/numel(y)`` at the output;
fan-out adds the users' contributions. A weight layer's gradient is the sum over rows of outer
products of its output gradient and its input, so ``grad_rms = sqrt(rows * g2_out * q_in)``.

Ops are dispatched on the IR node's ``op``; an op the estimator does not know is passed through
unchanged *and reported by name* (``Estimate.unknown_ops``).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..graph.ir import Graph, Kind, Node
from ..meanfield.activations import SUPPORTED_OPS, activation_moments

_EPS = 1e-30
_RANDOM = {"rand", "randn", "rand_like", "randn_like", "normal", "uniform", "bernoulli"}


@dataclass
class Sig:
    """Forward statistics of one tensor (per element)."""

    q: float  # E[h^2]
    m: float = 0.0  # E[h]
    s: float = 0.0  # cross-row covariance + m^2 (shared part)
    numel: int = 1
    #: Covariance (+ m^2) of two positions of the same sample and unit; None = same as ``s``.
    #: Attention at init mixes positions and makes this close to ``q`` (rank collapse).
    w_: Optional[float] = None

    @property
    def w(self) -> float:
        return self.s if self.w_ is None else self.w_

    def with_w(self, w: Optional[float]) -> "Sig":
        self.w_ = None if w is None else min(max(w, self.s), self.q)
        return self


@dataclass
class Estimate:
    grad_rms: dict[str, float]
    sig: dict[Node, Sig]
    g2: dict[Node, float]
    #: log10 of the backward per-element gain of each node (how much it scales g2, halved).
    decades: dict[Node, float]
    unknown_ops: dict[str, int]
    #: Forward-order position of each layer's first use (for "earliest"/"last" layers).
    order: dict[str, int]
    #: Modules whose weights get exactly zero gradient at step 0 by design.
    zero_by_design: set[str]


# ------------------------------------------------------------------------------- helpers

def _mean_sq(t: Optional[torch.Tensor]) -> float:
    if t is None:
        return 0.0
    t = t.detach()
    if t.numel() == 0:
        return 0.0
    return float(torch.linalg.vector_norm(t.float())) ** 2 / t.numel()


def _mean(t: Optional[torch.Tensor]) -> float:
    return float(t.detach().float().mean()) if t is not None and t.numel() else 0.0


def _numel(shape: Optional[Sequence[int]]) -> int:
    return int(math.prod(shape)) if shape else 1


@dataclass(frozen=True)
class _LinearStats:
    """Statistics of a weight matrix seen as rows (outputs) x fan-in, plus its bias."""

    a: float  # mean over rows of sum_j W_ij^2   (= fan_in * E[W^2])
    bm: float  # mean over rows of (sum_j W_ij)^2 (response to a constant input)
    col2: float  # mean over columns of sum_i W_ij^2 (= fan_out * E[W^2]): backward gain
    b2: float  # E[b^2]
    bmean: float  # E[b]
    brow: float  # mean over rows of b_i * sum_j W_ij
    rowsum_mean: float  # mean over rows of sum_j W_ij
    fan_in: int
    out: int


_weight_cache: dict[tuple, tuple] = {}


def _none_ref() -> None:
    return None


def linear_stats(w: torch.Tensor, b: Optional[torch.Tensor], in_dim: int = 1,
                 transposed: bool = False, groups: int = 1) -> _LinearStats:
    """Stats for y = W x (+ b). ``in_dim``: the axis of W that is summed (1 for nn.Linear
    [out, in] and conv [out, in/g, *k]; 0 for x @ W with W [in, out])."""
    key = (id(w), w._version, id(b), in_dim, transposed, groups)
    hit = _weight_cache.get(key)
    # ids are reused once a tensor dies: a hit counts only if it is still the same tensor
    if hit is not None and hit[0]() is w and hit[1]() is b:
        return hit[2]
    wd = w.detach().float()
    if in_dim == 0:
        wd = wd.t()
    rows = wd.reshape(wd.shape[0], -1)  # [out, fan_in]
    total = float(torch.linalg.vector_norm(rows)) ** 2  # one pass, no temporary
    a = total / max(rows.shape[0], 1)
    rs = torch.mv(rows, torch.ones(rows.shape[1], dtype=rows.dtype))  # row sums, via BLAS
    bm = float(rs.pow(2).mean())
    col2 = total / max(rows.shape[1], 1) if not transposed else a
    bias = b.detach().float() if b is not None else None
    stats = _LinearStats(
        a=a, bm=bm, col2=col2, b2=_mean_sq(bias), bmean=_mean(bias),
        brow=float((bias * rs).mean()) if bias is not None and bias.numel() == rs.numel() else 0.0,
        rowsum_mean=float(rs.mean()), fan_in=rows.shape[1], out=rows.shape[0],
    )
    _weight_cache[key] = (weakref.ref(w), (weakref.ref(b) if b is not None else _none_ref),
                          stats)
    return stats


def linear_forward(x: Sig, st: _LinearStats, numel: int) -> Sig:
    """Moments of W x + b for x with moments (q, m, s), W fixed, x's units independent."""
    fl = max(x.q - x.s, 0.0)  # fluctuating part
    coh = max(x.s - x.m * x.m, 0.0)  # per-unit offsets around the global mean
    base = st.bm * x.m * x.m + st.b2 + 2 * x.m * st.brow
    shared = st.a * coh + base
    q = st.a * fl + shared
    out = Sig(q=max(q, 0.0), m=st.rowsum_mean * x.m + st.bmean, s=max(shared, 0.0),
              numel=numel)
    if x.w_ is not None:
        out.with_w(st.a * max(x.w - x.m * x.m, 0.0) + base)
    return out


# ------------------------------------------------------------------------------- activations

_GH_Z, _GH_W = np.polynomial.hermite_e.hermegauss(24)
_GH_W = _GH_W / math.sqrt(2 * math.pi)


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
        params["weight"] = _mean(w) if w is not None else 0.25
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
        for z, w in zip(_GH_Z, _GH_W):
            acc += w * activation_moments(op, m + sd * z, inner, **p).mean_out ** 2
        s_out = acc
    return mom.second_out, mom.mean_out, s_out, mom.grad_gain


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def activation(op: str, x: Sig, params: dict) -> tuple[Sig, float]:
    try:
        activation_moments(op, 0.0, 1.0, **params)
    except TypeError:  # a module attribute the formula does not take (ReLU6's min/max_val)
        params = {}
    key = tuple(sorted(params.items()))
    q, m, s, chi = _act_cached(op, _round(x.q), _round(x.m), _round(x.s), key)
    out = Sig(q, m, s, x.numel)
    if x.w_ is not None:
        out.with_w(_act_cached(op, _round(x.q), _round(x.m), _round(x.w), key)[2])
    return out, chi


# ------------------------------------------------------------------------------- estimator

class _Estimator:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.sig: dict[Node, Any] = {}  # Sig, or a list of Sig for tuple-valued nodes
        self.g2: dict[Node, float] = {}
        self.decades: dict[Node, float] = {}
        self.unknown: dict[str, int] = {}
        self.weight_sq: dict[str, float] = {}  # module -> sum over uses of E[grad^2]*numel
        self.weight_numel: dict[str, int] = {}
        self.order: dict[str, int] = {}
        self.zero_by_design: set[str] = set()
        #: Per node: list of (input index, per-element gain) filled by forward handlers where
        #: the backward rule is a plain multiplier.
        self.back: dict[Node, list[tuple[int, float]]] = {}
        self.custom_back: dict[Node, Any] = {}
        #: Coherent-gradient rules: node -> [(input index, a, b)]: gs_in += a*gs_out + b*g2_out.
        #: Without an entry, gs follows the g2 gain of ``back``.
        self.gs_rule: dict[Node, list[tuple[int, float, float]]] = {}
        self.gs: dict[Node, float] = {}
        #: Coherent gradient whose sum over the batch is zero (after a batch-norm backward):
        #: it pairs with the per-sample fluctuation of the input, not its per-unit mean.
        self.gsc: dict[Node, float] = {}
        self.centring: set[Node] = set()
        self._signal: dict[Node, bool] = {}

    # ----------------------------------------------------------------------- utilities
    def s_in(self, node: Node, i: int = 0) -> Sig:
        if i >= len(node.inputs):
            return Sig(1.0, 0.0, 0.0, 1)
        v = self.sig.get(node.inputs[i])
        if isinstance(v, list):
            v = v[0] if v else None
        return v if isinstance(v, Sig) else Sig(1.0, 0.0, 0.0, _numel(node.inputs[i].shape))

    def numel(self, node: Node) -> int:
        return _numel(node.shape)

    def note_unknown(self, node: Node) -> None:
        if not self._carries_signal(node):
            return  # index arithmetic, position tables, masks: nothing to propagate
        self.unknown[node.op] = self.unknown.get(node.op, 0) + 1

    def _carries_signal(self, node: Node) -> bool:
        """Does the value depend on the model's inputs or trainable parameters?"""
        cached = self._signal.get(node)
        if cached is not None:
            return cached
        if node.kind == Kind.INPUT:
            out = True
        elif node.kind == Kind.PARAM:
            out = node.tensor is not None and node.tensor.requires_grad
        else:
            out = any(self._carries_signal(i) for i in node.grad_parents())
        self._signal[node] = out
        return out

    def add_weight_grad(self, module: Optional[str], mean_sq: float, count: int,
                        node: Node) -> None:
        if module is None:
            return
        self.weight_sq[module] = self.weight_sq.get(module, 0.0) + mean_sq * count
        self.weight_numel.setdefault(module, count)
        self.order.setdefault(module, self.g.nodes.index(node) if node in self.index else 0)

    # ----------------------------------------------------------------------- forward
    def run(self) -> Estimate:
        self.index = {n: k for k, n in enumerate(self.g.nodes)}
        for node in self.g.nodes:
            try:
                self.forward(node)
            except Exception:  # a formula failing on an odd node must not kill the estimate
                self.note_unknown(node)
                self.sig[node] = self.s_in(node) if node.inputs else Sig(0.0, 0.0, 0.0,
                                                                          self.numel(node))
                self.back[node] = [(i, 1.0) for i in range(len(node.inputs))]
        self.backward()
        grad_rms = {}
        for mod, total in self.weight_sq.items():
            n = self.weight_numel.get(mod, 1)
            grad_rms[mod] = math.sqrt(max(total, 0.0) / max(n, 1))
        return Estimate(grad_rms=grad_rms, sig=self.sig, g2=self.g2, decades=self.decades,
                        unknown_ops=self.unknown, order=self.order,
                        zero_by_design=self.zero_by_design)

    def forward(self, node: Node) -> None:
        k = node.kind
        n = self.numel(node)
        if k == Kind.INPUT:
            if node.dtype is not None and not node.dtype.is_floating_point:
                self.sig[node] = Sig(0.0, 0.0, 0.0, n)  # ids: no signal, no gradient
            else:
                self.sig[node] = Sig(1.0, 0.0, 0.0, n)
            return
        if k == Kind.PARAM:
            t = node.tensor
            q = _mean_sq(t) if t is not None else 0.0
            self.sig[node] = Sig(q, _mean(t) if t is not None else 0.0, q, n)
            return
        if k == Kind.CONSTANT:
            self.sig[node] = Sig(0.0, 0.0, 0.0, n)
            return
        if k == Kind.OUTPUT:
            return
        if node.dtype is not None and not (node.dtype.is_floating_point or
                                           node.dtype.is_complex):
            # masks, ids, comparisons: a neutral multiplier, no gradient, nothing to report
            self.sig[node] = Sig(1.0, 1.0, 1.0, n)
            return
        if k == Kind.OTHER and node.grad_inputs == [] and node.op in _RANDOM:
            q = {"rand": 1 / 3, "rand_like": 1 / 3}.get(node.op, 1.0)
            mean = 0.5 if node.op.startswith("rand") and "n" not in node.op else 0.0
            self.sig[node] = Sig(q, mean, mean * mean, n)
            return
        handler = getattr(self, f"f_{k}", None)
        if handler is None:
            self.f_passthrough(node, unknown=True)
            return
        handler(node)

    def f_passthrough(self, node: Node, unknown: bool = False) -> None:
        if unknown:
            self.note_unknown(node)
        x = self.s_in(node)
        n = self.numel(node)
        self.sig[node] = Sig(x.q, x.m, x.s, n).with_w(x.w_)
        # selection / broadcast: each input element's gradient is the sum over its copies
        ratio = n / max(x.numel, 1)
        self.back[node] = [(0, ratio)] if node.inputs else []

    # reshape-like ops move values around without changing them
    def f_reshape(self, node: Node) -> None:
        src = node.inputs[0] if node.inputs else None
        v = self.sig.get(src) if src is not None else None
        if node.op == "getitem" and isinstance(v, list):
            idx = node.attrs.get("index")
            if idx is None:
                args = node.attrs.get("args") or ()
                idx = args[1] if len(args) > 1 and isinstance(args[1], int) else 0
            item = v[idx] if isinstance(idx, int) and -len(v) <= idx < len(v) else v[0]
            self.sig[node] = Sig(item.q, item.m, item.s, self.numel(node)).with_w(item.w_)
            self.back[node] = [(0, 1.0)]
            self.custom_back[node] = ("tuple_item", idx)
            return
        self.f_passthrough(node)

    def f_dropout(self, node: Node) -> None:
        p = float(node.attrs.get("p", _kw(node, "p", 1, 0.5)))
        training = _kw(node, "training", 2, True)
        if node.module is not None:
            training = True  # the probe runs in train mode
        x = self.s_in(node)
        if not training or p <= 0:
            self.sig[node] = Sig(x.q, x.m, x.s, self.numel(node)).with_w(x.w_)
            self.back[node] = [(0, 1.0)]
            return
        keep = max(1 - p, 1e-6)
        self.sig[node] = Sig(x.q / keep, x.m, x.s, self.numel(node)).with_w(x.w_)
        self.back[node] = [(0, 1.0 / keep)]

    def f_activation(self, node: Node) -> None:
        x = self.s_in(node)
        op = node.op
        if op in ("softmax", "softmin", "log_softmax"):
            self._softmax(node, x)
            return
        if op == "glu":
            half = Sig(x.q, x.m, x.s, x.numel // 2)
            gate, chi = activation("sigmoid", half, {})
            self.sig[node] = Sig(x.q * gate.q, x.m * gate.m, x.s * gate.s, self.numel(node))
            self.back[node] = [(0, 0.5 * (gate.q + x.q * chi))]
            return
        if op not in SUPPORTED_OPS:
            self.f_passthrough(node, unknown=True)
            return
        params = _act_params(node)
        out, chi = activation(op, x, params)
        self.sig[node] = Sig(out.q, out.m, out.s, self.numel(node)).with_w(out.w_)
        self.back[node] = [(0, chi)]
        self.gs_rule[node] = [(0, derivative_coherence(op, x, params), 0.0)]

    def _softmax(self, node: Node, x: Sig) -> None:
        dim = node.attrs.get("dim", _kw(node, "dim", 1, -1))
        shape = node.shape or ()
        T = shape[dim] if shape and isinstance(dim, int) and -len(shape) <= dim < len(shape) \
            else (shape[-1] if shape else 1)
        v = max(x.q - x.s, 0.0)
        sa = min(math.exp(min(v, 50.0)) / max(T, 1), 1.0)  # sum_j A_j^2
        q = sa / max(T, 1)
        self.sig[node] = Sig(q, 1.0 / max(T, 1), 1.0 / max(T, 1) ** 2, self.numel(node))
        # dS_j = A_j (g_j - sum_k A_k g_k): per element E[A^2] of the incoming gradient
        self.back[node] = [(0, q * (1 - 1.0 / max(T, 1)))]

    def f_norm(self, node: Node) -> None:
        x = self.s_in(node)
        n = self.numel(node)
        gamma, beta = self._norm_affine(node)
        g2, b2, bmean = _mean_sq(gamma) if gamma is not None else 1.0, _mean_sq(beta), \
            _mean(beta)
        eps = float(getattr(node.module, "eps", None) or _kw(node, "eps", 4, 1e-5) or 1e-5)
        op = node.op
        shape = node.shape or ()
        if op == "batch_norm":
            training = node.module is None and _kw(node, "training", 5, False) or (
                node.module is not None)
            C = shape[1] if len(shape) > 1 else 1
            M = max(n // max(C, 1), 1)
            if training:
                self.centring.add(node)
                var = max(x.q - x.s, 0.0)
                within = max(x.w - x.s, 0.0) / var if var > 0 else 0.0
                self.sig[node] = Sig(g2 + b2, bmean, b2, n).with_w(g2 * within + b2)
                self.back[node] = [(0, g2 / (var + eps) * max(1 - 2.0 / M, 0.0))]
            else:
                rv = getattr(node.module, "running_var", None)
                rvar = _mean(rv) if rv is not None else 1.0
                self.sig[node] = Sig(g2 * x.q / (rvar + eps) + b2, bmean, g2 * x.s /
                                     (rvar + eps) + b2, n)
                self.back[node] = [(0, g2 / (rvar + eps))]
            return
        if op in ("layer_norm", "group_norm", "instance_norm"):
            group = self._norm_group_size(node, shape)
            var = max(x.q - x.m * x.m, 0.0)
            if op == "instance_norm" or op == "group_norm":
                var = max(x.q - x.s, 0.0) if op == "instance_norm" else var
            frac = (max(x.s - x.m * x.m, 0.0) / var) if var > 0 and op == "layer_norm" else 0.0
            wfrac = (max(x.w - x.m * x.m, 0.0) / var) if var > 0 and op == "layer_norm" else 0.0
            self.sig[node] = Sig(g2 + b2, bmean, g2 * frac + b2, n).with_w(g2 * wfrac + b2)
            self.back[node] = [(0, g2 / (var + eps) * max(1 - 2.0 / max(group, 1), 0.0))]
            if op != "layer_norm":
                # per-sample statistics over a group of channels and all positions: the
                # backward removes the group average of what each channel's gradient shares
                # across positions
                per_group = _numel(shape[1:2]) / max(getattr(node.module, "num_groups", 1)
                                                     if op == "group_norm" else _numel(
                                                         shape[1:2]), 1)
                keep = max(1.0 - 1.0 / max(per_group, 1.0), 0.0)
                gain = self.back[node][0][1]
                self.gs_rule[node] = [(0, gain * keep, 0.0)]
            return
        if op in ("rms_norm", "normalize"):
            group = shape[-1] if shape else 1
            frac = x.s / x.q if x.q > 0 else 0.0
            if op == "normalize":
                self.sig[node] = Sig(1.0 / max(group, 1), 0.0, 0.0, n)
                self.back[node] = [(0, 1.0 / max(x.q * group, _EPS))]
                return
            self.sig[node] = Sig(g2, x.m / math.sqrt(x.q + eps) * (_mean(gamma) if gamma is not
                                                                 None else 1.0),
                                 g2 * frac, n).with_w(g2 * x.w / x.q if x.q > 0 else None)
            self.back[node] = [(0, g2 / (x.q + eps) * max(1 - 1.0 / max(group, 1), 0.0))]
            return
        self.f_passthrough(node, unknown=True)

    def _norm_affine(self, node: Node) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        m = node.module
        if m is not None:
            return getattr(m, "weight", None), getattr(m, "bias", None)
        params = [i.tensor for i in node.inputs if i.kind == Kind.PARAM and i.tensor is not None]
        params = [p for p in params if p.dim() == 1 and p.dtype.is_floating_point]
        # F.batch_norm(x, running_mean, running_var, weight, bias): the last two 1-D params
        if node.op == "batch_norm" and len(params) >= 4:
            return params[2], params[3]
        return (params[0] if params else None), (params[1] if len(params) > 1 else None)

    @staticmethod
    def _norm_group_size(node: Node, shape: tuple) -> int:
        m = node.module
        if isinstance(m, nn.LayerNorm):
            return _numel(m.normalized_shape)
        if isinstance(m, nn.GroupNorm) and shape:
            return max(_numel(shape[1:]) // max(m.num_groups, 1), 1)
        if node.op == "instance_norm" and len(shape) > 2:
            return _numel(shape[2:])
        return shape[-1] if shape else 1

    # ----------------------------------------------------------------------- weight layers
    def f_linear(self, node: Node) -> None:
        x_idx = self._data_input(node)
        x = self.s_in(node, x_idx)
        w, b, in_dim = self._linear_params(node)
        if w is None:
            self.f_passthrough(node, unknown=True)
            return
        st = linear_stats(w, b, in_dim=in_dim)
        out = linear_forward(x, st, self.numel(node))
        self.sig[node] = out
        rows = max(self.numel(node) // max(st.out, 1), 1)
        self.custom_back[node] = ("weight", x_idx, st.col2, rows, x.q, st, x)

    def _data_input(self, node: Node) -> int:
        for k, i in enumerate(node.inputs):
            if i.kind not in (Kind.PARAM,):
                return k
        return 0

    def _linear_params(self, node: Node):
        m = node.module
        if m is not None and isinstance(getattr(m, "weight", None), torch.Tensor):
            if isinstance(m, nn.Bilinear):
                w = m.weight.detach().reshape(m.weight.shape[0], -1)
                return w, m.bias, 1
            return m.weight, getattr(m, "bias", None), 1
        params = [i for i in node.inputs if i.kind == Kind.PARAM and i.tensor is not None]
        wp = node.attrs.get("weight_param")
        if isinstance(wp, Node) and wp.tensor is not None and wp not in params:
            params.append(wp)
        w = next((p.tensor for p in params if p.tensor.dim() == 2), None)
        b = next((p.tensor for p in params if p.tensor.dim() == 1), None)
        if w is None:
            return None, None, 1
        fn = node.attrs.get("function")
        if fn in ("matmul", "mm", "addmm", "bmm", "baddbmm"):
            from ..analysis.init_stats import matmul_weight_in_dim

            return w, b, matmul_weight_in_dim(node)
        return w, b, 1

    def f_conv(self, node: Node) -> None:
        x_idx = self._data_input(node)
        x = self.s_in(node, x_idx)
        m = node.module
        if m is not None:
            w, b = m.weight, m.bias
            stride = m.stride
        else:
            params = [i.tensor for i in node.inputs if i.kind == Kind.PARAM and
                      i.tensor is not None]
            w = next((p for p in params if p.dim() >= 3), None)
            b = next((p for p in params if p.dim() == 1), None)
            stride = _kw(node, "stride", 3, 1)
        if w is None:
            self.f_passthrough(node, unknown=True)
            return
        nd = w.dim() - 2
        stride = stride if isinstance(stride, (tuple, list)) else (stride,) * nd
        if node.op == "conv_transpose":
            # weight [in, out/g, *k]: each output sums in*k/stride inputs
            wt = w.detach().transpose(0, 1)
            st = linear_stats(wt, b, transposed=True)
            s_prod = max(_numel(stride), 1)
            a_scale = 1.0 / s_prod
            st = _LinearStats(a=st.a * a_scale, bm=st.bm * a_scale * a_scale, col2=st.a,
                              b2=st.b2, bmean=st.bmean, brow=st.brow * a_scale,
                              rowsum_mean=st.rowsum_mean * a_scale, fan_in=st.fan_in, out=st.out)
            back_gain = float(w.detach().float().pow(2).sum() / w.shape[0])
            # each weight entry pairs an input position with one output: rows = input positions
            rows = max(x.numel // max(w.shape[0], 1), 1)
            self.sig[node] = linear_forward(x, st, self.numel(node))
            self.custom_back[node] = ("weight_conv", x_idx, back_gain, rows, x.q, None, x)
            return
        st = linear_stats(w, b)
        out = linear_forward(x, st, self.numel(node))
        self.sig[node] = out
        out_ch = w.shape[0]
        rows = max(self.numel(node) // max(out_ch, 1), 1)  # batch x output positions
        # each input element feeds out/groups channels x k positions / stride
        k = _numel(w.shape[2:])
        groups = max(_groups(m, node), 1)
        in_positions = max(x.numel // max(w.shape[1] * groups, 1), 1)
        # each input element feeds the out/groups channels of its group at k offsets
        gain = st.col2 * k / groups * rows / in_positions
        cs2 = _kernel_colsum_sq(w) / groups * rows / in_positions
        spatial = node.input_shapes[x_idx][2:] if node.input_shapes and \
            node.input_shapes[x_idx] else ()
        interior = 1.0
        for size, kk in zip(spatial, w.shape[2:]):
            interior *= max(size - kk + 1, 1) / max(size, 1)  # zero padding breaks constancy
        cs2 *= interior
        self.custom_back[node] = ("weight_conv", x_idx, gain, rows, x.q, cs2, x)

    def f_embedding(self, node: Node) -> None:
        m = node.module
        w = getattr(m, "weight", None) if m is not None else next(
            (i.tensor for i in node.inputs if i.kind == Kind.PARAM and i.tensor is not None
             and i.tensor.dim() == 2), None)
        if w is None:
            self.f_passthrough(node, unknown=True)
            return
        wd = w.detach().float()
        q = _mean_sq(wd)
        col_mean = wd.mean(0)
        s = float(col_mean.pow(2).mean())
        n = self.numel(node)
        dim = wd.shape[1]
        if node.op == "embedding_bag":
            ids = node.input_shapes[0] if node.input_shapes else None
            bag = ids[-1] if ids and len(ids) > 1 else 1
            mode = getattr(m, "mode", "mean")
            factor = 1.0 / bag if mode == "mean" else (1.0 if mode == "sum" else 1.0)
            qo = s + (q - s) / bag if mode == "mean" else (bag * q + bag * (bag - 1) * s)
            self.sig[node] = Sig(qo, float(col_mean.mean()) * (1 if mode == "mean" else bag), s,
                                 n)
            lookups = _numel(ids) if ids else n // dim
            self.custom_back[node] = ("embedding", lookups, wd.shape[0], factor ** 2)
            return
        pad = getattr(m, "padding_idx", None) if m is not None else None
        self.sig[node] = Sig(q, float(col_mean.mean()), s, n)
        lookups = max(n // max(dim, 1), 1)
        rows = wd.shape[0] - (1 if pad is not None else 0)
        self.custom_back[node] = ("embedding", lookups, max(rows, 1), 1.0)

    # ----------------------------------------------------------------------- joins
    def f_add(self, node: Node) -> None:
        sigs = [self.s_in(node, i) for i in range(len(node.inputs))]
        sign = -1.0 if node.op == "sub" else 1.0
        alpha = _kw(node, "alpha", 2, 1.0)
        alpha = float(alpha) if isinstance(alpha, (int, float)) else 1.0
        scalars = [a for a in (node.attrs.get("args") or ())
                   if isinstance(a, (int, float)) and not isinstance(a, bool)]
        c = sum(scalars) if scalars and len(sigs) == 1 else 0.0
        if not sigs:
            self.f_passthrough(node, unknown=True)
            return
        weights = [1.0] + [sign * alpha] * (len(sigs) - 1)
        q = sum(w * w * s.q for w, s in zip(weights, sigs))
        mm = sum(w * s.m for w, s in zip(weights, sigs)) + c
        s_ = sum(w * w * s.s for w, s in zip(weights, sigs))
        w_ = sum(w * w * s.w for w, s in zip(weights, sigs))
        # cross terms between inputs through their means only
        for i in range(len(sigs)):
            for j in range(i + 1, len(sigs)):
                cross = 2 * weights[i] * weights[j] * sigs[i].m * sigs[j].m
                q += cross
                s_ += cross
                w_ += cross
        if c:
            q += c * c + 2 * c * sigs[0].m
            s_ += c * c + 2 * c * sigs[0].m
        n = self.numel(node)
        has_w = any(sg.w_ is not None for sg in sigs)
        self.sig[node] = Sig(max(q, 0.0), mm, max(s_, 0.0), n).with_w(w_ if has_w else None)
        self.back[node] = [(i, w * w * n / max(s.numel, 1)) for i, (w, s) in
                           enumerate(zip(weights, sigs))]

    def f_mul(self, node: Node) -> None:
        sigs = [self.s_in(node, i) for i in range(len(node.inputs))]
        args = node.attrs.get("args") or ()
        scalars = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        c = 1.0
        for a in scalars:
            c = c * a if node.op == "mul" or a is args[0] else c / a if a else c
        n = self.numel(node)
        if len(sigs) == 1:
            x = sigs[0]
            self.sig[node] = Sig(x.q * c * c, x.m * c, x.s * c * c, n).with_w(
                x.w_ * c * c if x.w_ is not None else None)
            self.back[node] = [(0, c * c * n / max(x.numel, 1))]
            return
        if not sigs:
            self.f_passthrough(node, unknown=True)
            return
        a, b = sigs[0], sigs[1]
        if node.op == "div":
            inv_q = 1.0 / max(b.q, _EPS)
            b = Sig(inv_q, 1.0 / b.m if abs(b.m) > 1e-12 else 0.0, inv_q, b.numel)
        q = a.q * b.q * c * c
        self.sig[node] = Sig(q, a.m * b.m * c, a.s * b.s * c * c, n).with_w(
            a.w * b.w * c * c if (a.w_ is not None or b.w_ is not None) else None)
        self.back[node] = [(0, b.q * c * c * n / max(a.numel, 1)),
                           (1, a.q * c * c * n / max(b.numel, 1))]

    def f_concat(self, node: Node) -> None:
        sigs = [self.s_in(node, i) for i in range(len(node.inputs))]
        tot = sum(s.numel for s in sigs) or 1
        q = sum(s.q * s.numel for s in sigs) / tot
        m = sum(s.m * s.numel for s in sigs) / tot
        s_ = sum(s.s * s.numel for s in sigs) / tot
        w_ = sum(s.w * s.numel for s in sigs) / tot
        self.sig[node] = Sig(q, m, s_, self.numel(node)).with_w(
            w_ if any(sg.w_ is not None for sg in sigs) else None)
        self.back[node] = [(i, 1.0) for i in range(len(sigs))]

    def f_reduce(self, node: Node) -> None:
        x = self.s_in(node)
        n = self.numel(node)
        K = max(x.numel // max(n, 1), 1)
        op = node.op
        over_positions = _reduces_positions(node)
        if op in ("mean", "nanmean"):
            base = x.w if over_positions else x.s
            q = base + (x.q - base) / K
            self.sig[node] = Sig(q, x.m, x.s, n)
            self.back[node] = [(0, 1.0 / (K * K))]
            if over_positions:
                self.gs_rule[node] = [(0, 1.0 / (K * K), 1.0 / (K * K))]
            return
        if op == "sum":
            base = x.w if over_positions else x.s
            q = K * K * base + K * (x.q - base)
            self.sig[node] = Sig(q, K * x.m, K * K * x.s, n)
            self.back[node] = [(0, 1.0)]
            if over_positions:
                self.gs_rule[node] = [(0, 1.0, 1.0)]
            return
        if op in ("amax", "max", "amin", "min"):
            self.sig[node] = Sig(x.q, x.m, x.s, n)
            self.back[node] = [(0, n / max(x.numel, 1))]
            return
        self.f_passthrough(node, unknown=True)

    def f_pool(self, node: Node) -> None:
        x = self.s_in(node)
        n = self.numel(node)
        K = max(x.numel / max(n, 1), 1.0)
        if "avg" in node.op or node.op == "lp_pool":
            kernel = _pool_kernel(node, K)
            q = x.w + (x.q - x.w) / kernel
            self.sig[node] = Sig(q, x.m, x.s, n).with_w(x.w_)
            # each input element feeds (kernel / K) outputs, weight 1/kernel each
            self.back[node] = [(0, (kernel / K) / (kernel * kernel))]
            return
        kernel = _pool_kernel(node, K)
        q = _max_second_moment(x, int(round(kernel)))
        m_out = x.m + math.sqrt(max(x.q - x.s, 0.0)) * _expected_max(int(round(kernel)))
        self.sig[node] = Sig(q, m_out, max(x.s, m_out * m_out), n)
        self.back[node] = [(0, n / max(x.numel, 1))]

    def f_attention(self, node: Node) -> None:
        if node.module is not None and isinstance(node.module, nn.MultiheadAttention):
            self._mha(node)
            return
        if node.op == "scaled_dot_product_attention":
            self._sdpa(node)
            return
        self.f_passthrough(node, unknown=True)

    def _sdpa(self, node: Node) -> None:
        qs, ks, vs = (self.s_in(node, i) for i in range(3))
        shapes = node.input_shapes
        T = shapes[0][-2] if shapes and shapes[0] and len(shapes[0]) >= 2 else 1
        S = shapes[1][-2] if len(shapes) > 1 and shapes[1] and len(shapes[1]) >= 2 else T
        d = shapes[0][-1] if shapes and shapes[0] else 1
        dv = shapes[2][-1] if len(shapes) > 2 and shapes[2] else d
        causal = bool(_kw(node, "is_causal", 5, False))
        scale = _kw(node, "scale", 6, None)
        scale2 = float(scale) ** 2 * d if isinstance(scale, (int, float)) else 1.0
        out, back = attention_moments(qs, ks, vs, T, S, d, dv, causal, scale2, self.numel(node))
        self.sig[node] = out
        self.back[node] = back

    def _mha(self, node: Node) -> None:
        m: nn.MultiheadAttention = node.module  # type: ignore[assignment]
        E, H = m.embed_dim, m.num_heads
        d = E // H
        xq = self.s_in(node, 0)
        xk = self.s_in(node, 1) if len(node.inputs) > 1 else xq
        xv = self.s_in(node, 2) if len(node.inputs) > 2 else xk
        shapes = node.input_shapes
        bdim = 0 if m.batch_first else 1
        qshape = shapes[0] if shapes and shapes[0] else (1, 1, E)
        kshape = shapes[1] if len(shapes) > 1 and shapes[1] else qshape
        T = qshape[1 - bdim] if len(qshape) == 3 else qshape[0]
        S = kshape[1 - bdim] if len(kshape) == 3 else kshape[0]
        if m.in_proj_weight is not None:
            wq, wk, wv = m.in_proj_weight.detach().chunk(3)
        else:
            wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        bq = bk = bv = None
        if m.in_proj_bias is not None:
            bq, bk, bv = m.in_proj_bias.detach().chunk(3)
        stq, stk, stv = (linear_stats(w, b) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
        nq = _numel(qshape)
        nk = _numel(kshape)
        q_sig = linear_forward(xq, stq, nq)
        k_sig = linear_forward(xk, stk, nk)
        v_sig = linear_forward(xv, stv, nk)
        att, back = attention_moments(q_sig, k_sig, v_sig, T, S, d, d, False, 1.0, nq)
        sto = linear_stats(m.out_proj.weight, m.out_proj.bias)
        out = linear_forward(att, sto, nq)
        self.sig[node] = [out, Sig(0.0, 0.0, 0.0, 1)]
        self.custom_back[node] = ("mha", (xq, xk, xv), (stq, stk, stv), back, att, sto,
                                  (nq, nk))

    def f_recurrent(self, node: Node) -> None:
        """Recurrent layers are simulated numerically at their real width (SIGNAL.md: the
        gated mean-field recursions miss the shared-W_hh correlations)."""
        from .recurrent import simulate_recurrent

        ins = [self.s_in(node, i) for i in range(len(node.inputs))]
        sim = simulate_recurrent(node, ins, None)
        self.sig[node] = sim.outputs
        self.custom_back[node] = ("recurrent", ins)

    def f_matmul(self, node: Node) -> None:
        if len(node.inputs) < 2:
            self.f_passthrough(node, unknown=True)
            return
        a, b = self.s_in(node, 0), self.s_in(node, 1)
        sa = node.input_shapes[0] if node.input_shapes else None
        sb = node.input_shapes[1] if len(node.input_shapes) > 1 else None
        if not sa or not sb or node.op not in ("matmul", "mm", "bmm"):
            self.f_passthrough(node, unknown=True)
            return
        n_in = sa[-1]
        M = sa[-2] if len(sa) >= 2 else 1
        P = sb[-1] if len(sb) >= 2 else 1
        q = n_in * (a.q * b.q) + n_in * (n_in - 1) * a.m * a.m * b.m * b.m
        n = self.numel(node)
        self.sig[node] = Sig(q, n_in * a.m * b.m, n_in * a.s * b.s, n)
        out_batch = n / max(M * P, 1)
        a_batch = a.numel / max(M * n_in, 1)
        b_batch = b.numel / max(n_in * P, 1)
        self.back[node] = [(0, P * b.q * out_batch / max(a_batch, 1e-12)),
                           (1, M * a.q * out_batch / max(b_batch, 1e-12))]

    def f_other(self, node: Node) -> None:
        x = self.s_in(node)
        n = self.numel(node)
        op = node.op
        if op == "neg":
            self.sig[node] = Sig(x.q, -x.m, x.s, n)
            self.back[node] = [(0, 1.0)]
            return
        if op in ("pad", "upsample", "interpolate"):
            self.sig[node] = Sig(x.q, x.m, x.s, n)
            ratio = n / max(x.numel, 1)
            self.back[node] = [(0, ratio if op != "pad" else 1.0)]
            return
        if op in ("rsqrt", "sqrt", "pow", "square", "exp", "clamp", "clamp_min", "abs", "erf",
                  "reciprocal", "log", "sin", "cos", "tensor", "arange", "local_response_norm"):
            self._elementwise_other(node, x)
            return
        self.f_passthrough(node, unknown=True)

    def _elementwise_other(self, node: Node, x: Sig) -> None:
        op = node.op
        n = self.numel(node)
        if op in ("tensor", "arange"):
            self.sig[node] = Sig(0.0, 0.0, 0.0, n)
            return
        if op in ("sin", "cos"):  # rotary tables: a phase spread over many periods
            self.sig[node] = Sig(0.5, 0.0, 0.5, n).with_w(0.5)
            self.back[node] = [(0, 0.5)]
            return
        if op == "clamp" or op == "clamp_min" or op == "abs" or op == "local_response_norm":
            self.sig[node] = Sig(x.q, x.m, x.s, n)
            self.back[node] = [(0, 1.0 if op != "clamp_min" else 0.5)]
            return
        args = node.attrs.get("args") or ()
        if op in ("pow", "square"):
            p = 2.0 if op == "square" else next((float(a) for a in args[1:] if isinstance(
                a, (int, float)) and not isinstance(a, bool)), 2.0)
            if abs(p - 2.0) < 1e-9:
                self.sig[node] = Sig(3 * x.q * x.q, x.q, x.q * x.q, n)
                self.back[node] = [(0, 4 * x.q)]
                return
        if op == "rsqrt":
            base = max(x.m if x.m > 0 else x.q, _EPS)
            self.sig[node] = Sig(1.0 / base, 1.0 / math.sqrt(base), 1.0 / base, n)
            self.back[node] = [(0, 0.25 / base ** 3)]
            return
        if op == "sqrt":
            base = max(x.m if x.m > 0 else x.q, _EPS)
            self.sig[node] = Sig(base, math.sqrt(base), base, n)
            self.back[node] = [(0, 0.25 / base)]
            return
        self.f_passthrough(node, unknown=True)

    # ----------------------------------------------------------------------- backward
    def backward(self) -> None:
        out = self.g.output
        if out is None:
            return
        g2: dict[Node, float] = {n: 0.0 for n in self.g.nodes}
        gs, gsc = self.gs, self.gsc
        # tuple-valued nodes receive per-item gradients
        item_g2: dict[Node, dict[int, float]] = {}
        g2[out] = 1.0 / max(self.numel(out), 1)
        for node in reversed(self.g.nodes):
            go = g2.get(node, 0.0)
            gso, gsco = gs.get(node, 0.0), gsc.get(node, 0.0)
            if node in self.centring:  # batch norm removes the batch-common part
                gso, gsco = 0.0, gso + gsco
            cb = self.custom_back.get(node)
            if node.kind == Kind.RECURRENT and cb is not None:
                self._back_recurrent(node, cb, item_g2.get(node, {}), g2)
                continue
            if node.kind == Kind.ATTENTION and cb is not None and cb[0] == "mha":
                self._back_mha(node, cb, item_g2.get(node, {}), g2)
                continue
            if go <= 0.0:
                continue
            allowed = set(node.grad_parents())
            if cb is not None and cb[0] == "tuple_item":
                src = node.inputs[0]
                item_g2.setdefault(src, {})
                idx = cb[1] if isinstance(cb[1], int) else 0
                item_g2[src][idx] = item_g2[src].get(idx, 0.0) + go
                ratio = self.numel(node) / max(self.numel(src), 1)
                g2[src] = g2.get(src, 0.0) + go * ratio
                gs[src] = gs.get(src, 0.0) + gso * ratio
                gsc[src] = gsc.get(src, 0.0) + gsco * ratio
                continue
            if cb is not None and cb[0] in ("weight", "weight_conv"):
                self._back_weight(node, cb, go, gso, gsco, g2, allowed)
                continue
            if cb is not None and cb[0] == "embedding":
                _, lookups, rows, factor = cb
                ms = lookups * go * factor / max(rows, 1)
                self._record(node, ms)
                continue
            rules = self.gs_rule.get(node)
            coh = min(gso + gsco, go)
            for entry in self.back.get(node, []):
                idx, gain = entry[0], entry[1]
                if idx >= len(node.inputs):
                    continue
                parent = node.inputs[idx]
                if parent not in allowed:
                    continue
                if len(entry) == 4:  # (idx, gain, gain of the shared part, gs gain)
                    g2[parent] = g2.get(parent, 0.0) + gain * (go - coh) + entry[2] * coh
                    gs[parent] = gs.get(parent, 0.0) + entry[3] * gso
                    gsc[parent] = gsc.get(parent, 0.0) + entry[3] * gsco
                    continue
                g2[parent] = g2.get(parent, 0.0) + go * gain
                if rules is None:
                    gs[parent] = gs.get(parent, 0.0) + gso * gain
                    gsc[parent] = gsc.get(parent, 0.0) + gsco * gain
                if gain > 0:
                    self.decades[node] = 0.5 * math.log10(gain)
            for idx, a, b in rules or ():
                if idx < len(node.inputs) and node.inputs[idx] in allowed:
                    parent = node.inputs[idx]
                    gs[parent] = gs.get(parent, 0.0) + a * gso + b * go
                    gsc[parent] = gsc.get(parent, 0.0) + a * gsco
        self.g2 = g2

    def _record(self, node: Node, mean_sq: float) -> None:
        module = node.module_path if node.module_path is not None else None
        if module is None:
            return
        w = node.weight()
        count = w.numel() if w is not None else 1
        self.add_weight_grad(module, mean_sq, count, node)

    def _back_weight(self, node: Node, cb: tuple, go: float, gso: float, gsco: float,
                     g2: dict, allowed: set) -> None:
        kind, x_idx, gain, rows, q_in, extra, x = cb
        coh = gso + gsco
        if coh > go:
            gso, gsco, coh = gso * go / coh, gsco * go / coh, go
        # positions per sample whose gradients may be coherent (e.g. after global pooling)
        batch = node.shape[0] if node.shape else 1
        per_sample = max(rows / max(batch, 1), 1.0)
        ms = rows * _coherent_pairing(go, gso, gsco, x, per_sample)
        self._record(node, ms)
        if x_idx >= len(node.inputs):
            return
        parent = node.inputs[x_idx]
        if parent not in allowed:
            return
        if kind == "weight":
            st = extra
            ratio = gain * (self.numel(node) / max(st.out, 1)) / max(
                self.numel(parent) / max(st.fan_in, 1), 1)
            per_in, a = ratio * go, ratio
        else:
            cs2 = extra if extra is not None else gain
            per_in = gain * (go - coh) + cs2 * coh
            a = cs2
        g2[parent] = g2.get(parent, 0.0) + per_in
        self.gs[parent] = self.gs.get(parent, 0.0) + a * gso
        self.gsc[parent] = self.gsc.get(parent, 0.0) + a * gsco
        if per_in > 0 and go > 0:
            self.decades[node] = 0.5 * math.log10(per_in / go)

    def _back_mha(self, node: Node, cb: tuple, items: dict, g2: dict) -> None:
        _, xs, sts, back, att, sto, (nq, nk) = cb
        go = items.get(0, g2.get(node, 0.0))
        if go <= 0:
            return
        gso = min(self.gs.get(node, 0.0), go)
        gsco = min(self.gsc.get(node, 0.0), go - gso)
        m = node.module
        shape = node.input_shapes[0] if node.input_shapes else None
        batch_axis = 0 if m.batch_first else 1
        batch = shape[batch_axis] if shape and len(shape) == 3 else 1
        rows_q = max(nq // max(m.embed_dim, 1), 1)
        rows_k = max(nk // max(m.embed_dim, 1), 1)
        per_q, per_k = rows_q / max(batch, 1), rows_k / max(batch, 1)
        out_path = f"{node.module_path}.out_proj" if node.module_path else "out_proj"
        self.add_weight_grad(out_path, rows_q * _coherent_pairing(go, gso, gsco, att, per_q),
                             m.out_proj.weight.numel(), node)
        # back through out_proj (shared parts keep their share), then the attention
        g_att, gs_att, gsc_att = sto.col2 * go, sto.col2 * gso, sto.col2 * gsco
        coh = gs_att + gsc_att
        (_, gq, _, _), (_, gk, _, _), (_, gv, share, _) = back
        g_q, g_k = gq * (g_att - coh), gk * (g_att - coh)
        g_v = gv * (g_att - coh) + share * coh
        gs_v, gsc_v = share * gs_att, share * gsc_att
        stq, stk, stv = sts
        sizes = [stq.out * stq.fan_in, stk.out * stk.fan_in, stv.out * stv.fan_in]
        ms = (sizes[0] * rows_q * g_q * xs[0].q + sizes[1] * rows_k * g_k * xs[1].q
              + sizes[2] * rows_k * _coherent_pairing(g_v, gs_v, gsc_v, xs[2], per_k))
        if node.module_path is not None:
            self.add_weight_grad(node.module_path, ms / max(sum(sizes), 1), sum(sizes), node)
        parents = node.grad_parents()
        gains = [stq.col2 * g_q, stk.col2 * g_k, stv.col2 * g_v]
        shared = [0.0, 0.0, stv.col2 * gs_v]
        shared_c = [0.0, 0.0, stv.col2 * gsc_v]
        distinct = list(dict.fromkeys(node.inputs[:3]))
        for i in range(3):
            src = node.inputs[i] if i < len(node.inputs) else (distinct[0] if distinct else None)
            if src is None or src not in parents:
                continue
            g2[src] = g2.get(src, 0.0) + gains[i]
            self.gs[src] = self.gs.get(src, 0.0) + shared[i]
            self.gsc[src] = self.gsc.get(src, 0.0) + shared_c[i]
        self.decades[node] = 0.5 * math.log10(max(sum(gains), _EPS) / go)

    def _back_recurrent(self, node: Node, cb: tuple, items: dict, g2: dict) -> None:
        from .recurrent import simulate_recurrent

        _, ins = cb
        go = dict(items)
        if not go and g2.get(node, 0.0) > 0:
            go = {0: g2[node]}
        if not any(v > 0 for v in go.values()):
            return
        last_only = _reads_last_step(node, self.g)
        sim = simulate_recurrent(node, ins, go, last_only=last_only)
        for module, ms in sim.weight_mean_sq.items():
            self.add_weight_grad(module, ms, sim.weight_counts[module], node)
        parents = node.grad_parents()
        for i, gin in enumerate(sim.input_g2):
            if i < len(node.inputs) and node.inputs[i] in parents:
                g2[node.inputs[i]] = g2.get(node.inputs[i], 0.0) + gin
        total_out = sum(go.values())
        if total_out > 0 and sim.input_g2 and sim.input_g2[0] > 0:
            self.decades[node] = 0.5 * math.log10(sim.input_g2[0] / total_out)


def attention_moments(qs: Sig, ks: Sig, vs: Sig, T: int, S: int, d: int, dv: int,
                      causal: bool, scale2: float, numel_out: int
                      ) -> tuple[Sig, list[tuple[int, float]]]:
    """Softmax attention at init (SIGNAL.md): output moments and per-input backward gains."""
    s2 = scale2 * max(qs.q - qs.s, 0.0) * max(ks.q, 0.0)  # logit variance across keys
    s2 = min(s2, 50.0)
    if causal:
        harmonic = sum(1.0 / i for i in range(1, max(S, 1) + 1))
        sa = min(math.exp(s2) * harmonic / max(S, 1), 1.0)
        keys = (S + 1) / 2
    else:
        sa = min(math.exp(s2) / max(S, 1), 1.0)
        keys = S
    rho = vs.w / vs.q if vs.q > 0 else 0.0  # positions of one sample
    q_out = vs.q * (rho + (1 - rho) * sa)
    # every query averages nearly the same values: outputs of one sample are alike
    w_out = vs.q * (rho + (1 - rho) * (1.0 / max(keys if False else S, 1)))
    out = Sig(q_out, vs.m, vs.s, numel_out).with_w(min(max(w_out, vs.w), q_out))
    a2 = sa / max(keys, 1)  # E[A_ij^2] over attended pairs
    gv = T * a2 * (keys / max(S, 1))
    dlogit = a2 * dv * max(vs.q - vs.w, 0.0)
    gk = T * (keys / max(S, 1)) * dlogit * qs.q * scale2 / max(d, 1)
    gq = keys * dlogit * ks.q * scale2 / max(d, 1)
    share = (T / max(S, 1)) ** 2  # a gradient shared by all queries reaches every value
    return out, [(0, gq, 0.0, 0.0), (1, gk, 0.0, 0.0), (2, gv, share, share)]


def _coherent_pairing(go: float, gso: float, gsco: float, x: Sig, per_sample: float) -> float:
    """E[g x] summed over one sample's positions, per row: the incoherent part plus the part of
    the gradient shared by all positions of a sample, paired with what the input shares.

    A batch-centred shared gradient (sum over the batch zero, after batch norm) pairs only with
    the per-sample fluctuation of the input's positional mean."""
    P = per_sample
    return (go * x.q + (P - 1) * gso * max(x.w, 0.0)
            + gsco * (P * max(x.w - x.s, 0.0) + max(x.q - x.w, 0.0)))


def _kernel_colsum_sq(w: torch.Tensor) -> float:
    """Mean over input channels of sum_o (sum_k W[o, c, k])^2: the backward response of a
    convolution to a gradient that is constant over positions."""
    wd = w.detach()
    if _numel(wd.shape[2:]) == 1:  # 1x1 kernels: the plain column norm
        return float(torch.linalg.vector_norm(wd.float())) ** 2 / max(wd.shape[1], 1)
    ksum = wd.float().sum(dim=tuple(range(2, wd.dim())))  # [out, in/g]
    return float(torch.linalg.vector_norm(ksum)) ** 2 / max(ksum.shape[1], 1)


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
    return float(sum(w * mean_slope(m + sd * z) ** 2 for z, w in zip(_GH_Z, _GH_W)))


def derivative_coherence(op: str, x: Sig, params: dict) -> float:
    """E[phi'(h_a) phi'(h_b)] for two rows of one unit: how much of a gradient shared across
    rows survives the activation."""
    try:
        return _dcoh_cached(op, _round(x.q), _round(x.m), _round(x.s),
                            tuple(sorted(params.items())))
    except (ValueError, ZeroDivisionError):
        return 0.0


def _reduces_positions(node: Node) -> bool:
    """Does a mean/sum reduce over positions (not over the unit axis)?"""
    shape = node.input_shapes[0] if node.input_shapes else None
    if not shape:
        return False
    n = len(shape)
    dim = _kw(node, "dim", 1, None)
    if dim is None:
        return False
    dims = dim if isinstance(dim, (tuple, list)) else [dim]
    try:
        dims = {d + n if d < 0 else d for d in dims}
    except TypeError:
        return False
    unit = 1 if n in (4, 5) else n - 1
    return unit not in dims and 0 not in dims


def _kw(node: Node, name: str, pos: int, default: Any) -> Any:
    kwargs = node.attrs.get("kwargs") or {}
    if isinstance(kwargs, dict) and name in kwargs:
        v = kwargs[name]
        return v if not isinstance(v, Node) else default
    args = node.attrs.get("args") or ()
    if isinstance(args, (list, tuple)) and len(args) > pos:
        v = args[pos]
        return v if not isinstance(v, Node) else default
    return default


def _groups(m: Optional[nn.Module], node: Node) -> int:
    if m is not None:
        return int(getattr(m, "groups", 1))
    g = _kw(node, "groups", 6, 1)
    return int(g) if isinstance(g, int) else 1


def _pool_kernel(node: Node, default: float) -> float:
    m = node.module
    k = getattr(m, "kernel_size", None) if m is not None else _kw(node, "kernel_size", 1, None)
    if k is None:
        return default
    if isinstance(k, (tuple, list)):
        return float(math.prod(k))
    shape = node.shape or ()
    nd = max(len(shape) - 2, 1)
    return float(k) ** nd


@lru_cache(maxsize=1024)
def _max_moments(k: int) -> tuple[float, float]:
    """(E[M], E[M^2]) for M the max of k iid N(0, 1), by Gauss-Legendre on [-8, 8]."""
    if k <= 1:
        return 0.0, 1.0
    z, w = np.polynomial.legendre.leggauss(96)
    x = z * 8.0
    pdf = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    density = w * 8.0 * k * cdf ** (k - 1) * pdf
    return float(np.sum(density * x)), float(np.sum(density * x * x))


def _expected_max(k: int) -> float:
    return _max_moments(k)[0]


def _max_sq_std(k: int) -> float:
    return _max_moments(k)[1]


def _max_second_moment(x: Sig, k: int) -> float:
    """E[max^2] of k values sharing the per-unit part, fluctuating independently."""
    fl = max(x.q - x.s, 0.0)
    sd = math.sqrt(fl)
    mu = x.m
    return max(mu * mu + 2 * mu * sd * _expected_max(k) + fl * _max_sq_std(k)
               + max(x.s - x.m * x.m, 0.0), 0.0)


def _reads_last_step(node: Node, graph: Graph) -> bool:
    """Does the recurrent output reach the loss only through its last time step?"""
    outs = [u for u in node.users if u.kind == Kind.RESHAPE and u.op == "getitem"]
    seq_users = [u for u in outs if u.attrs.get("index", _kw(u, "index", 1, 0)) == 0]
    if not outs:
        return False
    for u in seq_users:
        for v in u.users:
            if v.kind == Kind.RESHAPE and v.op == "getitem":
                shape_in, shape_out = u.shape, v.shape
                if shape_in and shape_out and len(shape_out) < len(shape_in):
                    continue
            return False
    return True


def estimate_graph(graph: Graph) -> Estimate:
    """Run the estimator on an analysed graph."""
    return _Estimator(graph).run()
