"""Predict a candidate fix's effect: carry it out on a copy of the graph, recompute the facts and
the gradient estimate there, run the finding's rule again, and read the verdicts.

A candidate is kept when the rule no longer reports the finding on the edited graph (the
structural fact or the verdict it read is within its limit now) and the gradient verdicts are
within their limits -- or, where they were not before, no worse. Kept candidates are ordered
best first: those that leave every gradient verdict within its limit, then by the predicted
decades between the earliest and the last layers, then by how small a change they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..analysis import GraphFacts, analyse_graph
from ..estimate import GradientFacts, estimate_gradients
from ..graph.ir import Graph
from ..results import Finding
from ..rules import Rule, RuleContext
from .plan import Candidate, apply_to_graph


@dataclass
class Limits:
    vanishing: float = 3.0
    exploding: float = 3.0


@dataclass(eq=False)
class Outcome:
    candidate: Candidate
    #: The graph the candidate was proposed on (its nodes are the candidate's), and the edited
    #: copy.
    graph_before: Graph
    graph: Graph
    facts: GraphFacts
    gradient: Optional[GradientFacts]
    resolved: bool
    vanishing: Optional[float]
    exploding: Optional[float]
    #: Both gradient verdicts within their limits after the edit.
    healthy: bool = False
    acceptable: bool = False

    def sort_key(self) -> tuple:
        # half-decade buckets: within one, the smaller change wins
        return (not self.healthy, math.floor(abs(self.vanishing or 0.0) * 2),
                math.floor(max(self.exploding or 0.0, 0.0) * 2), self.candidate.rank)


def same_problem(original: Finding, other: Finding) -> bool:
    """Is ``other`` (from the edited graph) the finding ``original`` again?"""
    if other.code != original.code or \
            other.data.get("problem") != original.data.get("problem"):
        return False
    if original.path is not None and other.path == original.path and \
            other.line == original.line:
        return True
    return other.module is not None and other.module == original.module


def evaluate(candidate: Candidate, finding: Finding, graph: Graph, rule: Optional[type[Rule]],
             options: dict[str, Any], severity: str, limits: Limits,
             before: tuple[Optional[float], Optional[float]], target: str = "",
             cache: Optional[dict] = None) -> Optional[Outcome]:
    """The candidate's predicted effect, or None when the edited graph cannot be analysed.
    ``cache``: edited graphs by candidate (the same change proposed for two findings is
    estimated once)."""
    key = (candidate.kind, candidate.description, tuple(
        (a.kind, id(a.node), id(a.other), a.op) for a in candidate.actions))
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        try:
            edited = apply_to_graph(candidate, graph)
            facts = analyse_graph(edited)
            gradient = None
            if edited.input_spec is not None and edited.output is not None:
                gradient = estimate_gradients(edited, facts)
        except Exception:  # a candidate the graph cannot take is no candidate
            hit = (None, None, None)
        else:
            hit = (edited, facts, gradient)
        if cache is not None:
            cache[key] = hit
    edited, facts, gradient = hit
    if edited is None:
        return None
    van = gradient.vanishing.decades if gradient is not None and gradient.vanishing else None
    exp = gradient.exploding.decades if gradient is not None and gradient.exploding else None
    resolved = True
    if rule is not None:
        ctx = RuleContext(graph=edited, facts=facts, gradient=gradient, options=options,
                          severity=severity, target=target)
        try:
            resolved = not any(same_problem(finding, f) for f in rule().check(ctx))
        except Exception:
            return None
    out = Outcome(candidate=candidate, graph_before=graph, graph=edited, facts=facts, gradient=gradient,
                  resolved=resolved, vanishing=van, exploding=exp)
    van_ok = van is None or van >= -limits.vanishing
    exp_ok = exp is None or exp <= limits.exploding
    out.healthy = van_ok and exp_ok
    b_van, b_exp = before
    van_fine = van_ok or (b_van is not None and b_van < -limits.vanishing and van >= b_van)
    exp_fine = exp_ok or (b_exp is not None and b_exp > limits.exploding and exp <= b_exp)
    out.acceptable = resolved and van_fine and exp_fine and _finite(van) and _finite(exp)
    return out


def _finite(x: Optional[float]) -> bool:
    return x is None or math.isfinite(x)


def rank(outcomes: list[Outcome]) -> list[Outcome]:
    """The acceptable outcomes, best first, one per description; those that leave a gradient
    verdict beyond its limit only when no candidate brings every verdict within."""
    kept = sorted((o for o in outcomes if o.acceptable), key=Outcome.sort_key)
    if any(o.healthy for o in kept):
        kept = [o for o in kept if o.healthy]
    seen, out = set(), []
    for o in kept:
        if o.candidate.description in seen:
            continue
        seen.add(o.candidate.description)
        out.append(o)
    return out
