"""Gradients that reach only some positions of a sequence.

A classifier that reads its class token (``x[:, 0]``) gives the gradient to one position of the
token stream; per-position layers (linear, layer norm, activations, residual additions) keep it
there, and only attention spreads it to the other positions. The average gradient over the
positions -- what the estimate carries -- is right for every weight layer (its gradient sums
over all positions anyway), but not where the positions part ways: at the concatenation that put
the class token in front of the patch tokens, the class token takes what was concentrated on its
position and the patches only the rest. So beside ``g2`` the estimate carries, per node, the part
of it concentrated on a set of positions along one axis (a :class:`Selection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..graph.ir import Kind, Node
from .base import Propagation


@dataclass(frozen=True)
class Selection:
    axis: int
    positions: frozenset[int]
    length: int


def selection_of_index(node: Node) -> Optional[Selection]:
    """The positions ``x[:, 0]`` / ``x[:, :k]`` keeps of a (batch, sequence, ...) tensor."""
    args = node.attrs.get("args") or ()
    shape = node.input_shapes[0] if node.input_shapes else None
    if len(args) < 2 or not shape or len(shape) < 3:
        return None
    index = args[1]
    if not isinstance(index, tuple) or len(index) < 2 or index[0] != slice(None):
        return None
    pick, length = index[1], shape[1]
    if isinstance(pick, int) and not isinstance(pick, bool):
        positions = {pick % length}
    elif isinstance(pick, slice):
        positions = set(range(*pick.indices(length)))
    else:
        return None
    if not positions or len(positions) >= length or any(i is not Ellipsis and i != slice(None)
                                                        for i in index[2:]):
        return None
    return Selection(1, frozenset(positions), length)


def _merge(prop: Propagation, node: Node, sel: Selection, amount: float) -> None:
    old = prop.selection.get(node)
    if old is not None and (old.axis, old.length) != (sel.axis, sel.length):
        prop.selection.pop(node, None)  # incompatible: treat as spread
        prop.g2_selected.pop(node, None)
        return
    prop.selection[node] = sel if old is None else Selection(
        sel.axis, old.positions | sel.positions, sel.length)
    prop.g2_selected[node] = prop.g2_selected.get(node, 0.0) + amount


def _keeps_positions(node: Node, parent: Node, axis: int) -> bool:
    k = node.kind
    if parent.kind in (Kind.PARAM, Kind.CONSTANT):
        return False
    if k in (Kind.DROPOUT, Kind.ADD, Kind.MUL, Kind.LINEAR):
        return parent.shape is not None and node.shape is not None and \
            len(parent.shape) > axis and tuple(parent.shape[:axis + 1]) == \
            tuple(node.shape[:axis + 1])
    if k == Kind.ACTIVATION:
        return node.op not in ("softmax", "softmin", "log_softmax")
    if k == Kind.NORM:
        return node.op in ("layer_norm", "rms_norm")
    if k == Kind.RESHAPE:
        return parent.shape is not None and node.shape is not None and \
            len(parent.shape) > axis and len(node.shape) > axis and \
            tuple(parent.shape[:axis + 1]) == tuple(node.shape[:axis + 1])
    if k == Kind.ATTENTION:
        return node.inputs and parent is node.inputs[0]  # the queries keep their positions
    return False


def carry_selection(prop: Propagation, node: Node, go: float, added: dict[Node, float]) -> None:
    """After ``node``'s backward: pass its concentrated part on to the inputs that keep the
    positions where they were."""
    sel = prop.selection.get(node)
    if sel is None or go <= 0.0 or node.kind == Kind.CONCAT:
        return
    share = min(prop.g2_selected.get(node, 0.0) / go, 1.0)
    if share <= 0.0:
        return
    for parent, amount in added.items():
        if amount > 0.0 and _keeps_positions(node, parent, sel.axis):
            if node.kind == Kind.ATTENTION:  # keys and values spread it over all positions
                amount *= prop.query_share.get(node, 1.0)
            _merge(prop, parent, sel, amount * share)


def start_selection(prop: Propagation, src: Node, sel: Selection, amount: float) -> None:
    """``src``'s gradient gained ``amount`` (per-element average) concentrated on ``sel``."""
    if amount > 0.0:
        _merge(prop, src, sel, amount)


def split_concat(prop: Propagation, node: Node, go: float, gains: list[float]
                 ) -> Optional[list[float]]:
    """Per-input g2 of a concatenation along an axis carrying a selection: the inputs holding
    the selected positions take what was concentrated there, the others only the rest."""
    sel = prop.selection.get(node)
    dim = _concat_dim(node)
    if sel is None or dim is None or dim != sel.axis:
        return None
    sizes = [i.shape[dim] if i.shape is not None and len(i.shape) > dim else None
             for i in node.inputs]
    if any(s is None for s in sizes) or sum(sizes) != sel.length:
        return None
    concentrated = min(prop.g2_selected.get(node, 0.0), go)
    spread = go - concentrated
    out, start = [], 0
    for size in sizes:
        inside = len([p for p in sel.positions if start <= p < start + size])
        per = spread + (concentrated * sel.length / len(sel.positions) * inside / size)
        out.append(per)
        start += size
    return out


def _concat_dim(node: Node) -> Optional[int]:
    from .base import kw

    dim = kw(node, "dim", 1, 0)
    if not isinstance(dim, int) or not node.shape:
        return None
    return dim % len(node.shape)

