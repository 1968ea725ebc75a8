"""From the estimate to a verdict: how many decades the gradient loses (or gains) from the
output layers back to the earliest layers, and which layers cost them.

Layers are ordered by their first use in the forward pass. The earliest and the last weight
layers (10% of them at each end, at least one; embeddings excluded, since their sparse
lookups make their gradient small by construction; output heads, since their scale is a
design choice; layers whose gradient is set by a design the first steps undo (behind a small
learned layer-scale gain, attention queries and keys: see :mod:`.by_design`); and, for the
exploding verdict only, layers followed by normalisation and layers inside sigmoid gates, whose
too-large gradient corrects itself in the first steps) are compared by the geometric mean of their
predicted gradient RMS. Layers whose gradient mostly crossed an op the estimate has no formula
for are left out (their figure says nothing). Layers predicted to get exactly zero gradient (identity-at-init residual
branches, a zero-initialised head, and everything a zero layer cuts off) are left out: that is
by design. Attribution follows the dominant gradient path from the earliest layer to the output
and sums each node's share of the decades, grouped by layer type and module prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ..analysis import GraphFacts
from ..analysis.structure import trains
from ..analysis.normalisation import hand_written_norms, scale_free_weight
from ..graph.ir import Graph, Kind, Node
from . import by_design


@dataclass
class GradientFlow:
    decades: float  # log10(rms_earliest / rms_last): negative = vanishing
    earliest: list[str]
    last: list[str]
    first_node: Optional[Node]
    #: (label, decades) sorted by |decades|, largest first.
    contributions: list[tuple[str, float]] = field(default_factory=list)
    zero_by_design: list[str] = field(default_factory=list)


def _first_use(graph: Graph) -> dict[str, tuple[int, Node]]:
    first: dict[str, tuple[int, Node]] = {}
    for k, n in enumerate(graph.nodes):
        if n.is_weight_layer and n.module_path is not None and n.module_path not in first:
            first[n.module_path] = (k, n)
    return first


def analyse_gradient_flow(graph: Graph, estimate, facts: GraphFacts, designed: set[str],
                          skip_scale_invariant: bool = False) -> Optional[GradientFlow]:
    """The first/last comparison; ``designed``: the layers both verdicts leave out
    (:func:`.by_design.left_out`); ``skip_scale_invariant`` leaves out layers followed by
    normalisation and layers inside sigmoid gates (used for the exploding verdict, see
    :func:`_scale_invariant`)."""
    first = _first_use(graph)
    rms = dict(estimate.grad_rms)
    structure = facts.structure
    if not _has_identity_init(graph, facts):
        # nothing is zeroed on purpose: a layer on the gradient path left without gradient
        # underflowed (hundreds of decades down) -- vanishing, not design
        for mod, (_, node) in first.items():
            if rms.get(mod, 0.0) <= 0.0 and structure.reaches_output(node):
                rms[mod] = _UNDERFLOW
    invariant = set(designed)
    if skip_scale_invariant:
        invariant |= _scale_invariant(graph) | by_design.inside_gates(graph,
                                                                      structure.grad_users)
    usable = [(k, mod, node) for mod, (k, node) in first.items()
              if node.kind != Kind.EMBEDDING and mod in rms and mod not in invariant
              and mod not in estimate.uncertain and not _frozen_weights(node)]
    zero = sorted(mod for _, mod, _ in usable if rms[mod] <= 0.0)
    usable = sorted((k, mod, node) for k, mod, node in usable if rms[mod] > 0.0)
    # Output heads are compared with nothing: their scale is a design choice (a small or
    # zero-initialised head shrinks every gradient below it alike, which is not depth at work).
    body = [u for u in usable if structure.layers_to_output.get(u[2], 0) > 0]
    if len(body) >= 2:
        usable = body
    elif designed & set(first):
        # the model's depth sits in branches that are the identity at initialisation: the
        # one or two layers left outside them say nothing about depth
        return None
    if len(usable) < 2:
        return None
    n = max(1, math.ceil(0.1 * len(usable)))
    head, tail = usable[:n], usable[-n:]
    log_first = sum(math.log10(rms[m]) for _, m, _ in head) / len(head)
    log_last = sum(math.log10(rms[m]) for _, m, _ in tail) / len(tail)
    flow = GradientFlow(decades=log_first - log_last, earliest=[m for _, m, _ in head],
                        last=[m for _, m, _ in tail], first_node=head[0][2],
                        zero_by_design=zero)
    flow.contributions = _attribute(graph, estimate, head[0][2], {m for _, m, _ in tail})
    return flow


_UNDERFLOW = 1e-300


def _frozen_weights(node: Node) -> bool:
    """A weight layer whose weights training does not update (requires_grad off): its gradient
    is never used."""
    w = node.attrs.get("weight_param")
    if isinstance(w, Node) and w.tensor is not None:
        return not trains(w)
    return node.module is not None and next(node.module.parameters(), None) is not None \
        and not trains(node)


def _has_identity_init(graph: Graph, facts: GraphFacts) -> bool:
    """Does the model zero a weight, a normalisation scale or a gain on purpose somewhere (a
    zero-initialised residual branch, SkipInit, a layer scale of zero)?"""
    if any(li.all_zero for li in facts.init.layers) or \
            any(ni.zero_scale for ni in facts.init.norms):
        return True
    for n in graph.nodes:
        t = n.tensor if n.kind == Kind.PARAM else n.attrs.get("derived_weight")
        if t is not None and t.is_floating_point() and t.requires_grad and t.numel() and \
                t.device.type != "meta" and not bool(t.detach().any()):
            return True
    return False


_SCALE_PASSTHROUGH = {Kind.RESHAPE, Kind.CONCAT, Kind.POOL, Kind.DROPOUT}


def _scale_invariant(graph: Graph) -> set[str]:
    """Layers whose every output path reaches a normalisation layer before anything else that
    depends on scale (another weight layer, a residual add, the output). The function such a
    layer computes does not depend on its weights' scale, its gradient shrinks as its weights
    grow, so a gradient that is too *large* corrects itself within the first steps -- why
    batch-normalised ResNets and DenseNets train although their early layers' gradients are
    orders of magnitude larger at init (measured: 3.4 decades on a ResNet-50). A gradient too
    small is not corrected that way (only weight decay would shrink the weights), so the
    vanishing verdict keeps these layers. Normalisations written with tensor ops count as
    normalisation layers, and a layer whose weight is standardised in its own forward is
    scale-invariant by itself (archlint.analysis.normalisation)."""
    verdict: dict[Node, bool] = {}
    by_hand = {m: h for h in hand_written_norms(graph).values() for m in h.members | {h.node}}

    def normalised(node: Node, depth: int = 0) -> bool:
        if node in verdict:
            return verdict[node]
        if depth > 200 or not node.users:
            return False
        ok = True
        for u in node.users:
            if u.kind == Kind.NORM or (u in by_hand and (node is by_hand[u].base or
                                                          node in by_hand[u].members)):
                continue
            if u.kind in _SCALE_PASSTHROUGH or (u.kind == Kind.ACTIVATION and
                                                u.info is not None and u.info.homogeneous):
                if normalised(u, depth + 1):
                    continue
            ok = False
            break
        verdict[node] = ok
        return ok

    return {n.module_path for n in graph.nodes
            if n.is_weight_layer and n.module_path is not None and
            (normalised(n) or scale_free_weight(n))}


def _attribute(graph: Graph, estimate, start: Node, last_modules: set[str]
               ) -> list[tuple[str, float]]:
    """Walk the dominant gradient path from ``start`` to the output, summing node decades."""
    g2 = estimate.g2
    users: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        for p in n.grad_parents():
            users.setdefault(p, []).append(n)
    groups: dict[tuple[str, str], list[float]] = {}
    node, seen = start, set()
    while node is not None and node not in seen:
        seen.add(node)
        d = estimate.decades.get(node)
        if d is not None and node is not start:
            label = type(node.module).__name__ if node.module is not None else node.op
            prefix = (node.location_module or "").split(".")[0]
            groups.setdefault((label, prefix), []).append(d)
        if node.module_path in last_modules and node is not start:
            break
        candidates = users.get(node, [])
        node = max(candidates, key=lambda u: g2.get(u, 0.0), default=None)
    out = []
    for (label, prefix), values in groups.items():
        where = f" in {prefix}" if prefix else ""
        count = len(values)
        out.append((f"{count} {label}{where}", sum(values)))
    return sorted(out, key=lambda kv: -abs(kv[1]))
