"""Initial-weight statistics of every weight layer and norm layer, read from the real tensors.

For each layer: fan-in, ``sigma_w^2 = fan_in * E[W^2]`` (the factor by which it scales the
signal's second moment, Poole et al. 2016), whether the weight is all zero, constant, or has
identical rows (symmetric), the activation that consumes its output, whether the layer ends a
residual branch or feeds the output directly (identity-at-init designs), and the length of the
norm-free chain of weight layers it belongs to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..graph.ir import Graph, Kind, Node
from ..graph.metainit import MetaValueError, meta_dist
from ..ops import op_info
from ..ops.linear import weight_fans
from ..ops.norms import measured_affine, norm_affine

#: Ops a value passes through without changing which activation consumes it.
_PASSTHROUGH = {Kind.RESHAPE, Kind.DROPOUT, Kind.POOL}


@dataclass
class LayerInit:
    node: Node
    fan_in: Optional[int]
    sigma_w2: Optional[float]  # fan_in * E[W^2]: the forward gain
    sigma_w2_out: Optional[float]  # fan_out * E[W^2]: the backward gain (He "fan_out" mode)
    all_zero: bool
    constant: bool  # every entry equal (and not all zero)
    symmetric: bool  # all output units (rows) identical
    next_activation: str  # op of the consuming activation, "norm", or "linear"
    target_sigma_w2: float
    identity_at_init_ok: bool  # ends a residual branch or feeds the output directly
    chain: Node  # a representative of its plain chain (same object for every member)
    chain_length: int  # weight layers in its norm-free, join-free chain
    nonfinite: bool = False  # NaN or Inf among the weights

    def scale_ratio(self) -> Optional[float]:
        """Std of the weights relative to the ideal init for the consuming activation.

        Both He modes are accepted: the fan-in ratio (forward signal) or the fan-out ratio
        (backward gradient), whichever is closer to 1."""
        if self.sigma_w2 is None or self.sigma_w2 <= 0:
            return None
        ratios = [math.sqrt(self.sigma_w2 / self.target_sigma_w2)]
        if self.sigma_w2_out:
            ratios.append(math.sqrt(self.sigma_w2_out / self.target_sigma_w2))
        return min(ratios, key=lambda r: abs(math.log(r)))


@dataclass
class NormInit:
    node: Node
    zero_scale: bool
    identity_at_init_ok: bool


def _consumer(node: Node) -> tuple[str, list[Node]]:
    """The op consuming ``node``'s output after pass-through ops (and bias adds)."""
    frontier = list(node.users)
    seen = set()
    while frontier:
        u = frontier.pop(0)
        if u in seen:
            continue
        seen.add(u)
        if u.kind == Kind.ACTIVATION:
            return u.op, [u]
        if u.kind == Kind.NORM:
            return "norm", [u]
        if u.kind in _PASSTHROUGH or (u.kind == Kind.ADD and _one_data_input(u)) or \
                (u.kind == Kind.MUL and _one_data_input(u)):
            frontier.extend(u.users)
            continue
        return "linear", [u]
    return "linear", []


def _one_data_input(node: Node) -> bool:
    """An add/mul with at most one activation operand: a bias add or a constant scale."""
    data = [i for i in node.inputs if i.kind not in (Kind.PARAM, Kind.CONSTANT)]
    return len(data) <= 1


def _feeds_join_or_output(node: Node, graph: Graph) -> bool:
    """True if the value reaches a residual join or the output with no weight layer between."""
    if node is graph.output:
        return True
    frontier = list(node.users)
    seen = set()
    while frontier:
        u = frontier.pop(0)
        if u in seen:
            continue
        seen.add(u)
        if u.is_weight_layer:
            continue
        if u is graph.output or u.kind == Kind.OUTPUT:
            return True
        if u.kind in (Kind.ADD, Kind.CONCAT) and not _one_data_input(u):
            return True
        frontier.extend(u.users)
    return False


def _target_sigma_w2(op: str, consumer: list[Node]) -> float:
    row = op_info(op)
    if row is not None and row.rectifier:
        if op in ("leaky_relu", "prelu", "rrelu") and consumer:
            a = consumer[0].attrs.get("negative_slope", consumer[0].attrs.get("weight", 0.01))
            try:
                a = float(a)
            except (TypeError, ValueError):
                a = 0.01
            return 2.0 / (1.0 + a * a)
        return 2.0
    return 1.0


