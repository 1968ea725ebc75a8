"""Odd models: non-finite weights, gradients that underflow, errors inside archlint's frames."""

import textwrap

from conftest import codes, lint_source, run_cli


def test_nan_weights_are_reported(tmp_path):
    src = """
    import torch, torch.nn as nn
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)
            with torch.no_grad():
                self.fc.weight[0, 0] = float("nan")
        def forward(self, x):
            return self.head(torch.relu(self.fc(x)))
    """
    r = lint_source(tmp_path, src, select=["AL104"])
    assert codes(r) == ["AL104"]
    assert r.findings[0].data["problem"] == "nonfinite" and r.findings[0].module == "fc"


def test_underflowing_gradient_is_vanishing_not_zero_by_design(tmp_path):
    src = """
    import torch.nn as nn
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*[m for _ in range(300)
                                        for m in (nn.Linear(16, 16), nn.Sigmoid())])
            self.head = nn.Linear(16, 2)
        def forward(self, x):
            return self.head(self.body(x))
    """
    r = lint_source(tmp_path, src, select=["AL105"])
    assert codes(r) == ["AL105"]
    assert r.findings[0].module == "body.0"
    assert r.findings[0].data["decades"] < -100


def test_zero_init_designs_stay_zero_by_design(tmp_path):
    src = """
    import torch, torch.nn as nn
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(16, 16)
            self.g = nn.Linear(16, 16)
            nn.init.zeros_(self.g.weight)
        def forward(self, x):
            return x + self.g(torch.relu(self.f(x)))
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*[Block() for _ in range(6)])
            self.head = nn.Linear(16, 2)
        def forward(self, x):
            return self.head(self.blocks(x))
    """
    r = lint_source(tmp_path, src, select=["AL104", "AL105", "AL106"])
    assert codes(r) == []
    zeros = [layer.module for layer in r.layers if layer.grad_rms == 0.0]
    assert "blocks.0.f" in zeros and "blocks.0.g" not in zeros


def test_error_location_never_points_into_archlint(tmp_path):
    proc = run_cli("os.path:join", "--isolated", cwd=tmp_path)
    assert proc.returncode == 2
    assert "TypeError" in proc.stdout and "archlint/loading" not in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_weight_statistics_cache_survives_id_reuse():
    # CPython reuses the id of a dead tensor; the cache must not hand its stats to a new one
    import torch

    from archlint.meanfield import signal as E

    old = torch.randn(4, 4)
    new = torch.randn(2, 8) * 3
    key = (id(new), new._version, id(None), 1, False, 1)
    E._weight_cache[key] = (lambda: old, E._none_ref, E.linear_stats(old, None))
    stats = E.linear_stats(new, None)
    assert (stats.out, stats.fan_in) == (2, 8)
    assert abs(stats.a - float(new.pow(2).sum()) / 2) < 1e-3
