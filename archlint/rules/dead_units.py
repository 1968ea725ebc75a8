"""AL110 dead-units: ReLU units inactive for every input at initialisation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from ..graph.ir import Kind, Node
from ..meanfield.signal import Sig
from ..results import Finding
from .base import Rule, RuleContext

#: Activations whose gradient is exactly zero wherever the unit is inactive.
DEAD_OPS = ("relu", "relu6")
#: A unit is predicted dead when its pre-activation mean is more than this many input-driven
#: spreads below zero. Dead means active for fewer than 0.14% of inputs (3 spreads, what
#: ``--measure`` counts); the margin covers the estimate's error on small signals, where a
#: 30% error in the spread moves a whole layer across the threshold.
Z_DEAD = 4.5
#: After a normalisation layer the pre-activation of a unit is gamma * z + beta with z ~ N(0, 1)
#: (train mode): exact, no margin needed.
Z_NORM = 3.0


@dataclass
class DeadLayer:
    """One layer feeding a ReLU: how many of its units are predicted dead, and why."""

    node: Node  # the weight layer or normalisation layer producing the pre-activation
    activation: Node
    units: int
    dead_fraction: float
    #: Mean over units of the pre-activation's mean, and of its input-driven spread.
    mean: float
    spread: float
    #: "bias" (a weight layer's bias against the spread of W x) or "shift" (a norm's beta
    #: against its gamma).
    cause: str


def dead_input(act: Node) -> Optional[Node]:
    """The layer whose output the activation reads (through views and dropout)."""
    cur = act.inputs[0] if act.inputs else None
    while cur is not None and cur.kind in (Kind.RESHAPE, Kind.DROPOUT) and cur.inputs:
        cur = cur.inputs[0]
    return cur


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _weight_layer(node: Node, x: Sig) -> Optional[DeadLayer]:
    m = node.module
    w = getattr(m, "weight", None) if m is not None else None
    b = getattr(m, "bias", None) if m is not None else None
    if not isinstance(w, torch.Tensor) or w.dim() < 2 or not isinstance(b, torch.Tensor):
        return None
    w = w.detach().double()
    transposed = bool(getattr(m, "transposed", False))
    if transposed:  # ConvTranspose: (in, out / groups, *k); each output sees 1/stride of taps
        groups = int(getattr(m, "groups", 1))
        if groups != 1:
            return None
        w = w.transpose(0, 1)
        share = 1.0 / math.prod(getattr(m, "stride", (1,)))
    else:
        share = 1.0
    rows = w.reshape(w.shape[0], -1)
    if not bool(rows.any()):
        return None  # all-zero weights are AL104's: every unit is its bias
    a = (rows * rows).sum(1) * share  # sum_j W_ij^2 per unit
    rowsum = rows.sum(1) * share
    fl = max(x.q - x.s, 0.0)  # what varies from input to input
    coh = max(x.s - x.m * x.m, 0.0)  # per-unit offsets of the input around its mean
    mu = rowsum * x.m + b.detach().double()
    sd = torch.sqrt(a * fl)
    if not bool((sd > 0).any()) and _after_zero_scale(node):
        # the input is constant because a normalisation upstream starts with a zero scale (a
        # squeeze-excitation after a zero-initialised last batch norm): an identity-at-init
        # branch whose units wake with that scale, not dead units
        return None
    off = torch.sqrt(a * coh)
    # a unit is dead when mu + offset < -Z sd; the offset is a draw of spread ``off``
    threshold = -Z_DEAD * sd - mu
    dead = torch.where(off > 1e-12 * (sd + 1e-30), _normal_cdf(threshold / off.clamp_min(1e-30)),
                       (threshold > 0).double())
    return DeadLayer(node=node, activation=node, units=int(mu.numel()),
                     dead_fraction=float(dead.mean()), mean=float(mu.mean()),
                     spread=float(sd.mean()), cause="bias")


def _after_zero_scale(node: Node, steps: int = 8) -> bool:
    """Does ``node`` read (through pooling, reductions, reshapes, dropout) a normalisation
    whose scale is all zero?"""
    from ..ops.norms import norm_affine

    cur = node.inputs[0] if node.inputs else None
    for _ in range(steps):
        if cur is None:
            return False
        if cur.kind == Kind.NORM:
            gamma, _ = norm_affine(cur)
            return isinstance(gamma, torch.Tensor) and gamma.numel() > 0 and \
                not bool(gamma.detach().any())
        if cur.kind not in (Kind.POOL, Kind.REDUCE, Kind.RESHAPE, Kind.DROPOUT):
            return False
        cur = cur.inputs[0] if cur.inputs else None
    return False


def _norm_layer(node: Node) -> Optional[DeadLayer]:
    from ..ops.norms import norm_affine

    gamma, beta = norm_affine(node)
    if not isinstance(beta, torch.Tensor) or beta.numel() == 0:
        return None
    beta = beta.detach().double().flatten()
    gamma = gamma.detach().double().flatten().abs() if isinstance(gamma, torch.Tensor) \
        else torch.ones_like(beta)
    live = gamma > 0  # a zero scale is AL104's
    if not bool(live.any()):
        return None
    dead = (beta < -Z_NORM * gamma) & live
    return DeadLayer(node=node, activation=node, units=int(beta.numel()),
                     dead_fraction=float(dead.double().mean()), mean=float(beta.mean()),
                     spread=float(gamma.mean()), cause="shift")


def dead_layers(ctx_graph: Any, gradient: Any) -> list[DeadLayer]:
    """Every layer feeding a ReLU-family activation, with its predicted dead fraction."""
    sig = gradient.estimate.sig if gradient is not None else {}
    out: list[DeadLayer] = []
    seen: set[int] = set()
    for act in ctx_graph.nodes:
        if act.kind != Kind.ACTIVATION or act.op not in DEAD_OPS:
            continue
        pre = dead_input(act)
        if pre is None or id(pre) in seen:
            continue
        layer = None
        if pre.kind == Kind.NORM:
            layer = _norm_layer(pre)
        elif pre.kind in (Kind.LINEAR, Kind.CONV) and pre.inputs:
            data = [i for i in pre.inputs if i.kind != Kind.PARAM]
            x = sig.get(data[0]) if data else None
            if isinstance(x, Sig):
                layer = _weight_layer(pre, x)
        if layer is not None:
            seen.add(id(pre))
            layer.activation = act
            out.append(layer)
    return out


class DeadUnits(Rule):
    """
    ## What it does
    Predicts, for every layer that feeds a ReLU (or ReLU6), which of its units are inactive for
    (nearly) every input at initialisation, and reports the layers where at least
    `dead-fraction` of the units are. Each unit's pre-activation mean and input-driven spread
    come from its own weights and bias and from the statistics of the layer's input that the
    gradient estimate propagates through the network: a unit is dead when its mean is more than
    4.5 spreads below zero (active for fewer than 0.14% of inputs -- three spreads -- with a
    margin for the estimate's error). After a normalisation layer, the unit's shift (beta) is
    compared with its scale (gamma): dead below -3 gamma. `--measure` counts the units positive for fewer than 0.14%
    of their values on the example batch. The message gives the
    fraction of dead units per layer.

    ## Why is this bad?
    A ReLU passes no gradient where it is inactive. A unit inactive for every input gets exactly
    zero gradient on its incoming weights and bias, and passes none back: it never recovers,
    and the layers before it lose that path. Negative biases are the usual cause: with biases
    of -2 after He-initialised layers, the first layer's units are still active for some inputs
    but the second layer's inputs are then so small that 98-100% of the second to fourth
    layers' units are dead, and every weight gradient is exactly zero.

    ## Example
    ```python
    for layer in self.layers:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.constant_(layer.bias, -2.0)
    ```

    ## Use instead
    ```python
    for layer in self.layers:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    ```
    or an activation that passes gradient everywhere (LeakyReLU, GELU).

    ## Options
    - `dead-fraction` (default 0.7): the fraction of a layer's units (above 0, at most 1) that
      must be predicted dead for the layer to be reported. Plain deep ReLU networks with
      PyTorch's default init that still train have up to about half of a late layer's units
      dead at initialisation (core benchmark zoo: 0.52 predicted, 0.44 measured in
      `cnn_avgpool`'s worst layer); a bias or shift pushed negative kills nearly all.

    ## References
    - Lu, Shin, Su & Karniadakis, "Dying ReLU and Initialization: Theory and Numerical
      Examples", 2019.
    - He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", ICCV 2015.
    """

    code = "AL110"
    name = "dead-units"
    severity = "warning"
    options = {"dead-fraction": 0.7}
    needs_input = True

    bad_example = """
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, width=64, depth=4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(32 if i == 0 else width, width)
                                    for i in range(depth))
        self.head = nn.Linear(width, 10)
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.constant_(layer.bias, -2.0)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x).relu()
        return self.head(x)
