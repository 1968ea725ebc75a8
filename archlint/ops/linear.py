"""Weight layers: linear (and ``x @ W`` on a parameter), bilinear, convolutions, embeddings; and
products of two activations (matmul).

A weight layer's gradient is the sum over rows (samples x positions) of outer products of its
output gradient and its input, so its RMS is ``sqrt(rows * E[g_out^2] * E[x^2])`` plus the parts
the rows share (:func:`~archlint.meanfield.signal.coherent_pairing`). Backward, the input
gradient is the output gradient times the column norms of the weight (fan-out x E[W^2]).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
from torch import nn

from ..graph.derived import is_param_only, source_params
from ..graph.ir import Kind, Node
from ..graph.metainit import meta_dist
from ..graph.weightstats import on_one_thread, sum_sq
from ..meanfield.signal import (LinearStats, Sig, coherent_pairing, linear_forward, linear_stats,
                                mean_sq, numel)
from .base import Backward, Gains, Propagation, kw, unknown
from .shape import (NoRule, ShapeMismatch, TensorShape, broadcast, conv_shape, describe,
                    expect_float, promote, same_module_shape)
from .contract import product
from .table import Op, family, register

_MATMUL_FUNCTIONS = ("matmul", "mm", "addmm", "bmm", "baddbmm")


def matmul_weight_in_dim(node: Node) -> int:
    """Which axis of the parameter a functional matmul sums over: ``x @ W`` sums W's rows
    (axis 0), ``W @ x`` and ``x @ W.t()`` its columns (axis 1, nn.Linear's layout)."""
    weight = node.attrs.get("weight_param")
    operand = next((k for k, i in enumerate(node.inputs) if i is weight), None)
    if operand is None:  # the weight reaches the op through a transpose/view node
        operand = next((k for k, i in enumerate(node.inputs) if i.kind == Kind.RESHAPE
                        and weight in i.inputs), 1)
    data = [k for k, i in enumerate(node.inputs) if k != operand and i.kind != Kind.PARAM]
    after_data = bool(data) and operand > data[0]
    in_dim = 0 if after_data else 1
    if node.attrs.get("weight_transposed"):
        in_dim = 1 - in_dim
    return in_dim


def fan_in(node: Node, w: torch.Tensor) -> Optional[int]:
    """How many inputs feed one output of a weight layer."""
    m = node.module
    if node.kind == Kind.LINEAR and w.dim() == 2:
        fn = node.attrs.get("function")
        if node.module is None and fn in _MATMUL_FUNCTIONS:
            return int(w.shape[matmul_weight_in_dim(node)])
        return int(w.shape[1])
    if node.kind == Kind.CONV and w.dim() >= 3:
        k = math.prod(int(s) for s in w.shape[2:])
        if node.op == "conv_transpose":
            stride = getattr(m, "stride", None) or (1,)
            return max(1, int(w.shape[0]) * k // max(1, math.prod(stride)))
        return int(w.shape[1]) * k
    return None


def weight_fans(node: Node, w: torch.Tensor) -> tuple[Optional[int], Optional[int]]:
    """(fan_in, fan_out): how many inputs feed one output, and outputs one input feeds."""
    fi = fan_in(node, w)
    if fi is None or w.dim() < 2:
        return fi, None
    if node.kind == Kind.LINEAR:
        return fi, int(w.numel() // fi)
    if node.kind == Kind.CONV and node.op != "conv_transpose":
        k = math.prod(int(s) for s in w.shape[2:])
        return fi, int(w.shape[0]) * k
    return fi, None


# ------------------------------------------------------------------------------- backward rules

@dataclass
class WeightBackward(Backward):
    """Linear (``conv=False``) or convolution: records the weight gradient and passes the
    gradient to the data input."""

    x_idx: int
    gain: float
    rows: int
    x: Sig
    stats: Optional[LinearStats] = None  # linear: the layer's statistics
    shared_gain: Optional[float] = None  # conv: the gain of a position-constant gradient
    conv: bool = False
    #: A weight computed in forward from parameters (with autograd back to them).
    derived: Optional[torch.Tensor] = None
    #: E[W^2]: the mean squared entry of the weight.
    entry_sq: Optional[float] = None
    #: Convolution: the share of (output position, tap) pairs that read the input rather
    #: than zero padding.
    coverage: float = 1.0
    #: Convolution: what a position-constant gradient gives its input in energy, when that
    #: differs from what stays constant (a strided kernel hands alternate positions different
    #: taps: the energy stays, only a 1/stride share of the amplitude stays constant).
    shared_energy: Optional[float] = None

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        if go <= 0.0:
            return
        coh = gso + gsco
        if coh > go:
            gso, gsco, coh = gso * go / coh, gsco * go / coh, go
        # positions per sample whose gradients may be coherent (e.g. after global pooling)
        batch = node.shape[0] if node.shape else 1
        per_sample = max(self.rows / max(batch, 1), 1.0)
        x = self.x
        if node in prop.centred:
            # the gradient sums to zero over the rows of each unit (a batch norm reads this
            # output alone): the weight gradient pairs it with the input around its unit means
            x = Sig(max(x.q - x.s, 0.0), 0.0, 0.0, x.numel).with_w(max(x.w - x.s, 0.0))
        mean_sq_ = self.rows * self.coverage * coherent_pairing(go, gso, gsco, x, per_sample)
        along = 0.0
        stein = prop.stein.get(node, 0.0)
        if stein > 0.0 and self.entry_sq is not None:
            # phi'(h) correlates with the inputs that made h (Stein's lemma): under a gradient
            # shared by a sample's positions, the weight gradient sums coherently over them --
            # along each output unit's own weight vector
            var_p = max(x.q - x.w, 0.0)
            along = self.rows * per_sample * stein * self.entry_sq * var_p * var_p
        if self.derived is not None:
            # the input's mean makes every entry of a row's gradient alike
            flat = min(self.rows * self.coverage * x.m * x.m * (go + (per_sample - 1) * gso),
                       mean_sq_)
            _record_sources(prop, node, self.derived, mean_sq_ - flat, along, flat)
        else:
            prop.record(node, mean_sq_ + along)
        if self.x_idx >= len(node.inputs):
            return
        parent = node.inputs[self.x_idx]
        if parent not in set(node.grad_parents()):
            return
        if not self.conv:
            st = self.stats
            ratio = self.gain * (prop.numel(node) / max(st.out, 1)) / max(
                prop.numel(parent) / max(st.fan_in, 1), 1)
            per_in, a = ratio * go, ratio
        else:
            cs2 = self.shared_gain if self.shared_gain is not None else self.gain
            energy = self.shared_energy if self.shared_energy is not None else cs2
            per_in = self.gain * (go - coh) + energy * coh
            a = cs2
        rescale = prop.rescale.get(node, 1.0)  # per-channel gains the weights undo
        per_in, a = per_in * rescale, a * rescale
        prop.g2[parent] = prop.g2.get(parent, 0.0) + per_in
        prop.gs[parent] = prop.gs.get(parent, 0.0) + a * gso
        prop.gsc[parent] = prop.gsc.get(parent, 0.0) + a * gsco
        if per_in > 0 and go > 0:
            prop.decades[node] = 0.5 * math.log10(per_in / go)


@dataclass
class DynamicWeightBackward(WeightBackward):
    """A convolution whose kernel is computed from the data (a conditional convolution mixing
    expert kernels per sample): besides the input, the kernel gets the gradient -- each entry
    pairs its output channel's gradient with the input it reads, over the output positions."""

    w_idx: int = 1
    w_gain: float = 0.0

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        super().apply(prop, node, go, gso, gsco, items)
        if go > 0.0 and self.w_idx < len(node.inputs):
            src = node.inputs[self.w_idx]
            if src in set(node.grad_parents()):
                prop.g2[src] = prop.g2.get(src, 0.0) + self.w_gain * go


def _dynamic_kernel(prop: Propagation, node: Node) -> Optional[tuple[torch.Tensor, int]]:
    """A functional convolution's kernel computed from activations: a stand-in with its
    shape and its entries' mean square (independent entries), and which input it is."""
    if node.module is not None or len(node.inputs) < 2:
        return None
    k = node.inputs[1]
    if k.kind in (Kind.PARAM, Kind.CONSTANT) or not k.shape or len(k.shape) < 3 or \
            k.dtype is None or not k.dtype.is_floating_point:
        return None
    q = prop.s_in(node, 1).q
    if not q > 0.0:
        return None
    gen = torch.Generator().manual_seed(0)
    return torch.randn(tuple(k.shape), generator=gen) * math.sqrt(q), 1


@dataclass
class EmbeddingBackward(Backward):
    """A lookup table: the gradient of each looked-up row; nothing flows to the ids."""

    lookups: int
    rows: int
    factor: float

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        if go <= 0.0:
            return
        prop.record(node, self.lookups * go * self.factor / max(self.rows, 1))


def _record_sources(prop: Propagation, node: Node, weight: torch.Tensor, mean_sq_: float,
                    along: float = 0.0, flat: float = 0.0) -> None:
    """Carry the gradient predicted for a computed weight back to the parameters it is computed
    from: a random gradient of that scale, plus a part along each output unit's weight vector
    (``along``) and a part constant along each unit's fan-in (``flat``), back-propagated through
    the computation (weight standardisation removes the last two, weight norm the first)."""
    params = [p for p in source_params(node) if p.tensor is not None and p.tensor.requires_grad]
    if not params:
        return
    gen = torch.Generator().manual_seed(0)
    w = weight.detach()
    grad = torch.randn(w.shape, generator=gen).to(w.dtype) * math.sqrt(max(mean_sq_, 0))
    per_unit = (w.shape[0],) + (1,) * (w.dim() - 1)
    if along > 0.0 and w.dim() >= 2:
        unit = torch.randn(per_unit, generator=gen).to(w.dtype)
        grad = grad + unit * w * math.sqrt(along / max(float(w.pow(2).mean()), 1e-30))
    if flat > 0.0 and w.dim() >= 2:
        grad = grad + torch.randn(per_unit, generator=gen).to(w.dtype) * math.sqrt(flat)
    grads = torch.autograd.grad(weight, [p.tensor for p in params], grad, retain_graph=True,
                                allow_unused=True)
    totals: dict[str, list[float]] = {}
    for p, g in zip(params, grads):
        if p.tensor.dim() < 2 or p.module_path is None:
            continue
        entry = totals.setdefault(p.module_path, [0.0, 0])
        entry[0] += float(g.detach().double().pow(2).sum()) if g is not None else 0.0
        entry[1] += p.tensor.numel()
    for module, (total, count) in totals.items():
        prop.add_weight_grad(module, total / max(count, 1), count, node, key=("derived", module))


# ------------------------------------------------------------------------------- forward rules

def _data_input(node: Node) -> int:
    for k, i in enumerate(node.inputs):
        if i.kind != Kind.PARAM and not is_param_only(i):
            return k
    return 0


def _linear_params(node: Node):
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
    if w is None and node.attrs.get("derived_weight") is not None:
        w = node.attrs["derived_weight"].detach()
    if w is None:
        return None, None, 1
    if node.attrs.get("function") in _MATMUL_FUNCTIONS:
        return w, b, matmul_weight_in_dim(node)
    return w, b, 1


def estimate_linear(prop: Propagation, node: Node) -> None:
    x_idx = _data_input(node)
    x = prop.s_in(node, x_idx)
    w, b, in_dim = _linear_params(node)
    if w is None:
        unknown(prop, node)
        return
    st = linear_stats(w, b, in_dim=in_dim)
    rows = max(prop.numel(node) // max(st.out, 1), 1)
    prop.out(node, linear_forward(x, st, prop.numel(node)),
             WeightBackward(x_idx=x_idx, gain=st.col2, rows=rows, x=x, stats=st,
                            derived=node.attrs.get("derived_weight"),
                            entry_sq=st.a / max(st.fan_in, 1)))


@on_one_thread
def _kernel_colsum_sq(w: torch.Tensor) -> float:
    """Mean over input channels of sum_o (sum_k W[o, c, k])^2: the backward response of a
    convolution to a gradient that is constant over positions."""
    d = meta_dist(w)
    if d is not None:  # a meta weight: the expectation over its entries' distribution
        k = numel(w.shape[2:])
        return int(w.shape[0]) * (k * d.var + k * k * d.mean * d.mean)
    wd = w.detach()
    if numel(wd.shape[2:]) == 1:  # 1x1 kernels: the plain column norm
        return sum_sq(w) / max(wd.shape[1], 1)
    ksum = wd.float().sum(dim=tuple(range(2, wd.dim())))  # [out, in/g]
    return float(torch.linalg.vector_norm(ksum)) ** 2 / max(ksum.shape[1], 1)


@on_one_thread
def _phase_colsum_sq(w: torch.Tensor, stride: list[int]) -> float:
    """Mean over input channels and stride phases of sum_o (sum of W[o, c, taps of the
    phase])^2: the energy a strided convolution hands its input from a gradient that is
    constant over its output positions (taps t reach the input positions of phase t mod s)."""
    d = meta_dist(w)
    if d is not None:  # a meta weight: the expectation over its entries' distribution
        taps = [numel([len(range(r, int(k), s)) for r, k, s in zip(phase, w.shape[2:], stride)])
                for phase in itertools.product(*[range(s) for s in stride])]
        return sum(int(w.shape[0]) * (t * d.var + t * t * d.mean * d.mean) for t in taps) / \
            max(len(taps), 1)
    phases = list(itertools.product(*[range(s) for s in stride]))
    if numel(w.shape[2:]) == 1:  # one tap: only the phase at offset 0 holds it, whole
        return sum_sq(w) / max(w.shape[1], 1) / max(len(phases), 1)
    wd = w.detach().float()
    nd = wd.dim() - 2
    total = 0.0
    for phase in phases:
        index = tuple(slice(r, None, s) for r, s in zip(phase, stride))
        part = wd[(slice(None), slice(None)) + index]
        if part.numel() == 0:
            continue
        ksum = part.sum(dim=tuple(range(2, 2 + nd)))
        total += float(torch.linalg.vector_norm(ksum)) ** 2 / max(ksum.shape[1], 1)
    return total / max(len(phases), 1)


def _groups(m: Optional[nn.Module], node: Node) -> int:
    if m is not None:
        return int(getattr(m, "groups", 1))
    g = kw(node, "groups", 6, 1)
    return int(g) if isinstance(g, int) else 1


def estimate_conv(prop: Propagation, node: Node) -> None:
    x_idx = _data_input(node)
    x = prop.s_in(node, x_idx)
    m = node.module
    if m is not None:
        w, b = m.weight, m.bias
        stride = m.stride
    else:
        params = [i.tensor for i in node.inputs if i.kind == Kind.PARAM and
                  i.tensor is not None]
        w = next((p for p in params if p.dim() >= 3), None)
        b = next((p for p in params if p.dim() == 1), None)
        stride = kw(node, "stride", 3, 1)
        if w is None and node.attrs.get("derived_weight") is not None:
            w = node.attrs["derived_weight"].detach()
    dynamic = _dynamic_kernel(prop, node) if w is None else None
    if dynamic is not None:
        w = dynamic[0]
    if w is None:
        unknown(prop, node)
        return
    nd = w.dim() - 2
    stride = stride if isinstance(stride, (tuple, list)) else (stride,) * nd
    if node.op == "conv_transpose":
        # weight [in, out/g, *k]: each output sums in*k/stride inputs
        wt = w.detach().transpose(0, 1)
        st = linear_stats(wt, b, transposed=True)
        a_scale = 1.0 / max(numel(stride), 1)
        st = LinearStats(a=st.a * a_scale, bm=st.bm * a_scale * a_scale, col2=st.a,
                         b2=st.b2, bmean=st.bmean, brow=st.brow * a_scale,
                         rowsum_mean=st.rowsum_mean * a_scale, fan_in=st.fan_in, out=st.out)
        back_gain = float(w.detach().float().pow(2).sum() / w.shape[0])
        # each weight entry pairs an input position with one output: rows = input positions
        rows = max(x.numel // max(w.shape[0], 1), 1)
        prop.out(node, linear_forward(x, st, prop.numel(node)),
                 WeightBackward(x_idx=x_idx, gain=back_gain, rows=rows, x=x, conv=True))
        return
    st = linear_stats(w, b)
    cover, cover2 = _tap_coverage(node, x_idx, w.shape[2:], stride)
    if cover < 1.0:  # taps that fall on zero padding read nothing
        st = replace(st, a=st.a * cover, bm=st.bm * cover, brow=st.brow * cover,
                     rowsum_mean=st.rowsum_mean * cover)
    out = linear_forward(x, st, prop.numel(node))
    if cover2 < cover:
        # a channel's response to its input's means differs between border and interior
        # positions: only its average over positions is the channel's own mean
        mm = x.m * x.m
        lost = 1.0 - cover2 / cover
        w_part = out.w_
        out.s = max(out.s - lost * (st.a * max(x.s - mm, 0.0) + st.bm * mm), 0.0)
        out.with_w(None if w_part is None else
                   w_part - lost * (st.a * max(x.w - mm, 0.0) + st.bm * mm))
    out_ch = w.shape[0]
    rows = max(prop.numel(node) // max(out_ch, 1), 1)  # batch x output positions
    k = numel(w.shape[2:])
    groups = max(_groups(m, node), 1)
    in_positions = max(x.numel // max(w.shape[1] * groups, 1), 1)
    # each input element feeds the out/groups channels of its group at k offsets
    gain = st.col2 * k / groups * rows / in_positions * cover
    steps = [int(v) for v in stride] if all(isinstance(v, int) for v in stride) else []
    strided = len(steps) == nd and any(v > 1 for v in steps)
    if strided:
        # input positions fall into stride phases, each reached by its own subset of taps
        energy = _phase_colsum_sq(w, steps) / groups
        cs2 = _kernel_colsum_sq(w) / groups / float(math.prod(steps)) ** 2
    else:
        cs2 = _kernel_colsum_sq(w) / groups * rows / in_positions
    spatial = node.input_shapes[x_idx][2:] if node.input_shapes and \
        node.input_shapes[x_idx] else ()
    interior = 1.0
    for size, kk in zip(spatial, w.shape[2:]):
        interior *= max(size - kk + 1, 1) / max(size, 1)  # zero padding breaks constancy
    cs2 *= interior
    shared_energy = energy * interior if strided else None
    common = dict(x_idx=x_idx, gain=gain, rows=rows, x=x, shared_gain=cs2,
                  shared_energy=shared_energy, conv=True,
                  entry_sq=st.a / max(st.fan_in, 1) / cover, coverage=cover)
    if dynamic is not None:
        prop.out(node, out, DynamicWeightBackward(**common, w_idx=dynamic[1],
                                                  w_gain=rows * cover * x.q))
        return
    prop.out(node, out, WeightBackward(**common, derived=node.attrs.get("derived_weight")))


def _tap_coverage(node: Node, x_idx: int, kernel: Any, stride: Any) -> tuple[float, float]:
    """The share of (output position, kernel tap) pairs that land inside the input, dim by
    dim: 1 without zero padding, 4/9 for a 3x3 kernel on a 2x2 map. Small late-stage maps
    (a 64-pixel image at stride 32) make most taps read padding. Second: the mean over taps
    of the squared share of positions each tap reads (the response of a channel's mean)."""
    m = node.module
    mode = getattr(m, "padding_mode", "zeros") if m is not None else "zeros"
    padding = getattr(m, "padding", None) if m is not None else kw(node, "padding", 4, 0)
    dilation = getattr(m, "dilation", None) if m is not None else kw(node, "dilation", 5, 1)
    shape = node.input_shapes[x_idx] if node.input_shapes and \
        len(node.input_shapes) > x_idx else None
    nd = len(kernel)
    if mode != "zeros" or not shape or len(shape) < nd + 1 or padding is None:
        return 1.0, 1.0
    sizes = [int(v) for v in shape[-nd:]]
    kernel = [int(v) for v in kernel]

    def per_dim(value: Any, default: int) -> Optional[list[int]]:
        if isinstance(value, int):
            return [value] * nd
        if isinstance(value, (tuple, list)) and len(value) == nd and \
                all(isinstance(v, int) for v in value):
            return [int(v) for v in value]
        return None if value is not None else [default] * nd

    strides, dilations = per_dim(stride, 1), per_dim(dilation, 1)
    if strides is None or dilations is None:
        return 1.0, 1.0
    if padding == "same":
        pads = [d * (k - 1) // 2 for k, d in zip(kernel, dilations)]
    elif padding == "valid":
        return 1.0, 1.0
    else:
        pads = per_dim(padding, 0)
        if pads is None:
            return 1.0, 1.0
    cover, cover2 = 1.0, 1.0
    for n, k, st, d, p in zip(sizes, kernel, strides, dilations, pads):
        if p == 0 or k == 1:
            continue
        outs = (n + 2 * p - d * (k - 1) - 1) // st + 1
        if outs <= 0:
            return 1.0, 1.0
        inside, squares = 0, 0.0
        for t in range(k):  # outputs o whose tap t reads 0 <= o*st - p + t*d < n
            lo = max(-((t * d - p) // st), 0)
            hi = min((n - 1 + p - t * d) // st, outs - 1)
            inside += max(hi - lo + 1, 0)
            squares += (max(hi - lo + 1, 0) / outs) ** 2
        cover *= inside / (outs * k)
        cover2 *= squares / k
    return max(cover, 1e-6), max(cover2, 1e-12)


def estimate_embedding(prop: Propagation, node: Node) -> None:
    m = node.module
    w = getattr(m, "weight", None) if m is not None else next(
        (i.tensor for i in node.inputs if i.kind == Kind.PARAM and i.tensor is not None
         and i.tensor.dim() == 2), None)
    if w is None:
        unknown(prop, node)
        return
    d = meta_dist(w)
    if d is not None:  # a meta table: expectations over its entries' distribution
        wd = w.detach()
        q = d.mean_sq
        s = d.mean * d.mean + d.var / max(int(wd.shape[0]), 1)
        col_mean_mean = d.mean
    else:
        wd = w.detach().float()
        q = mean_sq(wd)
        col_mean = wd.mean(0)
        s = float(col_mean.pow(2).mean())
        col_mean_mean = float(col_mean.mean())
    n = prop.numel(node)
    dim = wd.shape[1]
    if node.op == "embedding_bag":
        ids = node.input_shapes[0] if node.input_shapes else None
        bag = ids[-1] if ids and len(ids) > 1 else 1
        mode = getattr(m, "mode", "mean")
        factor = 1.0 / bag if mode == "mean" else (1.0 if mode == "sum" else 1.0)
        qo = s + (q - s) / bag if mode == "mean" else (bag * q + bag * (bag - 1) * s)
        lookups = numel(ids) if ids else n // dim
        prop.out(node, Sig(qo, col_mean_mean * (1 if mode == "mean" else bag), s, n),
                 EmbeddingBackward(lookups, wd.shape[0], factor ** 2))
        return
    pad = getattr(m, "padding_idx", None) if m is not None else None
    lookups = max(n // max(dim, 1), 1)
    rows = wd.shape[0] - (1 if pad is not None else 0)
    prop.out(node, Sig(q, col_mean_mean, s, n),
             EmbeddingBackward(lookups, max(rows, 1), 1.0))


def estimate_matmul(prop: Propagation, node: Node) -> None:
    """The product of two activations (attention scores, ``attn @ v``)."""
    if len(node.inputs) < 2:
        unknown(prop, node)
        return
    a, b = prop.s_in(node, 0), prop.s_in(node, 1)
    sa = node.input_shapes[0] if node.input_shapes else None
    sb = node.input_shapes[1] if len(node.input_shapes) > 1 else None
    if not sa or not sb or node.op not in ("matmul", "mm", "bmm"):
        unknown(prop, node)
        return
    n_in = sa[-1]
    M = sa[-2] if len(sa) >= 2 else 1
    P = sb[-1] if len(sb) >= 2 else 1
    n = prop.numel(node)
    out_batch = n / max(M * P, 1)
    a_batch = a.numel / max(M * n_in, 1)
    b_batch = b.numel / max(n_in * P, 1)
    sig, gains = product(a, b, n_in, M, P, n, fa=out_batch / max(a_batch, 1e-12),
                         fb=out_batch / max(b_batch, 1e-12))
    prop.out(node, sig, gains)


def estimate_baddbmm(prop: Propagation, node: Node) -> None:
    """``torch.baddbmm(input, b1, b2, beta=, alpha=)``: ``beta * input + alpha * b1 @ b2`` --
    attention logits with an additive bias (ALiBi) computed in one call."""
    shapes = node.input_shapes
    if len(node.inputs) < 3 or len(shapes) < 3 or not shapes[1] or not shapes[2] or \
            len(shapes[1]) != 3 or len(shapes[2]) != 3:
        unknown(prop, node)
        return
    c, a, b = (prop.s_in(node, i) for i in range(3))
    beta, alpha = kw(node, "beta", 3, 1.0), kw(node, "alpha", 4, 1.0)
    beta = float(beta) if isinstance(beta, (int, float)) else 1.0
    alpha = float(alpha) if isinstance(alpha, (int, float)) else 1.0
    n_in, M, P = shapes[1][-1], shapes[1][-2], shapes[2][-1]
    qp = n_in * a.q * b.q + n_in * (n_in - 1) * a.m * a.m * b.m * b.m
    mp, sp = n_in * a.m * b.m, n_in * a.s * b.s
    n = prop.numel(node)
    out_batch = n / max(M * P, 1)
    a_batch = a.numel / max(M * n_in, 1)
    b_batch = b.numel / max(n_in * P, 1)
    a2 = alpha * alpha
    prop.out(node, Sig(beta * beta * c.q + a2 * qp + 2 * beta * alpha * c.m * mp,
                       beta * c.m + alpha * mp, beta * beta * c.s + a2 * sp, n),
             Gains([(0, beta * beta * n / max(c.numel, 1)),
                    (1, a2 * P * b.q * out_batch / max(a_batch, 1e-12)),
                    (2, a2 * M * a.q * out_batch / max(b_batch, 1e-12))]))


def estimate_grouped_mm(prop: Propagation, node: Node) -> None:
    """``torch._grouped_mm(x, W, offs)``: the rows of ``x`` (R, K) are cut into consecutive
    groups, one per expert, and group ``e`` is multiplied by ``W[e]`` (K, N) -- the expert
    layers of a mixture of experts. Each output is a linear layer's; each expert's weight
    gradient sums the outer products of its own rows, about ``R / E`` of them."""
    sa = node.input_shapes[0] if node.input_shapes else None
    sb = node.input_shapes[1] if len(node.input_shapes) > 1 else None
    if not sa or not sb or len(sa) != 2 or len(sb) != 3 or len(node.inputs) < 2:
        unknown(prop, node)
        return
    x, w = prop.s_in(node, 0), prop.s_in(node, 1)
    experts, fan, out = sb
    rows = sa[0]
    w2 = max(w.q, 0.0)  # E[W^2] over all experts
    q = fan * w2 * x.q
    prop.out(node, Sig(q, 0.0, fan * w2 * x.s / max(experts, 1), prop.numel(node)),
             Gains([(0, out * w2), (1, rows / max(experts, 1) * x.q)]))


# ------------------------------------------------------------------------------- shapes

def _linear_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    x = args[0] if args else None
    if name != "linear" or not isinstance(x, TensorShape):
        raise NoRule(name)
    w = args[1] if len(args) > 1 else kwargs["weight"]
    return TensorShape(x.shape[:-1] + ((w.shape[0],) if w.dim() == 2 else ()), promote([x, w]))


def _matmul_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    a, b = (args[0] if args else None), (args[1] if len(args) > 1 else None)
    if not isinstance(a, TensorShape) or not isinstance(b, TensorShape):
        raise NoRule(name)
    sa, sb = list(a.shape), list(b.shape)
    if len(sa) == 1 and len(sb) == 1:
        return a.with_shape(())
    if len(sa) == 1:
        return a.with_shape(tuple(sb[:-2]) + (sb[-1],))
    if len(sb) == 1:
        return a.with_shape(tuple(sa[:-1]))
    batch = broadcast(sa[:-2], sb[:-2])
    return TensorShape(batch + (sa[-2], sb[-1]), promote([a, b]))


def _conv_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    x = args[0] if args else None
    if name not in ("conv1d", "conv2d", "conv3d") or not isinstance(x, TensorShape):
        raise NoRule(name)
    w = args[1] if len(args) > 1 else kwargs["weight"]

    def get(i: int, key: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    return conv_shape(x, w.shape[0], w.shape[2:], get(3, "stride", 1), get(4, "padding", 0),
                      get(5, "dilation", 1), int(name[-2]))


def _embedding_shape(name: str, args: Any, kwargs: dict) -> TensorShape:
    x = args[0] if args else None
    if name != "embedding" or not isinstance(x, TensorShape):
        raise NoRule(name)
    w = args[1] if len(args) > 1 else kwargs["weight"]
    return TensorShape(x.shape + (w.shape[1],), w.dtype)


def _linear_module_shape(mod: nn.Module, args: Any, kwargs: dict) -> TensorShape:
    x = same_module_shape(mod, args, kwargs)
    expect_float(x, type(mod).__name__)
    width = mod.in1_features if isinstance(mod, nn.Bilinear) else mod.in_features
    if not x.shape or x.shape[-1] != width:
        raise ShapeMismatch(f"expects [..., {width}], given {describe(x)}")
    return x.with_shape(x.shape[:-1] + (mod.out_features,))


def _conv_module_shape(mod: nn.Module, args: Any, kwargs: dict) -> TensorShape:
    x = same_module_shape(mod, args, kwargs)
    expect_float(x, type(mod).__name__)
    nd = len(mod.kernel_size)
    if x.dim() not in (nd + 1, nd + 2) or x.shape[-nd - 1] != mod.in_channels:
        spatial = ", ".join("H W D".split()[:nd]) if nd > 1 else "L"
        raise ShapeMismatch(f"expects [N, {mod.in_channels}, {spatial}], given {describe(x)}")
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    return conv_shape(x, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                      mod.dilation, len(mod.kernel_size), transposed=transposed,
                      output_padding=mod.output_padding if transposed else 0)


def _embedding_module_shape(mod: nn.Module, args: Any, kwargs: dict) -> TensorShape:
    x = same_module_shape(mod, args, kwargs)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ShapeMismatch(f"looks up integer ids, given {describe(x)} (give the input an "
                            "integer dtype and 'high')")
    if isinstance(mod, nn.EmbeddingBag):
        return TensorShape((x.shape[0] if x.dim() == 2 else 1, mod.embedding_dim),
                           mod.weight.dtype)
    return TensorShape(x.shape + (mod.embedding_dim,), mod.weight.dtype)


register(
    Op(name="linear", kind=Kind.LINEAR, modules=(nn.Linear,),
       functions=("linear", "addmm", "bilinear"), shape=_linear_shape,
       module_shape=_linear_module_shape, estimate=estimate_linear),
    Op(name="bilinear", kind=Kind.LINEAR, modules=(nn.Bilinear,),
       module_shape=_linear_module_shape, estimate=estimate_linear),
    Op(name="conv", kind=Kind.CONV, modules=(nn.modules.conv._ConvNd,),
       functions=("conv1d", "conv2d", "conv3d", "convolution"), shape=_conv_shape,
       module_shape=_conv_module_shape, estimate=estimate_conv),
    Op(name="conv_transpose", kind=Kind.CONV, modules=(nn.modules.conv._ConvTransposeNd,),
       functions=("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
       module_shape=_conv_module_shape, estimate=estimate_conv),
    Op(name="embedding", kind=Kind.EMBEDDING, modules=(nn.Embedding,),
       functions=("embedding",), shape=_embedding_shape, module_shape=_embedding_module_shape,
       estimate=estimate_embedding),
    Op(name="embedding_bag", kind=Kind.EMBEDDING, modules=(nn.EmbeddingBag,),
       functions=("embedding_bag",), module_shape=_embedding_module_shape,
       estimate=estimate_embedding),
    *family(Kind.MATMUL, ("matmul", "mm", "bmm"), shape=_matmul_shape,
            estimate=estimate_matmul),
    *family(Kind.MATMUL, ("addbmm", "tensordot", "inner"),
            estimate=estimate_matmul),
    *family(Kind.MATMUL, ("baddbmm",), estimate=estimate_baddbmm),
    *family(Kind.MATMUL, ("grouped_mm",), estimate=estimate_grouped_mm),
)

#: Products that are a linear layer when one operand is a parameter (``x @ self.W``).
MATMUL_LIKE = frozenset({"matmul", "mm", "bmm", "einsum", "baddbmm", "addbmm", "tensordot",
                         "inner"})
