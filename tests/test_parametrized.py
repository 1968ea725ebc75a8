"""Layers parametrized with ``torch.nn.utils.parametrizations`` (weight_norm, spectral_norm):
the layer is the parametrized module, its weights the originals its weight is computed from.
Before, the report listed ``layers.0.parametrizations.weight`` without a prediction, and
``--measure`` compared nothing on a spectral-norm discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations as P

import archlint
from test_estimator_cases import _check


class WeightNormMLP(nn.Module):
    def __init__(self, depth=8, width=64):
        super().__init__()
        self.layers = nn.ModuleList(P.weight_norm(nn.Linear(width, width)) for _ in range(depth))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
        return self.head(x)


class SpectralNormD(nn.Module):
    def __init__(self):
        super().__init__()
        c = [3, 32, 64, 128]
        self.convs = nn.ModuleList(P.spectral_norm(nn.Conv2d(c[i], c[i + 1], 4, 2, 1))
                                   for i in range(3))
        self.fc = P.spectral_norm(nn.Linear(128 * 4 * 4, 1))

    def forward(self, x):
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
        return self.fc(x.flatten(1))


def test_parametrized_layers_are_named_and_measured():
    torch.manual_seed(0)
    for model, shape, names in ((WeightNormMLP(), (8, 64), [f"layers.{i}" for i in range(8)]),
                                (SpectralNormD(), (8, 3, 32, 32), ["convs.0", "convs.1",
                                                                   "convs.2", "fc"])):
        report = archlint.lint(model, example_input=shape)
        (t,) = report.targets
        assert t.status == "ok", t.error
        layers = {layer.module: layer for layer in t.layers}
        assert not any("parametrizations" in m for m in layers)
        assert all(layers[n].grad_rms and layers[n].grad_rms > 0 for n in names)


def test_parametrized_estimates_match_measurement():
    torch.manual_seed(0)
    _check(WeightNormMLP(), (8, 64), worst=0.2, spread=0.25, verdict=None)
    torch.manual_seed(0)
    _check(SpectralNormD(), (8, 3, 32, 32), worst=0.25, spread=0.25, verdict=None)
