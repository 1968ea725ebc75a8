"""--measure and --plot end to end, and the estimate's agreement with a real probe."""

import json

import pytest

from helpers import model_source, run_cli

#: 8 Linear + Tanh and a head: 9 weight layers.
MODEL = model_source("""
    layers = []
    for _ in range(8):
        layers += [nn.Linear(32, 32), nn.Tanh()]
    self.body = nn.Sequential(*layers)
    self.head = nn.Linear(32, 4)
""", "return self.head(self.body(x))")


def test_measure_fills_measured_gradients_and_reports_the_error(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    proc = run_cli("m.py", "--isolated", "--format", "json", "--measure", cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    target = json.loads(proc.stdout)["targets"][0]
    layers = target["layers"]
    assert len(layers) == 9
    assert all(isinstance(x["grad_rms"], float) and x["grad_rms"] > 0 for x in layers)
    assert all(isinstance(x["measured_grad_rms"], float) and x["measured_grad_rms"] > 0
               for x in layers)
    err = target["estimate_error"]
    assert err["layers"] == 9
    assert err["median_decades"] < 0.2


def test_without_measure_measured_stays_null(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    proc = run_cli("m.py", "--isolated", "--format", "json", cwd=tmp_path)
    target = json.loads(proc.stdout)["targets"][0]
    assert all(x["measured_grad_rms"] is None for x in target["layers"])
    assert "estimate_error" not in target


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "m.py").write_text(MODEL)
    proc = run_cli("m.py", "--isolated", "--plot", "flow.png", "--measure", cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    data = (tmp_path / "flow.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_html_and_bad_path(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "m.py").write_text(MODEL)
    proc = run_cli("m.py", "--isolated", "--plot", "flow.html", cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    assert "<svg" in (tmp_path / "flow.html").read_text()
    proc = run_cli("m.py", "--isolated", "--plot", "no/such/dir/flow.png", cwd=tmp_path)
    assert proc.returncode == 2
    assert "flow.png" in proc.stderr and "Traceback" not in proc.stderr
