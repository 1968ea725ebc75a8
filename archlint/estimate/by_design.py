"""Layers whose gradient at initialisation is small or large by design, not because of depth.

The gradient verdicts compare the earliest layers' gradient with the last ones'. Some layers'
gradient is set by a design choice that the first training steps undo, whatever the depth:

- **Behind a small learned gain** (layer scale, ReZero, SkipInit with a non-zero start): a
  residual branch ``x + gamma * f(x)`` with a trainable ``gamma`` initialised near zero is
  the identity at initialisation. Every layer whose every path to the output crosses such a
  gain gets a gradient ``gamma`` times smaller (CaiT's 1e-5: 5 decades, then 5 more for the
  patch blocks behind the class-attention blocks). The gain's own gradient is not small, so
  it grows in the first steps and opens the branch. Exactly-zero gains already give these
  layers a zero gradient, which the verdicts leave out; a near-zero gain is the same design.
- **Attention queries and keys**: a projection whose every path to the output goes into
  attention scores (the input of a softmax whose probabilities weight values, or the query
  and key of ``scaled_dot_product_attention``). At a small initialisation the scores are
  near zero and attention is uniform, so their gradient is set by the other projection's
  scale (a 0.02-initialised BERT-style encoder: about 3 decades), not by depth.
- **Inside a sigmoid gate** (squeeze-and-excitation, ECA, CBAM): a layer whose every path
  to the output goes into a sigmoid (or hard sigmoid) that multiplies another tensor. A
  too-large gradient step saturates the gate, which bounds the layer's effect and shrinks
  its gradient: it cannot blow up the signal. Its early-stage gradient is large (a pooled
  input summed back over every position: 2.6-2.7 decades above the output layers measured
  on RegNetY), so only the exploding verdict leaves these out.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..graph.ir import Graph, Kind, Node
from ..graph.metainit import dist_of, is_meta

#: A learned gain at most this large (in absolute value, every entry) makes a branch the
#: identity at initialisation. Layer-scale designs start at 1e-6..1e-1; 0.1 costs one decade.
SMALL_GAIN = 0.1

_GATES = frozenset({"sigmoid", "hardsigmoid"})
_PASS = frozenset({Kind.RESHAPE, Kind.DROPOUT})

Edge = Callable[[Node, Node], bool]


def _covered(graph: Graph, users: dict[Node, list[Node]], ends: Edge) -> set[str]:
    """Module paths of the weight layers whose every gradient-carrying path to the output
    crosses an edge ``(src, dst)`` for which ``ends`` holds (``users``: each node's
    gradient-carrying users, as :class:`~archlint.analysis.structure.Structure` keeps them)."""
    memo: dict[Node, bool] = {}

    def covered(node: Node) -> bool:
        if node in memo:
            return memo[node]
        memo[node] = False  # a cycle (should not happen in a DAG) counts as reaching the output
        if node is graph.output or node.kind == Kind.OUTPUT:
            return False
        out = bool(users.get(node)) and all(ends(node, u) or covered(u)
                                             for u in users.get(node, ()))
        memo[node] = out
        return out

    # iterate in reverse topological order so the recursion stays shallow
    for n in reversed(graph.nodes):
        covered(n)
    return {n.module_path for n in graph.nodes
            if n.is_weight_layer and n.module_path is not None and memo.get(n)}


def _param_behind(node: Node, steps: int = 4) -> Optional[Node]:
    cur = node
    for _ in range(steps):
        if cur.kind == Kind.PARAM:
            return cur
        if cur.kind != Kind.RESHAPE or not cur.inputs:
            return None
        cur = cur.inputs[0]
    return None


def _small_learned(t: Optional[torch.Tensor]) -> bool:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or not t.requires_grad \
            or t.numel() == 0:
        return False
    if is_meta(t):
        d = dist_of(t)
        return d is not None and math.sqrt(d.mean_sq) <= SMALL_GAIN and d.var == 0.0
    with torch.no_grad():
        peak = float(t.detach().abs().max())
    return 0.0 < peak <= SMALL_GAIN


def _reaches(node: Node, hit: Callable[[Node, Node], bool], through: Callable[[Node], bool],
             steps: int = 4) -> bool:
    """Does a user ``u`` (of a node ``n`` on the way) with ``hit(n, u)`` follow ``node`` within
    ``steps`` hops over users for which ``through`` holds?"""
    frontier = [node]
    for _ in range(steps):
        nxt = []
        for n in frontier:
            for u in n.users:
                if hit(n, u):
                    return True
                if through(u):
                    nxt.append(u)
        frontier = nxt
    return False


def _product(n: Node) -> bool:
    return n.kind == Kind.MUL and n.op != "div"


def _joins_residual(node: Node) -> bool:
    """Does ``node``'s output reach a residual add (through reshapes and dropout / drop-path)?"""
    return _reaches(node, lambda _, u: u.kind == Kind.ADD,
                    lambda u: u.kind in _PASS or _product(u))


def _gain_edge(src: Node, dst: Node) -> bool:
    if not _product(dst) or src.kind == Kind.PARAM:
        return False
    others = [i for i in dst.inputs if i is not src]
    if len(others) != 1:
        return False
    param = _param_behind(others[0])
    return param is not None and _small_learned(param.tensor) and _joins_residual(dst)


def _score_edge(src: Node, dst: Node) -> bool:
    if dst.kind == Kind.ATTENTION and dst.op == "scaled_dot_product_attention" \
            and dst.module is None:
        ins = dst.inputs
        value = ins[2] if len(ins) > 2 else None
        return src is not value and any(src is i for i in ins[:2])
    if dst.kind == Kind.ACTIVATION and dst.op == "softmax":
        return _reaches(dst, lambda _, u: u.kind == Kind.MATMUL,
                        lambda u: u.kind in _PASS or u.kind == Kind.MUL)
    return False


def _gate_edge(src: Node, dst: Node) -> bool:
    """``dst`` is a sigmoid whose output multiplies the tensor it was computed from."""
    name = getattr(dst.info, "name", dst.op)
    if dst.kind != Kind.ACTIVATION or name not in _GATES:
        return False
    return _reaches(dst, lambda n, u: _product(u) and any(
        i is not n and _ancestor(i, dst) for i in u.inputs), lambda u: u.kind in _PASS)


def _ancestor(anc: Node, node: Node, limit: int = 64) -> bool:
    """Is ``anc`` among the first ``limit`` ancestors of ``node`` (breadth first)?"""
    seen, frontier = set(), [node]
    while frontier and len(seen) < limit:
        nxt = []
        for n in frontier:
            for i in n.inputs:
                if i is anc:
                    return True
                if i not in seen:
                    seen.add(i)
                    nxt.append(i)
        frontier = nxt
    return False


def left_out(graph: Graph, users: dict[Node, list[Node]]) -> set[str]:
    """The layers both verdicts leave out: behind a small learned gain, attention queries and
    keys."""
    return behind_small_gain(graph, users) | attention_scores_only(graph, users)


def behind_small_gain(graph: Graph, users: dict[Node, list[Node]]) -> set[str]:
    return _covered(graph, users, _gain_edge)


def attention_scores_only(graph: Graph, users: dict[Node, list[Node]]) -> set[str]:
    return _covered(graph, users, _score_edge)


def inside_gates(graph: Graph, users: dict[Node, list[Node]]) -> set[str]:
    return _covered(graph, users, _gate_edge)
