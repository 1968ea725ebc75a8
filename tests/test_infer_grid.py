"""A linear first layer says how many features, not how many positions: a Fourier neural
operator reads a channels-last field [B, H, W, 3] and builds complex spectral weights. Its input
is found by running forward ([B, 3] fails, [B, 32, 32, 3] runs), and its complex weights are
read as their real and imaginary parts (no 'casting complex to real' warning)."""

from __future__ import annotations

import textwrap
import warnings

from helpers import lint_source

SOURCE = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class SpectralConv2d(nn.Module):
        def __init__(self, cin, cout, modes):
            super().__init__()
            self.modes = modes
            scale = 1 / (cin * cout)
            self.w = nn.Parameter(scale * torch.rand(cin, cout, modes, modes, dtype=torch.cfloat))

        def forward(self, x):
            x_ft = torch.fft.rfft2(x)
            out = torch.zeros(x.shape[0], self.w.shape[1], x.size(-2), x.size(-1) // 2 + 1,
                              dtype=torch.cfloat)
            m = self.modes
            out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m, :m], self.w)
            return torch.fft.irfft2(out, s=(x.size(-2), x.size(-1)))


    class FNO(nn.Module):
        def __init__(self, width=16, layers=3):
            super().__init__()
            self.lift = nn.Linear(3, width)
            self.spectral = nn.ModuleList(SpectralConv2d(width, width, 6) for _ in range(layers))
            self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
            self.project = nn.Linear(width, 1)

        def forward(self, a):
            x = self.lift(a).permute(0, 3, 1, 2)
            for s, w in zip(self.spectral, self.pointwise):
                x = F.gelu(s(x) + w(x))
            return self.project(x.permute(0, 2, 3, 1))
''')


def test_grid_input_and_complex_weights(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        r = lint_source(tmp_path, SOURCE, "FNO")
    assert r.status == "ok", r.error
    assert r.input.startswith("[8, 32, 32, 3]") and "guessed" in r.input
