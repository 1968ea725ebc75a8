"""The library zoo's own machinery (benchmarks/zoo_libraries.py): its probe, its scoring and its
bookkeeping, on tiny torch-only models.  The zoo itself (torchvision, timm, transformers) runs with
``./dev zoo``; the one test that builds a torchvision model is skipped where torchvision does not
import."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("zoo_libraries",
                                                  ROOT / "benchmarks" / "zoo_libraries.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo_libraries"] = module
    spec.loader.exec_module(module)
    return module


zl = _load()


def test_probe_matches_the_analytic_gradient_of_a_linear_layer():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x = zl.make_inputs({"shape": [4, 5], "dtype": "float32"})
    rms, shape = zl.probe(model, x)
    assert shape == [4, 3]
    # loss = sum(y * r) / sqrt(n)  =>  dL/dW = r^T x / sqrt(n)
    r = torch.randn(4, 3, generator=torch.Generator().manual_seed(zl.PROBE_SEED))
    grad = r.T @ x / math.sqrt(12)
    assert rms[""] == pytest.approx(float(grad.pow(2).mean().sqrt()), rel=1e-5)


def test_probe_r_is_independent_of_the_inputs():
    x = zl.make_inputs({"shape": [64], "dtype": "float32"})
    r = torch.randn(64, generator=torch.Generator().manual_seed(zl.PROBE_SEED))
    assert abs(float(torch.corrcoef(torch.stack([x, r]))[0, 1])) < 0.5
    assert not torch.equal(x, r)


def test_probe_counts_an_unused_weight_as_zero_and_skips_frozen_ones():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)
            self.frozen = nn.Linear(4, 4)
            self.frozen.weight.requires_grad_(False)

        def forward(self, x):
            return self.frozen(self.used(x))

    torch.manual_seed(0)
    rms, _ = zl.probe(Net(), zl.make_inputs({"shape": [2, 4], "dtype": "float32"}))
    assert rms["used"] > 0
    assert rms["unused"] == 0.0
    assert rms["frozen"] is None


def test_make_inputs_draws_ids_in_range_and_dicts_in_order():
    spec = {"input_ids": {"shape": [2, 32], "dtype": "int64", "high": 7},
            "x": {"shape": [2, 3], "dtype": "float32"}}
    inputs = zl.make_inputs(spec)
    assert list(inputs) == ["input_ids", "x"]
    ids = inputs["input_ids"]
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) < 7
    assert torch.equal(zl.make_inputs(spec)["x"], inputs["x"])  # seeded


def test_pick_output_prefers_logits_then_last_hidden_state_then_first_tensor():
    a, b, c = torch.ones(1), torch.zeros(1), torch.full((1,), 2.0)
    assert zl.pick_output({"hidden": a, "logits": b}) is b
    assert zl.pick_output({"x": 3, "last_hidden_state": c, "y": a}) is c
    assert zl.pick_output({"x": None, "out": (a, b)}) is a
    assert zl.pick_output(((None, c), a)) is c
    assert zl.pick_output("nothing") is None


def test_fingerprint_sees_a_changed_buffer():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    before = zl.fingerprint(bn)
    bn.train()
    bn(torch.randn(4, 3))
    assert zl.fingerprint(bn) != before


def test_parse_unknown_ops():
    notes = ["fx: something",
             "gradient estimate: ops without a formula, passed through unchanged: einsum (x6), "
             "linear (x10), topk"]
    assert zl.parse_unknown_ops(notes) == {"einsum": 6, "linear": 10, "topk": 1}


def _rec(pred, meas, findings=(), flow=None):
    return {"library": "t", "name": "m", "pred": pred, "meas": meas,
            "types": {k: "Linear" for k in meas}, "findings": list(findings),
            "gradient_flow": flow}


def test_score_removes_the_common_offset_and_names_the_worst_layer():
    meas = {"a": 1e-3, "b": 1e-2, "c": 1e-1, "d": 1.0}
    pred = {"a": 2e-3, "b": 2e-2, "c": 2e-1, "d": 2e1}  # d is 1 decade off, the rest agree
    s = zl.score(_rec(pred, meas))
    assert s["layers"] == 4
    assert s["offset"] == pytest.approx(math.log10(2), abs=1e-9) or s["offset"] > math.log10(2)
    assert s["worst_layer"] == "d"
    assert s["worst_error"] > 0.8
    assert s["median_error"] < s["worst_error"]


def test_score_zero_layers_spread_and_verdicts():
    meas = {"e": 1e-6, "m": 1e-3, "l": 1.0, "z": 0.0, "y": 0.5, "u": 0.1}
    pred = {"e": 1e-2, "m": 1e-2, "l": 1.0, "z": 0.0, "y": 0.0, "u": None}
    flow = {"vanishing": {"decades": -2.0, "earliest": ["e"], "last": ["l"]},
            "exploding": {"decades": -2.0, "earliest": ["e"], "last": ["l"]}}
    s = zl.score(_rec(pred, meas, flow=flow))
    assert s["zero_ok"] == 1
    assert [z["module"] for z in s["zero_bad"]] == ["y"]
    assert s["unknown"] == ["u"]
    assert s["vanishing_pred"] == pytest.approx(-2.0)
    assert s["vanishing_meas"] == pytest.approx(-6.0)
    assert s["spread_error"] == pytest.approx(4.0)
    # measured -6 decades: AL105 by measurement, archlint silent -> a disagreement
    assert s["verdicts"]["AL105"] == {"archlint": False, "measured": True}
    assert s["verdict_disagreements"] == ["AL105"]
    s2 = zl.score(_rec(pred, meas, findings=[{"code": "AL105"}], flow=flow))
    assert s2["verdict_disagreements"] == []


def test_score_flags_zero_head_models_as_degenerate_and_zero_estimates_as_collapsed():
    s = zl.score(_rec({"head": 1.0, "x": 0.0}, {"head": 1.0, "x": 0.0}))
    assert s["degenerate"] and not s["collapsed"]
    line = "\n".join(zl.summary_lines([{**_rec({}, {}), "lint_status": "ok", "tracer": "fx",
                                        "build_ok": True, "score": s}], "t"))
    assert "(zero-initialised head) [m]" in line
    meas = {k: 0.1 for k in "abcdef"}
    pred = {"a": 0.1, "b": 0.1, "c": 0.0, "d": 0.0, "e": 0.0, "f": 0.0}
    s = zl.score(_rec(pred, meas))
    assert s["collapsed"] and not s["degenerate"]
    line = "\n".join(zl.summary_lines([{**_rec(pred, meas), "lint_status": "ok", "tracer": "fx",
                                        "build_ok": True, "score": s}], "t"))
    assert "COLLAPSED to zero on most measured layers: 1 [m 4/6]" in line


def test_zero_layers_and_their_reinit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    nn.init.zeros_(model[1].weight)
    assert zl.zero_layers(model) == ["1"]
    zl._reinit_zero_layers(model)
    assert zl.zero_layers(model) == [] and model[1].weight.abs().sum() > 0


def test_a_failed_model_gets_a_line_and_a_status():
    rec = {"library": "t", "name": "bad", "build_ok": False, "error": "build: boom"}
    assert zl.status_of(rec) == "build-error"
    assert "boom" in zl.model_line(rec)
    timed = {"library": "t", "name": "slow", "build_ok": True, "lint_status": "ok",
             "failure": "timeout", "failure_reason": "timeout during measure after 600s"}
    assert zl.status_of(timed) == "timeout"
    assert "timeout during measure" in zl.model_line(timed)


def test_one_torchvision_model_end_to_end():
    pytest.importorskip("archlint")
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        pytest.skip("torchvision does not import here")
    sent = []
    rec = zl.run_model("torchvision", "squeezenet1_1", lambda r: sent.append(dict(r)))
    assert rec["build_ok"] and rec["lint_status"] == "ok" and rec["weights_identical"]
    s = zl.score(rec)
    assert s["layers"] > 10 and s["median_error"] < 0.5
    assert [r["stage"] for r in sent] == ["lint", "measure"]


def _linted(name: str, findings: list[dict], **extra) -> dict:
    rec = {"library": "t", "name": name, "build_ok": True, "lint_status": "ok", "tracer": "fx",
           "findings": findings}
    rec.update(extra)
    return rec


def test_the_findings_left_are_listed_with_the_bars():
    warn = {"code": "AL104", "severity": "warning", "module": "fc", "message": "tiny\n  init"}
    verdict = {"code": "AL105", "severity": "warning", "module": "stem", "message": "vanishes"}
    err = {"code": "AL101", "severity": "error", "module": "act", "message": "saturates"}
    recs = [_linted("a", [warn, verdict]), _linted("b", []), _linted("c", [err]),
            {"library": "t", "name": "d", "build_ok": False, "error": "build: boom"}]
    lines = zl.findings_left_lines(recs)
    assert lines[0].startswith("== findings left on architectures known to train: 3 on 2 of 4")
    assert "analysed 3/4 [not: d]" in lines[1]
    assert "error-severity findings 1; AL105/AL106 1; other warnings 1" in lines[1]
    assert lines[2:] == ["   [t] a: AL104 warning at fc: tiny init",
                         "   [t] a: AL105 warning at stem: vanishes",
                         "   [t] c: AL101 error at act: saturates"]
    summary = zl.summary_lines(recs, "t")
    assert "by severity: warning 2, error 1; by code: AL101 1, AL104 1, AL105 1" in summary[1]
    assert "tracer: fx 3" in summary[0]


def test_the_header_names_the_command_the_versions_and_the_commit():
    line = zl.run_header(["--library", "timm"], {"torch": "9.9", "archlint": "0.1.0"})
    assert line.startswith("# python benchmarks/zoo_libraries.py --library timm  (")
    assert "torch 9.9" in line and "archlint 0.1.0 at " in line
    commit = zl.archlint_commit()
    assert commit == "?" or commit.rstrip("+dirty").isalnum()
