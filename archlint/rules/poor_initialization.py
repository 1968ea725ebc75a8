"""AL104 poor-initialization."""

from __future__ import annotations

import math
from typing import Iterator

from ..analysis.init_stats import LayerInit
from ..results import Finding
from ..graph.ir import Kind
from .base import Rule, RuleContext


class PoorInitialization(Rule):
    """
    ## What it does
    Reads the actual initial weights of every layer and reports:
    - all-zero weights (outside identity-at-init designs) and zero normalisation scales;
    - constant weights, or weights whose output units are all identical (symmetric init);
    - a weight scale far from the one that preserves the signal through the activation that
      follows: He (`sigma_w^2 = fan_in * Var(W) = 2`) for the ReLU family, LeCun/Xavier (1) for
      tanh, sigmoid and linear outputs. The message gives the factor;
    - plain stacks whose small per-layer scale errors compound over depth.

    Identity-at-init designs are healthy and not reported:
    - a zero or small layer that ends a residual branch, or a classifier head that feeds the
      output directly (zero-init residual, SkipInit, Fixup, ReZero, GPT-2's scaled
      projections);
    - a small (not zero) layer inside a residual branch, up to `max-branch-factor`: it only
      shrinks the branch beside the skip (Fixup scales a branch's layers down on purpose; a
      fixed std of 0.02, as timm and Hugging Face initialise, is far below LeCun at small
      widths);
    - a gate that starts as a constant: a layer whose output multiplies another tensor and is
      mostly its bias at init (gMLP's spatial gating unit: zero weight, bias one), or is added
      to a constant (`x * (1 + g(y))`);
    - the scale of a layer followed directly by normalisation, which cancels it;
    - weights that are not trained: fixed filters kept as buffers or with
      `requires_grad=False` (an anti-aliasing blur is no initialisation).

    A bank of weights another layer reads as its weight (the experts of a conditional
    convolution, mixed per sample by a router) is judged as that layer's weight: with its fan-in
    and the activation after it.

    ## Why is this bad?
    With zero weights, the layers before get no gradient at all; with symmetric weights every
    unit receives the same update and the symmetry is never broken. A scale off by a factor
    `k` multiplies the signal and the gradient by about `k` per layer: through a stack of `L`
    such layers, by `k^L`.

    ## Example
    ```python
    fc = nn.Linear(512, 512)
    nn.init.normal_(fc.weight, std=1e-3)   # 44x smaller than He init for a ReLU
    ```

    ## Use instead
    ```python
    fc = nn.Linear(512, 512)
    nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
    ```

    ## Options
    - `max-factor` (default 10): report any layer whose weight scale is off by more than this
      factor (in standard deviation). Both He modes count as ideal: fan-in (preserves the
      signal) and fan-out (preserves the gradient).
    - `max-branch-factor` (default 100): a layer inside a residual branch is reported as too
      small only past this factor.
    - `max-stack-decades` (default 4): in a plain stack of at least `min-stack` (5) layers
      without normalisation or skips, report when the scale errors compound to more than this
      many decades (PyTorch's default init is 2.45x below He for ReLU: a 12-layer plain ReLU
      stack with default init compounds to about 4.7 decades).

    ## References
    - He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", ICCV 2015.
    - Glorot & Bengio, AISTATS 2010; LeCun et al., "Efficient BackProp", 1998.
    - Zhang, Dauphin & Ma, "Fixup Initialization", ICLR 2019.
    """

    code = "AL104"
    name = "poor-initialization"
    severity = "warning"
    options = {"max-factor": 10.0, "max-branch-factor": 100.0, "max-stack-decades": 4.0,
               "min-stack": 5}

    bad_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)
        nn.init.normal_(self.fc1.weight, std=1e-3)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())
