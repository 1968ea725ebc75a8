"""Gauss-Hermite and composite Gauss-Legendre quadrature for smooth activations (tanh, sigmoid,
GELU, SiLU, Mish, softplus, logsigmoid, tanhshrink, softsign), and the functions themselves.

Narrow Gaussians (``std <= 0.75`` transition widths) use 64-node Gauss-Hermite. For wider ones a
function is written as a piecewise asymptote (``sign``, step, ReLU...) integrated in closed form
(:mod:`.gaussian`) plus a residual that decays exponentially, integrated against the normal
density on a fixed composite Gauss-Legendre grid computed once per function. softsign (a kink at
0 and a residual decaying only like ``1/|h|``) and softplus with a small ``threshold`` use a
composite Gauss-Legendre rule in standardised coordinates refined geometrically around kinks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .gaussian import INF as _INF, INV_SQRT2PI as _INV_SQRT2PI, ActMoments, Piecewise, RELU_PIECES

_SQRT2 = math.sqrt(2.0)


# ---------------------------------------------------------------------------------------------
# Quadrature engine for smooth functions
# ---------------------------------------------------------------------------------------------

_GH_NODES = 64  # Gauss-Hermite order for narrow Gaussians
_GH_MAX_STD = 0.75  # ... used while std <= this many transition widths
_GL_NODES = 12  # Gauss-Legendre order per panel of the adaptive composite rule
_GRID_GL_NODES = 10  # ... and per panel of the fixed residual grid
_Z_MAX = 12.0  # standardised half-range of the composite rule (tail mass < 1e-32)


def _hermite_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w * _INV_SQRT2PI


def _legendre_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


_GH_Z, _GH_W = _hermite_rule(_GH_NODES)
_UNIFORM_BREAKS = np.arange(-_Z_MAX, _Z_MAX + 0.5, 1.0)
_GEOMETRIC_STEPS = 2.0 ** np.arange(-2, 60)
_GL_RULE = _legendre_rule(_GL_NODES)
_GRID_GL_RULE = _legendre_rule(_GRID_GL_NODES)


def _panel_rule(
    breaks: np.ndarray, rule: tuple[np.ndarray, np.ndarray] = _GL_RULE
) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the composite Gauss-Legendre rule on sorted break points."""
    x, w = rule
    mid = 0.5 * (breaks[1:] + breaks[:-1])
    half = 0.5 * (breaks[1:] - breaks[:-1])
    nodes = (mid[:, None] + half[:, None] * x[None, :]).ravel()
    weights = (half[:, None] * w[None, :]).ravel()
    return nodes, weights


def _residual_breaks(support: float) -> np.ndarray:
    """Panel ends on ``[-support, support]`` (in transition widths): fine near 0, then width 2."""
    inner = [0.25, 0.5, 1.0, 1.5]
    outer = np.arange(2.0, support, 2.0).tolist()
    half = np.array(inner + outer + [support])
    return np.concatenate([-half[::-1], [0.0], half])


