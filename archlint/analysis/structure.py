"""Structural facts computed once per graph: gradient paths, depths, runs and skip joins.

Everything is measured along *gradient paths*: edges from a node to the inputs it passes gradient
to (shape-only arguments, masks and ids excluded). The gradient reaching a node takes the easiest
way back from the output, so the quantities below are minima over the paths from a node to the
probe output -- which is exactly how a skip connection helps: a residual ``x + f(x)`` gives ``x`` a
path that crosses none of ``f``'s layers.

- ``layers_to_output[n]``: the fewest weight layers a gradient crosses from the output to ``n``
  (``n`` itself not counted).
- ``unnormalised_run[n]``: the same count, but restarting at every normalisation layer: the
  length of the norm-free stack of weight layers between ``n`` and the next normalisation.
- ``unskipped_run[n]``: the same count, but restarting at every skip join the gradient passes:
  the length of the plain stretch between ``n`` and the next skip connection (or the output).
- ``saturating_run[n]``: the fewest saturating activations a gradient crosses from the output
  to ``n``, restarting at every normalisation layer.
- ``longest_path``: the most weight layers on any forward path from an input to the output.
- ``skip_joins``: add/cat nodes that join a tensor with a transformed version of itself.

Depth counts weight layers, not time steps: a recurrent module applied step after step (an
``nn.RNNCell`` / ``nn.LSTMCell`` in a Python loop) counts once, at its last step, as ``nn.RNN``
over the same sequence does. How far the gradient travels through time is AL107's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..graph.ir import Graph, Kind, Node
from .normalisation import NORMALISES, hand_written_norms, is_normalisation

INF = math.inf


@dataclass
class Structure:
    layers_to_output: dict[Node, float] = field(default_factory=dict)
    unnormalised_run: dict[Node, float] = field(default_factory=dict)
    saturating_run: dict[Node, float] = field(default_factory=dict)
    unskipped_run: dict[Node, float] = field(default_factory=dict)
    #: For each run metric, the user node through which the minimum is reached.
    next_layer: dict[Node, Optional[Node]] = field(default_factory=dict)
    next_unnormalised: dict[Node, Optional[Node]] = field(default_factory=dict)
    next_saturating: dict[Node, Optional[Node]] = field(default_factory=dict)
    next_unskipped: dict[Node, Optional[Node]] = field(default_factory=dict)
    longest_path: int = 0
    longest_path_end: Optional[Node] = None
    longest_before: dict[Node, int] = field(default_factory=dict)
    skip_joins: list[Node] = field(default_factory=list)
    grad_users: dict[Node, list[Node]] = field(default_factory=dict)
    #: Recurrent calls followed (through the data graph) by another call of the same module:
    #: earlier time steps of an unrolled cell, which add no depth.
    time_steps: set[Node] = field(default_factory=set)
    #: Nodes with no trainable parameter before them: a frozen backbone read under no_grad,
    #: a linear probe's features. Training never sends a gradient through them.
    frozen: set[Node] = field(default_factory=set)

    def reaches_output(self, node: Node) -> bool:
        return self.layers_to_output.get(node, INF) < INF

    def counts_as_layer(self, node: Node) -> bool:
        """A weight layer that adds to depth (not an earlier time step of a recurrent cell)."""
        return node.is_weight_layer and node not in self.time_steps


def _backward_min(graph: Graph, grad_users: dict[Node, list[Node]],
                  step: Callable[[Node, float], float]) -> tuple[dict, dict]:
    """value[n] = min over gradient users u of step(u, value[u]); value[output] = 0."""
    value: dict[Node, float] = {}
    via: dict[Node, Optional[Node]] = {}
    out = graph.output
    for n in reversed(graph.nodes):
        best, arg = INF, None
        if n is out:
            best = 0.0
        for u in grad_users.get(n, ()):
            v = value.get(u, INF)
            if v == INF:
                continue
            cand = step(u, v)
            if cand < best:
                best, arg = cand, u
        value[n] = best
        via[n] = arg
    return value, via


def analyse_structure(graph: Graph) -> Structure:
    s = Structure()
    grad_users: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        for p in n.grad_parents():
            grad_users.setdefault(p, []).append(n)
    s.grad_users = grad_users
    s.time_steps = _earlier_time_steps(graph)
    counts = s.counts_as_layer
    hand_written_norms(graph)  # normalisations written with tensor ops restart runs too

    def weight_step(u: Node, v: float) -> float:
        return v + (1 if counts(u) else 0)

    def unnormalised_step(u: Node, v: float) -> float:
        if is_normalisation(u):
            return 0.0
        return v + (1 if counts(u) else 0)

    def saturating_step(u: Node, v: float) -> float:
        if is_normalisation(u):
            return 0.0
        return v + (1 if u.is_saturating else 0)

    s.layers_to_output, s.next_layer = _backward_min(graph, grad_users, weight_step)
    s.unnormalised_run, s.next_unnormalised = _backward_min(graph, grad_users, unnormalised_step)
    s.saturating_run, s.next_saturating = _backward_min(graph, grad_users, saturating_step)

    s.skip_joins = _skip_joins(graph)
    joins = set(s.skip_joins)

    def unskipped_step(u: Node, v: float) -> float:
        if u in joins:
            return 0.0
        return v + (1 if counts(u) else 0)

    s.unskipped_run, s.next_unskipped = _backward_min(graph, grad_users, unskipped_step)

    # Longest forward path in weight layers (over data edges, ids included: an embedding counts).
    longest: dict[Node, int] = {}
    for n in graph.nodes:
        before = max((longest.get(i, 0) for i in n.inputs), default=0)
        longest[n] = before + (1 if counts(n) else 0)
    s.longest_before = longest
    s.frozen = _frozen(graph)
    if graph.output is not None:
        s.longest_path = longest.get(graph.output, 0)
        s.longest_path_end = graph.output
    elif longest:
        end = max(longest, key=lambda k: longest[k])
        s.longest_path, s.longest_path_end = longest[end], end
    return s


def _earlier_time_steps(graph: Graph) -> set[Node]:
    """Calls of a recurrent module from which another call of the same module is reachable."""
    calls: dict[int, list[Node]] = {}
    for n in graph.nodes:
        if n.kind == Kind.RECURRENT and n.module is not None:
            calls.setdefault(id(n.module), []).append(n)
    steps: set[Node] = set()
    for same in calls.values():
        if len(same) < 2:
            continue
        others = set(same)
        for call in same:
            frontier, seen = list(call.users), {call}
            while frontier:
                u = frontier.pop()
                if u in seen:
                    continue
                seen.add(u)
                if u in others:
                    steps.add(call)
                    break
                frontier.extend(u.users)
    return steps


def _skip_joins(graph: Graph) -> list[Node]:
    """Joins (add/sub/cat) of a tensor with a transformed version of itself.

    A join is a skip join when two of its inputs share an ancestor and the paths from that
    ancestor differ in weight layers -- found from the graph alone, never from names.
    """
    ancestors: dict[Node, dict[Node, int]] = {}
    joins = []
    for n in graph.nodes:
        own: dict[Node, int] = {}
        for i in n.inputs:
            for a, depth in ancestors.get(i, {}).items():
                d = depth + (1 if n.is_weight_layer else 0)
                if own.get(a, -1) < d:
                    own[a] = d
            d = 1 if n.is_weight_layer else 0
            if own.get(i, -1) < d:
                own[i] = d
        if n.kind in (Kind.ADD, Kind.CONCAT) and len(n.inputs) >= 2:
            sets = []
            for i in n.inputs:
                depths = dict(ancestors.get(i, {}))
                depths[i] = 0
                sets.append(depths)
            if _differ_in_depth(sets):
                joins.append(n)
        # Keep the ancestor maps small: only nodes with fan-out can start a skip.
        ancestors[n] = {a: d for a, d in own.items() if len(a.users) > 1}
    return joins


def _differ_in_depth(sets: list[dict[Node, int]]) -> bool:
    for x in range(len(sets)):
        for y in range(x + 1, len(sets)):
            common = sets[x].keys() & sets[y].keys()
            if any(sets[x][a] != sets[y][a] for a in common):
                return True
    return False


def walk_run(start: Node, via: dict[Node, Optional[Node]], stop_kind: str = Kind.NORM,
             stop_at: Optional[set[Node]] = None) -> list[Node]:
    """Follow the minimising users from ``start`` until a node of ``stop_kind`` (a
    normalisation node by default), a node of ``stop_at``, or the output."""
    path = [start]
    cur = via.get(start)
    seen = {start}
    while cur is not None and cur not in seen and cur.kind != stop_kind and \
            not (stop_kind == Kind.NORM and cur.attrs.get(NORMALISES)) and \
            (stop_at is None or cur not in stop_at):
        path.append(cur)
        seen.add(cur)
        cur = via.get(cur)
    return path


def longest_plain_stretch(s: Structure, nodes: list[Node]) -> Optional[Node]:
    """The weight layer that starts the longest stretch of weight layers the gradient must cross
    with no skip join between them (earliest first among equals)."""
    worst, depth = None, 0.0
    for node in nodes:
        if not s.counts_as_layer(node):
            continue
        d = s.unskipped_run.get(node, INF)
        if d == INF or s.layers_to_output.get(node, INF) == INF:
            continue
        if d + 1 > depth:
            worst, depth = node, d + 1
    return worst


def plain_stretch(s: Structure, start: Node) -> list[Node]:
    """The weight layers of the plain stretch that starts at ``start``."""
    joins = set(s.skip_joins)
    return [n for n in walk_run(start, s.next_unskipped, stop_kind="", stop_at=joins)
            if s.counts_as_layer(n)]


def trains(node: Node) -> bool:
    """Does ``node`` own a parameter that training updates (requires_grad)?"""
    if node.kind == Kind.PARAM:
        t = node.tensor
        return t is not None and bool(getattr(t, "requires_grad", False))
    m = node.module  # a leaf layer: its parameters, parametrizations' originals included
    return m is not None and any(p.requires_grad for p in m.parameters())


def _frozen(graph: Graph) -> set[Node]:
    """Nodes that no trainable parameter reaches through gradient-carrying edges."""
    live: set[Node] = set()
    for n in graph.nodes:  # topological order
        if trains(n) or any(p in live for p in n.grad_parents()):
            live.add(n)
    return {n for n in graph.nodes if n not in live}