def _chains(graph: Graph) -> dict[Node, Node]:
    """Size of each weight layer's chain: weight layers linked through activations/pass-through
    ops only (no normalisation, no join), i.e. a plain feed-forward stack."""
    link = {Kind.ACTIVATION, *_PASSTHROUGH}
    parent: dict[Node, Node] = {}

    def find(x: Node) -> Node:
        while parent.get(x, x) is not x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for n in graph.weight_layers():
        parent.setdefault(n, n)
        frontier = list(n.users)
        seen = set()
        while frontier:
            u = frontier.pop()
            if u in seen:
                continue
            seen.add(u)
            if u.is_weight_layer:
                parent.setdefault(u, u)
                parent[find(u)] = find(n)
            elif u.kind in link or (u.kind in (Kind.ADD, Kind.MUL) and _one_data_input(u)):
                frontier.extend(u.users)
    return {n: find(n) for n in parent}


def _layer(node: Node, graph: Graph, chain_of: dict, sizes: dict, fan_in: Optional[int],
           fan_out: Optional[int], mean_sq: float, all_zero: bool, constant: bool,
           symmetric: bool) -> LayerInit:
    nonfinite = not math.isfinite(mean_sq)
    sigma_w2 = fan_in * mean_sq if fan_in else None
    sigma_w2_out = fan_out * mean_sq if fan_out else None
    op, consumer = _consumer(node)
    return LayerInit(
        node=node, fan_in=fan_in, sigma_w2=None if nonfinite else sigma_w2,
        sigma_w2_out=None if nonfinite else sigma_w2_out, nonfinite=nonfinite,
        all_zero=all_zero, constant=constant,
        symmetric=symmetric, next_activation=op,
        target_sigma_w2=_target_sigma_w2(op, consumer),
        identity_at_init_ok=_feeds_join_or_output(node, graph),
        chain=chain_of.get(node, node),
        chain_length=sizes.get(chain_of.get(node, node), 1),
    )


@dataclass
class InitFacts:
    layers: list[LayerInit]
    norms: list[NormInit]


def analyse_init(graph: Graph) -> InitFacts:
    chain_of = _chains(graph)
    sizes: dict[Node, int] = {}
    for root in chain_of.values():
        sizes[root] = sizes.get(root, 0) + 1
    layers: list[LayerInit] = []
    seen_weights: set[int] = set()
    for node in graph.weight_layers():
        w = node.weight()
        if w is None or w.dim() < 2 or id(w) in seen_weights:
            continue
        seen_weights.add(id(w))  # a shared layer is judged once
        try:
            d = meta_dist(w)
        except MetaValueError:  # made real just now
            w = node.weight()
            d = None
        if d is not None:  # a large weight on the meta device: its entries' distribution
            fan_in, fan_out = weight_fans(node, w)
            layers.append(_layer(node, graph, chain_of, sizes, fan_in, fan_out, d.mean_sq,
                                 all_zero=d.mean_sq == 0.0,
                                 constant=d.var == 0.0 and d.mean != 0.0, symmetric=False))
            continue
        wd = w.detach()
        if not wd.is_floating_point():
            wd = wd.float()
        mean_sq = float(torch.linalg.vector_norm(wd.float() if wd.dtype != torch.float32 else wd)
                        ) ** 2 / max(1, wd.numel())
        nonfinite = not math.isfinite(mean_sq)
        all_zero = mean_sq == 0.0
        flat = wd.reshape(-1)
        constant = (not all_zero and flat.numel() > 1 and bool(flat[0] == flat[-1])
                    and bool(wd.max() == wd.min()))
        rows = wd.reshape(wd.shape[0], -1)
        symmetric = (not all_zero and not constant and rows.shape[0] > 1 and rows.shape[1] > 1
                     and torch.equal(rows[0], rows[1]) and bool((rows == rows[0:1]).all()))
        fan_in, fan_out = weight_fans(node, wd)
        layers.append(_layer(node, graph, chain_of, sizes, fan_in, fan_out, mean_sq,
                             all_zero=all_zero, constant=constant, symmetric=symmetric))
    norms: list[NormInit] = []
    for node in graph.by_kind(Kind.NORM):
        gamma, _ = norm_affine(node)  # F.batch_norm's running stats are not its scale
        if not isinstance(gamma, torch.Tensor):
            continue
        measured = measured_affine(node)
        zero = measured.g2 == 0.0 if measured is not None else bool((gamma.detach() == 0).all())
        norms.append(NormInit(node=node, zero_scale=zero,
                              identity_at_init_ok=_feeds_join_or_output(node, graph)))
    return InitFacts(layers, norms)
