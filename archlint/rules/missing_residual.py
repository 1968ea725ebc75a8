"""AL103 missing-residual."""

from __future__ import annotations

from typing import Iterator

from ..analysis.structure import INF, walk_run
from ..results import Finding
from .base import Rule, RuleContext, span


class MissingResidual(Rule):
    """
    ## What it does
    Measures how many weight layers the gradient must cross, at the least, to get from the
    output back to the earliest layer, and reports networks where that number exceeds a
    threshold because there is no skip path (a tensor added to, or concatenated with, a
    transformed version of itself) around the deep part. Skips are found from the graph, not
    from names.

    ## Why is this bad?
    Plain deep networks are hard to optimise even with normalisation: past about twenty layers
    their training error gets worse as depth grows (the degradation problem of He et al. 2016),
    and their gradients lose correlation with depth ("shattered gradients"). A residual or dense
    connection gives the gradient a short path to every layer.

    ## Example
    ```python
    layers = [nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
              for _ in range(40)]
    model = nn.Sequential(*layers)
    ```

    ## Use instead
    ```python
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64))
        def forward(self, x):
            return torch.relu(x + self.f(x))

    model = nn.Sequential(*[Block() for _ in range(40)])
    ```

    ## Options
    - `max-depth` (default 30): the most weight layers the gradient may have to cross.

    ## References
    - He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
    - Balduzzi et al., "The Shattered Gradients Problem", ICML 2017.
    """

    code = "AL103"
    name = "missing-residual"
    severity = "warning"
    options = {"max-depth": 30}

    bad_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*[nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32), nn.ReLU())
                                    for _ in range(34)])

    def forward(self, x):
        return self.body(x)
"""

    good_example = """
import torch
import torch.nn as nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32))

    def forward(self, x):
        return torch.relu(x + self.f(x))

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*[Block() for _ in range(34)])

    def forward(self, x):
        return self.body(x)
"""

    def check(self, ctx: RuleContext) -> Iterator[Finding]:
        limit = int(ctx.options["max-depth"])
        s = ctx.facts.structure
        worst, depth = None, 0
        for node in ctx.graph.nodes:
            if not s.counts_as_layer(node):
                continue
            d = s.layers_to_output.get(node, INF)
            if d == INF:
                continue
            if d + 1 > depth:
                worst, depth = node, int(d) + 1
        if worst is None or depth <= limit:
            return
        path = [n for n in walk_run(worst, s.next_layer, stop_kind="") if s.counts_as_layer(n)]
        skips = len(s.skip_joins)
        skip_text = ("the network has no skip connection" if skips == 0 else
                     f"its {skips} skip connection{'s' if skips > 1 else ''} do not bypass "
                     f"these layers")
        yield self.finding(
            ctx, worst,
            f"the gradient reaching {worst.location_module or worst.name} must cross {depth} "
            f"weight layers ({span(path)}) and {skip_text} (limit {limit}; longest path "
            f"{s.longest_path} weight layers)",
            hint="add residual (x + f(x)) or dense (cat) connections around groups of layers",
            data={"depth": depth, "limit": limit, "longest_path": s.longest_path,
                  "skip_joins": skips},
        )
