"""Candidate fixes for a finding: where it is in the graph, and what could be changed there.

Each rule's finding is located back in the graph from the facts the rule read (the saturating
run of AL101, the unnormalised run of AL102, the deepest layer of AL103, the layers of AL104,
the dominant gradient path of AL105/AL106). Then the generic generators propose changes over
those nodes -- never anything specific to one model:

- ``replace-activation``: the saturating activations become ReLU (or GELU), and the weight layers
  that feed them get He init;
- ``insert-normalization``: LayerNorm (sequences, MLPs; BatchNorm1d for flat MLP features too) or
  BatchNorm/GroupNorm (convolutions) after each weight layer of the stack;
- ``add-skip``: identity skips ``x + f(x)`` around each block between two consecutive weight
  layers whose inputs have the same shape;
- ``reinitialize``: He (before ReLU-family activations) or LeCun (otherwise), or orthogonal;
- ``zero-init-residual``: the last layer (or normalisation scale) of every residual branch at 0;
- ``norm-scale``: a normalisation scale that is all zero back to 1.

Another rule adds its own generator with :func:`register` (a rule's code -> a function of the
finding and the :class:`Context`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from ..graph.metainit import Dist, is_meta, meta_like

from ..analysis import GraphFacts
from ..analysis.init_stats import LayerInit
from ..analysis.structure import INF, longest_plain_stretch, plain_stretch, walk_run
from ..estimate import GradientFacts
from ..graph.ir import Graph, Kind, Node
from ..paths import display_path
from ..results import Finding
from ..rules.base import describe_ops
from . import graphedit
from .plan import SCHEMES, Action, Candidate, initializer, norm_for


@dataclass
class Context:
    graph: Graph
    facts: GraphFacts
    gradient: Optional[GradientFacts]


Generator = Callable[[Finding, Context], list[Candidate]]
GENERATORS: dict[str, Generator] = {}


def register(code: str) -> Callable[[Generator], Generator]:
    def wrap(fn: Generator) -> Generator:
        GENERATORS[code] = fn
        return fn
    return wrap


def candidates_for(finding: Finding, ctx: Context) -> list[Candidate]:
    gen = GENERATORS.get(finding.code)
    if gen is None:
        return []
    return [c for c in gen(finding, ctx) if c.actions]


# --------------------------------------------------------------------------- locating

def _at_site(finding: Finding, node: Node) -> bool:
    site = node.site
    if site is None or finding.path is None:
        return finding.module is not None and node.location_module == finding.module
    return (display_path(Path(site.path)) == finding.path and site.line == finding.line
            and (finding.column is None or site.column == finding.column))


def producer(node: Node) -> Optional[Node]:
    """The weight layer whose output reaches ``node``'s data input through views, dropout and
    bias additions only."""
    cur = node.inputs[0] if node.inputs else None
    while cur is not None:
        if cur.kind in (Kind.LINEAR, Kind.CONV):
            return cur
        if cur.kind in (Kind.RESHAPE, Kind.DROPOUT) or (
                cur.kind in (Kind.ADD, Kind.MUL) and
                len([i for i in cur.inputs if i.kind not in (Kind.PARAM, Kind.CONSTANT)]) == 1):
            data = [i for i in cur.inputs if i.kind not in (Kind.PARAM, Kind.CONSTANT)]
            cur = data[0] if data else None
            continue
        return None
    return None


def _editable_layer(node: Node) -> bool:
    return node.kind in (Kind.LINEAR, Kind.CONV) and node.attrs.get("derived_weight") is None \
        and node.weight() is not None


def following_layer(node: Node, facts: GraphFacts) -> Optional[Node]:
    """The next weight layer the easiest gradient path leads to from ``node`` (forward)."""
    s = facts.structure
    cur = s.next_layer.get(node)
    while cur is not None:
        if s.counts_as_layer(cur):
            return cur
        cur = s.next_layer.get(cur)
    return None


def dominant_path(start: Node, gradient: GradientFacts, graph: Graph) -> list[Node]:
    """The nodes from ``start`` to the output along which most gradient comes back."""
    g2 = gradient.estimate.g2
    users: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        for p in n.grad_parents():
            users.setdefault(p, []).append(n)
    path, seen, node = [], set(), start
    while node is not None and node not in seen:
        seen.add(node)
        path.append(node)
        node = max(users.get(node, []), key=lambda u: g2.get(u, 0.0), default=None)
    return path


def _unique(nodes: Iterable[Optional[Node]]) -> list[Node]:
    out, seen = [], set()
    for n in nodes:
        if n is not None and n not in seen:
            seen.add(n)
            out.append(n)
    return out


# --------------------------------------------------------------------------- wording

def _where(nodes: list[Node]) -> str:
    prefixes = {(n.location_module or "").split(".")[0] for n in nodes}
    if len(prefixes) == 1:
        (p,) = prefixes
        return f" in {p}" if p else ""
    return ""


def _what(nodes: list[Node]) -> str:
    names = _names(nodes)
    if len(names) == 1 and len(nodes) == 1:
        label = type(nodes[0].module).__name__ if nodes[0].module is not None else nodes[0].op
        return f"{label} {names[0]}" if names[0] else label
    return f"{describe_ops(nodes)}{_where(nodes)}"


def _names(nodes: Iterable[Node]) -> list[str]:
    return _unique_str(n.location_module or n.name for n in nodes)


def _unique_str(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _init_of(facts: GraphFacts) -> dict[Node, LayerInit]:
    return {li.node: li for li in facts.init.layers}


def _sources(nodes: list[Node], edit: str, graph: Graph, **extra) -> list[dict]:
    """Where the source says what each node is (its site), for ``--diff``. ``whole``: every
    node of the graph defined at that site is among ``nodes`` (an edit there changes no other
    layer)."""
    chosen = {id(n.module) if n.module is not None else id(n) for n in nodes}
    out = []
    for n in nodes:
        if n.site is None:
            continue
        same = [m for m in graph.nodes if m.site == n.site and m.op == n.op]
        entry = {"edit": edit, "path": n.site.path, "line": n.site.line,
                 "column": n.site.column, "module": n.module_path,
                 "function": n.attrs.get("function") if n.module is None else None,
                 "class": type(n.module).__name__ if n.module is not None else None,
                 "op": n.op, "whole": all((id(m.module) if m.module is not None else id(m))
                                          in chosen for m in same)}
        entry.update(extra)
        out.append(entry)
    return out


# --------------------------------------------------------------------------- generators

_SWAPS = (("relu", "ReLU", 0), ("gelu", "GELU", 1))


def swap_activations(acts: list[Node], ctx: Context) -> list[Candidate]:
    """The saturating activations become ReLU / GELU; the layers feeding them get He init."""
    acts = [a for a in acts if a.is_saturating]
    if not acts:
        return []
    feeding = [p for p in _unique(producer(a) for a in acts) if _editable_layer(p)]
    out = []
    for op, label, rank in _SWAPS:
        actions = [Action("activation", a, op=op) for a in acts]
        for layer in feeding:
            t = initializer(layer, "he")
            if t is not None:
                actions.append(Action("weight", layer, tensor=t))
        out.append(Candidate(
            kind="replace-activation",
            description=f"replace the {_what(acts)} with {label} + He init",
            modules=_names(acts),
            parameters={"activation": label, "init": "he", "layers": _names(feeding)},
            actions=actions, rank=rank,
            source=_sources(acts, "activation", ctx.graph, to=op) + _sources(
                [n for n in feeding if initializer(n, "he") is not None], "init", ctx.graph,
                scheme="he")))
    return out


def insert_norms(layers: list[Node], ctx: Context, rank: int = 10) -> list[Candidate]:
    """A normalisation layer after each weight layer (not the output layers)."""
    s = ctx.facts.structure
    init = _init_of(ctx.facts)
    layers = [n for n in layers if n.kind in (Kind.LINEAR, Kind.CONV)
              and s.layers_to_output.get(n, INF) > 0
              and (init.get(n) is None or init[n].next_activation != "norm")]
    if not layers:
        return []
    conv = any(n.kind == Kind.CONV for n in layers)
    families = ("batch", "group") if conv else ("layer", "batch")
    out = []
    for k, family in enumerate(families):
        fits = [(n, norm_for(n, family)) for n in layers]
        if any(f is None for _, f in fits):
            continue
        names = _unique_str(f[0] for _, f in fits)
        actions = [Action("norm_after", n, op=f[1], make=f[2]) for n, f in fits]
        out.append(Candidate(
            kind="insert-normalization",
            description=f"insert {'/'.join(names)} after the {_what(layers)}",
            modules=_names(layers), parameters={"norm": "/".join(names), "after": _names(layers)},
            actions=actions, rank=rank + k))
    return out


def _entry(layer: Node) -> Node:
    """Where a block starting at ``layer`` begins: before the normalisation that feeds only it
    (a pre-LN block's skip starts before its LayerNorm)."""
    cur = layer
    while True:
        k = graphedit.data_input(cur)
        src = cur.inputs[k] if k < len(cur.inputs) else None
        if src is None or src.kind != Kind.NORM or \
                len(src.users) != 1 or not src.inputs:
            return cur
        cur = src


def _input_shape(node: Node) -> Optional[tuple]:
    k = graphedit.data_input(node)
    return node.inputs[k].shape if k < len(node.inputs) else None


def add_skips(layers: list[Node], ctx: Context, rank: int = 20) -> list[Candidate]:
    """Identity skips around blocks of consecutive weight layers: each block runs from a layer
    to the next layer whose input has the same shape, and that layer's input gets the block's
    input added."""
    layers = [n for n in layers if n.is_weight_layer and n.kind != Kind.EMBEDDING]
    entries = [_entry(n) for n in layers]
    pairs, members = [], []
    i = 0
    while i < len(layers):
        sa = _input_shape(entries[i])
        j = next((j for j in range(i + 1, len(layers))
                  if sa is not None and _input_shape(entries[j]) == sa), None)
        if j is None:
            i += 1
            continue
        if entries[i] is not entries[j]:
            pairs.append((entries[i], entries[j]))
            members.append(layers[i:j])
        i = j
    if not pairs:
        return []
    blocks = [a for a, _ in pairs]
    where = _where(blocks)
    count = f"{len(pairs)} block{'s' if len(pairs) != 1 else ''}{where}"
    params = {"blocks": [[a.location_module or a.name, b.location_module or b.name]
                         for a, b in pairs]}
    skips = [Action("skip", a, other=b) for a, b in pairs]
    out = [Candidate(kind="add-skip",
                     description=f"add identity skips (x + f(x)) around {count}",
                     modules=_names(blocks), parameters=params, actions=skips, rank=rank)]
    # SkipInit / Fixup: each new branch's layer starts at zero, the network at the identity
    zeroed = _unique(next((n for n in reversed(m) if _editable_layer(n)), None)
                     for m in members)
    if zeroed:
        out.append(Candidate(
            kind="add-skip",
            description=f"add identity skips (x + f(x)) around {count}, each block's layer "
                        "zero-initialised",
            modules=_names(blocks), parameters={**params, "init": "zeros"},
            actions=skips + [Action("weight", a, tensor=_zeros_of(a)) for a in zeroed],
            rank=rank + 1))
    return out


def _zeros_of(node: Node) -> Callable[[], torch.Tensor]:
    w = node.weight()
    return lambda: _zeros_like(w)


def _zeros_like(t: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """A constant tensor shaped as ``t`` (on the meta device, with its distribution, for a
    large weight of a model built there)."""
    if is_meta(t):
        return meta_like(t, Dist(value, 0.0))
    return torch.full(t.shape, value, dtype=t.dtype)


def reinitialize(layers: list[Node], ctx: Context, schemes=("fit",),
                 rank: int = 30) -> list[Candidate]:
    """He init before ReLU-family activations, LeCun before the others ("fit"), or
    orthogonal with the matching gain."""
    init = _init_of(ctx.facts)
    layers = [n for n in layers if _editable_layer(n)]
    if not layers:
        return []
    out = []
    for k, scheme in enumerate(schemes):
        actions, used, sources = [], set(), []
        for n in layers:
            li = init.get(n)
            target = li.target_sigma_w2 if li is not None else 1.0
            chosen = scheme if scheme != "fit" else ("he" if target > 1.0 else "lecun")
            t = initializer(n, chosen, target)
            if t is None:
                continue
            used.add(SCHEMES[chosen][0])
            actions.append(Action("weight", n, tensor=t))
            sources += _sources([n], "init", ctx.graph, scheme=chosen, gain=target ** 0.5)
        if not actions:
            continue
        label = "/".join(sorted(used))
        out.append(Candidate(
            kind="reinitialize",
            description=f"re-initialise the {_what(layers)} with {label} init",
            modules=_names(layers),
            parameters={"init": scheme if scheme != "fit" else label.lower(),
                        "layers": _names(layers)},
            actions=actions, rank=rank + k, source=sources))
    return out


def zero_init_branches(ctx: Context, rank: int = 40) -> list[Candidate]:
    """The last layer (or normalisation scale) of every residual branch initialised to zero."""
    s = ctx.facts.structure
    ends: list[Node] = []
    for join in s.skip_joins:
        if join.kind != Kind.ADD or len(join.inputs) < 2:
            continue
        depth = sorted(((s.longest_before.get(i, 0), k) for k, i in enumerate(join.inputs)),
                       reverse=True)
        if depth[0][0] == depth[1][0]:
            continue
        end = _branch_end(join.inputs[depth[0][1]])
        if end is not None:
            ends.append(end)
    ends = _unique(ends)
    if not ends:
        return []
    actions = []
    for n in ends:
        if n.kind == Kind.NORM:
            gamma = getattr(n.module, "weight", None)
            actions.append(Action("norm_scale", n, tensor=_zeros_like(gamma.detach())))
        else:
            actions.append(Action("weight", n, tensor=_zeros_like(n.weight().detach())))
    return [Candidate(
        kind="zero-init-residual",
        description=f"zero-initialise the last layer of the {len(ends)} residual branch"
                    f"{'es' if len(ends) != 1 else ''}{_where(ends)}",
        modules=_names(ends), parameters={"layers": _names(ends)}, actions=actions, rank=rank,
        source=_sources([n for n in ends if n.kind != Kind.NORM], "init", ctx.graph,
                        scheme="zeros"))]


def _branch_end(node: Node) -> Optional[Node]:
    cur: Optional[Node] = node
    while cur is not None:
        if cur.kind == Kind.NORM and cur.module is not None and \
                isinstance(getattr(cur.module, "weight", None), torch.Tensor):
            return cur
        if _editable_layer(cur):
            return cur
        if cur.kind in (Kind.ACTIVATION, Kind.RESHAPE, Kind.DROPOUT, Kind.POOL) or (
                cur.kind in (Kind.ADD, Kind.MUL) and
                len([i for i in cur.inputs if i.kind not in (Kind.PARAM, Kind.CONSTANT)]) == 1):
            data = [i for i in cur.inputs if i.kind not in (Kind.PARAM, Kind.CONSTANT)]
            cur = data[0] if data else None
            continue
        return None
    return None


# --------------------------------------------------------------------------- per rule

def _saturating_chain(finding: Finding, ctx: Context) -> list[Node]:
    s = ctx.facts.structure
    starts = [n for n in ctx.graph.nodes if n.is_saturating and _at_site(finding, n)
              and s.saturating_run.get(n, INF) < INF]
    if not starts:
        return []
    start = max(starts, key=lambda n: s.saturating_run[n])
    return [n for n in walk_run(start, s.next_saturating, stop_kind=Kind.NORM)
            if n.is_saturating]


@register("AL101")
def _al101(finding: Finding, ctx: Context) -> list[Candidate]:
    chain = _saturating_chain(finding, ctx)
    if not chain:
        return []
    feeding = _unique(producer(a) for a in chain)
    blocks = list(feeding)
    after = following_layer(chain[-1], ctx.facts)
    if after is not None:
        blocks.append(after)
    return (swap_activations(chain, ctx) + insert_norms(feeding, ctx)
            + add_skips(_unique(blocks), ctx))


@register("AL102")
def _al102(finding: Finding, ctx: Context) -> list[Candidate]:
    s = ctx.facts.structure
    starts = [n for n in ctx.graph.nodes if s.counts_as_layer(n) and _at_site(finding, n)
              and s.unnormalised_run.get(n, INF) < INF]
    if not starts:
        return []
    start = max(starts, key=lambda n: s.unnormalised_run[n])
    layers = [n for n in walk_run(start, s.next_unnormalised, stop_kind=Kind.NORM)
              if s.counts_as_layer(n)]
    return insert_norms(layers, ctx) + add_skips(layers, ctx)


@register("AL103")
def _al103(finding: Finding, ctx: Context) -> list[Candidate]:
    s = ctx.facts.structure
    worst = longest_plain_stretch(s, ctx.graph.nodes)
    if worst is None:
        return []
    return add_skips(plain_stretch(s, worst), ctx)


@register("AL104")
def _al104(finding: Finding, ctx: Context) -> list[Candidate]:
    problem = finding.data.get("problem")
    if problem == "zero-norm-scale":
        norms = [ni.node for ni in ctx.facts.init.norms
                 if ni.zero_scale and _at_site(finding, ni.node) and ni.node.module is not None]
        norms = [n for n in norms if isinstance(getattr(n.module, "weight", None), torch.Tensor)]
        if not norms:
            return []
        return [Candidate(
            kind="norm-scale", description=f"set the scale of the {_what(norms)} to 1",
            modules=_names(norms), parameters={"value": 1.0},
            actions=[Action("norm_scale", n, tensor=_zeros_like(n.module.weight.detach(), 1.0))
                     for n in norms])]
    if problem == "stack-scale":
        names = set(finding.data.get("layers") or ())
        layers = [li.node for li in ctx.facts.init.layers if li.node.location_module in names]
    else:
        layers = [li.node for li in ctx.facts.init.layers if _at_site(finding, li.node)]
    return reinitialize(layers, ctx, schemes=("fit", "orthogonal"))


def _flow_region(flow, ctx: Context) -> tuple[list[Node], list[Node]]:
    """The weight layers and the activations on the dominant gradient path of a verdict."""
    if flow is None or flow.first_node is None or ctx.gradient is None:
        return [], []
    s = ctx.facts.structure
    path = dominant_path(flow.first_node, ctx.gradient, ctx.graph)
    layers = [n for n in path if s.counts_as_layer(n)]
    acts = [n for n in path if n.kind == Kind.ACTIVATION]
    return layers, acts


@register("AL105")
def _al105(finding: Finding, ctx: Context) -> list[Candidate]:
    layers, acts = _flow_region(ctx.gradient.vanishing if ctx.gradient else None, ctx)
    if not layers:
        return []
    return (swap_activations(acts, ctx) + insert_norms(layers, ctx) + add_skips(layers, ctx)
            + reinitialize(layers, ctx))


@register("AL110")
def _al110(finding: Finding, ctx: Context) -> list[Candidate]:
    """Dead ReLU units (a shifted bias, a norm's shift): biases (or the norm's shift) at zero,
    or an activation that passes gradient where ReLU passes none."""
    from ..rules.dead_units import DEAD_OPS, dead_input

    names = {d.get("module") for d in finding.data.get("layers") or () if isinstance(d, dict)}
    layers = [n for n in ctx.graph.nodes if n.kind in (Kind.LINEAR, Kind.CONV, Kind.NORM)
              and n.module is not None and n.module_path in names]
    acts = [n for n in ctx.graph.nodes if n.kind == Kind.ACTIVATION
            and n.op in DEAD_OPS and dead_input(n) in layers]
    out = []
    biased = [n for n in _unique(layers) if isinstance(getattr(n.module, "bias", None),
                                                       torch.Tensor)]
    if biased:
        norms = all(n.kind == Kind.NORM for n in biased)
        what = "shifts (beta)" if norms else "biases"
        out.append(Candidate(
            kind="reinitialize", description=f"initialise the {what} of the {_what(biased)} at 0",
            modules=_names(biased), parameters={"init": "zeros", "parameter": "bias",
                                                "layers": _names(biased)},
            actions=[Action("bias", n, tensor=_zeros_like(n.module.bias.detach()))
                     for n in biased],
            source=_sources(biased, "init", ctx.graph, scheme="zeros", parameter="bias")))
    for k, (op, label) in enumerate((("leaky_relu", "LeakyReLU"), ("gelu", "GELU"))):
        if acts:
            out.append(Candidate(
                kind="replace-activation", description=f"replace the {_what(acts)} with {label}",
                modules=_names(acts), parameters={"activation": label, "layers": []},
                actions=[Action("activation", a, op=op) for a in acts], rank=k + 1,
                source=_sources(acts, "activation", ctx.graph, to=op)))
    return out


@register("AL106")
def _al106(finding: Finding, ctx: Context) -> list[Candidate]:
    layers, acts = _flow_region(ctx.gradient.exploding if ctx.gradient else None, ctx)
    if not layers:
        return []
    return (reinitialize(layers, ctx, schemes=("fit", "orthogonal")) + insert_norms(layers, ctx)
            + swap_activations(acts, ctx)
            + zero_init_branches(ctx) + add_skips(layers, ctx))
