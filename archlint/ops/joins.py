"""Joins of tensors: sums (residual connections), products (gates, scales), concatenation.

A sum adds the second moments of independent inputs (their means meet in cross terms) and
passes the gradient to every input unchanged; a product multiplies second moments and hands
each input the gradient times the other's second moment; concatenation averages moments by size
and slices the gradient back.
"""

from __future__ import annotations

from typing import Any, Optional

from ..graph.ir import Kind, Node
from ..meanfield.signal import EPS, Sig
from .base import Gains, Propagation, kw, scalars, unknown
from .positions import split_concat, start_token
from .shape import NoRule, ShapeMismatch, TensorShape, broadcast, norm_dim, promote
from .table import Op, family, register

#: Binary elementwise ops whose output is boolean.
BOOL_OUT = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
                      "logical_not", "isnan", "isinf", "and", "or", "xor"})


def binary_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    """Broadcasting elementwise ops of two or more operands (tensors or numbers)."""
    tensors = [a for a in args if isinstance(a, TensorShape)]
    if not tensors:
        raise NoRule("no tensors")
    try:
        shape = broadcast(*[t.shape for t in tensors])
    except NoRule:
        raise ShapeMismatch(" and ".join(str(list(t.shape)) for t in tensors)
                            + " do not broadcast") from None
    import torch

    dtype = torch.bool if name in BOOL_OUT else promote(list(args))
    if name == "where" and len(args) == 3:
        dtype = promote([a for a in args[1:]])
    return TensorShape(shape, dtype)


def _first_tensor(name: str, args: Any) -> TensorShape:
    x = args[0] if args else None
    if not isinstance(x, TensorShape):
        raise NoRule(name)
    return x


def _cat_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    seq = [t for t in args[0] if isinstance(t, TensorShape) and t.shape != (0,)]
    d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    d = norm_dim(d, seq[0].dim())
    for t in seq[1:]:
        if t.dim() != seq[0].dim() or any(a != b for i, (a, b) in
                                          enumerate(zip(t.shape, seq[0].shape)) if i != d):
            raise ShapeMismatch("cannot concatenate " + " and ".join(
                str(list(u.shape)) for u in seq) + f" along dimension {d}")
    s = list(seq[0].shape)
    s[d] = sum(t.shape[d] for t in seq)
    return TensorShape(tuple(s), promote(seq))


def _stack_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    seq = list(args[0])
    d = norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), seq[0].dim() + 1)
    s = seq[0].shape
    return seq[0].with_shape(s[:d] + (len(seq),) + s[d:])


def _signed_terms(node: Node, n_inputs: int, alpha: float) -> Optional[tuple[list, float]]:
    """For ``a - b`` (``sub``, ``rsub``; the node's op is ``add``): each tensor input's
    coefficient and the constant term, from the call's arguments in order."""
    fname = node.attrs.get("function") or node.op
    args = list(node.attrs.get("args") or ())
    if fname not in ("sub", "subtract", "rsub") or len(args) < 2:
        return None
    first, second = (args[1], args[0]) if fname == "rsub" else (args[0], args[1])
    weights, c = [0.0] * n_inputs, 0.0
    for value, coef in ((first, 1.0), (second, -alpha)):
        if isinstance(value, Node):
            idx = next((i for i, n in enumerate(node.inputs) if n is value), None)
            if idx is None:
                return None
            weights[idx] += coef
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            c += coef * float(value)
        else:
            return None
    return weights, c


def _straight_through(node: Node) -> Optional[tuple[int, Node]]:
    """``a + (b - a).detach()`` (a straight-through estimator: VQ-VAE's quantiser, rounding):
    the value is ``b``'s, the gradient goes to ``a`` unchanged. (The input index of ``a``, and
    ``b``.)"""
    if len(node.inputs) != 2 or (node.attrs.get("function") or node.op) != "add":
        return None
    for i, d in enumerate(node.inputs):
        a = node.inputs[1 - i]
        if d.op != "detach" or not d.inputs:
            continue
        diff = d.inputs[0]
        terms = _signed_terms(diff, len(diff.inputs), 1.0) if diff.kind == Kind.ADD else None
        if terms is None or diff.attrs.get("function") not in ("sub", "subtract"):
            continue
        weights, c = terms
        idx_a = next((k for k, n in enumerate(diff.inputs) if n is a), None)
        if idx_a is None or c or len(diff.inputs) != 2 or weights[idx_a] != -1.0:
            continue
        return 1 - i, diff.inputs[1 - idx_a]
    return None


