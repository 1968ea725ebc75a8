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

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..graph.ir import Kind, Node
from ..meanfield.signal import Sig
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
    if 2 * len(sel.positions) > sel.length:
        # most positions (x[:, 1:]): the same as a level gradient everywhere and a deficit --
        # a negative concentration -- on the few others, so that it merges with what lies there
        rest = frozenset(range(sel.length)) - sel.positions
        amount = -amount * len(rest) / len(sel.positions)
        sel = Selection(sel.axis, rest, sel.length)
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
    if sel is None or go <= 0.0 or node.kind == Kind.CONCAT or node in prop.moved:
        return
    share = min(prop.g2_selected.get(node, 0.0) / go, 1.0)
    if share == 0.0:
        return
    for parent, amount in added.items():
        if amount <= 0.0:
            continue
        if _keeps_positions(node, parent, sel.axis):
            if node.kind == Kind.ATTENTION:  # keys and values spread it over all positions
                amount *= prop.query_share.get(node, 1.0)
            _merge(prop, parent, sel, amount * share)
            continue
        axis = _moved_axis(node, parent, sel.axis)
        if axis is not None:
            _merge(prop, parent, Selection(axis, sel.positions, sel.length), amount * share)


def _moved_axis(node: Node, parent: Node, axis: int) -> Optional[int]:
    """Where a transpose or permute took the selection's axis from (its parent's axis)."""
    if node.kind != Kind.RESHAPE or not node.inputs or parent is not node.inputs[0] or \
            not node.shape or parent.shape is None or len(parent.shape) != len(node.shape):
        return None
    nd = len(node.shape)
    args = [a for a in (node.attrs.get("args") or ())[1:]]
    if node.op in ("transpose", "swapaxes", "swapdims") and len(args) >= 2 and \
            all(isinstance(a, int) for a in args[:2]):
        a, b = args[0] % nd, args[1] % nd
        src = b if axis == a else a if axis == b else axis
    elif node.op == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        if len(dims) != nd or not all(isinstance(d, int) for d in dims):
            return None
        src = dims[axis] % nd
    else:
        return None
    return src if parent.shape[src] == node.shape[axis] else None


def pad_selection(prop: Propagation, node: Node, go: float) -> Optional[tuple[float, float]]:
    """``F.pad`` along the axis of a selection: the concentrated gradient on padded positions
    reaches nothing. Returns (per-element g2 of the input, its concentrated part), or None when
    the selection does not meet the padding."""
    sel = prop.selection.get(node)
    parent = node.inputs[0] if node.inputs else None
    pads = (node.attrs.get("args") or (None, None))[1] if len(
        node.attrs.get("args") or ()) > 1 else (node.attrs.get("kwargs") or {}).get("pad")
    if sel is None or parent is None or not node.shape or parent.shape is None or \
            not isinstance(pads, (list, tuple)) or not all(isinstance(p, int) for p in pads):
        return None
    k = len(node.shape) - 1 - sel.axis
    before = pads[2 * k] if len(pads) > 2 * k else 0
    inside = parent.shape[sel.axis] if len(parent.shape) > sel.axis else None
    if inside is None or sel.length != node.shape[sel.axis] or (
            before == 0 and len(pads) <= 2 * k + 1) or \
            (before == 0 and pads[2 * k + 1] == 0):
        return None
    kept = frozenset(p - before for p in sel.positions if 0 <= p - before < inside)
    concentrated = min(prop.g2_selected.get(node, 0.0), go)
    ratio = prop.numel(node) / max(prop.numel(parent), 1)
    on_kept = concentrated * len(kept) / max(len(sel.positions), 1)
    g2 = (go - concentrated + on_kept) * ratio
    if kept and len(kept) < inside:
        _merge(prop, parent, Selection(sel.axis, kept, inside), on_kept * ratio)
    prop.moved.add(node)
    return g2, on_kept * ratio


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
        out.append(max(per, 0.0))
        start += size
    return out


def _concat_dim(node: Node) -> Optional[int]:
    from .base import kw

    dim = kw(node, "dim", 1, 0)
    if not isinstance(dim, int) or not node.shape:
        return None
    return dim % len(node.shape)



# ------------------------------------------------------------------ positions of their own
#
# Forward, the positions concatenated in front of a sequence (a class token, a distillation
# token: a learned vector, often tiny) keep their own statistics through the per-position ops
# that follow -- up to the first attention, whose output at those positions mixes all values.
# A layer norm divides each position by its own spread, so its backward gain is far larger on a
# tiny class token than on the average position: that gain, not the average's, applies to the
# gradient that lies there.


@dataclass(frozen=True)
class Token:
    """Positions of a sequence whose statistics differ from the others' (per element)."""

    sel: Selection
    sig: Sig


