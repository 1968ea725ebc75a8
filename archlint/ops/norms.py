"""Normalisation layers: batch, layer, group, instance and RMS norm, F.normalize.

Forward, a normalised tensor has second moment ``gamma^2 + beta^2`` whatever came in; backward
the gradient is divided by the variance the layer removed (the batch-centred variance for batch
norm in train mode, the per-sample variance for the others), times ``1 - 2/n`` for the group of
``n`` elements normalised together.
"""

from __future__ import annotations

import math
import weakref
from functools import lru_cache
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ..graph.ir import Kind, Node
from ..graph.weightstats import on_one_thread
from ..meanfield.signal import EPS, Sig, mean, mean_sq, numel
from .base import Backward, Gains, Propagation, kw
from .opaque import estimate_by_running
from .positions import TokenGain, apply_token_gain
from .shape import ShapeMismatch, TensorShape, expect_float, same_module_shape, same_shape
from .table import Op, module_op, register


def norm_affine(node: Node) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The scale (gamma) and shift (beta) of a normalisation node, if it has them."""
    m = node.module
    if m is not None:
        return getattr(m, "weight", None), getattr(m, "bias", None)
    where = _AFFINE_ARGS.get(node.op)
    if where is None:
        return None, None
    return _tensor_arg(node, "weight", where[0]), _tensor_arg(node, "bias", where[1])


#: Positions of weight and bias in the functional norms' signatures.
_AFFINE_ARGS = {"batch_norm": (3, 4), "instance_norm": (3, 4), "layer_norm": (2, 3),
                "group_norm": (2, 3), "rms_norm": (2, None)}


def _tensor_arg(node: Node, name: str, pos: Optional[int]) -> Optional[torch.Tensor]:
    """A call's tensor argument (a parameter node's tensor, or the tensor the execution tracer
    kept), by keyword or position."""
    kwargs = node.attrs.get("kwargs") or {}
    args = node.attrs.get("args") or ()
    value = kwargs.get(name) if isinstance(kwargs, dict) and name in kwargs else (
        args[pos] if pos is not None and isinstance(args, (list, tuple)) and len(args) > pos
        else None)
    if isinstance(value, Node):
        return value.tensor if value.kind == Kind.PARAM else None
    return value if isinstance(value, torch.Tensor) else None


def _group_size(node: Node, shape: tuple) -> int:
    """How many values of one sample are normalised together."""
    m = node.module
    if isinstance(m, nn.LayerNorm):
        return numel(m.normalized_shape)
    groups = m.num_groups if isinstance(m, nn.GroupNorm) else (
        kw(node, "num_groups", 1, None) if m is None and node.op == "group_norm" else None)
    if isinstance(groups, int) and shape:
        return max(numel(shape[1:]) // max(groups, 1), 1)
    if node.op == "instance_norm" and len(shape) > 2:
        return numel(shape[2:])
    if m is None and node.op == "layer_norm":
        normalized = kw(node, "normalized_shape", 1, None)
        if isinstance(normalized, (list, tuple)) and all(isinstance(d, int) for d in normalized):
            return max(numel(normalized), 1)
        if isinstance(normalized, int):
            return normalized
    return shape[-1] if shape else 1


@dataclass(frozen=True)
class Affine:
    """What a normalisation layer applies after normalising: mean gamma, mean gamma^2, mean
    beta^2, mean beta."""

    gmean: float
    g2: float
    b2: float
    bmean: float
    #: Does the layer normalise each row of the last dimension on its own, as layer and RMS
    #: norm do (its output unchanged when each row is scaled)? Only then do their formulas fit.
    rows: bool = True


_measured: dict[int, tuple[Any, tuple, Optional[Affine]]] = {}


def measured_affine(node: Node) -> Optional[Affine]:
    """The affine part of a normalisation layer of the user's own (recognised by its class
    name), measured by running it alone: its parameters need not be gamma and beta as such
    (``x * (1 + weight)`` with a zero weight is a scale of one). For N(0, 1) inputs ``x`` and
    ``-x`` the normalised values flip sign, so half the difference of the outputs is the scaled
    part and half the sum the shift."""
    m = node.module
    if m is None or module_op(m) is not None or not node.input_shapes or \
            not node.input_shapes[0]:
        return None
    versions = tuple(p._version for p in m.parameters())
    hit = _measured.get(id(m))
    if hit is not None and hit[0]() is m and hit[1] == versions:
        return hit[2]
    shape = list(node.input_shapes[0])
    shape[0] = min(shape[0], 2)
    same = _same_layer_key(m, shape)  # the 161 identical RMSNorms of a LLaMA run once
    if same is not None and same in _by_content:
        _measured[id(m)] = (weakref.ref(m), versions, _by_content[same])
        return _by_content[same]
    dtype = next((p.dtype for p in m.parameters() if p.is_floating_point()), torch.float32)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    try:
        with torch.no_grad():
            plus, minus = m(x), m(-x)
            scale = torch.rand(shape[:-1] + [1], generator=torch.Generator().manual_seed(1))
            rescaled = m(x * (0.5 + 1.5 * scale).to(dtype))
        scaled, shift = (plus - minus).float() / 2, (plus + minus).float() / 2
        xf = x.float()
        rms = float(plus.float().pow(2).mean()) ** 0.5
        found: Optional[Affine] = Affine(
            gmean=float((scaled * xf).mean() / max(float(xf.pow(2).mean()), 1e-12)),
            g2=float(scaled.pow(2).mean()), b2=float(shift.pow(2).mean()),
            bmean=float(shift.mean()),
            rows=float((rescaled - plus).float().abs().max()) <= 1e-2 * max(rms, 1e-12))
    except Exception:  # a layer that does not run alone: read its parameters instead
        found = None
    _measured[id(m)] = (weakref.ref(m), versions, found)
    if same is not None:
        if len(_by_content) > 256:
            _by_content.clear()
        _by_content[same] = found
    return found


_by_content: dict[tuple, Optional[Affine]] = {}


def _same_layer_key(m: nn.Module, shape: list) -> Optional[tuple]:
    """What a layer's result depends on, when that is its class, its plain attributes and its
    parameters' values (None for a layer with sub-layers, buffers or other attributes)."""
    if any(True for _ in m.children()) or any(True for _ in m.buffers()):
        return None
    attrs = []
    for k, v in sorted(vars(m).items()):
        if k.startswith("_"):
            continue
        if not isinstance(v, (int, float, str, bool, tuple, type(None))):
            return None
        attrs.append((k, v))
    params = []
    for name, p in m.named_parameters():
        if p.device.type == "meta" or p.numel() > 1 << 16:
            return None
        params.append((name, tuple(p.shape), str(p.dtype),
                       hash(p.detach().double().contiguous().numpy().tobytes())))
    return (type(m), tuple(shape), tuple(attrs), tuple(params))


