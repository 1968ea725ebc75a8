"""Normalisations written with tensor ops, estimated as one op by running them alone.

``h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)`` is a normalisation of ``h``
(archlint.analysis.normalisation finds it). Op by op, the mean-field rules cannot see that the
statistic comes from the very tensor it divides -- the centring ``h - h.mean(...)`` of two
correlated operands, the projection that removes the gradient along the normalised output -- so
the ops from ``h`` to the normalised result are estimated together, the way ops without a
formula are (archlint.ops.opaque): recomputed from a synthetic ``h`` carrying its predicted
statistics, and a synthetic gradient of the predicted scale back-propagated through them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..graph.derived import _substitute
from ..graph.ir import Node
from ..meanfield.signal import Sig
from .base import Backward, Propagation
from .opaque import MAX_ELEMENTS, _sig_of


@dataclass
class _Subgraph:
    prop: Propagation
    norm: Any  # archlint.analysis.normalisation.HandNorm

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.norm.base
        sig = self.prop.value(base)
        if isinstance(sig, list):
            sig = sig[0] if sig else None
        if base.shape is None or base.dtype is None or not base.dtype.is_floating_point or \
                math.prod(base.shape) > MAX_ELEMENTS:
            raise ValueError("cannot synthesise the normalised tensor")
        gen = torch.Generator().manual_seed(2468)
        x = _exact(tuple(base.shape), base.dtype, sig if isinstance(sig, Sig) else
                   Sig(1.0, 0.0, 0.0, 1), gen).requires_grad_(True)
        memo: dict = {base: x}
        with torch.enable_grad():
            out = _replay_members(self.norm.node, memo, self.norm.members)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise ValueError("not a tensor")
        return x, out


def _exact(shape: tuple, dtype: torch.dtype, sig: Sig, gen: torch.Generator) -> torch.Tensor:
    """A tensor with the predicted moments held exactly, not only in expectation: the same
    normalisation recurs block after block, and one draw's luck (the spread of a few shared
    per-unit offsets) would come back every time, compounding over depth."""
    var = max(sig.q - sig.m * sig.m, 0.0)
    coh = min(max(sig.s - sig.m * sig.m, 0.0), var)

    def unit(t: torch.Tensor) -> torch.Tensor:
        t = t - t.mean()
        return t / t.pow(2).mean().sqrt().clamp_min(1e-12)

    x = unit(torch.randn(shape, generator=gen)) * math.sqrt(max(var - coh, 0.0))
    if coh > 0 and len(shape) >= 1:
        axis = 1 if len(shape) in (4, 5) else len(shape) - 1
        view = [1] * len(shape)
        view[axis] = shape[axis]
        if shape[axis] > 1:
            x = x + unit(torch.randn(view, generator=gen)) * math.sqrt(coh)
        else:
            x = x + math.sqrt(coh)
    return (x + sig.m).to(dtype)


def _replay_members(node: Node, memo: dict, members: frozenset) -> Any:
    """Recompute ``node`` from the values in ``memo``: the ops between the normalised tensor
    and the result, with parameters read as they are."""
    if node in memo:
        return memo[node]
    if node.tensor is not None and node not in members:
        return node.tensor
    fn = node.attrs.get("call")
    if fn is None:
        raise ValueError(f"{node.name} cannot be recomputed")
    args, kwargs = node.attrs.get("recipe") or (node.attrs.get("args", ()),
                                                node.attrs.get("kwargs", {}))
    for i in node.inputs:
        _replay_members(i, memo, members)
    value = fn(*_substitute(args, memo), **_substitute(kwargs, memo))
    memo[node] = value
    return value


@dataclass
class SubgraphBackward(Backward):
    """All the gradient the normalisation passes back goes to the tensor it normalises."""

    sub: _Subgraph

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        if go <= 0.0:
            return
        x, out = self.sub.run()
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(8765))
        g = (g / g.pow(2).mean().sqrt().clamp_min(1e-12)).to(out.dtype)  # exactly go, as above
        (grad,) = torch.autograd.grad(out, x, g * math.sqrt(go), allow_unused=True)
        if grad is None:
            return
        g2 = float(grad.detach().double().pow(2).mean())
        base = self.sub.norm.base
        prop.g2[base] = prop.g2.get(base, 0.0) + g2
        # the parts shared by a sample's positions follow the same gain, as through a norm
        # layer's rule (archlint.ops.norms)
        gain = g2 / go
        prop.gs[base] = prop.gs.get(base, 0.0) + gain * gso
        prop.gsc[base] = prop.gsc.get(base, 0.0) + gain * gsco
        if g2 > 0:
            prop.decades[node] = 0.5 * math.log10(g2 / go)


def estimate_hand_norm(prop: Propagation, norm: Any) -> bool:
    """Estimate a normalisation written with tensor ops whole; False when it cannot be run."""
    sub = _Subgraph(prop, norm)
    try:
        _, out = sub.run()
    except Exception:  # an op that does not replay alone: the ops keep their own rules
        return False
    prop.out(norm.node, _sig_of(out), SubgraphBackward(sub))
    return True
