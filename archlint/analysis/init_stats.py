"""Initial-weight statistics of every weight layer and norm layer, read from the real tensors.

For each layer: fan-in, ``sigma_w^2 = fan_in * E[W^2]`` (the factor by which it scales the
signal's second moment, Poole et al. 2016), whether the weight is all zero, constant, or has
identical rows (symmetric), the activation that consumes its output, whether the layer ends a
residual branch or feeds the output directly (identity-at-init designs), and the length of the
norm-free chain of weight layers it belongs to.

Identity-at-init designs take many forms, and each is read off the graph and the weights:

- a zero or small *last* layer of a residual branch, or a head (``identity_at_init_ok``);
- a small layer anywhere *inside* a residual branch (``in_residual_branch``): its scale only
  shrinks the branch's contribution beside the skip, which carries the signal and the gradient
  (Fixup scales every layer of a branch down on purpose; timm and Hugging Face initialise every
  projection with std 0.02, far below LeCun at small widths);
- a near-constant gate (``constant_gate``): a layer whose output multiplies another tensor and
  is, at init, mostly its bias or ``1 + `` a small term (gMLP's spatial gating unit: zero weight,
  bias one): the product starts as its other operand;
- weights that are not trained (``trainable`` False): fixed filters kept as buffers or frozen
  (anti-aliasing blur), which are no initialisation at all;
- a bank of weights that another layer reads as its weight (a conditional convolution's
  experts, mixed per sample by a router): judged as weights of the layer that reads them, with
  that layer's fan-in (``weight_of``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..graph.ir import Graph, Kind, Node
from ..graph.metainit import MetaValueError, meta_dist
from ..graph.weightstats import on_one_thread, sum_sq
from ..ops import op_info
from ..ops.linear import weight_fans
from ..ops.norms import measured_affine, norm_affine
from .structure import Structure

#: Ops a value passes through without changing which activation consumes it.
_PASSTHROUGH = {Kind.RESHAPE, Kind.DROPOUT, Kind.POOL}


@dataclass
class LayerInit:
    node: Node
    fan_in: Optional[int]
    sigma_w2: Optional[float]  # fan_in * E[W^2]: the forward gain
    sigma_w2_out: Optional[float]  # fan_out * E[W^2]: the backward gain (He "fan_out" mode)
    all_zero: bool
    constant: bool  # every entry equal (and not all zero)
    symmetric: bool  # all output units (rows) identical
    next_activation: str  # op of the consuming activation, "norm", or "linear"
    target_sigma_w2: float
    identity_at_init_ok: bool  # ends a residual branch or feeds the output directly
    chain: Node  # a representative of its plain chain (same object for every member)
    chain_length: int  # weight layers in its norm-free, join-free chain
    nonfinite: bool = False  # NaN or Inf among the weights
    #: The weights are trained (a parameter with requires_grad, or computed from one): False
    #: for fixed filters kept as buffers or frozen.
    trainable: bool = True
    #: Every way from the layer to the output passes the branch side of a residual join (the
    #: skip side computed before the layer): its scale only sets the branch's share.
    in_residual_branch: bool = False
    #: Its output multiplies another tensor and is, at init, about constant and non-zero: its
    #: bias (larger than what the weights add for unit-scale inputs) or ``1 +`` its output.
    constant_gate: bool = False
    #: A bank of weights another layer reads as its weight (conditional-convolution experts):
    #: that layer; fans and the consuming activation are that layer's.
    weight_of: Optional[Node] = None

    def scale_ratio(self) -> Optional[float]:
        """Std of the weights relative to the ideal init for the consuming activation.

        Both He modes are accepted: the fan-in ratio (forward signal) or the fan-out ratio
        (backward gradient), whichever is closer to 1."""
        if self.sigma_w2 is None or self.sigma_w2 <= 0:
            return None
        ratios = [math.sqrt(self.sigma_w2 / self.target_sigma_w2)]
        if self.sigma_w2_out:
            ratios.append(math.sqrt(self.sigma_w2_out / self.target_sigma_w2))
        return min(ratios, key=lambda r: abs(math.log(r)))


@dataclass
class NormInit:
    node: Node
    zero_scale: bool
    identity_at_init_ok: bool


def _consumer(node: Node) -> tuple[str, list[Node]]:
    """The op consuming ``node``'s output after pass-through ops (and bias adds)."""
    frontier = list(node.users)
    seen = set()
    while frontier:
        u = frontier.pop(0)
        if u in seen:
            continue
        seen.add(u)
        if u.kind == Kind.ACTIVATION:
            return u.op, [u]
        if u.kind == Kind.NORM:
            return "norm", [u]
        if u.kind in _PASSTHROUGH or (u.kind == Kind.ADD and _one_data_input(u)) or \
                (u.kind == Kind.MUL and _one_data_input(u)):
            frontier.extend(u.users)
            continue
        return "linear", [u]
    return "linear", []