def _affine_moments(node: Node) -> tuple[float, float, float, float, float]:
    eps = float(getattr(node.module, "eps", None) or kw(node, "eps", 4, 1e-5) or 1e-5)
    found = measured_affine(node)
    if found is not None:
        return found.gmean, found.g2, found.b2, found.bmean, eps
    gamma, beta = norm_affine(node)
    g2 = mean_sq(gamma) if gamma is not None else 1.0
    return (mean(gamma) if gamma is not None else 1.0), g2, mean_sq(beta), mean(beta), eps


@on_one_thread
def _channel_spread(node: Node) -> tuple[Optional[Node], Optional[torch.Tensor]]:
    """Each channel's share of the input variance, when the input comes straight from a weight
    layer (through a bias add or a view): its rows' squared norms over their mean. A depthwise
    convolution has only k*k weights per channel, so its channels' variances spread widely --
    and batch norm divides each channel's gradient by its own variance."""
    src = node.inputs[0] if node.inputs else None
    while src is not None and src.kind in (Kind.ADD, Kind.RESHAPE) and src.weight() is None:
        data = [i for i in src.inputs if i.kind not in (Kind.PARAM, Kind.CONSTANT)]
        src = data[0] if len(data) == 1 else None
    if src is None or src.kind not in (Kind.CONV, Kind.LINEAR):
        return None, None
    w = src.weight()
    if w is None or w.dim() < 2:
        return None, None
    if src.op == "conv_transpose":
        w = w.transpose(0, 1)
    rows = w.detach().float().reshape(w.shape[0], -1).pow(2).sum(1)
    shape = node.shape or ()
    if len(shape) < 2 or rows.numel() != shape[1] or float(rows.mean()) <= 0:
        return None, None
    return src, rows / rows.mean()


