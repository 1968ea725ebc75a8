"""AL107 recurrent-horizon."""

from __future__ import annotations

import math
from typing import Iterator

from ..analysis.recurrence import RecurrentUse
from ..results import Finding
from .base import Rule, RuleContext


class RecurrentHorizon(Rule):
    """
    ## What it does
    For every vanilla RNN (``nn.RNN`` with tanh or relu, or an ``nn.RNNCell`` applied in a loop),
    measures the per-step gain of the gradient through time with its initial weights (the layer
    alone is run over up to 64 steps of random input and the gradient reaching the first step is
    compared with the last; mean field, ``sigma_hh^2 * E[phi'(z)^2]``, is the fallback) and
    reports it when the sequence it reads is longer than the horizon that gain can carry: the
    number of steps after which the gradient from the last step has fallen by 1000x (or grown
    by 1000x).

    ## Why is this bad?
    Backpropagation through time multiplies the gradient by the recurrent Jacobian at every
    step. With a per-step gain below 1 the signal from early steps vanishes exponentially: the
    network cannot learn dependencies longer than its horizon, however long the sequences it is
    trained on. With a gain above 1 the gradient explodes.

    ## Example
    ```python
    rnn = nn.RNN(input_size=32, hidden_size=128, batch_first=True)   # read over 200 steps
    ```

    ## Use instead
    A gated cell (LSTM, GRU), or an orthogonal/identity recurrent init with ReLU (IRNN), or
    truncated sequences:
    ```python
    rnn = nn.LSTM(input_size=32, hidden_size=128, batch_first=True)
    ```

    ## Options
    - `min-gain` (default 0.001): the smallest acceptable gradient ratio across the sequence
      (the horizon is where the gain falls below it, or its inverse is exceeded).

    ## References
    - Bengio, Simard & Frasconi, "Learning long-term dependencies with gradient descent is
      difficult", 1994.
    - Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks", 2013.
    - Le, Jaitly & Hinton, "A Simple Way to Initialize Recurrent Networks of ReLUs", 2015.
    """

    code = "AL107"
    name = "recurrent-horizon"
    severity = "warning"
    options = {"min-gain": 0.001}
    needs_input = True

    bad_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(16, 64, batch_first=True)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

INPUT = {"shape": [4, 100, 16]}
"""

    good_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(16, 64, batch_first=True)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

INPUT = {"shape": [4, 100, 16]}
"""

    def check(self, ctx: RuleContext) -> Iterator[Finding]:
        floor = float(ctx.options["min-gain"])
        uses: list[RecurrentUse] = ctx.facts.recurrence
        for use in uses:
            if use.steps is None or use.step_gain is None or use.step_gain <= 0:
                continue
            g = use.step_gain
            if abs(math.log(g)) < 1e-9:
                continue
            horizon = math.log(floor) / math.log(g) if g < 1 else math.log(1 / floor) / math.log(g)
            horizon_steps = max(1, math.floor(horizon) + 1)
            if use.steps <= horizon_steps:
                continue
            total = g ** (use.steps - 1)
            decades = abs(math.log10(total)) if total > 0 else float("inf")
            verb = "vanishes" if g < 1 else "explodes"
            yield self.finding(
                ctx, use.node,
                f"vanilla {use.nonlinearity} RNN {use.node.location_module} is read over "
                f"{use.steps} steps but its per-step gradient gain is {g:.3g}: the gradient "
                f"from the last step {verb} by {decades:.1f} decades by the first, beyond its "
                f"horizon of about {horizon_steps} steps ({use.origin})",
                hint="use nn.LSTM/nn.GRU, an orthogonal or identity recurrent init, or shorter "
                     "sequences",
                data={"steps": use.steps, "step_gain": g, "horizon": horizon_steps,
                      "decades": decades})
