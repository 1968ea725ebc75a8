"""Statistics read from a weight's values, shared by the init checks (archlint.analysis) and
the gradient estimate (archlint.ops).

They are reductions over one parameter tensor each -- a few million entries at most, usually
far fewer -- and a model has hundreds of them. :func:`on_one_thread` runs such a function on one
torch intra-op thread: for reductions this size OpenMP's fork and join of a second thread
costs more than it saves, and far more when another process holds a core (ResNet-50's weight
statistics: about 0.1 s on one thread; 0.7-1.3 s on two while another process kept one of the
two cores busy). The reductions give the same floats on one thread as on several (the golden
tests, and the -j children, which always run on one thread, check it). What runs a model's
modules (the execution tracer, the probes, --measure) keeps torch's own setting.

:func:`sum_sq` is the squared norm of a weight, computed once per tensor (and per in-place
change): the init checks, the linear statistics and the kernel sums of a 1x1 convolution all
read it.
"""

from __future__ import annotations

import functools
import weakref
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def on_one_thread(fn: F) -> F:
    """``fn`` run with torch's intra-op threads set to one, then set back."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return run  # type: ignore[return-value]


#: id(tensor) -> (weak reference to it, its _version, float(||w.float()||) ** 2)
_sum_sq: dict[int, tuple[weakref.ref, int, float]] = {}


@on_one_thread
def sum_sq(w: torch.Tensor) -> float:
    """``float(torch.linalg.vector_norm(w.float())) ** 2`` of a real tensor, once per tensor
    version (an in-place write, a fix's re-initialisation, computes it again)."""
    key = id(w)
    hit = _sum_sq.get(key)
    # ids are reused once a tensor dies: a hit counts only if it is still the same tensor
    if hit is not None and hit[0]() is w and hit[1] == w._version:
        return hit[2]
    wd = w.detach()
    if wd.is_complex():  # |w|^2 summed: its real and imaginary parts
        wd = torch.view_as_real(wd)
    value = float(torch.linalg.vector_norm(wd.float() if wd.dtype != torch.float32 else wd)) ** 2
    if len(_sum_sq) > 4096:
        _sum_sq.clear()
    _sum_sq[key] = (weakref.ref(w), w._version, value)
    return value
