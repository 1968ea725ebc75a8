"""What ``--measure`` prints: the median error with the common offset, the worst layer, the
spread error on the verdict's layers, and layers predicted zero but measured non-zero (or the
reverse) as errors -- never a bare 0.000 for a single layer."""

from __future__ import annotations

import math

import torch
from torch import nn

import archlint
from archlint.measure import measure_grad_rms
from archlint.results import Measurement

from helpers import invoke, write


def test_line_for_one_layer_and_for_mismatches():
    one = Measurement(median_decades=0.0, layers=1, offset_decades=0.08)
    assert "0.000" not in one.describe() and "one layer" in one.describe()
    many = Measurement(median_decades=0.05, layers=9, offset_decades=-0.1, worst_layer="fc3",
                       worst_decades=0.31, predicted_spread=-1.2, measured_spread=-1.0,
                       zero_mismatch=["stem", "fc1"])
    line = many.describe()
    for part in ("median error 0.050", "worst layer fc3 +0.31", "spread error -0.20",
                 "2 layer(s) predicted zero but measured non-zero", "stem, fc1"):
        assert part in line, line


MODEL = '''
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(32, 32), nn.Tanh())])
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.body(x))
'''


def test_cli_line(tmp_path):
    path = write(tmp_path / "net.py", MODEL)
    result = invoke(f"{path}:Net", "--measure", "--no-cache", "--input-shape", "16,32")
    line = next(l for l in result.output.splitlines() if "estimate vs measured" in l)
    assert "worst layer" in line and "spread error" in line and "common offset" in line, line


class OneTokenBN(nn.Module):
    """LeViT's last stage: one token per sample, a linear layer normalised by BatchNorm1d over
    the flattened tokens, a mean over the (single) token. The gradient is 'shared by every
    position of the sample' (there is one), and batch norm used to drop it all: the layers
    before were predicted zero."""

    def __init__(self, d=64):
        super().__init__()
        self.stem = nn.Linear(16, d)
        self.lin = nn.Linear(d, d, bias=False)
        self.bn = nn.BatchNorm1d(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):  # (B, 1, 16)
        h = torch.relu(self.stem(x))
        y = self.lin(h)
        y = self.bn(y.flatten(0, 1)).reshape_as(y)
        return self.head((h + y).mean(1))


def test_batch_norm_with_one_position_per_sample():
    torch.manual_seed(0)
    model = OneTokenBN()
    (t,) = archlint.lint(model, example_input=(8, 1, 16)).targets
    pred = {layer.module: layer.grad_rms for layer in t.layers}
    x = torch.randn(8, 1, 16, generator=torch.Generator().manual_seed(3))
    meas = measure_grad_rms(model, (x,), seed=9).rms
    for name in ("stem", "lin"):
        assert pred[name] and pred[name] > 0, (name, pred[name], meas[name])
        assert abs(math.log10(pred[name] / meas[name])) < 0.3, (name, pred[name], meas[name])