FnDf = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Smooth:
    """A smooth activation: ``fn`` returns ``(phi, phi')``; ``asym`` is a piecewise asymptote that
    ``phi`` approaches exponentially fast beyond ``support`` transition widths (``inf`` if it does
    not); ``kinks`` are points where ``phi`` is not smooth (besides those of the asymptote)."""

    fn: FnDf
    asym: Piecewise
    width: float = 1.0
    support: float = _INF
    kinks: tuple[float, ...] = ()
    _grid: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    def moments(self, m: float, s: float) -> tuple[float, float, float]:
        near_kink = any(abs(k - m) < 16.0 * s for k in self.kinks)
        if s <= _GH_MAX_STD * self.width and not near_kink:
            return self._hermite(m, s)
        if math.isfinite(self.support) and not self.kinks:
            return self._residual(m, s)
        return self._composite(m, s)

    def _sums(self, h: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
        f, df = self.fn(h)
        return float(w @ f), float(w @ (f * f)), float(w @ (df * df))

    def _hermite(self, m: float, s: float) -> tuple[float, float, float]:
        return self._sums(m + s * _GH_Z, _GH_W)

    def _composite(self, m: float, s: float) -> tuple[float, float, float]:
        """Composite Gauss-Legendre in ``z = (h - m)/s`` refined geometrically around kinks."""
        points = [_UNIFORM_BREAKS]
        scales = (self.width / s) * _GEOMETRIC_STEPS
        scales = scales[scales < 2.0 * _Z_MAX]
        for centre in (0.0,) + self.kinks:
            zc = (centre - m) / s
            points.append(np.concatenate([[zc], zc - scales, zc + scales]))
        breaks = np.unique(np.clip(np.concatenate(points), -_Z_MAX, _Z_MAX))
        z, w = _panel_rule(breaks)
        return self._sums(m + s * z, w * _INV_SQRT2PI * np.exp(-0.5 * z * z))

    def _residual(self, m: float, s: float) -> tuple[float, float, float]:
        """Closed-form asymptote plus the exponentially small residual on a fixed grid."""
        h, w, res_f, res_f2, res_g2 = self._residual_grid()
        dens = w * np.exp(-0.5 * ((h - m) / s) ** 2) * (_INV_SQRT2PI / s)
        base = self.asym.moments(m, s)
        return (
            base[0] + float(dens @ res_f),
            base[1] + float(dens @ res_f2),
            base[2] + float(dens @ res_g2),
        )

    def _residual_grid(self) -> tuple[np.ndarray, ...]:
        if self._grid is None:
            h, w = _panel_rule(self.width * _residual_breaks(self.support), _GRID_GL_RULE)
            f, df = self.fn(h)
            a_f, a_f2, a_g2 = self.asym.evaluate(h)
            self._grid = (h, w, f - a_f, f * f - a_f2, df * df - a_g2)
        return self._grid

    def at_point(self, m: float) -> tuple[float, float, float]:
        f, df = self.fn(np.array([float(m)]))
        return float(f[0]), float(f[0] ** 2), float(df[0] ** 2)


# ---------------------------------------------------------------------------------------------
# Vectorised smooth functions: each returns (phi(h), phi'(h))
# ---------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic sigmoid with relative accuracy in both tails."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


def _sigmoid_slope(x: np.ndarray) -> np.ndarray:
    """``sigmoid'(x)`` without cancellation in the tails."""
    e = np.exp(-np.abs(x))
    return e / (1.0 + e) ** 2


def tanh_fd(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.cosh(np.minimum(np.abs(h), 350.0))
    return np.tanh(h), 1.0 / (c * c)


def sigmoid_fd(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _sigmoid(h), _sigmoid_slope(h)


def silu_fd(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sig = _sigmoid(h)
    return h * sig, sig + h * _sigmoid_slope(h)


def mish_fd(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.tanh(np.logaddexp(0.0, h))
    return h * t, t + h * (1.0 - t * t) * _sigmoid(h)


_ERFC = np.frompyfunc(math.erfc, 1, 1)  # numpy has no erf; erfc keeps the lower tail accurate


def gelu_fd(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cdf = 0.5 * _ERFC(-h / _SQRT2).astype(float)
    pdf = _INV_SQRT2PI * np.exp(-0.5 * h * h)
    return h * cdf, cdf + h * pdf


_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def gelu_tanh_fd(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h (1 + tanh(u)) / 2`` with ``u = k (h + c h^3)``, written as ``h sigmoid(2u)`` so the
    lower tail does not cancel."""
    two_u = 2.0 * _GELU_K * (h + _GELU_C * h**3)
    gate = _sigmoid(two_u)
    dtwo_u = 2.0 * _GELU_K * (1.0 + 3.0 * _GELU_C * h * h)
    return h * gate, gate + h * _sigmoid_slope(two_u) * dtwo_u


def logsigmoid_fd(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return -np.logaddexp(0.0, -h), _sigmoid(-h)


def tanhshrink_fd(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.tanh(h)
    return h - t, t * t


def softsign_fd(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = 1.0 + np.abs(h)
    return h / d, 1.0 / (d * d)


def softplus_fd(beta: float, threshold: float) -> FnDf:
    """torch's softplus: ``log(1 + exp(beta h)) / beta``, linear where ``beta h > threshold``."""

    def fd(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bh = beta * h
        linear = bh > threshold
        f = np.where(linear, h, np.logaddexp(0.0, bh) / beta)
        return f, np.where(linear, 1.0, _sigmoid(bh))

    return fd



def softplus_law(beta: float, threshold: float) -> Smooth:
    width = 1.0 / beta
    # Above beta*h = threshold torch switches to the identity; the jump there is exp(-threshold),
    # below 1.5e-8 for threshold >= 18, so the switch only matters (and is modelled) below that.
    kinks = (threshold / beta,) if threshold < 18.0 else ()
    return Smooth(softplus_fd(beta, threshold), Piecewise.of(RELU_PIECES), width, 44.0, kinks)


def law_moments(law: Piecewise | Smooth, mean: float, var: float) -> ActMoments:
    """``E[phi]``, ``E[phi^2]``, ``E[phi'^2]`` of an activation law for ``h ~ N(mean, var)``;
    ``var == 0`` evaluates ``phi`` at ``mean``."""
    if var == 0.0:
        if isinstance(law, Smooth):
            return ActMoments(*law.at_point(mean))
        point = np.array([mean])
        return ActMoments(*(float(v[0]) for v in law.evaluate(point)))
    return ActMoments(*law.moments(mean, math.sqrt(var)))