def _one_data_input(node: Node) -> bool:
    """An add/mul with at most one activation operand: a bias add or a constant scale."""
    data = [i for i in node.inputs if i.kind not in (Kind.PARAM, Kind.CONSTANT)]
    return len(data) <= 1


def _feeds_join_or_output(node: Node, graph: Graph) -> bool:
    """True if the value reaches a residual join or the output with no weight layer between."""
    if node is graph.output:
        return True
    frontier = list(node.users)
    seen = set()
    while frontier:
        u = frontier.pop(0)
        if u in seen:
            continue
        seen.add(u)
        if u.is_weight_layer:
            continue
        if u is graph.output or u.kind == Kind.OUTPUT:
            return True
        if u.kind in (Kind.ADD, Kind.CONCAT) and not _one_data_input(u):
            return True
        frontier.extend(u.users)
    return False


def _in_residual_branch(node: Node, graph: Graph, joins: set[Node], order: dict[Node, int]
                        ) -> bool:
    """Does every way from ``node`` to the output pass a residual join on its branch side?

    A join contains ``node`` when one of its other data inputs was computed before ``node``
    (in execution order), so cannot depend on it: the skip. Ways that end without reaching the
    output (an unused value) do not count; at least one join must be passed."""
    frontier = list(node.users)
    seen = set()
    contained = False
    while frontier:
        u = frontier.pop()
        if u in seen:
            continue
        seen.add(u)
        if u is graph.output or u.kind == Kind.OUTPUT:
            return False
        if u in joins and u.kind == Kind.ADD:
            others = [i for i in u.inputs if i.kind not in (Kind.PARAM, Kind.CONSTANT)
                      and i is not node and order.get(i, -1) < order[node]]
            if others:
                contained = True
                continue
        frontier.extend(u.users)
    return contained


def _bias(node: Node) -> Optional[torch.Tensor]:
    m = node.module
    if m is not None:
        b = getattr(m, "bias", None)
        return b if isinstance(b, torch.Tensor) else None
    for i in node.inputs:
        if i.kind == Kind.PARAM and isinstance(i.tensor, torch.Tensor) and i.tensor.dim() == 1:
            return i.tensor
    return None


def _is_constant(node: Node) -> bool:
    return node.kind in (Kind.PARAM, Kind.CONSTANT)


def _constant_gate(node: Node, sigma_w2: Optional[float]) -> bool:
    """Is ``node``'s output a gate (it multiplies another tensor) that is about constant and
    non-zero at init: its bias outweighs what its weights add to a unit-scale input, or a
    constant is added to it (``x * (1 + g(y))``)?"""
    b = _bias(node)
    bias_led = False
    if b is not None and b.numel() and b.is_floating_point() and b.device.type != "meta":
        mean = float(b.detach().float().mean())
        bias_led = mean * mean > (sigma_w2 or 0.0)
    frontier = [(u, node, bias_led) for u in node.users]
    seen = set()
    while frontier:
        u, came_from, led = frontier.pop()
        if (u, led) in seen:
            continue
        seen.add((u, led))
        if u.kind in (Kind.RESHAPE, Kind.DROPOUT):
            frontier.extend((v, u, led) for v in u.users)
        elif u.kind == Kind.ADD and _one_data_input(u):
            shifted = led or any(_is_constant(i) or not isinstance(i, Node) for i in u.inputs
                                 if i is not came_from) or _adds_number(u)
            frontier.extend((v, u, shifted) for v in u.users)
        elif u.kind == Kind.MUL and not _one_data_input(u):
            if led:
                return True
        # anything else: not a gate along this way
    return False


