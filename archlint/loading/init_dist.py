"""The distribution a recorded initialisation draws a tensor's entries from
(archlint.loading.meta): a sequence of whole-tensor draws (``normal_``, ``uniform_``, the
``erfinv_`` steps of a truncated normal, ``nn.init.trunc_normal_`` / ``orthogonal_`` recorded as
calls), fills, copies and scalings has a known mean and variance; anything else (a write to part
of the tensor, an operation that reads data) has none."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..graph.metainit import Dist


@dataclass(frozen=True)
class Ref:
    """A meta tensor in a recorded operation: a view of one storage."""

    key: int
    size: tuple
    stride: tuple
    offset: int
    dtype: torch.dtype



@dataclass(frozen=True)
class _Call:
    """A recorded Python-level init call; replayed by calling the original on real tensors."""

    name: str
    fn: Callable

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.fn(*args, **kwargs)




_FILLS = {"zeros": 0.0, "zeros_like": 0.0, "new_zeros": 0.0, "ones": 1.0, "ones_like": 1.0,
          "new_ones": 1.0}
_EMPTY = ("empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided")


def _scalar(x: Any) -> Optional[float]:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1 and x.device.type != "meta":
        return float(x)
    return None


def _trunc_moments(mean: float, std: float, a: float, b: float) -> Dist:
    """Mean and variance of N(mean, std^2) truncated to [a, b]."""
    if std <= 0:
        return Dist(min(max(mean, a), b), 0.0)
    al, be = (a - mean) / std, (b - mean) / std
    phi = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    z = max(cdf(be) - cdf(al), 1e-300)
    pa, pb = phi(al) if math.isfinite(al) else 0.0, phi(be) if math.isfinite(be) else 0.0
    ta = al * pa if math.isfinite(al) else 0.0
    tb = be * pb if math.isfinite(be) else 0.0
    m = (pa - pb) / z
    return Dist(mean + std * m, std * std * max(1 + (ta - tb) / z - m * m, 0.0))


def dist_of_storage(rec: Any, key: int) -> Optional[Dist]:
    """The distribution of the entries of the recorded storage ``key`` (``rec``: the
    InitRecorder), or None."""
    return _dist_of(rec, key, set())


def _dist_of(rec: Any, key: int, visiting: set[int]) -> Optional[Dist]:
    if key in visiting:
        return None
    visiting = visiting | {key}
    n = rec.nelem.get(key, (0, None))[0]
    state: Optional[Dist] = None
    initialised = False
    uniform: Optional[tuple[float, float]] = None  # the last draw was uniform(lo, hi)
    for op in rec.ops:
        if key not in op.writes:
            continue
        func = op.func
        if isinstance(func, _Call):
            target = op.args[0]
            whole = isinstance(target, Ref) and math.prod(target.size) == n
            if not whole:
                return None
            args = list(op.args[1:])
            kw = dict(op.kwargs)
            if func.name == "_no_grad_trunc_normal_":
                names = ("mean", "std", "a", "b")
                vals = dict(zip(names, args))
                vals.update({k: v for k, v in kw.items() if k in names})
                state = _trunc_moments(float(vals.get("mean", 0.0)), float(vals.get("std", 1.0)),
                                       float(vals.get("a", -2.0)), float(vals.get("b", 2.0)))
            elif func.name == "orthogonal_":
                gain = float(args[0] if args else kw.get("gain", 1.0))
                rows = target.size[0] if target.size else 1
                cols = max(n // max(rows, 1), 1)
                state = Dist(0.0, gain * gain * min(rows, cols) / max(rows * cols, 1))
            else:
                return None
            initialised, uniform = True, None
            continue
        name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
        if key not in op.reads:  # a new storage
            if name in _EMPTY:
                state, initialised = None, False
            elif name in _FILLS:
                state, initialised = Dist(_FILLS[name], 0.0), True
            elif name in ("full", "full_like", "new_full"):
                v = _scalar(op.args[1]) if len(op.args) > 1 else None
                if v is None:
                    return None
                state, initialised = Dist(v, 0.0), True
            else:
                return None
            uniform = None
            continue
        target = op.args[0] if op.args else None
        if not isinstance(target, Ref) or target.key != key or math.prod(target.size) != n:
            return None  # a write through another argument, or to a part of the tensor
        args = op.args[1:]
        if name == "normal_":
            mu = _scalar(args[0]) if len(args) > 0 else _scalar(op.kwargs.get("mean", 0.0))
            sd = _scalar(args[1]) if len(args) > 1 else _scalar(op.kwargs.get("std", 1.0))
            if mu is None or sd is None:
                return None
            state, uniform = Dist(mu, sd * sd), None
        elif name == "uniform_":
            lo = _scalar(args[0]) if len(args) > 0 else _scalar(op.kwargs.get("from", 0.0))
            hi = _scalar(args[1]) if len(args) > 1 else _scalar(op.kwargs.get("to", 1.0))
            if lo is None or hi is None:
                return None
            state, uniform = Dist((lo + hi) / 2, (hi - lo) ** 2 / 12), (lo, hi)
        elif name == "erfinv_" and uniform is not None:  # trunc_normal_ by inverse CDF
            lo, hi = (max(min(v, 1 - 1e-7), -1 + 1e-7) for v in uniform)
            s = 1 / math.sqrt(2)
            state, uniform = _trunc_moments(0.0, s, torch.erfinv(torch.tensor(lo)).item(),
                                            torch.erfinv(torch.tensor(hi)).item()), None
        elif name == "zero_":
            state, uniform = Dist(0.0, 0.0), None
        elif name == "fill_":
            v = _scalar(args[0]) if args else None
            if v is None:
                return None
            state, uniform = Dist(v, 0.0), None
        elif name == "copy_":
            src = args[0] if args else None
            if isinstance(src, Ref):
                if math.prod(src.size) != n and math.prod(src.size) != 1:
                    return None
                state = _dist_of(rec, src.key, visiting)
            elif isinstance(src, torch.Tensor):
                f = src.detach().double()
                state = Dist(float(f.mean()), float(f.var(unbiased=False)) if f.numel() > 1
                             else 0.0)
            else:
                return None
            uniform = None
        elif name in ("mul_", "div_", "add_", "sub_") and state is not None:
            v = _scalar(args[0]) if args else None
            if v is None:
                return None
            alpha = _scalar(op.kwargs.get("alpha", args[1] if len(args) > 1 else 1.0)) or 1.0
            if name == "mul_":
                state = Dist(state.mean * v, state.var * v * v)
            elif name == "div_":
                if v == 0:
                    return None
                state = Dist(state.mean / v, state.var / (v * v))
            elif name == "add_":
                state = Dist(state.mean + alpha * v, state.var)
            else:
                state = Dist(state.mean - alpha * v, state.var)
            uniform = None
        elif name in ("clamp_", "clip_") and state is not None:
            lo = _scalar(args[0]) if len(args) > 0 else _scalar(op.kwargs.get("min"))
            hi = _scalar(args[1]) if len(args) > 1 else _scalar(op.kwargs.get("max"))
            sd = math.sqrt(state.var)
            if (lo is not None and lo > state.mean - 6 * sd) or \
                    (hi is not None and hi < state.mean + 6 * sd):
                return None  # a clamp that cuts into the distribution
        else:
            return None
        initialised = True
    return state if initialised else None
