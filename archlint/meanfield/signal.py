"""What the gradient estimate carries through the graph, and the statistics of weight matrices.

Forward, each tensor carries per element (:class:`Sig`): ``q = E[h^2]``, the mean ``m``, ``s``
-- the covariance of two different rows (samples/positions) of one unit plus ``m^2``: the part
of the signal shared across rows, which batch normalisation removes and pooling keeps -- and
``w``, what two positions of one *sample* share (global pooling keeps it; attention at
initialisation makes all positions of a sample alike). A weight layer is summarised by
:class:`LinearStats`: the row and column norms of its matrix and its bias moments.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import torch

from ..graph.metainit import Dist, meta_dist
from ..graph.weightstats import on_one_thread, sum_sq

EPS = 1e-30

#: Gauss-Hermite rule for averaging over a unit's shared offset (24 nodes).
GH_Z, GH_W = np.polynomial.hermite_e.hermegauss(24)
GH_W = GH_W / math.sqrt(2 * math.pi)


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


def mean_sq(t: Optional[torch.Tensor]) -> float:
    if t is None:
        return 0.0
    d = meta_dist(t)
    if d is not None:
        return d.mean_sq
    t = t.detach()
    if t.numel() == 0:
        return 0.0
    return float(torch.linalg.vector_norm(t if t.is_complex() else t.float())) ** 2 / t.numel()


def mean(t: Optional[torch.Tensor]) -> float:
    d = meta_dist(t) if t is not None else None
    if d is not None:
        return d.mean
    if t is not None and t.is_complex():
        t = t.real
    return float(t.detach().float().mean()) if t is not None and t.numel() else 0.0


def numel(shape: Optional[Sequence[int]]) -> int:
    return int(math.prod(shape)) if shape else 1


def rounded(x: float) -> float:
    """Six significant digits: the key under which moment computations are memoised."""
    return float(f"{x:.6g}")


@dataclass(frozen=True)
class LinearStats:
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


@on_one_thread
def linear_stats(w: torch.Tensor, b: Optional[torch.Tensor], in_dim: int = 1,
                 transposed: bool = False, groups: int = 1) -> LinearStats:
    """Stats for y = W x (+ b). ``in_dim``: the axis of W that is summed (1 for nn.Linear
    [out, in] and conv [out, in/g, *k]; 0 for x @ W with W [in, out])."""
    key = (id(w), w._version, id(b), in_dim, transposed, groups)
    hit = _weight_cache.get(key)
    # ids are reused once a tensor dies: a hit counts only if it is still the same tensor
    if hit is not None and hit[0]() is w and hit[1]() is b:
        return hit[2]
    d = meta_dist(w)
    if d is not None:
        return _expected_linear_stats(w, b, d, in_dim, transposed)
    wd = w.detach().float()
    if in_dim == 0:
        wd = wd.t()
    rows = wd.reshape(wd.shape[0], -1)  # [out, fan_in]
    # one pass, no temporary; shared with the init checks when rows are w's own entries in order
    total = sum_sq(w) if in_dim == 1 and w.is_contiguous() else \
        float(torch.linalg.vector_norm(rows)) ** 2
    a = total / max(rows.shape[0], 1)
    rs = torch.mv(rows, torch.ones(rows.shape[1], dtype=rows.dtype))  # row sums, via BLAS
    bm = float(rs.pow(2).mean())
    col2 = total / max(rows.shape[1], 1) if not transposed else a
    bias = b.detach().float() if b is not None else None
    stats = LinearStats(
        a=a, bm=bm, col2=col2, b2=mean_sq(bias), bmean=mean(bias),
        brow=float((bias * rs).mean()) if bias is not None and bias.numel() == rs.numel() else 0.0,
        rowsum_mean=float(rs.mean()), fan_in=rows.shape[1], out=rows.shape[0],
    )
    _weight_cache[key] = (weakref.ref(w), (weakref.ref(b) if b is not None else _none_ref),
                          stats)
    return stats


def _expected_linear_stats(w: torch.Tensor, b: Optional[torch.Tensor], d: Dist, in_dim: int,
                           transposed: bool) -> LinearStats:
    """:func:`linear_stats` of a meta weight: the expectations over its entries' distribution
    (i.i.d.; a matrix of millions of entries matches them to a fraction of a percent)."""
    out = int(w.shape[in_dim ^ 1]) if w.dim() == 2 else int(w.shape[0])
    fan_in = max(int(w.numel()) // max(out, 1), 1)
    entry = d.mean_sq
    a = fan_in * entry
    rowsum_mean = fan_in * d.mean
    bm = fan_in * d.var + rowsum_mean * rowsum_mean
    b2, bmean = mean_sq(b), mean(b)
    return LinearStats(a=a, bm=bm, col2=a if transposed else out * entry, b2=b2, bmean=bmean,
                       brow=bmean * rowsum_mean if b is not None and b.numel() == out else 0.0,
                       rowsum_mean=rowsum_mean, fan_in=fan_in, out=out)


def linear_forward(x: Sig, st: LinearStats, n: int) -> Sig:
    """Moments of W x + b for x with moments (q, m, s), W fixed, x's units independent."""
    fl = max(x.q - x.s, 0.0)  # fluctuating part
    coh = max(x.s - x.m * x.m, 0.0)  # per-unit offsets around the global mean
    base = st.bm * x.m * x.m + st.b2 + 2 * x.m * st.brow
    shared = st.a * coh + base
    q = st.a * fl + shared
    out = Sig(q=max(q, 0.0), m=st.rowsum_mean * x.m + st.bmean, s=max(shared, 0.0),
              numel=n)
    if x.w_ is not None:
        out.with_w(st.a * max(x.w - x.m * x.m, 0.0) + base)
    return out