"""

    good_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.zeros_(self.fc2.weight)  # zero-initialised head: healthy

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())
"""

    def check(self, ctx: RuleContext) -> Iterator[Finding]:
        layers, norms = ctx.facts.init.layers, ctx.facts.init.norms
        hard = float(ctx.options["max-factor"])
        branch = max(hard, float(ctx.options["max-branch-factor"]))
        for li in layers:
            yield from self._check_layer(ctx, li, hard, branch)
        yield from self._check_stacks(ctx, layers, hard)
        for ni in norms:
            if ni.zero_scale and not ni.identity_at_init_ok:
                yield self.finding(
                    ctx, ni.node,
                    f"normalisation scale (weight) of {ni.node.location_module} is all zero "
                    "and it does not end a residual branch: the layer outputs zero and the "
                    "layers before it get no gradient",
                    hint="initialise the scale to 1 (zero scales belong at the end of "
                         "residual branches only)",
                    data={"problem": "zero-norm-scale"})

    @staticmethod
    def _judged_ratio(li: LayerInit) -> float | None:
        """The layer's std ratio to the ideal init, or None where scale does not matter."""
        if li.next_activation == "norm" or li.node.kind not in (Kind.LINEAR, Kind.CONV):
            return None
        ratio = li.scale_ratio()
        if ratio is None or (ratio < 1 and li.identity_at_init_ok):
            return None  # small last layers of residual branches / heads are by design
        return ratio

    def _check_layer(self, ctx: RuleContext, li: LayerInit, hard: float, branch: float
                     ) -> Iterator[Finding]:
        node = li.node
        name = node.location_module or node.name
        if li.nonfinite:
            yield self.finding(
                ctx, node, f"weights of {name} contain NaN or Inf: every gradient through "
                "this layer is NaN",
                hint="initialise with finite values (check for division by zero or log(0) in "
                     "a custom init)",
                data={"problem": "nonfinite"})
            return
        if not li.trainable:
            return  # a fixed filter (a buffer, or frozen): not an initialisation
        if li.all_zero:
            if li.identity_at_init_ok or li.constant_gate:
                return
            yield self.finding(
                ctx, node,
                f"weights of {name} are all zero: every unit computes the same thing and the "
                "layers before it get no gradient",
                hint="use a random init (He for ReLU-family activations, Xavier for tanh)",
                data={"problem": "zero"})
            return
        if li.constant or li.symmetric:
            what = "constant" if li.constant else "identical for every output unit"
            yield self.finding(
                ctx, node,
                f"weights of {name} are {what}: all units get the same gradient and the "
                "symmetry is never broken",
                hint="use a random init (He for ReLU-family activations, Xavier for tanh)",
                data={"problem": "symmetric"})
            return
        ratio = self._judged_ratio(li)
        if ratio is None or max(ratio, 1 / ratio) <= hard:
            return
        if ratio < 1 and (li.constant_gate or (li.in_residual_branch and 1 / ratio <= branch)):
            return
        yield self.finding(ctx, node, _scale_message(li, ratio), hint=_hint(li),
                           data={"problem": "scale", "factor": ratio, "sigma_w2": li.sigma_w2,
                                 "target_sigma_w2": li.target_sigma_w2})

    def _check_stacks(self, ctx: RuleContext, layers: list[LayerInit], hard: float
                      ) -> Iterator[Finding]:
        """Scales slightly off compound through plain stacks: judge the product per stack."""
        limit = float(ctx.options["max-stack-decades"])
        min_stack = int(ctx.options["min-stack"])
        stacks: dict[object, list[LayerInit]] = {}
        for li in layers:
            if li.chain_length >= min_stack and li.trainable and not (
                    li.all_zero or li.constant or li.symmetric):
                stacks.setdefault(li.chain, []).append(li)
        for members in stacks.values():
            ratios = [(li, self._judged_ratio(li)) for li in members]
            judged = [(li, r) for li, r in ratios if r is not None and max(r, 1 / r) <= hard]
            if not judged:
                continue
            decades = sum(math.log10(r) for _, r in judged)
            if abs(decades) <= limit:
                continue
            first = judged[0][0]
            typical = sorted(r for _, r in judged)[len(judged) // 2]
            direction = "smaller" if typical < 1 else "larger"
            off = max(typical, 1 / typical)
            ideal = "He" if first.target_sigma_w2 > 1.0 else "LeCun/Xavier"
            yield self.finding(
                ctx, first.node,
                f"weights in the plain stack {first.node.location_module} .. "
                f"{judged[-1][0].node.location_module} ({len(members)} layers, no "
                f"normalisation) are typically {off:.3g}x {direction} than {ideal} init; "
                f"compounded, the signal scales by ~{10 ** decades:.1e} ({abs(decades):.1f} "
                f"decades, limit {limit:g})",
                hint=_hint(first),
                data={"problem": "stack-scale", "decades": decades,
                      "layers": [li.node.location_module for li, _ in judged]})


def _scale_message(li: LayerInit, ratio: float) -> str:
    name = li.node.location_module or li.node.name
    off = max(ratio, 1 / ratio)
    ideal = "He" if li.target_sigma_w2 > 1.0 else "LeCun/Xavier"
    act = li.next_activation if li.next_activation != "linear" else "a linear output"
    direction = "smaller" if ratio < 1 else "larger"
    std = math.sqrt(li.sigma_w2 / li.fan_in) if li.fan_in and li.sigma_w2 else float("nan")
    ideal_std = math.sqrt(li.target_sigma_w2 / li.fan_in) if li.fan_in else float("nan")
    return (f"weight scale of {name} is {off:.3g}x {direction} than {ideal} init for {act} "
            f"(std {std:.3g}, fan-in {li.fan_in}, ideal {ideal_std:.3g})")


def _hint(li: LayerInit) -> str:
    if li.target_sigma_w2 > 1:
        return "initialise with nn.init.kaiming_normal_(w, nonlinearity='relu')"
    return "initialise with nn.init.xavier_normal_(w)"