def _run_if_other_groups(prop: Propagation, node: Node) -> bool:
    """A normalisation layer of the user's own that does not normalise rows of the last
    dimension (filter response norm over each channel's positions, EvoNorm's group statistics,
    a channels-first layer norm) is not what the layer and RMS norm formulas describe: it is
    estimated by running it alone on inputs of the predicted statistics (archlint.ops.opaque),
    which also gets right what it applies after normalising (a thresholded or gated output)."""
    found = measured_affine(node)
    return found is not None and not found.rows and estimate_by_running(prop, node)


@lru_cache(maxsize=4096)
def _two_value_gain(var: float, eps: float) -> float:
    """Normalising two values leaves only +-1: the gradient passes only through eps. For
    d = (x1 - x2) / 2 ~ N(0, var / 2), each input's gradient is g * (1/2) eps / (d^2 + eps)^(3/2)
    in RMS, so the per-element gain is E[eps^2 / (d^2 + eps)^3] / 2 -- an expectation ruled by
    the rare d near 0: one probe's measurement scatters widely around it."""
    if eps <= 0:
        return 0.0
    sd = math.sqrt(max(var / 2, 0.0))
    if sd <= 0:
        return 0.5 / eps
    u = np.sinh(np.linspace(-12.0, 12.0, 6001))  # d / sqrt(eps): dense where the peak is
    d = u * math.sqrt(eps)
    dens = np.exp(-0.5 * (d / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    f = dens * eps ** 2 / (d * d + eps) ** 3
    return 0.5 * float(np.sum((f[1:] + f[:-1]) * np.diff(d)) / 2)


@lru_cache(maxsize=4096)
def _sample_inverse(count: int, ratio: float) -> float:
    """E[(1 + r) / (s2 + r)] for s2 the biased variance of ``count`` N(0, 1) values
    (chi-square with count - 1 degrees of freedom over count) and r = eps / var: dividing by
    the variance of a few values divides by a small one often, M / (M - 3) on average for
    eps = 0 (1.6 for eight values, a batch of 2 on a 2x2 map)."""
    k = count - 1
    if k > 400:
        return (1 + ratio) / (1 + ratio - 3.0 / count)  # M/(M-3) with eps, to first order
    lo, hi = math.log(1e-14), math.log(k + 60 * math.sqrt(2 * k) + 60)
    t = np.linspace(lo, hi, 8001)
    u = np.exp(t)
    logdens = (k / 2 - 1) * t - u / 2 - (k / 2) * math.log(2) - math.lgamma(k / 2)
    f = np.exp(logdens + t) * (1 + ratio) / (u / count + ratio)  # density in t = log u
    return float(np.sum((f[1:] + f[:-1]) * np.diff(t)) / 2)


@lru_cache(maxsize=4096)
def _group_inverse(k: int, fixed: float, ratio: float) -> float:
    """E[(1 + r) / (c + (1 - c) u / k + r)] for u chi-square with k degrees of freedom: how
    much larger 1/variance is on average than 1/(its mean) when a share 1 - c of the variance
    comes from only k + 1 values (the channel offsets of a group norm's few channels)."""
    if k <= 0 or fixed >= 1.0:
        return 1.0
    lo, hi = math.log(1e-14), math.log(k + 60 * math.sqrt(2 * k) + 60)
    t = np.linspace(lo, hi, 8001)
    u = np.exp(t)
    logdens = (k / 2 - 1) * t - u / 2 - (k / 2) * math.log(2) - math.lgamma(k / 2)
    f = np.exp(logdens + t) * (1 + ratio) / (fixed + (1 - fixed) * u / k + ratio)
    return float(np.sum((f[1:] + f[:-1]) * np.diff(t)) / 2)


def _small_sample(count: int, var: float, eps: float) -> float:
    """How much larger 1/variance is on average over ``count`` values than 1/(their expected
    variance); what eps lets through, relative to 1/(var + eps), when there are only two."""
    if count == 2:
        return _two_value_gain(var, eps) * (var + eps)
    if count < 3 or var <= 0:
        return 1.0
    return _sample_inverse(count, float(f"{eps / var:.3g}"))


def _pair_or_projection(count: int, var: float, eps: float) -> float:
    """The factor that removing the mean and the scale of ``count`` values leaves of an
    incoherent gradient: 1 - 2/count, times the small-sample factor (:func:`_small_sample`)."""
    if count == 2:
        return _small_sample(count, var, eps)
    return max(1 - 2.0 / max(count, 1), 0.0) * _small_sample(count, var, eps)


@dataclass
class BatchNormBackward(Backward):
    """Batch norm in training mode: each channel's gradient loses its mean over the batch and
    positions and its part along the normalised output. A gradient that the positions of a
    sample share (behind a global pool) is mostly such a mean: only its variation across the
    batch survives, minus what lines up with the output's own per-sample means. What survives
    is centred over the batch (it pairs only with per-sample fluctuations upstream)."""

    gain: float  # per-element gain before the projections: gamma^2 E[1/(s^2 + eps)]
    count: int  # values per channel (batch x positions)
    batch: int
    #: The normalised output's share of energy in its per-sample positional means.
    sample_mean_share: float

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        if go <= 0.0 or not node.inputs or node.inputs[0] not in set(node.grad_parents()):
            return
        parent = node.inputs[0]
        coh = gso + gsco
        if coh > go:
            gso, gsco, coh = gso * go / coh, gsco * go / coh, go
        if self.count == 2:  # two values: nothing but eps gets through, coherent or not
            per_in, centred = self.gain * go, self.gain * coh
        elif self.count <= self.batch:
            # one position per sample: "shared by the sample's positions" is every gradient;
            # only the batch mean and the part along the output go
            centred = self.gain * gsco * max(1.0 - 1.0 / self.count, 0.0)
            per_in = self.gain * (go - gsco) * max(1.0 - 2.0 / self.count, 0.0) + centred
        else:
            keep = 1.0 - self.sample_mean_share
            centred = self.gain * keep * (gso * (1.0 - 1.0 / max(self.batch, 1)) + gsco)
            per_in = self.gain * (go - coh) * max(1.0 - 2.0 / self.count, 0.0) + centred
        prop.g2[parent] = prop.g2.get(parent, 0.0) + per_in
        prop.gsc[parent] = prop.gsc.get(parent, 0.0) + centred
        if parent.users == [node]:
            prop.centred.add(parent)
        if per_in > 0:
            prop.decades[node] = 0.5 * math.log10(per_in / go)


def estimate_batch_norm(prop: Propagation, node: Node) -> None:
    x = prop.s_in(node)
    n = prop.numel(node)
    _, g2, b2, bmean, eps = _affine_moments(node)
    shape = node.shape or ()
    training = node.module is None and kw(node, "training", 5, False) or (
        node.module is not None)
    C = shape[1] if len(shape) > 1 else 1
    M = max(n // max(C, 1), 1)
    if training:
        var = max(x.q - x.s, 0.0)
        within = max(x.w - x.s, 0.0) / var if var > 0 else 0.0
        kept = var / (var + eps)  # eps comparable to the variance shrinks the output
        inverse = 1.0 / (var + eps)
        src, spread = _channel_spread(node)
        if spread is not None:  # each channel divided by its own variance
            per_channel = var * spread
            kept = float((per_channel / (per_channel + eps)).mean())
            weights = 1.0 / (per_channel + eps)
            inverse = float(weights.mean())
            # ... which the producing layer's own weights undo on the way to its input: a
            # channel with small weights has a small variance and passes little back
            prop.rescale[src] = float((spread * weights).mean()) / max(inverse, 1e-300)
        B = shape[0] if shape else 1
        per_sample = max(M / max(B, 1), 1.0)
        prop.out(node, Sig(g2 * kept + b2, bmean, b2, n).with_w(g2 * kept * within + b2),
                 BatchNormBackward(g2 * inverse * _small_sample(M, var, eps), M, B,
                                   min(within + (1.0 - within) / per_sample, 1.0)))
        return
    rv = getattr(node.module, "running_var", None)
    rvar = mean(rv) if rv is not None else 1.0
    prop.out(node, Sig(g2 * x.q / (rvar + eps) + b2, bmean, g2 * x.s / (rvar + eps) + b2, n),
             Gains([(0, g2 / (rvar + eps))]))


def estimate_layer_norm(prop: Propagation, node: Node) -> None:
    """Layer, group and instance norm: per-sample statistics over a group of elements."""
    if _run_if_other_groups(prop, node):
        return
    x = prop.s_in(node)
    n = prop.numel(node)
    _, g2, b2, bmean, eps = _affine_moments(node)
    op = node.op
    shape = node.shape or ()
    group = _group_size(node, shape)
    var = max(x.q - x.m * x.m, 0.0)
    if op == "instance_norm" or op == "group_norm":
        var = max(x.q - x.s, 0.0) if op == "instance_norm" else var
    frac = (max(x.s - x.m * x.m, 0.0) / var) if var > 0 and op == "layer_norm" else 0.0
    wfrac = (max(x.w - x.m * x.m, 0.0) / var) if var > 0 and op == "layer_norm" else 0.0
    spread = 1.0
    if op == "group_norm" and var > 0 and len(shape) > 2:
        # each channel's offset from its group's mean survives (instance norm removes it),
        # and the few offsets of a group make its variance vary from sample to sample
        per_group = max(group // max(numel(shape[2:]), 1), 1)
        left = 1.0 - 1.0 / per_group
        offsets = max(x.w - x.m * x.m, 0.0)
        within = max(x.q - x.w, 0.0)
        var = within + offsets * left
        if var > 0:
            frac = left * max(x.s - x.m * x.m, 0.0) / var
            wfrac = left * offsets / var
            spread = _group_inverse(per_group - 1, float(f"{within / var:.3g}"),
                                    float(f"{eps / var:.3g}"))
    gain = g2 / (var + eps) * _pair_or_projection(group, var, eps) * spread
    kept = var / (var + eps) if var > 0 else 0.0  # eps comparable to the variance shrinks it
    shared = None
    if op != "layer_norm":
        # per-sample statistics over a group of channels and all positions: the backward
        # removes the group average of what each channel's gradient shares across positions
        groups = getattr(node.module, "num_groups", None) if node.module is not None else \
            kw(node, "num_groups", 1, None)
        per_group = numel(shape[1:2]) / max((groups if isinstance(groups, int) else 1)
                                            if op == "group_norm" else numel(shape[1:2]), 1)
        keep = max(1.0 - 1.0 / max(per_group, 1.0), 0.0)
        shared = [(0, gain * keep, 0.0)]
    token = _token_gain(prop, node, lambda v: g2 / (v + eps) * _pair_or_projection(
        group, v, eps)) if op == "layer_norm" else None
    prop.out(node, Sig(g2 * kept + b2, bmean, g2 * kept * frac + b2, n).with_w(
        g2 * kept * wfrac + b2), AffineBackward([(0, gain)], shared=shared, kept=kept,
                                                token=token))


def _token_gain(prop: Propagation, node: Node, gain_of: Callable[[float], float],
                centred: bool = True) -> Optional[TokenGain]:
    """A norm over each position's features, reading positions with statistics of their own
    (a class token, archlint.ops.positions): its gain there and at the other positions, each
    from its own variance (``gain_of(variance)``; RMS norm: the mean square)."""
    tok = prop.token.get(node.inputs[0]) if node.inputs else None
    if tok is None:
        return None
    x = prop.s_in(node)
    k, length = len(tok.sel.positions), tok.sel.length
    q_rest = max((length * x.q - k * tok.sig.q) / max(length - k, 1), 0.0)
    m_rest = (length * x.m - k * tok.sig.m) / max(length - k, 1) if centred else 0.0
    m_tok = tok.sig.m if centred else 0.0
    return TokenGain(tok.sel, gain_of(max(tok.sig.q - m_tok ** 2, 0.0)),
                     gain_of(max(q_rest - m_rest ** 2, 0.0)))


@dataclass
class AffineBackward(Gains):
    """The norm's gains; a scale and shift with two or more dimensions (``LayerNorm([C, H, W])``)
    are weights of their own: their gradient sums the output gradient (times the normalised
    value, for the scale) over the rows that share them."""

    kept: float = 1.0
    #: The gains at positions with statistics of their own and at the others.
    token: Optional[TokenGain] = None

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        if go <= 0.0:
            return
        if self.token is None or not apply_token_gain(prop, node, go, gso, gsco, self.token):
            super().apply(prop, node, go, gso, gsco, items)
        for t, factor in zip(norm_affine(node), (self.kept, 1.0)):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.requires_grad:
                rows = prop.numel(node) / max(t.numel(), 1)
                prop.add_weight_grad(node.module_path, rows * go * factor, t.numel(), node,
                                     key=id(t))


def estimate_rms_norm(prop: Propagation, node: Node) -> None:
    if _run_if_other_groups(prop, node):
        return
    x = prop.s_in(node)
    n = prop.numel(node)
    gmean, g2, _, _, eps = _affine_moments(node)
    shape = node.shape or ()
    group = shape[-1] if shape else 1
    frac = x.s / x.q if x.q > 0 else 0.0
    if node.op == "normalize":
        prop.out(node, Sig(1.0 / max(group, 1), 0.0, 0.0, n),
                 Gains([(0, 1.0 / max(x.q * group, EPS))]))
        return
    kept = x.q / (x.q + eps) if x.q > 0 else 0.0
    project = max(1 - 1.0 / max(group, 1), 0.0)
    token = _token_gain(prop, node, lambda v: g2 / (v + eps) * project, centred=False)
    prop.out(node, Sig(g2 * kept, x.m / math.sqrt(x.q + eps) * gmean, g2 * kept * frac,
                       n).with_w(g2 * kept * x.w / x.q if x.q > 0 else None),
             AffineBackward([(0, g2 / (x.q + eps) * project)], token=token))


def _norm_module_shape(mod: nn.Module, args: Any, kwargs: dict) -> TensorShape:
    x = same_module_shape(mod, args, kwargs)
    expect_float(x, type(mod).__name__)
    if isinstance(mod, nn.LayerNorm) or (hasattr(nn, "RMSNorm") and isinstance(mod, nn.RMSNorm)):
        want = tuple(mod.normalized_shape)
        if tuple(x.shape[-len(want):]) != want:
            raise ShapeMismatch(f"normalises the last dimensions {list(want)}, given "
                                f"{describe(x)}")
        return x
    channels = getattr(mod, "num_features", None) or getattr(mod, "num_channels", None)
    if channels and (x.dim() < 2 or x.shape[1] != channels):
        raise ShapeMismatch(f"expects [N, {channels}, ...], given {describe(x)}")
    return x


def _norm(name: str, modules: tuple, estimate) -> Op:
    return Op(name=name, kind=Kind.NORM, modules=modules, functions=(name,), shape=same_shape,
              module_shape=_norm_module_shape, estimate=estimate)


register(
    _norm("batch_norm", (nn.modules.batchnorm._BatchNorm,), estimate_batch_norm),
    _norm("layer_norm", (nn.LayerNorm,), estimate_layer_norm),
    _norm("group_norm", (nn.GroupNorm,), estimate_layer_norm),
    _norm("instance_norm", (nn.modules.instancenorm._InstanceNorm,), estimate_layer_norm),
    _norm("rms_norm", (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else (), estimate_rms_norm),
    _norm("normalize", (), estimate_rms_norm),
)