def coherent_pairing(go: float, gso: float, gsco: float, x: Sig, per_sample: float) -> float:
    """E[g x] summed over one sample's positions, per row: the incoherent part plus the part of
    the gradient shared by all positions of a sample, paired with what the input shares.

    A batch-centred shared gradient (sum over the batch zero, after batch norm) pairs only with
    the per-sample fluctuation of the input's positional mean."""
    P = per_sample
    return (go * x.q + (P - 1) * gso * max(x.w, 0.0)
            + gsco * (P * max(x.w - x.s, 0.0) + max(x.q - x.w, 0.0)))


@lru_cache(maxsize=1024)
def max_moments(k: int) -> tuple[float, float]:
    """(E[M], E[M^2]) for M the max of k iid N(0, 1), by Gauss-Legendre on [-8, 8]."""
    if k <= 1:
        return 0.0, 1.0
    z, w = np.polynomial.legendre.leggauss(96)
    x = z * 8.0
    pdf = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    density = w * 8.0 * k * cdf ** (k - 1) * pdf
    return float(np.sum(density * x)), float(np.sum(density * x * x))


def max_second_moment(x: Sig, k: int) -> float:
    """E[max^2] of k values sharing the per-unit part, fluctuating independently."""
    fl = max(x.q - x.s, 0.0)
    sd = math.sqrt(fl)
    mu = x.m
    expected, second = max_moments(k)
    return max(mu * mu + 2 * mu * sd * expected + fl * second
               + max(x.s - x.m * x.m, 0.0), 0.0)


@lru_cache(maxsize=1024)
def top_moments(n: int, k: int) -> tuple[float, float]:
    """Mean over the k largest of n iid N(0, 1) of (E[X_(i)], E[X_(i)^2]): what ``topk`` keeps.

    The i-th largest has density ``n C(n-1, i-1) Phi^(n-i) (1-Phi)^(i-1) phi``; integrated by
    Gauss-Legendre on [-8, 8] (log-space weights, so large n do not overflow)."""
    n, k = max(int(n), 1), max(min(int(k), int(n)), 1)
    if k >= n:
        return 0.0, 1.0
    z, w = np.polynomial.legendre.leggauss(128)
    x = z * 8.0
    log_pdf = -0.5 * x * x - 0.5 * math.log(2 * math.pi)
    cdf = np.clip(0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x])), 1e-300, 1.0)
    upper = np.clip(1.0 - cdf, 1e-300, 1.0)
    first = second = 0.0
    for i in range(1, k + 1):
        log_c = math.log(n) + math.lgamma(n) - math.lgamma(i) - math.lgamma(n - i + 1)
        dens = w * 8.0 * np.exp(log_c + (n - i) * np.log(cdf) + (i - 1) * np.log(upper) + log_pdf)
        first += float(np.sum(dens * x))
        second += float(np.sum(dens * x * x))
    return first / k, second / k
