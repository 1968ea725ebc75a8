"""An image input's size read off nothing (a convolution says channels, not size) is checked by
running forward: a ViT whose position embedding was made for 224 x 224, a diffusion
transformer on 16 x 16 latents with a timestep, get the size forward runs with (marked
guessed) instead of 32 x 32 and an error."""

from __future__ import annotations

import textwrap

from helpers import lint_source

SOURCE = textwrap.dedent('''
    import math
    import torch
    import torch.nn as nn


    class ViT(nn.Module):
        def __init__(self, image_size=224, patch=16, dim=64, classes=10):
            super().__init__()
            n = (image_size // patch) ** 2
            self.to_patch = nn.Conv2d(3, dim, patch, patch)
            self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
            self.head = nn.Linear(dim, classes)

        def forward(self, img):
            x = self.to_patch(img).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embedding
            return self.head(self.mlp(x)[:, 0])


    class LatentDenoiser(nn.Module):
        def __init__(self, size=16, patch=2, dim=64):
            super().__init__()
            self.embed = nn.Conv2d(4, dim, patch, patch)
            self.pos = nn.Parameter(torch.zeros(1, (size // patch) ** 2, dim))
            self.t_mlp = nn.Sequential(nn.Linear(32, dim), nn.SiLU(), nn.Linear(dim, dim))
            self.out = nn.Linear(dim, patch * patch * 4)

        def forward(self, x, t):
            f = torch.exp(-math.log(10000) * torch.arange(16, device=t.device) / 16)
            a = t[:, None].float() * f[None]
            c = self.t_mlp(torch.cat([torch.cos(a), torch.sin(a)], -1))
            h = self.embed(x).flatten(2).transpose(1, 2) + self.pos
            return self.out(h + c[:, None])


    class NeRF(nn.Module):
        def __init__(self, W=64, L=6):
            super().__init__()
            self.L = L
            self.fc1 = nn.Linear(3 + 6 * L, W)
            self.fc2 = nn.Linear(W, 4)

        def forward(self, xyz):
            enc = [xyz] + [f(2.0 ** k * xyz) for k in range(self.L) for f in (torch.sin, torch.cos)]
            return self.fc2(torch.relu(self.fc1(torch.cat(enc, -1))))


    class FiLMNet(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.stem = nn.Conv2d(3, c, 3, padding=1)
            self.cond = nn.Embedding(10, 8)
            self.film = nn.Linear(8, 2 * c)
            self.head = nn.Linear(c, 5)

        def forward(self, x, y):
            g, b = self.film(self.cond(y)).chunk(2, -1)
            h = torch.relu(self.stem(x) * (1 + g[..., None, None]) + b[..., None, None])
            return self.head(h.mean((2, 3)))


    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.c(x)).flatten(1))
''')


def test_position_embedding_sets_the_size(tmp_path):
    r = lint_source(tmp_path, SOURCE, "ViT")
    assert r.status == "ok", r.error
    assert r.input.startswith("[8, 3, 224, 224]") and "guessed" in r.input


def test_latents_and_timestep(tmp_path):
    r = lint_source(tmp_path, SOURCE, "LatentDenoiser")
    assert r.status == "ok", r.error
    assert "x=[8, 4, 16, 16]" in r.input and "t=[8]" in r.input


def test_default_size_kept_when_it_runs(tmp_path):
    r = lint_source(tmp_path, SOURCE, "SmallCNN")
    assert r.status == "ok", r.error
    assert r.input.startswith("[8, 3, 32, 32]") and "guessed" not in r.input


def test_coordinates_under_a_positional_encoding(tmp_path):
    r = lint_source(tmp_path, SOURCE, "NeRF")
    assert r.status == "ok", r.error
    assert r.input.startswith("[8, 3]") and "guessed" in r.input


def test_class_label_beside_an_image(tmp_path):
    """The embedding's ids are one per sample (a class label for FiLM), found by trial beside
    the image (they were [B, 32] tokens, and the model errored)."""
    r = lint_source(tmp_path, SOURCE, "FiLMNet")
    assert r.status == "ok", r.error
    assert "x=[8, 3, 32, 32]" in r.input and "y=[8] int64" in r.input
