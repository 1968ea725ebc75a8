"""Facts about the traced graph, computed once and read by the rules and the gradient estimate.

Everything here is read off the graph and the initial weights -- structure (gradient paths,
depths, skip joins), initial-weight statistics, recurrent horizons -- and nothing here depends on
the gradient estimate, which sits above it (:mod:`archlint.estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..graph.ir import Graph
from .init_stats import InitFacts, analyse_init
from .recurrence import RecurrentUse, analyse_recurrence
from .structure import Structure, analyse_structure


@dataclass
class GraphFacts:
    structure: Structure
    init: InitFacts
    recurrence: list[RecurrentUse]


def analyse_graph(graph: Graph) -> GraphFacts:
    structure = analyse_structure(graph)
    return GraphFacts(structure=structure, init=analyse_init(graph, structure),
                      recurrence=analyse_recurrence(graph))


__all__ = ["GraphFacts", "analyse_graph"]
