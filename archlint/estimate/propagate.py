"""Predict every layer's weight-gradient RMS at initialisation, without a backward pass.

Mean-field propagation over the traced graph. Forward, each tensor carries the statistics of
:class:`~archlint.meanfield.signal.Sig`; every op's rule (its row in :mod:`archlint.ops`) sets
its output statistics and the backward rule that goes with them. Backward, each tensor carries
``g2 = E[(dL/dh)^2]`` per element, starting from the probe's ``1/numel(y)`` at the output, plus
the parts of it shared by the positions of a sample; fan-out adds the users' contributions. A
weight layer's gradient is the sum over rows of outer products of its output gradient and its
input: ``grad_rms = sqrt(rows * g2_out * q_in)`` plus what the rows share.

An op the estimate has no formula for is passed through unchanged *and reported by name*
(:attr:`Estimate.unknown_ops`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ..analysis.normalisation import hand_written_norms
from ..graph.derived import PARAM_ONLY
from ..graph.ir import Graph, Kind, Node
from ..graph.metainit import is_meta, real
from ..meanfield.signal import Sig, mean, mean_sq, numel
from ..ops import op_info
from ..ops.base import Backward, Gains, unknown
from ..ops.opaque import estimate_by_running
from ..ops.positions import carry_selection, carry_token
from ..ops.selfnorm import estimate_hand_norm


@dataclass
class Estimate:
    grad_rms: dict[str, float]
    sig: dict[Node, Any]
    g2: dict[Node, float]
    #: log10 of the backward per-element gain of each node (how much it scales g2, halved).
    decades: dict[Node, float]
    unknown_ops: dict[str, int]
    #: Forward-order position of each layer's first use (for "earliest"/"last" layers).
    order: dict[str, int]
    #: Layers whose gradient mostly crossed an op without a formula (or that only such an op
    #: could have given one): their estimate says nothing, no verdict reads them.
    uncertain: set[str] = field(default_factory=set)
    #: Ops without a formula estimated by running them alone (archlint.ops.opaque), by name.
    ran: dict[str, int] = field(default_factory=dict)
    #: Custom autograd.Functions estimated with the backward gain they declare, by op.
    declared: dict[str, float] = field(default_factory=dict)


class Propagation:
    """The state of one estimate: what every rule reads and writes (see archlint.ops.base)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.sig: dict[Node, Any] = {}  # Sig, or a list of Sig for tuple-valued nodes
        self.backward_of: dict[Node, Backward] = {}
        self.g2: dict[Node, float] = {}
        self.gs: dict[Node, float] = {}
        #: Coherent gradient whose sum over the batch is zero (after a batch-norm backward):
        #: it pairs with the per-sample fluctuation of the input, not its per-unit mean.
        self.gsc: dict[Node, float] = {}
        #: Per-item gradients of tuple-valued nodes.
        self.items: dict[Node, dict[int, float]] = {}
        self.decades: dict[Node, float] = {}
        self.stein: dict[Node, float] = {}
        #: Nodes whose gradient sums to zero over the batch and positions of each unit (all
        #: of it comes through a batch norm's backward).
        self.centred: set[Node] = set()
        self.rescale: dict[Node, float] = {}
        #: Gradients concentrated on some positions (a class token read alone): where, and how
        #: much of each node's g2 is there (archlint.ops.positions).
        self.selection: dict[Node, Any] = {}
        #: Attention reading one node as queries, keys and values: the queries' share of the
        #: gradient it passed to that node (only that share keeps the positions).
        self.query_share: dict[Node, float] = {}
        self.g2_selected: dict[Node, float] = {}
        self.moved: set[Node] = set()
        #: Positions whose statistics differ from the others' (a tiny class token in front of
        #: the patches), kept through per-position ops (archlint.ops.positions).
        self.token: dict[Node, Any] = {}
        self.unknown: dict[str, int] = {}
        #: Ops without a formula that were estimated by running them alone.
        self.ran: dict[str, int] = {}
        self.declared: dict[str, float] = {}
        self.unknown_nodes: set[Node] = set()
        #: Part of each node's g2 that crossed an op without a formula.
        self.unknown_g2: dict[Node, float] = {}
        #: Nodes an op without a formula may have owed gradient to.
        self.behind_unknown: set[Node] = set()
        self.weight_sq: dict[str, float] = {}  # module -> sum over uses of E[grad^2]*numel
        #: module -> {parameter key: number of entries}: a parameter used several times
        #: (shared layers, time steps) counts once.
        self.weight_numel: dict[str, dict[Any, int]] = {}
        self.order: dict[str, int] = {}
        self._signal: dict[Node, bool] = {}
        self._index = {n: k for k, n in enumerate(graph.nodes)}
        #: Normalisations written with tensor ops, estimated whole (archlint.ops.selfnorm).
        self.hand_norms = hand_written_norms(graph)

    # ----------------------------------------------------------------------- for the rules
    def value(self, node: Node) -> Any:
        return self.sig.get(node)

    def s_in(self, node: Node, i: int = 0) -> Sig:
        if i >= len(node.inputs):
            return Sig(1.0, 0.0, 0.0, 1)
        v = self.sig.get(node.inputs[i])
        if isinstance(v, list):
            v = v[0] if v else None
        return v if isinstance(v, Sig) else Sig(1.0, 0.0, 0.0, numel(node.inputs[i].shape))

    def numel(self, node: Node) -> int:
        return numel(node.shape)

    def out(self, node: Node, sig: Any, backward: Optional[Backward] = None) -> None:
        self.sig[node] = sig
        if backward is not None:
            self.backward_of[node] = backward

    def note_unknown(self, node: Node) -> None:
        if not self._carries_signal(node) or node.attrs.get(PARAM_ONLY):
            # index arithmetic, position tables, masks: nothing to propagate; a weight computed
            # from parameters is recomputed for real by the layer that reads it
            return
        self.unknown[node.op] = self.unknown.get(node.op, 0) + 1
        self.unknown_nodes.add(node)

    def carries_signal(self, node: Node) -> bool:
        """Does the value depend on the model's inputs or trainable parameters?"""
        return self._carries_signal(node)

    def _carries_signal(self, node: Node) -> bool:
        """Does the value depend on the model's inputs or trainable parameters?"""
        cached = self._signal.get(node)
        if cached is not None:
            return cached
        if node.kind == Kind.INPUT:
            out = True
        elif node.kind == Kind.PARAM:
            out = node.tensor is not None and node.tensor.requires_grad
        elif node.module is not None and any(p.requires_grad for p in
                                             node.module.parameters(recurse=False)):
            out = True  # a layer's own weights (an embedding's output depends on them)
        else:
            out = any(self._carries_signal(i) for i in node.grad_parents())
        self._signal[node] = out
        return out

    def add_weight_grad(self, module: Optional[str], mean_sq_: float, count: int,
                        node: Node, key: Any = "layer") -> None:
        """Add one use's weight gradient (per-entry mean square over ``count`` entries of the
        parameter ``key`` of ``module``)."""
        if module is None:
            return
        self.weight_sq[module] = self.weight_sq.get(module, 0.0) + mean_sq_ * count
        self.weight_numel.setdefault(module, {}).setdefault(key, count)
        self.order.setdefault(module, self._index.get(node, 0))

    def record(self, node: Node, mean_sq_: float) -> None:
        """The weight gradient of a weight layer node (summed over its uses)."""
        if node.module_path is None:
            return
        w = node.weight()
        self.add_weight_grad(node.module_path, mean_sq_, w.numel() if w is not None else 1,
                             node)

    def _record_raw_parameters(self) -> None:
        """Parameters used directly as values (position embeddings, class tokens, a matrix
        added or multiplied in): their gradient is what reached their node."""
        for n in self.graph.nodes:
            t = n.tensor
            if n.kind == Kind.PARAM and t is not None and t.dim() >= 2 and t.requires_grad \
                    and self.g2.get(n, 0.0) > 0.0:
                self.add_weight_grad(n.module_path, self.g2[n], t.numel(), n, key=id(t))

    # ----------------------------------------------------------------------- the passes
    def run(self) -> Estimate:
        for node in self.graph.nodes:
            try:
                self.forward(node)
            except Exception:  # a formula failing on an odd node must not kill the estimate
                if _made_real(node):  # it read a meta weight's values: retry with them real
                    try:
                        self.forward(node)
                        continue
                    except Exception:
                        pass
                self.note_unknown(node)
                self.sig[node] = self.s_in(node) if node.inputs else Sig(0.0, 0.0, 0.0,
                                                                          self.numel(node))
                self.backward_of[node] = Gains([(i, 1.0) for i in range(len(node.inputs))])
        self.backward()
        self._record_raw_parameters()
        grad_rms = {}
        for mod, total in self.weight_sq.items():
            n = sum(self.weight_numel.get(mod, {}).values()) or 1
            grad_rms[mod] = math.sqrt(max(total, 0.0) / max(n, 1))
        for owners, count in self._tied_weights():
            total = sum(self.weight_sq.get(o, 0.0) for o in owners)
            for o in owners:
                if o in grad_rms:
                    grad_rms[o] = math.sqrt(max(total, 0.0) / max(count, 1))
        return Estimate(grad_rms=grad_rms, sig=self.sig, g2=self.g2, decades=self.decades,
                        unknown_ops=self.unknown, order=self.order, uncertain=self._uncertain(),
                        ran=self.ran, declared=self.declared)

    def _tied_weights(self) -> list[tuple[list[str], int]]:
        """Layers that share their weight matrix (an embedding tied to the output layer, one
        table for encoder and decoder): the parameter's gradient is the sum of its uses', and
        every layer that owns it reports that sum. Only layers whose one matrix is the shared
        one are grouped."""
        model = getattr(self.graph, "model", None)
        if model is None:
            return []
        owners: dict[int, tuple[list[str], int]] = {}
        for name, mod in model.named_modules():
            mats = [p for p in mod.parameters(recurse=False) if p.dim() >= 2]
            if len(mats) == 1 and mats[0].requires_grad:
                owners.setdefault(id(mats[0]), ([], mats[0].numel()))[0].append(name)
        return [(names, count) for names, count in owners.values()
                if len(names) > 1 and sum(n in self.weight_sq for n in names) > 1]

    def _uncertain(self) -> set[str]:
        out = set()
        for n in self.graph.nodes:
            if not n.is_weight_layer or n.module_path is None:
                continue
            g = self.g2.get(n, 0.0)
            if n in self.unknown_nodes or (g > 0 and self.unknown_g2.get(n, 0.0) > 0.5 * g) \
                    or (g <= 0 and n in self.behind_unknown):  # an unknown weight layer too
                out.add(n.module_path)
        return out

    def forward(self, node: Node) -> None:
        k = node.kind
        n = self.numel(node)
        if k == Kind.INPUT:
            if node.dtype is not None and not node.dtype.is_floating_point:
                self.sig[node] = Sig(0.0, 0.0, 0.0, n)  # ids: no signal, no gradient
            else:
                self.sig[node] = Sig(1.0, 0.0, 0.0, n)
            return
        if k == Kind.PARAM:
            t = node.tensor
            q = mean_sq(t) if t is not None else 0.0
            self.sig[node] = Sig(q, mean(t) if t is not None else 0.0, q, n)
            return
        if k == Kind.CONSTANT:
            self.sig[node] = Sig(0.0, 0.0, 0.0, n)
            return
        if k == Kind.OUTPUT:
            return
        if node.dtype is not None and not (node.dtype.is_floating_point or
                                           node.dtype.is_complex):
            # masks, ids, comparisons: a neutral multiplier, no gradient, nothing to report
            self.sig[node] = Sig(1.0, 1.0, 1.0, n)
            return
        hand = self.hand_norms.get(node)
        if hand is not None and estimate_hand_norm(self, hand):
            return
        row = op_info(node.op)
        if row is None or row.kind != k or row.estimate is None:
            unknown(self, node)
            return
        row.estimate(self, node)
        if self.token:
            carry_token(self, node, row.estimate)

    def try_running(self, node: Node) -> bool:
        """Estimate an op without a formula by running it alone (archlint.ops.opaque)."""
        if not self._carries_signal(node) or node.attrs.get(PARAM_ONLY):
            return False
        if not estimate_by_running(self, node):
            return False
        self.ran[node.op] = self.ran.get(node.op, 0) + 1
        return True

    def backward(self) -> None:
        out = self.graph.output
        if out is None:
            return
        self.g2 = {n: 0.0 for n in self.graph.nodes}
        self.g2[out] = 1.0 / max(self.numel(out), 1)
        for node in reversed(self.graph.nodes):
            go = self.g2.get(node, 0.0)
            unknown = node in self.unknown_nodes
            if unknown or (go <= 0.0 and node in self.behind_unknown):
                self.behind_unknown.update(node.grad_parents())
            rule = self.backward_of.get(node)
            if rule is None:
                continue
            gso, gsco = self.gs.get(node, 0.0), self.gsc.get(node, 0.0)
            if go <= 0.0 and not rule.per_item:
                continue
            before = {p: self.g2.get(p, 0.0) for p in node.inputs}
            rule.apply(self, node, go, gso, gsco, self.items.get(node, {}))
            added = {p: self.g2.get(p, 0.0) - b for p, b in before.items()}
            share = 1.0 if unknown else (self.unknown_g2.get(node, 0.0) / go if go > 0 else 0.0)
            if share > 0.0:
                for p, a in added.items():
                    if a > 0.0:
                        self.unknown_g2[p] = self.unknown_g2.get(p, 0.0) + a * share
            carry_selection(self, node, go, added)


def _made_real(node: Node) -> bool:
    """Make the meta tensors ``node`` reads real (model built on the meta device); True when
    there was one."""
    tensors = list(node.module.parameters(recurse=False)) if node.module is not None else []
    tensors += [i.tensor for i in node.inputs if i.kind == Kind.PARAM and i.tensor is not None]
    wp = node.attrs.get("weight_param")
    if isinstance(wp, Node) and wp.tensor is not None:
        tensors.append(wp.tensor)
    made = False
    for t in tensors:
        if is_meta(t):
            made = real(t) or made
    return made


def estimate_graph(graph: Graph) -> Estimate:
    """Run the estimate on a traced graph."""
    return Propagation(graph).run()
