"""AL101 saturating-stack."""

from __future__ import annotations

from typing import Iterator

from ..analysis.structure import INF, walk_run
from ..results import Finding
from ..graph.ir import Kind
from .base import Rule, RuleContext, describe_ops, span


class SaturatingStack(Rule):
    """
    ## What it does
    Finds chains of saturating activations (sigmoid, tanh, hardtanh, hardsigmoid, softsign,
    logsigmoid) that the gradient must cross one after another: along the easiest gradient path
    from the output, with no normalisation layer in between and no skip connection around them.

    ## Why is this bad?
    The derivative of a saturating activation is at most 1 (sigmoid: at most 0.25) and goes to
    zero wherever units saturate. Backpropagation multiplies these derivatives, so the gradient
    shrinks geometrically with the length of the chain: through ten sigmoid layers it is at
    least a million times smaller, and the first layers stop learning. This is the classic
    vanishing-gradient problem of deep sigmoid/tanh networks (Hochreiter 1991; Glorot & Bengio
    2010).

    ## Example
    ```python
    layers = []
    for _ in range(8):
        layers += [nn.Linear(256, 256), nn.Sigmoid()]
    model = nn.Sequential(*layers)
    ```

    ## Use instead
    A non-saturating activation with He initialisation, or normalisation inside the stack, or
    residual connections around it:
    ```python
    layers = []
    for _ in range(8):
        layers += [nn.Linear(256, 256), nn.LayerNorm(256), nn.ReLU()]
    model = nn.Sequential(*layers)
    ```

    ## Options
    - `max-chain` (default 4): the longest uninterrupted chain allowed.

    ## References
    - Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
      networks", AISTATS 2010.
    - Hochreiter et al., "Gradient flow in recurrent nets: the difficulty of learning long-term
      dependencies", 2001.
    """

    code = "AL101"
    name = "saturating-stack"
    severity = "warning"
    options = {"max-chain": 4}

    bad_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(8):
            layers += [nn.Linear(64, 64), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)
"""

    good_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(8):
            layers += [nn.Linear(64, 64), nn.LayerNorm(64), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)
"""

    def check(self, ctx: RuleContext) -> Iterator[Finding]:
        limit = int(ctx.options["max-chain"])
        s = ctx.facts.structure
        covered = set()
        for node in ctx.graph.nodes:
            if not node.is_saturating or node in covered:
                continue
            run = s.saturating_run.get(node, INF)
            if run == INF:
                continue
            length = int(run) + 1
            if length <= limit:
                continue
            path = walk_run(node, s.next_saturating, stop_kind=Kind.NORM)
            chain = [n for n in path if n.is_saturating]
            covered.update(chain)
            factor = _min_attenuation(chain)
            yield self.finding(
                ctx, node,
                f"chain of {length} saturating activations ({describe_ops(chain)}) in "
                f"{span(chain)} with no normalisation or skip path around it (limit "
                f"{limit}){factor}",
                hint="use ReLU-family activations with He init, add normalisation inside the "
                     "stack, or add residual connections",
                data={"length": length, "limit": limit,
                      "chain": [n.location_module or n.name for n in chain]},
            )


def _min_attenuation(chain) -> str:
    """The bound the activations' peak derivatives put on the gradient across the chain."""
    product = 1.0
    for n in chain:
        product *= n.info.peak_derivative or 1.0
    if product >= 1.0:
        return "; the gradient shrinks wherever units saturate"
    return f"; their derivatives alone scale the gradient by at most {product:.1e}"
