"""AL105 vanishing-gradient and the shared message for AL106."""

from __future__ import annotations

from typing import Iterator

from ..results import Finding
from .base import Rule, RuleContext


def flow_message(flow, kind: str, limit: float) -> str:
    total = abs(flow.decades)
    parts = [(label, d) for label, d in flow.contributions
             if (d < 0 if flow.decades < 0 else d > 0)]
    top = parts[:3]
    who = ""
    if top:
        items = ", ".join(f"{label} ({abs(d):.1f})" for label, d in top)
        who = f"; largest shares of the {total:.1f} decades: {items}"
    earliest = ", ".join(flow.earliest[:3]) + (" ..." if len(flow.earliest) > 3 else "")
    return (f"predicted gradient of the earliest layers ({earliest}) is {total:.1f} decades "
            f"{'below' if kind == 'vanish' else 'above'} the output layers' (limit {limit:g})"
            f"{who}")


class VanishingGradient(Rule):
    """
    ## What it does
    Estimates, from the graph and the initial weights and without a backward pass, the RMS of
    every layer's weight gradient under a standard probe (the model in train mode, N(0, 1)
    inputs, a random linear loss on its output), and reports models where the earliest layers'
    predicted gradient is more than `max-decades` orders of magnitude below the output layers'.
    The message says which layers cost the decades.

    ## Why is this bad?
    With a gradient a thousand times smaller than the last layers', the first layers barely move
    under a shared learning rate: the network trains as if it were shallow, or not at all. This is
    the criterion runtime gradient monitors use (a first/last ratio under 1e-3), available here
    before any training run.

    Layers that get exactly zero gradient at step 0 by design (zero-initialised residual
    branches, a zero-initialised head and what they cut off) are not counted.

    Nor are layers whose gradient is small at step 0 by a design the first steps undo: layers
    inside residual branches scaled by a learned gain initialised near zero (layer scale,
    ReZero: at most 0.1), and attention query and key projections, whose gradient comes only
    through the attention scores (near-uniform at a small init, so it scales with the other
    projection's weights rather than with depth). When those branches hold the whole depth of
    the model (CaiT), there is no verdict.

    ## Example
    ```python
    layers = []
    for _ in range(12):
        layers += [nn.Linear(256, 256), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    ```

    ## Use instead
    ReLU-family activations with He init, normalisation, residual connections:
    ```python
    layers = []
    for _ in range(12):
        layers += [nn.Linear(256, 256), nn.LayerNorm(256), nn.GELU()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    ```

    ## Options
    - `max-decades` (default 3): how many orders of magnitude below the output layers the
      earliest layers' gradient may fall.

    ## References
    - Schoenholz, Gilmer, Ganguli & Sohl-Dickstein, "Deep Information Propagation", ICLR 2017.
    - Pennington, Schoenholz & Ganguli, "Resurrecting the sigmoid in deep learning", NeurIPS 2017.
    - Brock, De & Smith, "Characterizing signal propagation to close the performance gap in
      unnormalized ResNets", ICLR 2021.
    """

    code = "AL105"
    name = "vanishing-gradient"
    severity = "warning"
    options = {"max-decades": 3.0}
    needs_input = True

    bad_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(12):
            layers += [nn.Linear(64, 64), nn.Sigmoid()]
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
        for _ in range(12):
            layers += [nn.Linear(64, 64), nn.LayerNorm(64), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(x))
"""

    def check(self, ctx: RuleContext) -> Iterator[Finding]:
        flow = ctx.gradient.vanishing if ctx.gradient is not None else None
        limit = float(ctx.options["max-decades"])
        if flow is None or flow.decades >= -limit:
            return
        yield self.finding(
            ctx, flow.first_node, flow_message(flow, "vanish", limit),
            hint="add normalisation or residual connections, use ReLU-family activations with "
                 "He init",
            data={"decades": flow.decades, "contributions": flow.contributions[:5]})
