"""Ops that used to be estimated by running them alone now have their own rule: ``addcmul``
(ResMLP's affine), ``exp`` (a state-space model's ``A = -exp(A_log)``), ``nn.Unfold`` and
``F.fold`` (hand-written convolutions, patches laid back into an image) and ``Tensor.unfold``.
Each model must be estimated with no op left over, and close to measurement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archlint
from test_estimator_cases import _check


class Affine(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(d))
        self.beta = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return torch.addcmul(self.beta, self.alpha, x)


class AffineMLP(nn.Module):
    def __init__(self, d=64, depth=6):
        super().__init__()
        self.embed = nn.Linear(48, d)
        self.norms = nn.ModuleList(Affine(d) for _ in range(depth))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(),
                                                nn.Linear(2 * d, d)) for _ in range(depth))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = self.embed(x)
        for norm, mlp in zip(self.norms, self.mlps):
            x = x + 0.5 * mlp(norm(x))
        return self.head(x)


class DecaySSM(nn.Module):
    def __init__(self, d=32, depth=4):
        super().__init__()
        self.inp = nn.ModuleList(nn.Linear(d, d) for _ in range(depth))
        self.A_log = nn.ParameterList(
            nn.Parameter(torch.log(torch.arange(1, d + 1).float())) for _ in range(depth))
        self.out = nn.Linear(d, 5)

    def forward(self, x):
        for lin, a_log in zip(self.inp, self.A_log):
            decay = torch.exp(-torch.exp(a_log) * 0.05)
            x = x + torch.tanh(lin(x)) * decay
        return self.out(x)


class Im2colConv(nn.Module):
    """A convolution written by hand: ``nn.Unfold`` (zero padding), a linear map over each
    window, the result laid back out as an image."""

    def __init__(self, c=32, k=3):
        super().__init__()
        self.unfold = nn.Unfold(k, padding=1)
        self.lin = nn.Linear(c * k * k, c)

    def forward(self, x):
        B, C, H, W = x.shape
        cols = self.unfold(x).transpose(1, 2)  # B, HW, C*k*k
        return self.lin(cols).transpose(1, 2).reshape(B, C, H, W)


class Im2colNet(nn.Module):
    """Hand-written convolutions with ReLU and batch norm, then a decoder that lays 4x4
    patches back into an image with ``F.fold`` (MAE-style)."""

    def __init__(self, c=32, depth=4, patch=4):
        super().__init__()
        self.patch = patch
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(Im2colConv(c) for _ in range(depth))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for _ in range(depth))
        self.to_patches = nn.Linear(c, 3 * patch * patch)

    def forward(self, x):
        B, _, H, W = x.shape
        x = self.stem(x)
        for block, norm in zip(self.blocks, self.norms):
            x = torch.relu(norm(block(x)))
        p = self.patch
        tokens = F.avg_pool2d(x, p).flatten(2).transpose(1, 2)  # B, L, c
        cols = self.to_patches(tokens).transpose(1, 2)  # B, 3*p*p, L
        return F.fold(cols, (H, W), p, stride=p)


class PatchSeries(nn.Module):
    """A time-series patch embedding with ``Tensor.unfold`` (PatchTST-style), then an MLP."""

    def __init__(self, d=16, patch=4, width=64, depth=3):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(d * patch, width)
        self.body = nn.Sequential(*[m for _ in range(depth)
                                    for m in (nn.Linear(width, width), nn.ReLU())])
        self.head = nn.Linear(width, 3)

    def forward(self, x):  # B, T, d
        p = x.unfold(1, self.patch, self.patch).flatten(2)  # B, T/patch, d*patch
        return self.head(self.body(self.embed(p)))


@pytest.mark.parametrize("model,shape", [(AffineMLP, (4, 16, 48)), (DecaySSM, (4, 16, 32)),
                                         (Im2colNet, (4, 3, 16, 16)), (PatchSeries, (4, 32, 16))],
                         ids=["addcmul", "exp", "unfold-fold", "tensor-unfold"])
def test_ops_with_their_own_rule(model, shape):
    torch.manual_seed(0)
    m = model()
    (t,) = archlint.lint(m, example_input=shape).targets
    assert t.status == "ok", t.error
    assert not any("without a formula" in n for n in t.notes), t.notes
    _check(m, shape, worst=0.2, spread=0.2, verdict=None)


class LogSoftmaxClassifier(nn.Module):
    """The PyTorch MNIST example's ending: ``F.log_softmax`` for ``nll_loss``."""

    def __init__(self, module: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 10)
        self.out = nn.LogSoftmax(dim=1) if module else None

    def forward(self, x):
        y = self.fc2(torch.relu(self.fc1(x)))
        return self.out(y) if self.out is not None else F.log_softmax(y, dim=1)


