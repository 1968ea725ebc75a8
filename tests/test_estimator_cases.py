"""The estimate against measurement on patterns it once got wrong.

Each case is an ordinary model; the test lints it, measures the probe for real (independent
random streams) and asserts the figures a user reads: the worst layer's error after the common
offset, the spread error (predicted minus measured first-to-last decades, no offset), and the
AL105/AL106 verdict.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archlint
from archlint.estimate.accuracy import compare
from archlint.measure import measure_grad_rms


def _check(model: nn.Module, shape, *, worst: float, spread: float, verdict: str | None,
           seed: int = 0) -> None:
    target = archlint.lint(model, example_input={"shape": list(shape)}).targets[0]
    assert target.status == "ok", target.error
    data = target.to_dict()
    pred = {layer["module"]: layer["grad_rms"] for layer in data["layers"]}
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 101))
    meas = measure_grad_rms(model, (x,), seed=seed + 7).rms
    flow = data["gradient_flow"]["vanishing"]
    acc = compare(pred, meas, flow["earliest"], flow["last"])
    assert not acc.zero_mismatch, acc.zero_mismatch
    assert acc.worst_error is not None and acc.worst_error <= worst, acc.worst
    assert abs(acc.spread_error) <= spread, (acc.predicted_decades, acc.measured_decades)
    codes = {f["code"] for f in data["findings"]}
    if verdict is None:
        assert not codes & {"AL105", "AL106"}, codes
    else:
        assert verdict in codes, codes


class PlainTanhCNN(nn.Module):
    """A stem and 16 conv+tanh at PyTorch's default init (biases on), global average pool: the
    textbook vanishing gradient (about 4 decades from the stem to the last conv)."""

    def __init__(self, width: int = 16, depth: int = 16, functional_pool: bool = False):
        super().__init__()
        layers = [nn.Conv2d(3, width, 3, padding=1), nn.Tanh()]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.Tanh()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.functional_pool = functional_pool
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1) if self.functional_pool else self.pool(x)
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("functional", [False, True], ids=["module-pool", "functional-pool"])
def test_deep_plain_tanh_cnn_at_default_init(functional):
    torch.manual_seed(0)
    _check(PlainTanhCNN(functional_pool=functional), (8, 3, 32, 32), worst=0.35, spread=0.3,
           verdict="AL105")


class SmallCNN(nn.Module):
    """Conv-ReLU stages with BatchNorm and a functional global pool (no vanishing)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def test_functional_global_pool_on_a_healthy_cnn():
    torch.manual_seed(0)
    _check(SmallCNN(), (8, 3, 32, 32), worst=0.3, spread=0.3, verdict=None)
