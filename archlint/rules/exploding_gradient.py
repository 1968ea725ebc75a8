"""AL106 exploding-gradient."""

from __future__ import annotations

from typing import Iterator

from ..results import Finding
from .base import Rule, RuleContext
from .vanishing_gradient import flow_message


class ExplodingGradient(Rule):
    """
    ## What it does
    The mirror image of AL105: from the same estimate of every layer's weight-gradient RMS at
    initialisation, reports models where the earliest layers' predicted gradient is more than
    `max-decades` orders of magnitude *above* the output layers', and says which layers add the
    decades.

    Layers whose function does not depend on their weights' scale are left out of this
    comparison: a large gradient grows their weights and shrinks itself within the first steps
    (batch-normalised ResNets have early-layer gradients 3 decades larger than late ones at
    init, and train well). These are:
    - layers whose output reaches a normalisation before anything that depends on its scale
      (another weight layer, a residual add, a gate, the output) -- a normalisation layer
      (BatchNorm, LayerNorm, GroupNorm, RMSNorm, a norm layer of your own), or one written with
      tensor ops: a tensor divided by (or multiplied by the inverse square root of) a statistic
      of that same tensor, as in `h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)`;
    - layers whose weight is standardised in their own forward (weight standardisation as in
      `StdConv2d`, NF-ResNets' `ScaledStdConv2d`, BiT): their output is the same whatever
      their weights' scale.
    A layer whose output goes through a tanh, a sigmoid gate or a residual add before it is
    normalised is still compared: its scale changes what the network computes.

    Also left out: layers inside a sigmoid gate that multiplies the tensor it was computed from
    (squeeze-and-excitation, ECA, CBAM). Their gradient is large (a pooled input, summed back
    over every position), but a large step only saturates the gate, which bounds their effect
    and shrinks their gradient. And, as for AL105, layers behind a near-zero learned layer-scale
    gain and attention queries and keys.

    ## Why is this bad?
    A gradient that grows by orders of magnitude on its way back makes the early layers take
    huge steps while the last ones barely move: training diverges or needs a learning rate so
    small that the rest of the network cannot learn. Typical causes: weights initialised too
    large around saturating activations (the "chaotic" phase of tanh networks), and unscaled
    residual branches stacked deep without normalisation. (Deep plain stacks of
    batch-normalised layers also grow their gradient by about pi/(pi-1) per layer at init, Yang
    et al. 2019, but those layers are scale-invariant and left out here; AL103 reports such
    stacks when they are deep.)

    ## Example
    A tanh stack initialised in the chaotic phase (weights 5x LeCun): activations saturate
    at +-1 while every layer multiplies the gradient by about 2.5:
    ```python
    layers = []
    for _ in range(24):
        fc = nn.Linear(256, 256)
        nn.init.normal_(fc.weight, std=5 / 256 ** 0.5)
        layers += [fc, nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    ```

    ## Use instead
    ```python
    layers = []
    for _ in range(24):
        fc = nn.Linear(256, 256)
        nn.init.xavier_normal_(fc.weight)
        layers += [fc, nn.LayerNorm(256), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    ```

    ## Options
    - `max-decades` (default 3): how many orders of magnitude above the output layers the
      earliest layers' gradient may rise.

    ## References
    - Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz, "A Mean Field Theory of Batch
      Normalization", ICLR 2019.
    - Hanin, "Which neural net architectures give rise to exploding and vanishing gradients?",
      NeurIPS 2018.
    """

    code = "AL106"
    name = "exploding-gradient"
    severity = "warning"
    options = {"max-decades": 3.0}
    needs_input = True

    bad_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(24):
            fc = nn.Linear(64, 64)
            nn.init.normal_(fc.weight, std=5 / 64 ** 0.5)
            layers += [fc, nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(x))
"""

    good_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(24):
            fc = nn.Linear(64, 64)
            nn.init.xavier_normal_(fc.weight)
            layers += [fc, nn.LayerNorm(64), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(x))
"""

    def check(self, ctx: RuleContext) -> Iterator[Finding]:
        flow = ctx.gradient.exploding if ctx.gradient is not None else None
        limit = float(ctx.options["max-decades"])
        if flow is None or flow.decades <= limit:
            return
        yield self.finding(
            ctx, flow.first_node, flow_message(flow, "explode", limit),
            hint="scale weights down (He/LeCun init), scale residual branches (e.g. by "
                 "1/sqrt(depth)) or add skip connections around batch-normalised stacks",
            data={"decades": flow.decades, "contributions": flow.contributions[:5]})