def estimate_add(prop: Propagation, node: Node) -> None:
    st = _straight_through(node)
    if st is not None:
        idx, b = st
        v = prop.sig.get(b)
        if isinstance(v, Sig):
            n = prop.numel(node)
            prop.out(node, Sig(v.q, v.m, v.s, n).with_w(v.w_),
                     Gains([(idx, n / max(prop.s_in(node, idx).numel, 1))]))
            return
    sigs = [prop.s_in(node, i) for i in range(len(node.inputs))]
    alpha = kw(node, "alpha", 2, 1.0)
    alpha = float(alpha) if isinstance(alpha, (int, float)) else 1.0
    numbers = scalars(node)
    c = sum(numbers) if numbers and len(sigs) == 1 else 0.0
    if not sigs:
        unknown(prop, node)
        return
    weights = [1.0] + [alpha] * (len(sigs) - 1)
    signed = _signed_terms(node, len(sigs), alpha)
    if signed is not None:
        weights, c = signed
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
        lin = sum(w * sg.m for w, sg in zip(weights, sigs))
        q += c * c + 2 * c * lin
        s_ += c * c + 2 * c * lin
        w_ += c * c + 2 * c * lin
    n = prop.numel(node)
    has_w = any(sg.w_ is not None for sg in sigs)
    prop.out(node, Sig(max(q, 0.0), mm, max(s_, 0.0), n).with_w(w_ if has_w else None),
             Gains([(i, w * w * n / max(s.numel, 1)) for i, (w, s) in
                    enumerate(zip(weights, sigs))]))


def estimate_mul(prop: Propagation, node: Node) -> None:
    sigs = [prop.s_in(node, i) for i in range(len(node.inputs))]
    args = node.attrs.get("args") or ()
    c = 1.0
    for a in scalars(node):
        c = c * a if node.op == "mul" or a is args[0] else c / a if a else c
    n = prop.numel(node)
    if len(sigs) == 1:
        x = sigs[0]
        prop.out(node, Sig(x.q * c * c, x.m * c, x.s * c * c, n).with_w(
            x.w_ * c * c if x.w_ is not None else None),
            Gains([(0, c * c * n / max(x.numel, 1))]))
        return
    if not sigs:
        unknown(prop, node)
        return
    a, b = sigs[0], sigs[1]
    if node.op == "div":
        inv_q = 1.0 / max(b.q, EPS)
        b = Sig(inv_q, 1.0 / b.m if abs(b.m) > 1e-12 else 0.0, inv_q, b.numel)
    q = a.q * b.q * c * c
    prop.out(node, Sig(q, a.m * b.m * c, a.s * b.s * c * c, n).with_w(
        a.w * b.w * c * c if (a.w_ is not None or b.w_ is not None) else None),
        Gains([(0, b.q * c * c * n / max(a.numel, 1)), (1, a.q * c * c * n / max(b.numel, 1))]))


def estimate_addcmul(prop: Propagation, node: Node) -> None:
    """``torch.addcmul(x, a, b, value=v)`` = ``x + v * a * b`` (ResMLP's affine: beta + alpha
    * x), the sum and product rules in one call."""
    if len(node.inputs) != 3 or (node.grad_inputs is not None and len(node.grad_inputs) < 1):
        unknown(prop, node)
        return
    x, a, b = (prop.s_in(node, i) for i in range(3))
    v = kw(node, "value", 3, 1.0)
    v = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 1.0
    v2 = v * v
    mp = v * a.m * b.m
    q = x.q + v2 * a.q * b.q + 2 * x.m * mp
    s_ = x.s + v2 * a.s * b.s + 2 * x.m * mp
    has_w = any(sg.w_ is not None for sg in (x, a, b))
    w_ = x.w + v2 * a.w * b.w + 2 * x.m * mp
    n = prop.numel(node)
    prop.out(node, Sig(max(q, 0.0), x.m + mp, max(s_, 0.0), n).with_w(w_ if has_w else None),
             Gains([(0, n / max(x.numel, 1)), (1, v2 * b.q * n / max(a.numel, 1)),
                    (2, v2 * a.q * n / max(b.numel, 1))]))


