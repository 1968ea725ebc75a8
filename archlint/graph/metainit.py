"""Weights on the meta device: what the analysis knows of a tensor that has no values.

A model built on the meta device (``--device meta``, :mod:`archlint.loading.meta`) has its
small tensors made real after tracing (their recorded initialisation replayed exactly), while
its large weight matrices stay on the meta device. For each of those, the initialisation calls
recorded while the model was built give the distribution its entries were drawn from
(:class:`Dist`: mean and variance of i.i.d. entries). The statistics the analysis reads from a
weight -- mean square, mean, row sums, column norms -- are then their expectations under that
distribution, which a matrix of millions of entries matches to a fraction of a percent.

A meta tensor without a known distribution (an initialisation that reads data, a partial write)
is made real on demand by the builder's materialiser (:func:`real`), one tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class Dist:
    """I.i.d. entries with this mean and variance (variance 0: every entry is ``mean``)."""

    mean: float
    var: float

    @property
    def mean_sq(self) -> float:
        return self.var + self.mean * self.mean


class MetaValueError(RuntimeError):
    """A meta tensor whose values are needed and cannot be derived."""


#: Storage of a large meta tensor -> (the tensor, the distribution of its entries or None).
_dists: dict[int, tuple[torch.Tensor, Optional[Dist]]] = {}
#: Set by the builder of a meta model: makes a meta tensor real in place (None: cannot).
_materialiser: Optional[Callable[[torch.Tensor], bool]] = None


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def set_dist(t: torch.Tensor, dist: Optional[Dist]) -> None:
    """Register a large meta tensor (any view of it shares its entries' distribution)."""
    _dists[_storage(t)] = (t, dist)


def dist_of(t: torch.Tensor) -> Optional[Dist]:
    hit = _dists.get(_storage(t)) if is_meta(t) else None
    return hit[1] if hit is not None else None


def meta_like(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    """A new meta tensor shaped as ``t`` whose entries have the distribution ``dist`` (a fix's
    re-initialisation of a large weight)."""
    out = torch.empty(t.shape, dtype=t.dtype, device="meta")
    set_dist(out, dist)
    return out


def set_materialiser(fn: Optional[Callable[[torch.Tensor], bool]]) -> None:
    global _materialiser
    _materialiser = fn


def forget() -> None:
    """Drop every registration (the end of one target)."""
    _dists.clear()
    set_materialiser(None)


def is_meta(t: Optional[torch.Tensor]) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def meta_dist(t: Optional[torch.Tensor]) -> Optional[Dist]:
    """None for a real tensor; the distribution of a meta tensor's entries. A meta tensor
    without one is made real in place (the tensor registered for its storage, i.e. the
    parameter) and MetaValueError raised: the caller reads the parameter again."""
    if not is_meta(t):
        return None
    d = dist_of(t)
    if d is not None:
        return d
    real(t)
    raise MetaValueError("a meta tensor without a known initialisation (now made real: read "
                         "the parameter again)")


def real(t: torch.Tensor) -> bool:
    """Make the meta tensor ``t`` (or the parameter whose storage it views) real in place;
    False when it cannot be."""
    if not is_meta(t) or _materialiser is None:
        return False
    hit = _dists.get(_storage(t))
    try:
        return bool(_materialiser(hit[0] if hit is not None else t))
    except Exception:
        return False


def any_meta(tensors) -> bool:
    return any(is_meta(t) for t in tensors)
