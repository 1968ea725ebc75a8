"""Softmax attention: ``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention``.

At initialisation the attention logits have variance ``s2 = scale^2 q_Q q_K`` across keys and the
attention weights of a query have ``E[sum_j A_ij^2] ~ e^{s2} / T`` (causal: averaged over the
prefix lengths). The output mixes values, so positions of one sample become alike; backward the
value path passes ``T E[A^2]`` of the gradient, the key and query paths what the logits' spread
gives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..graph.ir import Kind, Node
from ..meanfield.signal import (EPS, LinearStats, Sig, coherent_pairing, linear_forward,
                                linear_stats, numel)
from .base import Backward, Propagation, kw, unknown
from .shape import NoRule, TensorShape
from .table import Op, register


def attention_moments(qs: Sig, ks: Sig, vs: Sig, T: int, S: int, d: int, dv: int,
                      causal: bool, scale2: float, numel_out: int, mask_ratio: float = 0.0,
                      mask_var: float = 0.0) -> tuple[Sig, list[tuple]]:
    """Softmax attention at init: output moments and per-input backward gains.
    ``mask_ratio``: logits per element of an additive float mask (input 3), 0 for none;
    ``mask_var``: the variance a learned additive mask (a position bias) adds to the logits."""
    s2 = scale2 * max(qs.q - qs.s, 0.0) * max(ks.q, 0.0)  # logit variance across keys
    s2 += mask_var
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
    w_out = vs.q * (rho + (1 - rho) * (1.0 / max(S, 1)))
    out = Sig(q_out, vs.m, vs.s, numel_out).with_w(min(max(w_out, vs.w), q_out))
    a2 = sa / max(keys, 1)  # E[A_ij^2] over attended pairs
    gv = T * a2 * (keys / max(S, 1))
    dlogit = a2 * dv * max(vs.q - vs.w, 0.0)
    gk = T * (keys / max(S, 1)) * dlogit * qs.q * scale2 / max(d, 1)
    gq = keys * dlogit * ks.q * scale2 / max(d, 1)
    share = (T / max(S, 1)) ** 2  # a gradient shared by all queries reaches every value
    # each value's gradient sums the queries' gradients weighted by a column of A; the rows of A
    # sum to 1, so the mean over a sample's values is (1/S) sum_i g_i whatever A is: a part
    # T / S^2 of the gradient is shared by all values of a sample (nearly all of it while
    # attention is near uniform), and pairs coherently with what the values' inputs share
    uniform = min(T / max(S, 1) ** 2, gv)
    # the logits' gradient A_ij g_i.(v_j - vbar_i) needs values that differ, not queries'
    # gradients that differ: a gradient shared by a sample's queries reaches them too (and
    # stays shared by the queries)
    back = [(0, gq, gq, gq), (1, gk, gk, 0.0), (2, gv, share, share, uniform)]
    if mask_ratio > 0:
        # an additive mask (a learned position bias) gets the logits' gradient, summed over
        # the dims it is broadcast along (dlogit: E[(dL/dlogit)^2] per unit of the output's g2
        # on an attended pair)
        back.append((3, (keys / max(S, 1)) * dlogit * mask_ratio, 0.0, 0.0))
    return out, back


def estimate_sdpa(prop: Propagation, node: Node) -> None:
    from .base import Gains

    qs, ks, vs = (prop.s_in(node, i) for i in range(3))
    shapes = node.input_shapes
    T = shapes[0][-2] if shapes and shapes[0] and len(shapes[0]) >= 2 else 1
    S = shapes[1][-2] if len(shapes) > 1 and shapes[1] and len(shapes[1]) >= 2 else T
    d = shapes[0][-1] if shapes and shapes[0] else 1
    dv = shapes[2][-1] if len(shapes) > 2 and shapes[2] else d
    causal = bool(kw(node, "is_causal", 5, False))
    scale = kw(node, "scale", 6, None)
    scale2 = float(scale) ** 2 * d if isinstance(scale, (int, float)) else 1.0
    mask = shapes[3] if len(shapes) > 3 and len(node.inputs) > 3 else None
    ratio, mask_var = 0.0, 0.0
    if mask and len(mask) >= 2 and mask[-1] == S and mask[-2] in (T, 1):
        ratio = numel(shapes[0][:-1]) * S / max(numel(mask), 1)
        if prop.carries_signal(node.inputs[3]):  # learned, not a constant -inf mask
            ms = prop.s_in(node, 3)
            mask_var = max(ms.q - ms.m * ms.m, 0.0)
    out, back = attention_moments(qs, ks, vs, T, S, d, dv, causal, scale2, prop.numel(node),
                                  ratio, mask_var)
    prop.out(node, out, Gains(back))


@dataclass
class MHABackward(Backward):
    xs: tuple[Sig, Sig, Sig]
    stats: tuple[LinearStats, LinearStats, LinearStats]
    back: list[tuple[int, float, float, float]]
    att: Sig
    out_stats: LinearStats
    nq: int
    nk: int
    per_item = True

    def apply(self, prop: Propagation, node: Node, go_: float, gso_: float, gsco_: float,
              items: dict[int, float]) -> None:
        go = items.get(0, prop.g2.get(node, 0.0))
        if go <= 0:
            return
        gso = min(prop.gs.get(node, 0.0), go)
        gsco = min(prop.gsc.get(node, 0.0), go - gso)
        m = node.module
        shape = node.input_shapes[0] if node.input_shapes else None
        batch_axis = 0 if m.batch_first else 1
        batch = shape[batch_axis] if shape and len(shape) == 3 else 1
        rows_q = max(self.nq // max(m.embed_dim, 1), 1)
        rows_k = max(self.nk // max(m.embed_dim, 1), 1)
        per_q, per_k = rows_q / max(batch, 1), rows_k / max(batch, 1)
        out_path = f"{node.module_path}.out_proj" if node.module_path else "out_proj"
        prop.add_weight_grad(out_path,
                             rows_q * coherent_pairing(go, gso, gsco, self.att, per_q),
                             m.out_proj.weight.numel(), node)
        # back through out_proj (shared parts keep their share), then the attention
        sto = self.out_stats
        g_att, gs_att, gsc_att = sto.col2 * go, sto.col2 * gso, sto.col2 * gsco
        coh = gs_att + gsc_att
        (_, gq, _, _), (_, gk, _, _), (_, gv, share, _, uniform) = self.back
        g_q, g_k = gq * g_att, gk * g_att
        g_v = gv * (g_att - coh) + share * coh
        gs_v, gsc_v = share * gs_att + uniform * (g_att - coh), share * gsc_att
        stq, stk, stv = self.stats
        xs = self.xs
        sizes = [stq.out * stq.fan_in, stk.out * stk.fan_in, stv.out * stv.fan_in]
        ms = (sizes[0] * rows_q * g_q * xs[0].q + sizes[1] * rows_k * g_k * xs[1].q
              + sizes[2] * rows_k * coherent_pairing(g_v, gs_v, gsc_v, xs[2], per_k))
        if node.module_path is not None:
            prop.add_weight_grad(node.module_path, ms / max(sum(sizes), 1), sum(sizes), node)
        parents = node.grad_parents()
        gains = [stq.col2 * g_q, stk.col2 * g_k, stv.col2 * g_v]
        shared = [0.0, 0.0, stv.col2 * gs_v]
        shared_c = [0.0, 0.0, stv.col2 * gsc_v]
        distinct = list(dict.fromkeys(node.inputs[:3]))
        query = node.inputs[0] if node.inputs else None
        to_query = sum(gains[i] for i in range(3) if
                       (node.inputs[i] if i < len(node.inputs) else query) is query)
        if to_query > 0:
            prop.query_share[node] = gains[0] / to_query
        for i in range(3):
            src = node.inputs[i] if i < len(node.inputs) else (distinct[0] if distinct else None)
            if src is None or src not in parents:
                continue
            prop.g2[src] = prop.g2.get(src, 0.0) + gains[i]
            prop.gs[src] = prop.gs.get(src, 0.0) + shared[i]
            prop.gsc[src] = prop.gsc.get(src, 0.0) + shared_c[i]
        prop.decades[node] = 0.5 * math.log10(max(sum(gains), EPS) / go)


def estimate_mha(prop: Propagation, node: Node) -> None:
    m = node.module
    if not isinstance(m, nn.MultiheadAttention):
        unknown(prop, node)
        return
    E, H = m.embed_dim, m.num_heads
    d = E // H
    xq = prop.s_in(node, 0)
    xk = prop.s_in(node, 1) if len(node.inputs) > 1 else xq
    xv = prop.s_in(node, 2) if len(node.inputs) > 2 else xk
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
    nq, nk = numel(qshape), numel(kshape)
    q_sig = linear_forward(xq, stq, nq)
    k_sig = linear_forward(xk, stk, nk)
    v_sig = linear_forward(xv, stv, nk)
    att, back = attention_moments(q_sig, k_sig, v_sig, T, S, d, d, False, 1.0, nq)
    sto = linear_stats(m.out_proj.weight, m.out_proj.bias)
    prop.out(node, [linear_forward(att, sto, nq), Sig(0.0, 0.0, 0.0, 1)],
             MHABackward((xq, xk, xv), (stq, stk, stv), back, att, sto, nq, nk))


# ------------------------------------------------------------------------------- shapes

def _sdpa_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    x = args[0] if args else None
    if not isinstance(x, TensorShape):
        raise NoRule(name)
    v = args[2] if len(args) > 2 else kwargs["value"]
    return TensorShape(x.shape[:-1] + (v.shape[-1],), x.dtype)


def _mha_shape(mod: nn.MultiheadAttention, args: Any, kwargs: dict) -> Any:
    x = args[0] if args else next(iter(kwargs.values()), None)
    if not isinstance(x, TensorShape):
        raise NoRule("no tensor input")
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
        L = q.shape[1 - bdim]
        S = v.shape[1 - bdim] if isinstance(v, TensorShape) else q.shape[1 - bdim]
        w = q.with_shape((q.shape[bdim], L, S))
    else:
        w = q.with_shape((q.shape[0], v.shape[0] if isinstance(v, TensorShape) else q.shape[0]))
    return (out, w)


register(
    Op(name="multihead_attention", kind=Kind.ATTENTION, modules=(nn.MultiheadAttention,),
       module_shape=_mha_shape, estimate=estimate_mha),
    Op(name="scaled_dot_product_attention", kind=Kind.ATTENTION,
       functions=("scaled_dot_product_attention",), shape=_sdpa_shape, estimate=estimate_sdpa),
    Op(name="multi_head_attention_forward", kind=Kind.ATTENTION,
       functions=("multi_head_attention_forward",)),
)
