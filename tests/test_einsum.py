"""Products between activations written with ``torch.einsum`` or ``@``: the equation's own rule
(archlint/ops/contract.py), and attention whose output rows are averages of the values -- a
gradient shared by every position (a mean-pooled classifier) reaches the values summed, not
averaged (the estimate was 0.6 decades low on every attention layer of such a ViT)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from archlint.ops.contract import parse_equation
from test_estimator_cases import _check

import archlint


@pytest.mark.parametrize("equation,shapes,want", [
    ("bhid,bhjd->bhij", [(2, 4, 8, 16), (2, 4, 8, 16)], (["bhid", "bhjd"], "bhij")),
    ("ij,jk", [(3, 4), (4, 5)], (["ij", "jk"], "ik")),  # implicit output
    ("...d,de->...e", [(2, 7, 8), (8, 3)], (["ABd", "de"], "ABe")),
    ("b i d, b j d -> b i j", [(2, 3, 4), (2, 5, 4)], (["bid", "bjd"], "bij")),
])
def test_equations(equation, shapes, want):
    ops, out, sizes = parse_equation(equation, shapes)
    assert (ops, out) == want
    assert all(sizes[c] == n for t, s in zip(ops, shapes) for c, n in zip(t, s))


@pytest.mark.parametrize("equation,shapes", [
    ("ij,jk->ik", [(3, 4), (5, 6)]),  # j: 4 against 5
    ("ij,jk->ik", [(3, 4)]),  # one shape for two operands
    ("ij->ik", [(3, 4)]),  # k appears in no operand
])
def test_equations_that_do_not_fit(equation, shapes):
    assert parse_equation(equation, shapes) is None


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 4, einsum: bool = True):
        super().__init__()
        self.heads, self.scale, self.einsum = heads, (dim // heads) ** -0.5, einsum
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.einsum:
            attn = (torch.einsum("bhid,bhjd->bhij", q, k) * self.scale).softmax(-1)
            out = torch.einsum("bhij,bhjd->bhid", attn, v)
        else:
            attn = (q @ k.transpose(-1, -2) * self.scale).softmax(-1)
            out = attn @ v
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class PooledViT(nn.Module):
    """Patch embedding with a bias, pre-norm blocks, mean over tokens, a linear head."""

    def __init__(self, dim: int = 64, depth: int = 6, einsum: bool = True):
        super().__init__()
        self.embed = nn.Linear(48, dim)
        self.attn = nn.ModuleList(Attention(dim, einsum=einsum) for _ in range(depth))
        self.ff = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim),
                                              nn.GELU(), nn.Linear(4 * dim, dim))
                                for _ in range(depth))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.embed(x)
        for attn, ff in zip(self.attn, self.ff):
            x = x + attn(x)
            x = x + ff(x)
        return self.head(x.mean(1))


@pytest.mark.parametrize("einsum", [True, False], ids=["einsum", "matmul"])
def test_mean_pooled_attention(einsum):
    torch.manual_seed(0)
    _check(PooledViT(einsum=einsum), (4, 16, 48), worst=0.25, spread=0.2, verdict=None)


def test_einsum_has_a_rule():
    torch.manual_seed(0)
    (t,) = archlint.lint(PooledViT(einsum=True), example_input=(4, 16, 48)).targets
    assert t.status == "ok"
    assert not any("without a formula" in n for n in t.notes), t.notes
