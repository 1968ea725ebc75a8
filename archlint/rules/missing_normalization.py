"""AL102 missing-normalization."""

from __future__ import annotations

from typing import Iterator

from ..analysis.structure import INF, walk_run
from ..results import Finding
from ..graph.ir import Kind
from .base import Rule, RuleContext, describe_ops, span


class MissingNormalization(Rule):
    """
    ## What it does
    Finds deep stacks of weight layers (linear, convolution, attention, recurrent) that the
    gradient must cross with no normalisation layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm,
    InstanceNorm) anywhere on its easiest path, and no skip connection around them.

    ## Why is this bad?
    Each layer multiplies the scale of the signal and of the gradient by a factor set by its
    initial weights. Without normalisation nothing corrects a factor that is slightly off, and
    over many layers it compounds into vanishing or exploding gradients; training then depends
    on a finely tuned initialisation and learning rate. Normalisation re-centres and re-scales
    every few layers and makes the gradient scale insensitive to the weights' scale.

    ## Example
    ```python
    model = nn.Sequential(*[m for _ in range(24) for m in (nn.Conv2d(64, 64, 3, padding=1),
                                                              nn.ReLU())])
    ```

    ## Use instead
    ```python
    model = nn.Sequential(*[m for _ in range(24) for m in (nn.Conv2d(64, 64, 3, padding=1),
                                                              nn.BatchNorm2d(64), nn.ReLU())])
    ```

    ## Options
    - `max-depth` (default 20): the most weight layers allowed in a stack without normalisation.

    ## References
    - Ioffe & Szegedy, "Batch Normalization", ICML 2015.
    - Ba, Kiros & Hinton, "Layer Normalization", 2016.
    """

    code = "AL102"
    name = "missing-normalization"
    severity = "warning"
    options = {"max-depth": 20}

    bad_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*[m for _ in range(24) for m in (nn.Linear(32, 32), nn.ReLU())])

    def forward(self, x):
        return self.body(x)
"""

    good_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*[m for _ in range(24)
                                    for m in (nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU())])

    def forward(self, x):
        return self.body(x)
"""

    def check(self, ctx: RuleContext) -> Iterator[Finding]:
        limit = int(ctx.options["max-depth"])
        s = ctx.facts.structure
        covered = set()
        for node in ctx.graph.nodes:
            if not s.counts_as_layer(node) or node in covered:
                continue
            run = s.unnormalised_run.get(node, INF)
            if run == INF or run + 1 <= limit:
                continue
            path = walk_run(node, s.next_unnormalised, stop_kind=Kind.NORM)
            layers = [n for n in path if s.counts_as_layer(n)]
            covered.update(layers)
            yield self.finding(
                ctx, node,
                f"stack of {len(layers)} weight layers ({describe_ops(layers)}) in "
                f"{span(layers)} with no normalisation on the gradient path (limit {limit})",
                hint="add BatchNorm/LayerNorm/GroupNorm inside the stack, or residual "
                     "connections around it",
                data={"depth": len(layers), "limit": limit,
                      "layers": [n.location_module or n.name for n in layers]},
            )