def start_token(prop: Propagation, node: Node, sigs: list[Sig]) -> None:
    """A concatenation along the sequence axis of a (batch, sequence, ...) tensor: the inputs
    other than the longest hold positions of their own when their scale differs."""
    dim = _concat_dim(node)
    if dim != 1 or not node.shape or len(node.shape) < 3 or len(sigs) != len(node.inputs):
        return
    sizes = [i.shape[dim] if i.shape is not None and len(i.shape) > dim else None
             for i in node.inputs]
    if any(s is None for s in sizes) or len(sizes) < 2:
        return
    rest = max(range(len(sizes)), key=lambda k: sizes[k])
    length = sum(sizes)
    positions, start, own = set(), 0, []
    for k, size in enumerate(sizes):
        if k != rest:
            positions.update(range(start, start + size))
            own.append((size, sigs[k]))
        start += size
    if not positions or 2 * len(positions) >= length:
        return
    k = len(positions)
    tok = Sig(sum(n * s.q for n, s in own) / k, sum(n * s.m for n, s in own) / k,
              sum(n * s.s for n, s in own) / k, prop.numel(node))
    if any(s.w_ is not None for _, s in own):
        tok.with_w(sum(n * s.w for n, s in own) / k)
    r = sigs[rest].q
    if tok.q > 0 and r > 0 and 0.8 < tok.q / r < 1.25:
        return  # alike: nothing to keep apart
    prop.token[node] = Token(Selection(dim, frozenset(positions), length), tok)


class _TokenView:
    """The propagation state as an op's rule sees it at the token positions alone: its inputs'
    statistics there; the output it sets is kept, nothing else it writes reaches the estimate."""

    def __init__(self, prop: Propagation, sigs: dict[int, Sig]) -> None:
        self._prop = prop
        self._sigs = sigs
        self.result: Any = None
        self.backward_of: dict = {}
        self.rescale: dict = {}
        self.query_share: dict = {}
        self.stein: dict = {}
        self.declared: dict = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._prop, name)

    def s_in(self, node: Node, i: int = 0) -> Sig:
        s = self._sigs.get(i)
        if s is None:
            return self._prop.s_in(node, i)
        return Sig(s.q, s.m, s.s, s.numel).with_w(s.w_)

    def out(self, node: Node, sig: Any, backward: Any = None) -> None:
        self.result = sig

    def note_unknown(self, node: Node) -> None:
        pass

    def try_running(self, node: Node) -> bool:
        return False

    def add_weight_grad(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass


def _keeps_own_positions(node: Node, parent: Node, axis: int) -> bool:
    """Forward: does the node's output at the token positions depend only on the parent's
    values there (and on inputs alike at every position)?"""
    if node.kind == Kind.ATTENTION:
        return False  # each query's output mixes every position's values
    return bool(_keeps_positions(node, parent, axis))


def carry_token(prop: Propagation, node: Node, rule: Callable[[Any, Node], None]) -> None:
    """After ``node``'s forward rule: its statistics at the token positions of its inputs, by
    the same rule run on those positions' statistics."""
    if node.kind == Kind.CONCAT:
        return
    found = {k: prop.token[p] for k, p in enumerate(node.inputs) if p in prop.token}
    if not found:
        return
    sels = {t.sel for t in found.values()}
    if len(sels) != 1:
        return
    sel = next(iter(sels))
    if not all(_keeps_own_positions(node, node.inputs[k], sel.axis) for k in found):
        return
    sigs = {k: Sig(t.sig.q, t.sig.m, t.sig.s, prop.s_in(node, k).numel).with_w(t.sig.w_)
            for k, t in found.items()}
    view = _TokenView(prop, sigs)
    try:
        rule(view, node)
    except Exception:
        return
    if isinstance(view.result, Sig):
        prop.token[node] = Token(sel, view.result)


def token_read(prop: Propagation, node: Node, sel: Selection) -> Optional[Sig]:
    """``x[:, 0]`` reading the token positions of ``x``: their own statistics."""
    src = node.inputs[0] if node.inputs else None
    tok = prop.token.get(src) if src is not None else None
    if tok is None or tok.sel.axis != sel.axis or tok.sel.length != sel.length or \
            not sel.positions <= tok.sel.positions:
        return None
    return tok.sig


@dataclass(frozen=True)
class TokenGain:
    """A per-position op's backward gain at the token positions and at the others."""

    sel: Selection
    there: float
    elsewhere: float


def apply_token_gain(prop: Propagation, node: Node, go: float, gso: float, gsco: float,
                     tg: TokenGain) -> bool:
    """Pass the gradient through a per-position op whose gain differs at the token positions:
    what is concentrated there and their share of the rest take the gain there, the rest the
    gain elsewhere; the excess at the token positions stays concentrated on them. False when
    the gradient is concentrated elsewhere (the caller then applies its average gain)."""
    parent = node.inputs[0] if node.inputs else None
    if parent is None or parent not in set(node.grad_parents()):
        return True
    sel = prop.selection.get(node)
    concentrated = 0.0
    if sel is not None:
        if sel.axis != tg.sel.axis or sel.length != tg.sel.length or \
                not sel.positions <= tg.sel.positions:
            return False
        concentrated = min(prop.g2_selected.get(node, 0.0), go)
    spread = go - concentrated
    frac = len(tg.sel.positions) / max(tg.sel.length, 1)
    total = max(spread * ((1 - frac) * tg.elsewhere + frac * tg.there)
                + concentrated * tg.there, 0.0)
    excess = concentrated * tg.there + spread * frac * max(tg.there - tg.elsewhere, 0.0)
    prop.g2[parent] = prop.g2.get(parent, 0.0) + total
    prop.gs[parent] = prop.gs.get(parent, 0.0) + gso * tg.elsewhere
    prop.gsc[parent] = prop.gsc.get(parent, 0.0) + gsco * tg.elsewhere
    if total > 0:
        prop.decades[node] = 0.5 * math.log10(total / go)
    prop.moved.add(node)
    _merge(prop, parent, tg.sel, min(excess, total))
    return True
