"""Sliding windows copied out and summed back: ``F.unfold`` / ``nn.Unfold`` (im2col: every
kernel window as a column, zeros where it overhangs the padding), ``F.fold`` / ``nn.Fold`` (the
columns summed back into an image, overlaps adding up) and ``Tensor.unfold`` (windows along one
dimension, no padding).

Unfold copies values: an element's gradient sums over its copies, and the zeros of the padding
dilute the output's moments by the fraction of real copies. Fold sums the entries that land on
one pixel (copies of different positions: their second moments add up, plus what positions
share) and passes each entry's gradient back
from the one pixel it lands on (none from the padding). The copy counts are exact: per spatial
dimension, the number of (window, kernel offset) pairs that land inside the image.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch.nn.functional as F
from torch import nn

from ..graph.ir import Kind, Node
from ..meanfield.signal import Sig
from .base import Gains, Propagation, kw, unknown
from .table import Op, register


def _pair(v: Any, k: int) -> Optional[tuple[int, ...]]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,) * k
    if isinstance(v, (tuple, list)) and len(v) == k and all(isinstance(x, int) for x in v):
        return tuple(v)
    return None


def _params(node: Node) -> Optional[tuple]:
    m = node.module
    if m is not None:
        ks, dil, pad, st = m.kernel_size, m.dilation, m.padding, m.stride
    else:
        ks = kw(node, "kernel_size", 1 if node.op == "unfold" else 2, None)
        base = 2 if node.op == "unfold" else 3
        dil, pad, st = (kw(node, name, base + i, d) for i, (name, d) in
                        enumerate((("dilation", 1), ("padding", 0), ("stride", 1))))
    return ks, dil, pad, st


def _inside(size: int, k: int, d: int, p: int, s: int) -> tuple[int, int]:
    """(windows, window entries that land inside an image dimension of ``size``)."""
    windows = (size + 2 * p - d * (k - 1) - 1) // s + 1
    hits = sum(1 for o in range(max(windows, 0)) for j in range(k)
               if 0 <= o * s - p + j * d < size)
    return max(windows, 0), hits


def _image_counts(spatial: tuple[int, ...], params: tuple) -> Optional[tuple[int, int]]:
    """(entries of the columns, those that are copies of a pixel) per channel and sample."""
    k = len(spatial)
    ks, dil, pad, st = (_pair(v, k) for v in params)
    if None in (ks, dil, pad, st):
        return None
    total, real = 1, 1
    for size, kk, d, p, s in zip(spatial, ks, dil, pad, st):
        windows, hits = _inside(size, kk, d, p, s)
        total *= windows * kk
        real *= hits
    return total, real


def _is_im2col(node: Node) -> bool:
    return isinstance(node.module, (nn.Unfold, nn.Fold)) or \
        node.attrs.get("call") in (F.unfold, F.fold)


def estimate_windows(prop: Propagation, node: Node) -> None:
    x = prop.s_in(node)
    n = prop.numel(node)
    shape_in = node.input_shapes[0] if node.input_shapes else None
    if not _is_im2col(node):  # Tensor.unfold(dim, size, step): copies, no padding
        prop.out(node, Sig(x.q, x.m, x.s, n).with_w(x.w_),
                 Gains([(0, n / max(x.numel, 1))]))
        return
    unfold = node.op == "unfold"
    spatial = tuple(shape_in[2:]) if unfold and shape_in else (
        tuple(node.shape[2:]) if node.shape else ())
    counts = _image_counts(spatial, _params(node)) if spatial else None
    if counts is None or counts[0] == 0 or not shape_in:
        unknown(prop, node)
        return
    total, real = counts
    pixels = math.prod(spatial)
    if unfold:  # a fraction real/total of the columns' entries are copies
        f = real / total
        prop.out(node, Sig(f * x.q, f * x.m, f * x.s, n).with_w(f * x.w),
                 Gains([(0, real / max(pixels, 1))]))
        return
    # fold: real/pixels entries land on each pixel on average, copies of different positions
    # (sharing what positions share, w); each entry's gradient comes from its pixel, or from
    # nowhere (the padding)
    c = real / max(pixels, 1)
    prop.out(node, Sig(c * x.q + c * (c - 1) * x.w, c * x.m, c * c * x.s, n).with_w(c * c * x.w),
             Gains([(0, real / max(total, 1))]))


register(
    Op(name="unfold", kind=Kind.RESHAPE, modules=(nn.Unfold,), functions=("unfold",),
       estimate=estimate_windows),
    Op(name="fold", kind=Kind.RESHAPE, modules=(nn.Fold,), functions=("fold",),
       estimate=estimate_windows),
)
