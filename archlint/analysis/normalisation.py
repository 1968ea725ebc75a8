"""Normalisations written with tensor ops in ``forward``, and weights standardised in ``forward``.

A normalisation layer is not always a layer: RMSNorm, LayerNorm, GroupNorm or a filter response
norm written by hand are a tensor divided by (or multiplied by the inverse square root of) a
statistic of that same tensor::

    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)          # RMSNorm
    h = (h - h.mean(-1, keepdim=True)) / (h.var(-1, keepdim=True) + eps).sqrt()  # LayerNorm

What makes it one is that its result does not change when the tensor is scaled. That is read off
the graph by homogeneity degrees: starting from the tensor ``x`` (degree 1), views and casts
keep the degree, ``x - mean(x)`` and sums of terms of one degree keep it, a power ``p``
multiplies it by ``p`` (a square root halves it, ``rsqrt`` makes it -1/2), a mean, sum or norm
over some dimensions keeps it (a variance doubles it), a product adds degrees and a quotient
subtracts them, and adding a small constant (eps) is read as keeping it. The op where a
non-zero degree becomes zero through a reduction of a magnitude of ``x`` (a square, an absolute
value, a variance, a norm: not a plain sum, so a softmax written out is not one) is a
normalisation of ``x``
(:func:`hand_written_norms`). Only graphs whose ops between ``x`` and that op lead nowhere else
count: a statistic used elsewhere too is not part of a normalisation.

A weight layer whose weight is computed in ``forward`` so that it does not depend on its
parameters' scale (weight standardisation -- ``StdConv2d``, NF-ResNets' ``ScaledStdConv2d``,
BiT --, weight normalisation's direction) is found by recomputing that weight from its
parameters doubled (:func:`scale_free_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..graph.derived import PARAM_ONLY, is_param_only, replay_value, source_params
from ..graph.ir import Graph, Kind, Node

#: Reductions and how they change the degree (``var`` squares the values it averages).
_REDUCE_DEGREE = {"mean": 1.0, "sum": 1.0, "nanmean": 1.0, "norm": 1.0, "std": 1.0,
                  "amax": 1.0, "max": 1.0, "var": 2.0}
#: Elementwise powers and their exponents (``pow`` reads its own).
_POWER = {"sqrt": 0.5, "rsqrt": -0.5, "square": 2.0, "abs": 1.0, "reciprocal": -1.0}
#: Reductions that measure a magnitude by themselves.
_MAGNITUDES = {"var", "std", "norm"}
#: Views that select or move values without changing them (not ``where``/``masked_fill``:
#: what they fill in has no degree).
_NOT_VIEWS = {"where", "masked_fill"}


@dataclass(frozen=True)
class HandNorm:
    """``node`` normalises ``base``; ``members`` are the ops in between (statistic and all)."""

    node: Node
    base: Node
    members: frozenset


@dataclass(frozen=True)
class _Deg:
    base: Node
    degree: float
    reduced: bool  # a reduction over some dimensions is on the way (a statistic)
    members: frozenset
    #: A magnitude is on the way (a square, an absolute value, a variance or a norm): a scale
    #: statistic, not a plain sum (``e / e.sum()`` -- a softmax by hand -- is no normalisation
    #: of a signed tensor's scale).
    magnitude: bool = False


def _tensor_inputs(node: Node) -> list[Node]:
    return [i for i in node.inputs if i.kind != Kind.CONSTANT and not is_param_only(i)]


def _exponent(node: Node) -> Optional[float]:
    if node.op in _POWER:
        return _POWER[node.op]
    if node.op == "pow":
        args = node.attrs.get("args") or ()
        p = args[1] if len(args) > 1 else (node.attrs.get("kwargs") or {}).get("exponent")
        if isinstance(p, (int, float)) and not isinstance(p, bool):
            return float(p)
    return None


def _twice(node: Node, operand: Node) -> bool:
    """``x * x``: the tracers list the operand once among the inputs."""
    args = node.attrs.get("args") or ()
    return isinstance(args, (list, tuple)) and sum(a is operand for a in args) == 2


class _Reader:
    def __init__(self) -> None:
        self.memo: dict[Node, _Deg] = {}
        self.norms: dict[Node, HandNorm] = {}

    def degree(self, node: Node, depth: int = 0) -> _Deg:
        hit = self.memo.get(node)
        if hit is not None:
            return hit
        out = self._degree(node, depth) if depth < 64 and node not in self.norms else None
        out = out or _Deg(node, 1.0, False, frozenset(), False)
        self.memo[node] = out
        return out

    def _degree(self, node: Node, depth: int) -> Optional[_Deg]:
        ins = _tensor_inputs(node)
        k = node.kind
        if not ins or k in (Kind.INPUT, Kind.PARAM, Kind.OUTPUT):
            return None
        if len(ins) == 1:
            d = self.degree(ins[0], depth + 1)
            factor, reduced, magnitude = None, d.reduced, d.magnitude
            if k == Kind.RESHAPE and node.op not in _NOT_VIEWS:
                factor = 1.0
            elif k == Kind.REDUCE and node.op in _REDUCE_DEGREE:
                factor, reduced = _REDUCE_DEGREE[node.op], True
                magnitude = magnitude or node.op in _MAGNITUDES
            elif k == Kind.OTHER and _exponent(node) is not None:
                factor = _exponent(node)
                magnitude = magnitude or node.op == "abs" or (
                    factor > 0 and factor % 2 == 0)
            elif k == Kind.MUL and node.op == "mul" and _twice(node, ins[0]):
                factor, magnitude = 2.0, True  # x * x
            elif k == Kind.MUL or (k == Kind.ADD and len(node.inputs) == 1):
                factor = 1.0  # a scale or gain applied; a number (eps) added
            if factor is None:
                return None
            return _Deg(d.base, d.degree * factor, reduced, d.members | {node}, magnitude)
        if len(ins) != 2 or k not in (Kind.ADD, Kind.MUL):
            return None
        a, b = self.degree(ins[0], depth + 1), self.degree(ins[1], depth + 1)
        if a.base is not b.base:
            return None
        if k == Kind.ADD:  # x - mean(x): terms of one degree
            if abs(a.degree - b.degree) > 1e-9:
                return None
            degree = a.degree
        else:
            degree = a.degree - b.degree if node.op == "div" else a.degree + b.degree
        return _Deg(a.base, degree, a.reduced or b.reduced, a.members | b.members | {node},
                    a.magnitude or b.magnitude)

    def visit(self, node: Node) -> None:
        """Is ``node`` (a product or quotient) where a tensor's scale cancels out?"""
        if node.kind != Kind.MUL or node.op not in ("mul", "div"):
            return
        ins = _tensor_inputs(node)
        if len(ins) != 2:
            return
        a, b = self.degree(ins[0]), self.degree(ins[1])
        d = self.degree(node)
        if d.base is node or abs(d.degree) > 1e-9 or not d.reduced or not d.magnitude or \
                abs(a.degree) < 1e-9 or abs(b.degree) < 1e-9:
            return
        members = d.members - {node}
        inside = members | {node}
        if any(u not in inside for m in members for u in m.users):
            return  # the statistic (or the centred tensor) is used elsewhere too
        self.norms[node] = HandNorm(node, d.base, frozenset(members))
        self.memo[node] = _Deg(node, 1.0, False, frozenset(), False)  # what follows: afresh


