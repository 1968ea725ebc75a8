"""AL109 probability-loss-on-sigmoid: a source rule (reads the code, never imports it)."""

from __future__ import annotations

from typing import Iterator

from ..results import Finding
from .base import Rule, SourceContext
from .sourceflow import analyse_file

_INSTEAD = {
    "sigmoid": ("drop the sigmoid and use nn.BCEWithLogitsLoss / "
                "F.binary_cross_entropy_with_logits on the logits, or F.logsigmoid(logits) "
                "(F.logsigmoid(-logits) for log(1 - sigmoid))"),
    "softmax": ("drop the softmax and use F.log_softmax(logits) with nn.NLLLoss, or "
                "nn.CrossEntropyLoss on the logits"),
}


class ProbabilityLossOnSigmoid(Rule):
    """
    ## What it does
    Reads the code (the syntax tree, with simple data flow inside each function; the file is not
    imported) for `nn.BCELoss`, `F.binary_cross_entropy` or `torch.log` applied to the output
    of a sigmoid, and `torch.log` or `nn.NLLLoss`/`F.nll_loss` applied to the output of a
    softmax. The sigmoid or softmax is the expression itself (`torch.log(torch.sigmoid(x))`),
    a variable holding it, or a model of the file whose output is one (a class ending in
    `nn.Sigmoid`, or whose `forward` returns `torch.sigmoid(...)`: from its analysed graph when
    it was linted, else from the class source), called where the criterion is applied
    (`criterion(netD(x), y)`, `output = model(x)`; module-level instances, instances made in
    the function, `self.` attributes, and `netD`/`D` parameters when the file has one
    discriminator class).

    ## Why is this bad?
    In float32 the sigmoid rounds to exactly 1.0 beyond a logit of about 17 (and to the
    smallest float near -88): `log(1 - 1.0)` is `-inf`, which the loss clamps (BCELoss at
    -100), and the clamped log passes no gradient back -- the sigmoid's own derivative there is
    exactly zero. A unit or a discriminator that becomes confidently wrong then gets no signal
    to recover. The logits forms (`BCEWithLogitsLoss`, `logsigmoid`, `log_softmax`) compute the
    same loss stably and keep the gradient.

    ## Example
    ```python
    self.main = nn.Sequential(..., nn.Linear(128, 1), nn.Sigmoid())
    criterion = nn.BCELoss()
    loss = criterion(netD(x), labels)
    ```

    ## Use instead
    ```python
    self.main = nn.Sequential(..., nn.Linear(128, 1))   # logits
    criterion = nn.BCEWithLogitsLoss()
    loss = criterion(netD(x), labels)
    ```
    and `F.log_softmax(logits, -1)` / `nn.CrossEntropyLoss()` instead of
    `torch.log(F.softmax(logits, -1))` / `nn.NLLLoss()` on a softmax.

    ## References
    - PyTorch documentation, `torch.nn.BCEWithLogitsLoss`: "more numerically stable than using
      a plain Sigmoid followed by a BCELoss".
    - Goodfellow, Bengio & Courville, "Deep Learning", section 6.2.2.2 (sigmoid units and the
      log-likelihood).
    """

    code = "AL109"
    name = "probability-loss-on-sigmoid"
    severity = "info"
    kind = "source"

    bad_example = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())

    def forward(self, x):
        return self.net(x)


model = Model()
criterion = nn.BCELoss()


def train_step(x, y):
    loss = criterion(model(x), y)
    loss.backward()
"""
    good_example = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x)


model = Model()
criterion = nn.BCEWithLogitsLoss()


def train_step(x, y):
    loss = criterion(model(x), y)
    loss.backward()
"""

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        flow = analyse_file(ctx.tree, ctx.models, ctx.path)
        groups: dict[tuple, list] = {}  # one finding per loss and probability it is applied to
        for p in flow.probability_logs:
            groups.setdefault((p.what, p.prob, p.prob_line, p.prob_what), []).append(p)
        for group in groups.values():
            p = group[0]
            line = p.node.lineno  # type: ignore[attr-defined]
            more = [g.node.lineno for g in group[1:]]  # type: ignore[attr-defined]
            also = (f" (also on line{'s' if len(more) > 1 else ''} "
                    f"{', '.join(map(str, more))})") if more else ""
            if p.prob == "sigmoid":
                why = ("in float32 the sigmoid rounds to exactly 1.0 beyond a logit of about "
                       "17, and the clamped log then passes no gradient")
            elif p.what.startswith(("nn.NLLLoss", "F.nll_loss")):
                why = ("NLLLoss expects log-probabilities: on probabilities it minimises -p, "
                       "whose gradient vanishes as the softmax saturates")
            else:
                why = ("in float32 a softmax probability underflows to 0 once its logit is "
                       "about 100 below the largest: the log is then -inf and its gradient NaN")
            yield self.source_finding(
                ctx, p.node,
                f"{p.what} on line {line}{also} applied to the output of a {p.prob} "
                f"({p.prob_what}): "
                f"{why}; {_INSTEAD[p.prob]}",
                hint=_INSTEAD[p.prob],
                data={"loss_line": line, "probability_line": p.prob_line, "kind": p.prob,
                      "also_lines": more})