@pytest.mark.parametrize("module", [False, True], ids=["functional", "module"])
def test_log_softmax_passes_the_gradient(module):
    """Its gradient is ``g - p * sum(g)``: nearly all of an incoherent gradient (it was
    estimated as a softmax's, 1.6 decades low on every layer)."""
    import math

    from archlint.measure import measure_grad_rms

    torch.manual_seed(0)
    model = LogSoftmaxClassifier(module)
    (t,) = archlint.lint(model, example_input=(16, 64)).targets
    pred = {layer.module: layer.grad_rms for layer in t.layers}
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    meas = measure_grad_rms(model, (x,), seed=11).rms
    for name in ("fc1", "fc2"):
        assert abs(math.log10(pred[name] / meas[name])) < 0.15, (name, pred[name], meas[name])


class PointNet(nn.Module):
    """Shared per-point MLP with batch norm, a max over the points, an MLP head."""

    def __init__(self, k=10):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv1d(3, 64, 1), nn.BatchNorm1d(64), nn.ReLU(),
                                 nn.Conv1d(64, 128, 1), nn.BatchNorm1d(128), nn.ReLU(),
                                 nn.Conv1d(128, 256, 1), nn.BatchNorm1d(256))
        self.head = nn.Sequential(nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                  nn.Linear(128, k))

    def forward(self, x):  # (B, 3, N)
        return F.log_softmax(self.head(torch.max(self.mlp(x), 2)[0]), dim=1)


def test_max_over_points():
    """The max of N values is the largest of N fluctuations (2.6 sigma for 128 points), not a
    typical value: the layers before it were 0.3 decades low against the head."""
    torch.manual_seed(0)
    _check(PointNet(), (4, 3, 128), worst=0.2, spread=0.2, verdict=None)


class CenteredByHand(nn.Module):
    """Subtraction: ``z - z.mean(-1)`` centres a pre-activation whose bias is large, and
    ``1 - sigmoid`` flips the last one (both were estimated as additions, means added)."""

    def __init__(self, width=64, depth=4):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        for fc in self.fcs:
            nn.init.constant_(fc.bias, 2.0)
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        for fc in self.fcs:
            z = fc(x)
            x = torch.relu(z - z.mean(-1, keepdim=True))
        return self.head(1 - torch.sigmoid(x))


def test_subtraction():
    torch.manual_seed(0)
    _check(CenteredByHand(), (16, 64), worst=0.2, spread=0.2, verdict=None)


class VQVAE(nn.Module):
    """A straight-through quantiser, ``z + (q - z).detach()``: the decoder reads the codebook
    vectors (small), the encoder gets the decoder's gradient unchanged. Read as a sum of
    independent terms, the decoder's input was the encoder's scale: 1.8 decades of spread."""

    def __init__(self, codes=128, dim=32):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 64, 4, 2, 1), nn.ReLU(), nn.Conv2d(64, dim, 4, 2, 1))
        self.codebook = nn.Embedding(codes, dim)
        nn.init.uniform_(self.codebook.weight, -1 / codes, 1 / codes)
        self.dec = nn.Sequential(nn.ConvTranspose2d(dim, 64, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(64, 3, 4, 2, 1))

    def forward(self, x):
        z = self.enc(x)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = torch.cdist(flat, self.codebook.weight).argmin(1)
        q = self.codebook(idx).view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        q = z + (q - z).detach()
        return self.dec(q)


def test_straight_through_estimator():
    torch.manual_seed(0)
    _check(VQVAE(), (4, 3, 32, 32), worst=0.2, spread=0.2, verdict=None)
