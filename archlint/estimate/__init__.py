"""The gradient estimate: every layer's weight-gradient RMS at initialisation, predicted by
propagating mean-field statistics over the graph (:mod:`.propagate`), and the verdicts read from
it (:mod:`.verdict`): how many decades the earliest layers' gradient sits below (or above) the
last layers'."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..analysis import GraphFacts
from ..graph.ir import Graph
from .by_design import left_out
from .propagate import Estimate, estimate_graph
from .verdict import GradientFlow, analyse_gradient_flow


@dataclass
class GradientFacts:
    estimate: Estimate
    #: The comparison behind AL105 (vanishing) and AL106 (exploding, which leaves out layers
    #: followed by normalisation); None when fewer than two layers can be compared.
    vanishing: Optional[GradientFlow]
    exploding: Optional[GradientFlow]


def estimate_gradients(graph: Graph, facts: GraphFacts) -> GradientFacts:
    estimate = estimate_graph(graph)
    designed = left_out(graph, facts.structure.grad_users)
    return GradientFacts(
        estimate=estimate,
        vanishing=analyse_gradient_flow(graph, estimate, facts, designed),
        exploding=analyse_gradient_flow(graph, estimate, facts, designed,
                                        skip_scale_invariant=True))


__all__ = ["GradientFacts", "estimate_gradients"]
