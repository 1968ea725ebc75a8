"""The gradient verdicts leave out layers whose gradient is small or large by design at
initialisation (archlint/estimate/by_design.py): behind a learned near-zero layer-scale gain,
attention queries and keys, inside a sigmoid gate (exploding verdict only). The models are in
tests/fixtures/rules/by_design.py; they are linted here at a 1.5-decade limit, where each design
was reported before (2.2-2.9 decades) and each look-alike must still be."""

from __future__ import annotations

import textwrap

import pytest

from helpers import graph_of, lint_fixture, lint_source, structure_of

TIGHT = {"AL105": {"max-decades": 1.5}, "AL106": {"max-decades": 1.5}}


def codes(result) -> list[str]:
    return sorted(f.code for f in result.findings)


def tight(model: str):
    return lint_fixture("by_design", model, select=["AL105", "AL106"], options=TIGHT)


def test_squeeze_excite_layers_are_not_judged_for_exploding():
    r = tight("SEResNet")
    assert r.status == "ok" and codes(r) == []
    from archlint.estimate import by_design
    gated = by_design.inside_gates(graph_of(r), structure_of(r).grad_users)
    se = {n.module_path for n in graph_of(r).nodes
          if n.is_weight_layer and ".se." in (n.module_path or "")}
    assert se and gated == se
    # the vanishing verdict still judges them (a saturated gate is a real vanishing problem)
    assert "vanishing" in r.gradient_flow


def test_a_chaotic_tanh_stack_with_self_gates_is_still_reported():
    r = tight("GatedChaoticTanh")
    assert codes(r) == ["AL106"]
    (f,) = r.findings
    assert f.module.startswith("fcs.")
    from archlint.estimate import by_design
    gated = by_design.inside_gates(graph_of(r), structure_of(r).grad_users)
    assert gated == {f"gates.{i}" for i in range(24)}


def test_layer_scale_branches_are_identity_at_init():
    r = tight("CaiTLike")
    assert r.status == "ok" and codes(r) == []
    from archlint.estimate import by_design
    behind = by_design.behind_small_gain(graph_of(r), structure_of(r).grad_users)
    assert {"blocks.0.attn.qkv", "blocks.23.mlp.2", "class_blocks.1.attn.proj"} <= behind
    assert "patch_embed" not in behind and "head" not in behind


def test_a_fixed_gain_never_opens_and_is_reported():
    r = tight("FixedScaleCaiT")
    assert codes(r) == ["AL105"]
    assert r.findings[0].module == "patch_embed"


def test_attention_queries_and_keys_are_not_judged():
    r = tight("TinyEncoder")
    assert r.status == "ok" and codes(r) == []
    from archlint.estimate import by_design
    scores = by_design.attention_scores_only(graph_of(r), structure_of(r).grad_users)
    assert scores == {f"layers.{i}.attention.{p}" for i in range(2) for p in ("query", "key")}


FUSED = textwrap.dedent('''
    import torch, torch.nn as nn, torch.nn.functional as F

    INPUT = torch.randn(2, 8, 32)

    class Model(nn.Module):
        """A fused qkv projection carries the values' gradient too; a classifier that returns
        probabilities is not attention; a sigmoid gate of another branch (GLU) is not a
        self-gate; a layer-scale gain of 0.5 is not near zero."""

        def __init__(self, d=32, heads=4):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.gamma = nn.Parameter(0.5 * torch.ones(d))
            self.a = nn.Linear(d, d)
            self.b = nn.Linear(d, d)
            self.head = nn.Linear(d, 5)

        def forward(self, x):
            B, T, D = x.shape
            q, k, v = self.qkv(x).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
            x = x + self.gamma * self.proj(y)
            x = self.a(x) * torch.sigmoid(self.b(x))
            return self.head(x.mean(1)).softmax(-1)
''')


def test_look_alikes_keep_their_layers(tmp_path):
    r = lint_source(tmp_path, FUSED, select=["AL105", "AL106"])
    assert r.status == "ok"
    from archlint.estimate import by_design
    g = graph_of(r)
    assert by_design.attention_scores_only(g, structure_of(r).grad_users) == set()
    assert by_design.behind_small_gain(g, structure_of(r).grad_users) == set()
    assert by_design.inside_gates(g, structure_of(r).grad_users) == set()


@pytest.mark.parametrize("sdpa", [True, False])
def test_separate_query_and_key_projections(tmp_path, sdpa):
    attend = ("y = F.scaled_dot_product_attention(q, k, v)" if sdpa else
              "y = torch.softmax(q @ k.transpose(-1, -2) * 0.25, -1) @ v")
    source = textwrap.dedent(f'''
        import torch, torch.nn as nn, torch.nn.functional as F

        INPUT = torch.randn(2, 8, 16)

        class Model(nn.Module):
            def __init__(self, d=16):
                super().__init__()
                self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
                self.out = nn.Linear(d, d)

            def forward(self, x):
                q, k, v = self.q(x), self.k(x), self.v(x)
                {attend}
                return self.out(x + y)
    ''')
    r = lint_source(tmp_path, source, select=["AL105"])
    from archlint.estimate import by_design
    assert by_design.attention_scores_only(graph_of(r), structure_of(r).grad_users) == {"q", "k"}