#: Node attribute set on the op that ends a normalisation written with tensor ops.
NORMALISES = "normalises"


def hand_written_norms(graph: Graph) -> dict[Node, HandNorm]:
    """Every op that normalises a tensor by a statistic of its own (see the module doc); each
    is marked with the :data:`NORMALISES` attribute (:func:`is_normalisation`)."""
    reader = _Reader()
    for node in graph.nodes:
        reader.visit(node)
    for node in reader.norms:
        node.attrs[NORMALISES] = True
    return reader.norms


def is_normalisation(node: Node) -> bool:
    """A normalisation layer, or the op that ends one written with tensor ops (once
    :func:`hand_written_norms` has read the graph)."""
    return node.kind == Kind.NORM or bool(node.attrs.get(NORMALISES))


def scale_free_weight(node: Node) -> bool:
    """Is the weight a layer reads computed in ``forward`` from parameters in a way that does
    not depend on their scale (weight standardisation)? Recomputed with every matrix among its
    parameters doubled; gains and biases (one dimension of more than one entry, whatever their
    view: ``[C, 1, 1, 1]``) keep their values."""
    computed = node.attrs.get("derived_weight")
    source = node.attrs.get("weight_source")
    if not isinstance(computed, torch.Tensor) or not isinstance(source, Node) or \
            not source.attrs.get(PARAM_ONLY):
        return False
    params = [p for p in source_params(node) if p.tensor is not None and
              sum(d > 1 for d in p.tensor.shape) >= 2 and p.tensor.is_floating_point()
              and p.tensor.device.type != "meta"]
    if not params:
        return False
    saved = [p.tensor for p in params]
    try:
        for p in params:
            p.tensor = p.tensor.detach() * 2.0
        with torch.no_grad():
            doubled = replay_value(source)
    except Exception:
        return False
    finally:
        for p, t in zip(params, saved):
            p.tensor = t
    if not isinstance(doubled, torch.Tensor) or doubled.shape != computed.shape:
        return False
    ref = computed.detach().float()
    scale = float(ref.pow(2).mean()) ** 0.5
    return scale > 0 and float((doubled.detach().float() - ref).abs().max()) <= 1e-2 * scale