def estimate_concat(prop: Propagation, node: Node) -> None:
    sigs = [prop.s_in(node, i) for i in range(len(node.inputs))]
    tot = sum(s.numel for s in sigs) or 1
    q = sum(s.q * s.numel for s in sigs) / tot
    m = sum(s.m * s.numel for s in sigs) / tot
    s_ = sum(s.s * s.numel for s in sigs) / tot
    w_ = sum(s.w * s.numel for s in sigs) / tot
    prop.out(node, Sig(q, m, s_, prop.numel(node)).with_w(
        w_ if any(sg.w_ is not None for sg in sigs) else None),
        ConcatBackward([(i, 1.0) for i in range(len(sigs))]))
    start_token(prop, node, sigs)


class ConcatBackward(Gains):
    """Slices the gradient back; along a sequence axis where the gradient is concentrated on
    some positions (a class token read alone), each input takes what lies on its positions."""

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        split = split_concat(prop, node, go, [e[1] for e in self.entries]) if go > 0 else None
        if split is None:
            super().apply(prop, node, go, gso, gsco, items)
            return
        allowed = set(node.grad_parents())
        for (idx, _), amount in zip(self.entries, split):
            parent = node.inputs[idx]
            if parent in allowed:
                prop.g2[parent] = prop.g2.get(parent, 0.0) + amount
                prop.gs[parent] = prop.gs.get(parent, 0.0) + gso
                prop.gsc[parent] = prop.gsc.get(parent, 0.0) + gsco


_ACCUMULATE = {"index_add", "scatter_add"}


def estimate_scatter(prop: Propagation, node: Node) -> None:
    """A base tensor with a source scattered into it (``index_add_``, ``scatter_add``,
    ``index_copy``, ``masked_scatter``, ``index_put``): the mixture-of-experts dispatch back into
    the token stream. Accumulating ops add the source to the base (``alpha`` scales it); copies
    replace the positions they write. Each source element's gradient is the output gradient at
    the position it was written to."""
    floats = [k for k, i in enumerate(node.inputs)
              if i.dtype is None or i.dtype.is_floating_point]
    if len(floats) < 2:
        unknown(prop, node)
        return
    b_idx, s_idx = floats[0], floats[-1]
    base, src = prop.s_in(node, b_idx), prop.s_in(node, s_idx)
    n = prop.numel(node)
    frac = min(src.numel / max(n, 1), float("inf"))
    accumulate = node.op in _ACCUMULATE or bool(kw(node, "accumulate", 3, False))
    alpha = kw(node, "alpha", 4, 1.0) if node.op == "index_add" else 1.0
    alpha = float(alpha) if isinstance(alpha, (int, float)) else 1.0
    if accumulate:
        keep = 1.0
    else:
        frac = min(frac, 1.0)
        keep = 1.0 - frac
    q = keep * base.q + frac * alpha * alpha * src.q + 2 * keep * base.m * frac * alpha * src.m
    m = keep * base.m + frac * alpha * src.m
    s_ = keep * base.s + frac * alpha * alpha * src.s
    prop.out(node, Sig(max(q, 0.0), m, max(min(s_, q), 0.0), n),
             Gains([(b_idx, keep if not accumulate else 1.0), (s_idx, alpha * alpha)]))


register(
    *family(Kind.OTHER, ("index_add", "scatter_add", "index_copy", "masked_scatter",
                         "index_put", "scatter"), shape=lambda name, args, kwargs:
            _first_tensor(name, args), estimate=estimate_scatter),
    Op(name="add", kind=Kind.ADD, functions=("add", "sub", "subtract", "rsub"),
       shape=binary_shape, estimate=estimate_add),
    Op(name="addcmul", kind=Kind.OTHER, functions=("addcmul",), shape=binary_shape,
       estimate=estimate_addcmul),
    Op(name="mul", kind=Kind.MUL, functions=("mul", "multiply"), shape=binary_shape,
       estimate=estimate_mul),
    Op(name="div", kind=Kind.MUL, functions=("div", "truediv", "divide"), shape=binary_shape,
       estimate=estimate_mul),
    Op(name="floordiv", kind=Kind.MUL, functions=("floordiv",), shape=binary_shape,
       estimate=estimate_mul),
    Op(name="cat", kind=Kind.CONCAT, functions=("cat", "concat", "concatenate"),
       shape=_cat_shape, estimate=estimate_concat),
    Op(name="stack", kind=Kind.CONCAT, functions=("stack",), shape=_stack_shape,
       estimate=estimate_concat),
    *family(Kind.CONCAT, ("hstack", "vstack", "dstack", "column_stack"),
            estimate=estimate_concat),
)
