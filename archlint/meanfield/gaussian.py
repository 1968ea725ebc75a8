"""Closed-form Gaussian expectations of piecewise functions: the exact half of the activation
moments (:mod:`archlint.ops.activations` holds each activation's law).

For ``h ~ N(mean, s^2)`` and a function given by pieces -- polynomials of degree <= 4 and
exponentials on intervals -- :class:`Piecewise` returns ``E[phi(h)]``, ``E[phi(h)^2]`` and
``E[phi'(h)^2]``. Each piece is integrated in closed form with truncated-normal moments, expanded
around its finite end point; Gaussian tails go through the scaled complementary error function,
so tails keep relative accuracy instead of cancelling (checked against 30-digit quadrature to
about 1e-9 relative, for tail values down to ~1e-30).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

INF = math.inf
_INF = INF
_SQRT2 = math.sqrt(2.0)
INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT2PI = INV_SQRT2PI
_SQRT_PI = math.sqrt(math.pi)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)


@dataclass(frozen=True)
class ActMoments:
    """Moments of ``phi(h)`` for ``h ~ N(mean, var)``.

    Attributes:
        mean_out: ``E[phi(h)]``.
        second_out: ``E[phi(h)^2]`` (second moment, not variance).
        grad_gain: ``E[phi'(h)^2]``, the per-element backward gain of the op.
    """

    mean_out: float
    second_out: float
    grad_gain: float

    @property
    def var_out(self) -> float:
        """``Var[phi(h)] = second_out - mean_out^2`` (clipped at 0)."""
        return max(self.second_out - self.mean_out**2, 0.0)



# ---------------------------------------------------------------------------------------------
# Gaussian tail primitives (scalar, math only)
# ---------------------------------------------------------------------------------------------


def _erfcx(x: float) -> float:
    """Scaled complementary error function ``exp(x^2) erfc(x)`` for ``x >= 0``."""
    if x < 25.0:
        return math.exp(x * x) * math.erfc(x)
    u = 0.5 / (x * x)  # asymptotic series, error < 1e-15 for x >= 25
    series = 1.0 - u * (1.0 - 3.0 * u * (1.0 - 5.0 * u * (1.0 - 7.0 * u * (1.0 - 9.0 * u))))
    return series / (x * _SQRT_PI)


def _tail(x: float) -> float:
    """Upper tail ``Q(x) = P(Z > x)`` of the standard normal."""
    return 0.5 * math.erfc(x / _SQRT2)


def _log_tail(x: float) -> float:
    """``log Q(x)``, accurate far into both tails."""
    if x == _INF:
        return -_INF
    if x > 0.0:
        return math.log(0.5 * _erfcx(x / _SQRT2)) - 0.5 * x * x
    return math.log1p(-_tail(-x))


def _log_mass(a: float, b: float) -> float:
    """``log(Phi(b) - Phi(a))`` for ``a <= b`` without cancellation in either tail."""
    if not a < b:
        return -_INF
    if a >= 0.0:
        hi, lo = _log_tail(a), _log_tail(b)
    elif b <= 0.0:
        hi, lo = _log_tail(-b), _log_tail(-a)
    else:
        return math.log1p(-(_tail(-a) + _tail(b)))
    ratio = math.exp(lo - hi)
    return hi + math.log1p(-ratio) if ratio < 1.0 else -_INF


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else _INF


_MAX_DEGREE = 4  # highest polynomial degree of any phi^2 piece (hardswish)
_BINOM = tuple(tuple(math.comb(k, j) for j in range(k + 1)) for k in range(_MAX_DEGREE + 1))
_STD_MOMENTS = (1.0, 0.0, 1.0, 0.0, 3.0)  # E[Z^j], j = 0..4


def _shifted_full_moments(u: float) -> tuple[float, ...]:
    """``E[(Z + u)^k]`` for ``k = 0..4``."""
    u2 = u * u
    return (1.0, u, u2 + 1.0, u * (u2 + 3.0), u2 * (u2 + 6.0) + 3.0)


_MILLER_FROM_T = 3.0  # above this, run the I_k recurrence backwards
_MILLER_START = 60


def _tail_partial_moments(t: float) -> tuple[float, ...]:
    """``integral_t^inf (z - t)^k phi(z) dz`` for ``k = 0..4`` and ``t >= 0``.

    Equals ``phi(t) I_k(t)`` with ``I_k = integral_0^inf u^k exp(-t u - u^2/2) du``: ``I_0`` is the
    Mills ratio, ``I_1 = 1 - t I_0`` and ``I_k = (k - 1) I_{k-2} - t I_{k-1}``.  Run forwards that
    recurrence loses about ``t^(2k)`` in relative accuracy (``I_k`` is its minimal solution), so
    for large ``t`` it is run backwards from a high index and normalised by ``I_0`` (Miller's
    algorithm), which keeps full relative accuracy far into the tail.
    """
    pdf = _INV_SQRT2PI * math.exp(-0.5 * t * t)
    if pdf == 0.0:
        return (0.0,) * (_MAX_DEGREE + 1)
    i0 = _SQRT_HALF_PI * _erfcx(t / _SQRT2)
    if t < _MILLER_FROM_T:
        i1 = 1.0 - t * i0
        i2 = i0 - t * i1
        i3 = 2.0 * i1 - t * i2
        i4 = 3.0 * i2 - t * i3
        return (pdf * i0, pdf * i1, pdf * i2, pdf * i3, pdf * i4)
    # I_{k-2} = (I_k + t I_{k-1}) / (k - 1), from I_{N+1} = 0, I_N = 1 (unnormalised).
    above, current = 0.0, 1.0
    tail = [0.0] * (_MAX_DEGREE + 1)
    for k in range(_MILLER_START + 1, 1, -1):
        above, current = current, (above + t * current) / (k - 1)
        if k - 2 <= _MAX_DEGREE:
            tail[k - 2] = current
        if current > 1e250:  # rescale to avoid overflow; only ratios matter
            above, current = above * 1e-250, current * 1e-250
            tail = [v * 1e-250 for v in tail]
    scale = pdf * i0 / tail[0]
    return tuple(scale * v for v in tail)


def _poly_shift(coeffs: Sequence[float], x0: float) -> tuple[float, ...]:
    """Coefficients of ``p(x0 + u)`` in powers of ``u`` (both ascending)."""
    n = len(coeffs)
    if n <= 1:
        return tuple(coeffs)
    powers = [1.0, x0, x0 * x0, x0 * x0 * x0, x0 * x0 * x0 * x0][:n]
    out = []
    for j in range(n):
        total = 0.0
        for k in range(j, n):
            total += _BINOM[k][j] * coeffs[k] * powers[k - j]
        out.append(total)
    return tuple(out)


def _poly_mul(a: Sequence[float], b: Sequence[float]) -> tuple[float, ...]:
    if not a or not b:
        return ()
    out = [0.0] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            out[i + j] += ai * bj
    return tuple(out)


class Expr:
    """``f(h) = sum_k poly[k] h^k + sum_i c_i exp(r_i h)`` on one piece.

    Exponential terms may only be combined with a constant polynomial, which covers every op here.
    The polynomial re-expanded around a break point is cached per break point.
    """

    __slots__ = ("poly", "exps", "_shifted")

    def __init__(
        self, poly: Sequence[float] = (), exps: Sequence[tuple[float, float]] = ()
    ) -> None:
        if len(poly) > _MAX_DEGREE + 1:
            raise ValueError("polynomial degree too high")
        self.poly = tuple(float(c) for c in poly)
        self.exps = tuple((float(c), float(r)) for c, r in exps)
        self._shifted: dict[float, tuple[float, ...]] = {}

    def shifted(self, anchor: float) -> tuple[float, ...]:
        cached = self._shifted.get(anchor)
        if cached is None:
            cached = self._shifted[anchor] = _poly_shift(self.poly, anchor)
        return cached

    def times(self, other: "Expr") -> "Expr":
        exps = [(c1 * c2, r1 + r2) for c1, r1 in self.exps for c2, r2 in other.exps]
        for poly, terms in ((self.poly, other.exps), (other.poly, self.exps)):
            if terms and len(poly) > 1:
                raise NotImplementedError("polynomial times exponential is not supported")
            const = poly[0] if poly else 0.0
            exps.extend((const * c, r) for c, r in terms if const)
        return Expr(_poly_mul(self.poly, other.poly), exps)

    def deriv(self) -> "Expr":
        poly = [k * c for k, c in enumerate(self.poly) if k]
        return Expr(poly, [(c * r, r) for c, r in self.exps])

    def expect(self, normal: "Normal", lo: float, hi: float) -> float:
        total = normal.poly(self, lo, hi) if self.poly else 0.0
        for c, r in self.exps:
            total += c * normal.exp(r, lo, hi)
        return total

    def eval(self, h: np.ndarray) -> np.ndarray:
        out = np.zeros_like(h)
        for c in reversed(self.poly):
            out = out * h + c
        for c, r in self.exps:
            out = out + c * np.exp(r * h)
        return out


class Normal:
    """``h ~ N(m, s^2)`` with ``s > 0``: truncated expectations of polynomials and exponentials.

    Tail integrals at each break point are computed once per instance and shared by all pieces
    and by ``phi``, ``phi^2`` and ``phi'^2``.
    """

    __slots__ = ("m", "s", "_spow", "_nspow", "_partials", "_exps")

    def __init__(self, m: float, s: float) -> None:
        self.m, self.s = m, s
        s2 = s * s
        self._spow = (1.0, s, s2, s2 * s, s2 * s2)
        self._nspow = (1.0, -s, s2, -s2 * s, s2 * s2)
        self._partials: dict[float, tuple[tuple[float, ...], tuple[float, ...]]] = {}
        self._exps: dict[tuple[float, float, float], float] = {}

    def _at(self, a: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(U, L)``: ``U_k = int_t^inf (z - t)^k phi`` and ``L_k = int_-inf^t (t - z)^k phi``
        for ``t = (a - m)/s``."""
        cached = self._partials.get(a)
        if cached is None:
            t = (a - self.m) / self.s
            near = _tail_partial_moments(abs(t))
            f0, f1, f2, f3, f4 = _shifted_full_moments(abs(t))
            n0, n1, n2, n3, n4 = near
            far = (f0 - n0, f1 + n1, f2 - n2, f3 + n3, f4 - n4)
            cached = (near, far) if t >= 0.0 else (far, near)
            self._partials[a] = cached
        return cached

    def _full(self, expr: Expr) -> float:
        total = 0.0
        for c, p, z in zip(_poly_shift(expr.poly, self.m), self._spow, _STD_MOMENTS):
            total += c * p * z
        return total

    def _upper(self, expr: Expr, a: float) -> float:
        """``E[p(h) 1{h > a}]``, expanded around ``a``."""
        total = 0.0
        for c, p, u in zip(expr.shifted(a), self._spow, self._at(a)[0]):
            total += c * p * u
        return total

    def _lower(self, expr: Expr, b: float) -> float:
        """``E[p(h) 1{h < b}]``, expanded around ``b``."""
        total = 0.0
        for c, p, u in zip(expr.shifted(b), self._nspow, self._at(b)[1]):
            total += c * p * u
        return total

    def poly(self, expr: Expr, lo: float, hi: float) -> float:
        """``E[p(h) 1{lo < h < hi}]`` for ``expr``'s polynomial, in a form that does not cancel."""
        if lo == -_INF:
            return self._full(expr) if hi == _INF else self._lower(expr, hi)
        if hi == _INF:
            return self._upper(expr, lo)
        if self.m <= lo:
            return self._upper(expr, lo) - self._upper(expr, hi)
        if self.m >= hi:
            return self._lower(expr, hi) - self._lower(expr, lo)
        return self._full(expr) - self._lower(expr, lo) - self._upper(expr, hi)

    def exp(self, rate: float, lo: float, hi: float) -> float:
        """``E[exp(rate h) 1{lo < h < hi}] = exp(rate m + rate^2 s^2/2) (Phi(b) - Phi(a))``."""
        key = (rate, lo, hi)
        cached = self._exps.get(key)
        if cached is None:
            shift = rate * self.s
            a = (lo - self.m) / self.s - shift
            b = (hi - self.m) / self.s - shift
            log_mass = _log_mass(a, b)
            cached = _safe_exp(rate * self.m + 0.5 * shift * shift + log_mass)
            self._exps[key] = cached
        return cached

    def split_at(self, a: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Partial moments of ``h - a`` above and of ``a - h`` below ``a`` (in units ``s^k``):
        ``(E[((h-a)/s)^k 1{h>a}], E[((a-h)/s)^k 1{h<a}])`` for ``k = 0..4``."""
        return self._at(a)


Pieces = tuple[tuple[float, float, Expr], ...]


def _expect_pieces(pieces: Pieces, normal: Normal) -> float:
    total = 0.0
    for lo, hi, expr in pieces:
        total += expr.expect(normal, lo, hi)
    return total


def _eval_pieces(pieces: Pieces, h: np.ndarray) -> np.ndarray:
    """Evaluate on the half-open pieces ``(lo, hi]`` (pieces not listed are zero)."""
    out = np.zeros_like(h)
    for lo, hi, expr in pieces:
        mask = (h > lo) & (h <= hi)
        if mask.any():
            out[mask] = expr.eval(h[mask])
    return out


@dataclass(frozen=True)
class Piecewise:
    """A function given by pieces; ``f2`` and ``g2`` are the pieces of ``phi^2`` and ``phi'^2``."""

    f: Pieces
    f2: Pieces
    g2: Pieces

    @classmethod
    def of(cls, pieces: Pieces) -> "Piecewise":
        squares = tuple((lo, hi, e.times(e)) for lo, hi, e in pieces)
        grads = tuple((lo, hi, e.deriv().times(e.deriv())) for lo, hi, e in pieces)
        return cls(pieces, squares, grads)

    def moments(self, m: float, s: float) -> tuple[float, float, float]:
        normal = Normal(m, s)
        return (
            _expect_pieces(self.f, normal),
            _expect_pieces(self.f2, normal),
            _expect_pieces(self.g2, normal),
        )

    def evaluate(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(phi, phi^2, phi'^2)`` at the points ``h``."""
        return _eval_pieces(self.f, h), _eval_pieces(self.f2, h), _eval_pieces(self.g2, h)


def line(slope: float, intercept: float = 0.0) -> Expr:
    return Expr((intercept, slope))


def const(value: float) -> Expr:
    return Expr((value,))


def expo(scale: float, rate: float) -> Expr:
    """``scale * (exp(rate h) - 1)``."""
    return Expr((-scale,), ((scale, rate),))


RELU_PIECES: Pieces = ((0.0, _INF, line(1.0)),)
SIGN_PIECES: Pieces = ((-_INF, 0.0, const(-1.0)), (0.0, _INF, const(1.0)))



class TwoSlope(Piecewise):
    """``h`` for ``h > 0`` and slope ``a`` below 0, ``a`` possibly random with moments ``E[a]``,
    ``E[a^2]`` (ReLU, leaky ReLU, PReLU, RReLU): a direct closed form, the hottest path."""

    neg_mean: float
    neg_square: float

    def __init__(self, neg_mean: float, neg_square: float) -> None:
        super().__init__(
            f=((-_INF, 0.0, line(neg_mean)), (0.0, _INF, line(1.0))),
            f2=((-_INF, 0.0, Expr((0.0, 0.0, neg_square))), (0.0, _INF, Expr((0.0, 0.0, 1.0)))),
            g2=((-_INF, 0.0, const(neg_square)), (0.0, _INF, const(1.0))),
        )
        object.__setattr__(self, "neg_mean", neg_mean)
        object.__setattr__(self, "neg_square", neg_square)

    def moments(self, m: float, s: float) -> tuple[float, float, float]:
        up, low = Normal(m, s).split_at(0.0)
        a1, a2 = self.neg_mean, self.neg_square
        return (
            s * (up[1] - a1 * low[1]),
            s * s * (up[2] + a2 * low[2]),
            up[0] + a2 * low[0],
        )


def two_slope(neg_mean: float, neg_square: float) -> Piecewise:
    return TwoSlope(neg_mean, neg_square)


def rrelu_law(lower: float, upper: float, training: bool) -> Piecewise:
    if not training:
        slope = 0.5 * (lower + upper)
        return two_slope(slope, slope * slope)
    mean = 0.5 * (lower + upper)
    square = (lower * lower + lower * upper + upper * upper) / 3.0
    return two_slope(mean, square)


def hardtanh_law(min_val: float, max_val: float) -> Piecewise:
    return Piecewise.of(
        (
            (-_INF, min_val, const(min_val)),
            (min_val, max_val, line(1.0)),
            (max_val, _INF, const(max_val)),
        )
    )
