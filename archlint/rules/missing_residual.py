"""AL103 missing-residual."""

from __future__ import annotations

from typing import Iterator

from ..analysis.structure import longest_plain_stretch, plain_stretch
from ..results import Finding
from .base import Rule, RuleContext, span


class MissingResidual(Rule):
    """
    ## What it does
    Measures how many weight layers the gradient must cross, at the least, to get from the
    output back to the earliest layer, and reports networks where that number exceeds a
    threshold because there is no skip path (a tensor added to, or concatenated with, a
    transformed version of itself) around the deep part. Skips are found from the graph, not
    from names. What is counted is the longest plain stretch: the weight layers the gradient
    crosses between two skip joins. A network with a skip join in every block is a residual
    design even where part of each block stays outside the skip (ConvMixer keeps its pointwise
    convolutions outside the residual around its spatial mixing, and trains at 32 blocks).

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
    - `max-depth` (default 30): the most weight layers the gradient may have to cross with no
      skip join between them.

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
        worst = longest_plain_stretch(s, ctx.graph.nodes)
        if worst is None:
            return
        path = plain_stretch(s, worst)
        depth = len(path)
        if depth <= limit:
            return
        total = int(s.layers_to_output.get(worst, 0)) + 1
        skips = len(s.skip_joins)
        skip_text = ("the network has no skip connection" if skips == 0 else
                     "no skip connection joins between them" + (
                         f" ({total} weight layers in all to the output)" if total > depth
                         else ""))
        yield self.finding(
            ctx, worst,
            f"the gradient reaching {worst.location_module or worst.name} must cross {depth} "
            f"weight layers ({span(path)}) and {skip_text} (limit {limit}; longest path "
            f"{s.longest_path} weight layers)",
            hint="add residual (x + f(x)) or dense (cat) connections around groups of layers",
            data={"depth": depth, "limit": limit, "longest_path": s.longest_path,
                  "skip_joins": skips, "layers_to_output": total},
        )

