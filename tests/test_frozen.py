"""Frozen parts of a model (requires_grad off): a linear probe on a frozen backbone gets no
finding about the backbone, which training never sends a gradient through; a frozen stack
between trainable layers still passes the gradient, so its findings stand."""

from __future__ import annotations

import textwrap

from helpers import lint_source

SOURCE = textwrap.dedent('''
    import torch
    import torch.nn as nn

    INPUT = torch.randn(8, 64)


    def tanh_stack(depth=8, width=64):
        return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())])


    class LinearProbe(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = tanh_stack()
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.probe = nn.Linear(64, 10)

        def forward(self, x):
            with torch.no_grad():
                f = self.backbone(x)
            return self.probe(f)


    class TrainableBackbone(LinearProbe):
        def __init__(self):
            super().__init__()
            self.backbone = tanh_stack()

        def forward(self, x):
            return self.probe(self.backbone(x))


    class FrozenMiddle(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(64, 64)
            self.stack = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(64, 64), nn.Sigmoid())])
            self.stack.requires_grad_(False)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.stack(self.stem(x)))
''')


def codes(r):
    return sorted({f.code for f in r.findings})


def test_frozen_backbone_under_a_probe(tmp_path):
    r = lint_source(tmp_path, SOURCE, "LinearProbe")
    assert r.status == "ok" and codes(r) == []
    assert any("AL101 not reported at backbone.1" in n and "frozen" in n for n in r.notes)
    # the same backbone trained is reported
    assert "AL101" in codes(lint_source(tmp_path, SOURCE, "TrainableBackbone"))


def test_frozen_stack_between_trainable_layers_is_still_judged(tmp_path):
    r = lint_source(tmp_path, SOURCE, "FrozenMiddle")
    assert {"AL101", "AL105"} <= set(codes(r))
    flow = r.gradient_flow["vanishing"]
    # its own weights are not compared (never updated); the trainable stem is
    assert flow.earliest == ["stem"]
    assert not any(m.startswith("stack.") for m in flow.earliest + flow.last)


def test_parametrized_layers_without_bias_train(tmp_path):
    """A weight-normalised layer owns no parameter itself (its weight's originals live in its
    parametrizations): it still trains, and its stack is still judged."""
    source = textwrap.dedent('''
        import torch
        import torch.nn as nn
        from torch.nn.utils import parametrizations as P

        INPUT = torch.randn(8, 64)

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(*[m for _ in range(8) for m in (
                    P.weight_norm(nn.Linear(64, 64, bias=False)), nn.Sigmoid())])

            def forward(self, x):
                return self.body(x)
    ''')
    r = lint_source(tmp_path, source)
    assert {"AL101", "AL105"} <= set(codes(r)), r.notes