def _adds_number(node: Node) -> bool:
    """An add whose other operand is a Python number (``1 + x``), kept in its arguments."""
    args = node.attrs.get("args") or ()
    return any(isinstance(a, (int, float)) and a != 0 for a in args) if isinstance(
        args, (list, tuple)) else False


def _read_as_weight(node: Node) -> Optional[Node]:
    """The weight layer that reads ``node``'s output (through reshapes) as its weight, if any:
    ``node`` is then a bank of weights, e.g. a conditional convolution's experts."""
    frontier = [(u, node) for u in node.users]
    seen = set()
    while frontier:
        u, came_from = frontier.pop()
        if u in seen:
            continue
        seen.add(u)
        if u.kind == Kind.RESHAPE:
            frontier.extend((v, u) for v in u.users)
        elif u.kind in (Kind.CONV, Kind.LINEAR) and u.inputs and u.inputs[0] is not came_from:
            return u
    return None


def _bank_fans(reader: Node, shape: tuple, bank: torch.Tensor
               ) -> tuple[Optional[int], Optional[int]]:
    """Fans of one row of a weight bank (one expert) as a weight of ``reader``: its fan-in,
    and the outputs one input feeds (the reader may fold the batch into groups, so its
    weight's first dimension is no count of outputs)."""
    fan_in, _ = weight_fans(reader, torch.empty(shape, device="meta"))
    if not fan_in:
        return None, None
    row = bank[0].numel() if bank.dim() >= 2 else bank.numel()
    taps = math.prod(int(k) for k in shape[2:]) if reader.kind == Kind.CONV else 1
    return fan_in, max(1, row // fan_in) * taps


def _trainable(node: Node, w: torch.Tensor) -> bool:
    """Is the weight trained: a parameter with requires_grad, or computed from one?"""
    computed = node.attrs.get("derived_weight")
    if isinstance(computed, torch.Tensor) and node.module is None and \
            not isinstance(node.attrs.get("weight_param"), Node):
        return bool(computed.requires_grad)
    return bool(w.requires_grad)


def _target_sigma_w2(op: str, consumer: list[Node]) -> float:
    row = op_info(op)
    if row is not None and row.rectifier:
        if op in ("leaky_relu", "prelu", "rrelu") and consumer:
            a = consumer[0].attrs.get("negative_slope", consumer[0].attrs.get("weight", 0.01))
            try:
                a = float(a)
            except (TypeError, ValueError):
                a = 0.01
            return 2.0 / (1.0 + a * a)
        return 2.0
    return 1.0


def _chains(graph: Graph) -> dict[Node, Node]:
    """Size of each weight layer's chain: weight layers linked through activations/pass-through
    ops only (no normalisation, no join), i.e. a plain feed-forward stack."""
    link = {Kind.ACTIVATION, *_PASSTHROUGH}
    parent: dict[Node, Node] = {}

    def find(x: Node) -> Node:
        while parent.get(x, x) is not x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for n in graph.weight_layers():
        parent.setdefault(n, n)
        frontier = list(n.users)
        seen = set()
        while frontier:
            u = frontier.pop()
            if u in seen:
                continue
            seen.add(u)
            if u.is_weight_layer:
                parent.setdefault(u, u)
                parent[find(u)] = find(n)
            elif u.kind in link or (u.kind in (Kind.ADD, Kind.MUL) and _one_data_input(u)):
                frontier.extend(u.users)
    return {n: find(n) for n in parent}


def _layer(node: Node, graph: Graph, chain_of: dict, sizes: dict, fan_in: Optional[int],
           fan_out: Optional[int], mean_sq: float, w: torch.Tensor, joins: set[Node],
           order: dict[Node, int], all_zero: bool, constant: bool, symmetric: bool) -> LayerInit:
    nonfinite = not math.isfinite(mean_sq)
    reader = _read_as_weight(node)
    shape = reader.input_shapes[1] if reader is not None and \
        len(reader.input_shapes) > 1 else None
    if reader is not None and shape:  # a bank of weights: judged as the reader's weight
        fan_in, fan_out = _bank_fans(reader, shape, w)
    else:
        reader = None
    sigma_w2 = fan_in * mean_sq if fan_in else None
    sigma_w2_out = fan_out * mean_sq if fan_out else None
    op, consumer = _consumer(reader if reader is not None else node)
    return LayerInit(
        node=node, fan_in=fan_in, sigma_w2=None if nonfinite else sigma_w2,
        sigma_w2_out=None if nonfinite else sigma_w2_out, nonfinite=nonfinite,
        all_zero=all_zero, constant=constant,
        symmetric=symmetric, next_activation=op,
        target_sigma_w2=_target_sigma_w2(op, consumer),
        identity_at_init_ok=_feeds_join_or_output(node, graph),
        chain=chain_of.get(node, node),
        chain_length=sizes.get(chain_of.get(node, node), 1),
        trainable=_trainable(node, w),
        in_residual_branch=_in_residual_branch(node, graph, joins, order),
        constant_gate=_constant_gate(node, None if nonfinite else sigma_w2),
        weight_of=reader,
    )


@dataclass
class InitFacts:
    layers: list[LayerInit]
    norms: list[NormInit]


@on_one_thread
def analyse_init(graph: Graph, structure: Optional[Structure] = None) -> InitFacts:
    chain_of = _chains(graph)
    joins = set(structure.skip_joins) if structure is not None else set()
    order = {n: k for k, n in enumerate(graph.nodes)}
    sizes: dict[Node, int] = {}
    for root in chain_of.values():
        sizes[root] = sizes.get(root, 0) + 1
    layers: list[LayerInit] = []
    seen_weights: set[int] = set()
    for node in graph.weight_layers():
        w = node.weight()
        if w is None or w.dim() < 2 or id(w) in seen_weights:
            continue
        seen_weights.add(id(w))  # a shared layer is judged once
        try:
            d = meta_dist(w)
        except MetaValueError:  # made real just now
            w = node.weight()
            d = None
        if d is not None:  # a large weight on the meta device: its entries' distribution
            fan_in, fan_out = weight_fans(node, w)
            layers.append(_layer(node, graph, chain_of, sizes, fan_in, fan_out, d.mean_sq, w,
                                 joins, order, all_zero=d.mean_sq == 0.0,
                                 constant=d.var == 0.0 and d.mean != 0.0, symmetric=False))
            continue
        wd = w.detach()
        if wd.is_complex():  # a spectral layer's weights: their real and imaginary parts
            wd = torch.view_as_real(wd)
        if not wd.is_floating_point():
            wd = wd.float()
        mean_sq = sum_sq(w) / max(1, wd.numel())
        all_zero = mean_sq == 0.0
        flat = wd.reshape(-1)
        constant = (not all_zero and flat.numel() > 1 and bool(flat[0] == flat[-1])
                    and bool(wd.max() == wd.min()))
        rows = wd.reshape(wd.shape[0], -1)
        symmetric = (not all_zero and not constant and rows.shape[0] > 1 and rows.shape[1] > 1
                     and torch.equal(rows[0], rows[1]) and bool((rows == rows[0:1]).all()))
        fan_in, fan_out = weight_fans(node, wd)
        layers.append(_layer(node, graph, chain_of, sizes, fan_in, fan_out, mean_sq, w, joins,
                             order, all_zero=all_zero, constant=constant, symmetric=symmetric))
    norms: list[NormInit] = []
    for node in graph.by_kind(Kind.NORM):
        gamma, _ = norm_affine(node)  # F.batch_norm's running stats are not its scale
        if not isinstance(gamma, torch.Tensor):
            continue
        measured = measured_affine(node)
        zero = measured.g2 == 0.0 if measured is not None else bool((gamma.detach() == 0).all())
        norms.append(NormInit(node=node, zero_scale=zero,
                              identity_at_init_ok=_feeds_join_or_output(node, graph)))
    return InitFacts(layers, norms)
