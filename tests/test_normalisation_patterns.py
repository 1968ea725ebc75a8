"""Normalisations written with tensor ops and weights standardised in forward, read off the
graph (archlint.analysis.normalisation), and what the exploding verdict leaves out because of
them (archlint.estimate.verdict)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlint.analysis.normalisation import hand_written_norms, scale_free_weight
from archlint.estimate.verdict import _scale_invariant
from archlint.api import to_input_spec
from archlint.tracing import trace_model


def _graph(model: nn.Module, shape):
    return trace_model(model, to_input_spec(torch.randn(*shape), model))


class Norms(nn.Module):
    """Each way research code writes a normalisation, one after another."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.g = nn.Parameter(torch.ones(d))

    def forward(self, x):
        h = self.fc(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.g  # RMSNorm
        d = h - h.mean(-1, keepdim=True)
        h = d / (d.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()  # LayerNorm
        h = h / h.norm(dim=-1, keepdim=True)  # F.normalize
        h = (h - h.mean(-1, keepdim=True)) / h.std(-1, keepdim=True)  # standardise
        g = h.view(h.shape[0], 4, -1)
        g = (g - g.mean(-1, keepdim=True)) / (g.var(-1, keepdim=True) + 1e-5).sqrt()
        h = g.view(h.shape)  # GroupNorm
        return h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-6)  # x * x: a square too


def test_normalisations_written_by_hand_are_found():
    graph = _graph(Norms(), (4, 32))
    found = hand_written_norms(graph)
    assert len(found) == 6
    first = min(found.values(), key=lambda h: graph.nodes.index(h.node))
    assert first.base.module_path == "fc"


class NotNorms(nn.Module):
    def __init__(self, d: int = 32):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.other = nn.Linear(d, d)

    def forward(self, x):
        h, o = self.fc(x), self.other(x)
        a = h * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6)  # another tensor's scale
        b = h / h.pow(2).mean(-1, keepdim=True)  # x / E[x^2]: still scales as 1/x
        s = h.pow(2).mean(-1, keepdim=True)
        c = h * torch.rsqrt(s + 1e-6) + s  # the statistic used elsewhere too
        e = torch.exp(o - o.amax(-1, keepdim=True))
        d = e / e.sum(-1, keepdim=True)  # a softmax written out: a sum, not a magnitude
        return a + b + c + d


def test_look_alikes_are_not_normalisations():
    assert not hand_written_norms(_graph(NotNorms(), (4, 32)))


class WSConv(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w * self.gain, self.bias, self.stride, self.padding)


class ScaledConv(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight * 2.0, self.bias, self.stride, self.padding)


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.ws = WSConv(3, 8, 3, padding=1)
        self.scaled = ScaledConv(8, 8, 3, padding=1)

    def forward(self, x):
        return self.scaled(torch.relu(self.ws(x)))


def test_weight_standardisation_is_scale_free_and_a_scale_is_not():
    graph = _graph(TwoConvs(), (2, 3, 8, 8))
    layers = {n.module_path: n for n in graph.nodes if n.is_weight_layer}
    assert scale_free_weight(layers["ws"])
    assert not scale_free_weight(layers["scaled"])
    assert _scale_invariant(graph) == {"ws"}


class PreNormResidual(nn.Module):
    """x + fc2(relu(fc1(rmsnorm(x)))): fc1's output is normalised nowhere before the residual
    add reads fc2's; the norm's own input (the stream) is what it normalises."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        x = self.inp(x)
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        x = x + self.fc2(torch.relu(self.fc1(h)))
        return self.out(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_only_layers_whose_every_use_is_normalised_are_left_out():
    graph = _graph(PreNormResidual(), (4, 32))
    # inp feeds the norm and the residual add: scale-dependent; fc2 feeds the add; fc1 a ReLU
    # then fc2; out is the output
    assert _scale_invariant(graph) == set()