"""
    good_example = bad_example.replace("nn.init.constant_(layer.bias, -2.0)",
                                       "nn.init.zeros_(layer.bias)")

    @classmethod
    def check_option(cls, name: str, value: Any) -> Optional[str]:
        if name == "dead-fraction" and not 0.0 < value <= 1.0:
            return f"expected a fraction above 0 and at most 1, got {value!r}"
        return None

    def check(self, ctx: RuleContext) -> Iterator[Finding]:
        limit = float(ctx.options["dead-fraction"])
        groups: dict[tuple, list[DeadLayer]] = {}
        for d in dead_layers(ctx.graph, ctx.gradient):
            if d.dead_fraction < limit or d.dead_fraction <= 0.0:
                continue
            site = d.node.site
            key = (site.path, site.line) if site is not None else (id(d.node),)
            groups.setdefault(key, []).append(d)  # layers built on one line: one finding
        for group in groups.values():
            first = group[0]
            names = [d.node.location_module or d.node.module_path or d.node.name for d in group]
            fractions = ", ".join(f"{n} {100 * d.dead_fraction:.0f}%"
                                  for n, d in zip(names, group))
            units = sorted({d.units for d in group})
            of = f"{units[0]}" if len(units) == 1 else "/".join(map(str, units))
            mean = sum(d.mean for d in group) / len(group)
            spread = sum(d.spread for d in group) / len(group)
            if first.cause == "bias":
                why = f"mean pre-activation {mean:.2g} against an input-driven spread of {spread:.2g}"
                hint = "initialise the biases at zero, or use LeakyReLU/GELU"
            else:
                why = f"shift (beta) {mean:.2g} against a scale (gamma) of {spread:.2g}"
                hint = "initialise the normalisation's shift (beta) at zero"
            yield self.finding(
                ctx, first.node,
                f"units predicted dead at initialisation (inactive for every input before the "
                f"{first.activation.op}; fraction of the {of} units per layer: {fractions}): "
                f"{why}; dead units pass no gradient and the weights feeding them get exactly "
                f"zero (limit {100 * limit:.0f}%)",
                hint=hint,
                data={"module": names[0], "dead_fraction": max(d.dead_fraction for d in group),
                      "cause": first.cause,
                      "layers": [{"module": d.node.module_path, "units": d.units,
                                  "dead_fraction": d.dead_fraction} for d in group]})
