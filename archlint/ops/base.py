"""What an op's estimate rule works with.

A rule (``Op.estimate``) is called once per node in forward order with the propagation state
(:class:`Propagation`: the statistics of the node's inputs, where to record weight gradients)
and sets the node's output statistics together with its backward rule -- a :class:`Backward`
object, so that, as in ``torch.autograd.Function``, what the forward computes and what the
backward needs sit side by side in the op's family module. The backward pass then calls each
node's rule once, in reverse order, with the gradient statistics that reached the node:

- ``go``: the per-element second moment of the gradient, ``E[(dL/dh)^2]``;
- ``gso``: its part shared by all positions of a sample (what global pooling broadcasts back);
- ``gsco``: the shared part whose sum over the batch is zero (after batch norm's backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from ..graph.ir import Kind, Node
from ..meanfield.signal import Sig


class Propagation(Protocol):
    """The state an estimate rule reads and writes (implemented by archlint.estimate)."""

    g2: dict[Node, float]
    gs: dict[Node, float]
    gsc: dict[Node, float]
    decades: dict[Node, float]
    #: Nodes whose gradient sums to zero over the batch and positions of each unit.
    centred: set[Node]
    #: Per weight layer: a factor on the gradient it passes to its input (per-channel gains
    #: downstream that its own weights undo, see archlint.ops.norms).
    rescale: dict[Node, float]
    #: Gradients concentrated on some positions (archlint.ops.positions): where, how much.
    selection: dict[Node, Any]
    g2_selected: dict[Node, float]
    #: Nodes whose backward rule placed the concentrated part itself.
    moved: set[Node]
    #: Positions with statistics of their own (a class token), per node (ops.positions).
    token: dict[Node, Any]
    #: Attention reading one node as queries, keys and values: the queries' share of what it
    #: passed to that node.
    query_share: dict[Node, float]
    backward_of: dict[Node, "Backward"]
    #: Custom autograd.Functions estimated with the backward gain they declare, by op.
    declared: dict[str, float]
    #: Per pre-activation node: the position-shared gradient after the activation times the
    #: squared mean curvature of the activation -- what makes a layer's weight gradient sum
    #: coherently over positions (see archlint.ops.linear.WeightBackward).
    stein: dict[Node, float]

    def s_in(self, node: Node, i: int = 0) -> Sig: ...

    def value(self, node: Node) -> Any: ...

    def numel(self, node: Node) -> int: ...

    def out(self, node: Node, sig: Any, backward: Optional["Backward"] = None) -> None: ...

    def note_unknown(self, node: Node) -> None: ...

    def add_weight_grad(self, module: Optional[str], mean_sq: float, count: int,
                        node: Node) -> None: ...

    def record(self, node: Node, mean_sq: float) -> None: ...

    def try_running(self, node: Node) -> bool: ...

    def carries_signal(self, node: Node) -> bool: ...


class Backward:
    """How a node passes the gradient statistics that reached it on to its inputs."""

    #: Rules fed per output item (tuple-valued nodes) run even when ``go`` is zero.
    per_item = False

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class Gains(Backward):
    """Per-input multipliers of the per-element gradient second moment.

    ``entries``: ``(input index, gain)``, the shared parts following the same gain; or
    ``(input index, gain, gain of the shared part, gain of gs[, part of the rest that becomes
    shared])`` when the shared part is passed on differently (attention). ``shared``:
    explicit rules for the position-shared part, ``(input index, a, b)``:
    ``gs_in += a * gso + b * go``.
    """

    entries: list[tuple]
    shared: Optional[list[tuple[int, float, float]]] = None

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        if go <= 0.0:
            return
        g2, gs, gsc = prop.g2, prop.gs, prop.gsc
        allowed = set(node.grad_parents())
        rules = self.shared
        coh = min(gso + gsco, go)
        for entry in self.entries:
            idx, gain = entry[0], entry[1]
            if idx >= len(node.inputs):
                continue
            parent = node.inputs[idx]
            if parent not in allowed:
                continue
            if len(entry) >= 4:
                g2[parent] = g2.get(parent, 0.0) + gain * (go - coh) + entry[2] * coh
                gs[parent] = gs.get(parent, 0.0) + entry[3] * gso + (
                    entry[4] * (go - coh) if len(entry) > 4 else 0.0)
                gsc[parent] = gsc.get(parent, 0.0) + entry[3] * gsco
                continue
            g2[parent] = g2.get(parent, 0.0) + go * gain
            if rules is None:
                gs[parent] = gs.get(parent, 0.0) + gso * gain
                gsc[parent] = gsc.get(parent, 0.0) + gsco * gain
            if gain > 0:
                prop.decades[node] = 0.5 * math.log10(gain)
        gains = {e[0]: e[1] for e in self.entries if len(e) == 2}
        for idx, a, b in rules or ():
            if idx < len(node.inputs) and node.inputs[idx] in allowed:
                parent = node.inputs[idx]
                # the shared part is a part of the gradient: never more than what was passed
                cap = gains.get(idx, float("inf")) * go
                shared_c = min(a * gsco, cap)
                gs[parent] = gs.get(parent, 0.0) + min(a * gso + b * go, cap - shared_c)
                gsc[parent] = gsc.get(parent, 0.0) + shared_c
        _pass_stein(prop, node)


def _pass_stein(prop: Propagation, node: Node) -> None:
    """Views and bias additions keep a pre-activation what it was: pass its curvature term on to
    the layer that computed it."""
    amount = prop.stein.get(node)
    if not amount:
        return
    data = [i for i in node.inputs if i.kind not in (Kind.PARAM, Kind.CONSTANT)]
    if len(data) != 1:
        return
    if node.kind == Kind.ADD or (node.kind == Kind.RESHAPE and node.shape is not None and
                                 data[0].shape is not None and
                                 math.prod(node.shape) == math.prod(data[0].shape)):
        prop.stein[data[0]] = prop.stein.get(data[0], 0.0) + amount


def passthrough(prop: Propagation, node: Node, unknown: bool = False) -> None:
    """The value passes unchanged (a selection or broadcast: each input element's gradient is
    the sum over its copies). ``unknown``: an op without a formula, reported by name."""
    if unknown:
        prop.note_unknown(node)
    x = prop.s_in(node)
    n = prop.numel(node)
    ratio = n / max(x.numel, 1)
    prop.out(node, Sig(x.q, x.m, x.s, n).with_w(x.w_),
             Gains([(0, ratio)] if node.inputs else []))


#: The attribute a custom ``torch.autograd.Function`` may carry to declare its backward gain
#: (``|dL/dx| / |dL/dy|``) for when it cannot be run alone.
DECLARED_GAIN = "archlint_backward_gain"


def declared_gain(node: Node) -> Optional[float]:
    """The backward gain a custom autograd.Function declares (see :data:`DECLARED_GAIN`)."""
    cls = getattr(node.attrs.get("call"), "cls", None)
    gain = getattr(cls, DECLARED_GAIN, None) if cls is not None else None
    if isinstance(gain, (int, float)) and not isinstance(gain, bool) and math.isfinite(gain):
        return float(gain)
    return None


def unknown(prop: Propagation, node: Node) -> None:
    """The rule of an op the estimate has no formula for: run it alone when that can be done
    faithfully (archlint.ops.opaque); else a custom autograd.Function's declared backward gain;
    else pass the value through and report the op."""
    if prop.try_running(node):
        return
    gain = declared_gain(node)
    if gain is not None:
        passthrough(prop, node)
        prop.backward_of[node] = Gains([(i, gain * gain) for i in range(len(node.inputs))])
        prop.declared[node.op] = gain
        return
    passthrough(prop, node, unknown=True)


def kw(node: Node, name: str, pos: int, default: Any) -> Any:
    """A constant argument of a call, by keyword or position (nodes are not constants)."""
    kwargs = node.attrs.get("kwargs") or {}
    if isinstance(kwargs, dict) and name in kwargs:
        v = kwargs[name]
        return v if not isinstance(v, Node) else default
    args = node.attrs.get("args") or ()
    if isinstance(args, (list, tuple)) and len(args) > pos:
        v = args[pos]
        return v if not isinstance(v, Node) else default
    return default


def scalars(node: Node) -> list[float]:
    """The plain numbers among a call's positional arguments."""
    return [a for a in (node.attrs.get("args") or ())
            if isinstance(a, (int, float)) and not isinstance(a, bool)]
