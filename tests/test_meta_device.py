"""Meta-device analysis (``--device meta``, archlint.loading.meta): the model is built without
allocating weights, and the analysis gives what a real build gives.

Small tensors are made real by replaying their recorded initialisation, so a model whose
matrices are all small must give the same findings and the same grad_rms as a real build; with
every matrix read by its distribution instead (``small=0``), grad_rms stay within 1% once the
matrices are a few hundred wide (the gap is the sampling noise of a real build's weights).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch
from torch import nn

from helpers import ROOT, invoke, lint_both_ways, report_of, write

FIXTURE = ROOT / "tests" / "fixtures" / "meta" / "llama.py"


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


LLAMA = _load(FIXTURE, "archlint_test_meta_llama")
ZOO = [e for e in _load(ROOT / "benchmarks" / "zoo.py", "archlint_meta_zoo").ZOO
       if not e.name.startswith(("tv_", "hf_"))]


def _findings(result):
    return [(f.code, f.module, f.message, len(f.fixes)) for f in result.findings]


def _worst_gap(real, meta):
    gaps = []
    for a, b in zip(real.layers, meta.layers):
        assert a.module == b.module
        if a.grad_rms is None or b.grad_rms is None:
            assert a.grad_rms is b.grad_rms, a.module
            continue
        gaps.append(abs(b.grad_rms / a.grad_rms - 1) if a.grad_rms else abs(b.grad_rms))
    return max(gaps, default=0.0)


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_zoo_models_give_the_same_result_on_meta(entry):
    real, meta = lint_both_ways(entry.build, entry.input)
    assert real.status == meta.status == "ok", (real.error, meta.error)
    assert _findings(meta) == _findings(real)
    assert _worst_gap(real, meta) <= 0.01


@pytest.mark.parametrize("cls", ["Llama", "TinyInitLlama"])
def test_llama_shaped_models_give_the_same_result_on_meta(cls):
    ids = {"shape": [2, 16], "dtype": "int64", "high": 512}
    real, meta = lint_both_ways(getattr(LLAMA, cls), ids)
    assert real.status == meta.status == "ok"
    assert _findings(meta) == _findings(real)
    assert _worst_gap(real, meta) == 0.0  # every tensor replayed: the same weights
    if cls == "TinyInitLlama":
        assert real.findings  # the comparison covers findings, not only their absence


def test_matrices_read_by_their_distribution_stay_within_one_percent():
    cfg = LLAMA.LlamaConfig(vocab=1024, hidden=512, heads=8, kv_heads=2, mlp=1376)
    ids = {"shape": [2, 16], "dtype": "int64", "high": 1024}
    real, meta = lint_both_ways(lambda: LLAMA.Llama(cfg), ids, small=0)
    assert _findings(meta) == _findings(real)
    assert 0.0 < _worst_gap(real, meta) <= 0.01


def test_init_distributions_are_read_from_the_recorded_calls():
    from archlint.loading.meta import build_on_meta

    def build():
        m = nn.Sequential(nn.Linear(300, 400), nn.Linear(400, 400), nn.Linear(400, 50),
                          nn.Linear(50, 60), nn.Conv2d(8, 16, 3))
        nn.init.trunc_normal_(m[0].weight, std=0.5, a=-0.5, b=0.5)
        nn.init.orthogonal_(m[1].weight, gain=2.0)
        m[2].weight.data.uniform_(-1, 3).mul_(0.5).add_(1.0)
        nn.init.zeros_(m[3].weight)
        nn.init.constant_(m[3].bias, 0.25)
        nn.init.kaiming_normal_(m[4].weight, nonlinearity="relu")
        return m

    built = build_on_meta(build)
    torch.manual_seed(0)
    real = build()
    for (name, p), r in zip(built.model.named_parameters(), real.parameters()):
        d = built.dist(p)
        assert d is not None, name
        r = r.detach().double()
        mean, var = float(r.mean()), float(r.var())
        assert math.isclose(d.mean, mean, abs_tol=4 * math.sqrt(var / r.numel()) + 1e-12), name
        if r.numel() >= 1000:  # enough entries for their variance to be the distribution's
            assert math.isclose(d.var, var, rel_tol=0.1, abs_tol=1e-12), name


def test_a_partial_write_has_no_distribution_and_is_made_real_alone():
    from archlint.graph.metainit import forget, meta_dist, set_dist
    from archlint.loading.meta import build_on_meta

    def build():
        m = nn.Linear(64, 64)
        with torch.no_grad():
            m.weight[:, :32].normal_(0, 1.0)  # half the matrix re-drawn
        return m

    built = build_on_meta(build)
    w = built.model.weight
    assert built.dist(w) is None
    set_dist(w, None)
    from archlint.graph.metainit import set_materialiser

    set_materialiser(built.materialise)
    try:
        with pytest.raises(Exception):
            meta_dist(w)  # made real, the caller reads it again
        assert w.device.type == "cpu" and w.shape == (64, 64)
        assert float(w.detach()[:, :32].std()) > 0.5 > float(w.detach()[:, 32:].std())
        assert built.describe() and "made real" in built.describe()[0]
    finally:
        forget()


def test_values_read_while_building_are_computed(tmp_path):
    """Drop-path rates from torch.linspace(...).tolist() and a buffer's .item() work on meta."""
    from archlint.loading.meta import build_on_meta

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            rates = torch.linspace(0, 0.3, 4).tolist()
            self.scale = float(torch.ones(1).mul(3).item())
            self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in rates)
            self.rates = rates

    built = build_on_meta(Net)
    assert built.model.rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert built.model.scale == 3.0
    assert built.model.blocks[0].weight.device.type == "meta"


# ------------------------------------------------------------------------------ command line

MODEL = """
import torch
from torch import nn


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.body(x)
"""


def test_device_meta_on_the_command_line(tmp_path):
    path = write(tmp_path / "wide.py", MODEL)
    args = [str(path), "--input-shape", "4,64", "--format", "json", "--no-cache", "-j", "1"]
    cpu = report_of(invoke(*args, "--device", "cpu"))["targets"][0]
    meta = report_of(invoke(*args, "--device", "meta"))["targets"][0]
    assert [la["grad_rms"] for la in meta["layers"]] == [la["grad_rms"] for la in cpu["layers"]]
    assert any("meta device (--device meta)" in n for n in meta["notes"])
    assert not any("meta device" in n for n in cpu["notes"])


def test_auto_switches_to_meta_above_the_threshold_and_says_so(tmp_path):
    path = write(tmp_path / "wide.py", MODEL)
    args = [str(path), "--input-shape", "4,64", "--format", "json", "--no-cache", "-j", "1"]
    small = report_of(invoke(*args))["targets"][0]  # 19k parameters, under the 200M default
    assert not any("meta device" in n for n in small["notes"])
    big = report_of(invoke(*args, "--meta-threshold", "10k"))["targets"][0]
    note = next(n for n in big["notes"] if "meta device" in n)
    assert "19,210 parameters, more than the 10,000 of --meta-threshold" in note
    text = invoke(str(path), "--input-shape", "4,64", "--no-cache", "--meta-threshold",
                  "10k").stdout
    assert "wide.py:Wide: note: analysed on the meta device (19,210 parameters" in text


def test_measure_cannot_run_on_meta_and_says_so(tmp_path):
    path = write(tmp_path / "wide.py", MODEL)
    r = invoke(str(path), "--input-shape", "4,64", "--format", "json", "--no-cache",
               "--device", "meta", "--measure")
    assert "--measure needs real weights" in r.stderr
    target = report_of(r)["targets"][0]
    assert any("--measure skipped" in n for n in target["notes"])
    assert all(la["measured_grad_rms"] is None for la in target["layers"])


@pytest.mark.parametrize("text, message", [
    ("device: gpu\n", "device: expected one of auto, cpu, meta, got 'gpu'"),
    ("meta-threshold: lots\n", "meta-threshold: expected a number of parameters"),
    ("jobs: 0\n", "jobs: expected a number of worker processes"),
    ("cache: 'yes'\n", "cache: expected true or false"),
])
def test_config_keys_are_checked(tmp_path, text, message):
    cfg = write(tmp_path / ".archlint.yaml", text)
    path = write(tmp_path / "wide.py", MODEL)
    r = invoke(str(path), "--config", str(cfg), "--no-cache")
    assert r.exit_code == 2
    assert message in r.stderr and str(cfg) in r.stderr


def test_config_device_and_threshold_are_read(tmp_path):
    cfg = write(tmp_path / ".archlint.yaml", "device: auto\nmeta-threshold: 1e3\n")
    path = write(tmp_path / "wide.py", MODEL)
    r = invoke(str(path), "--config", str(cfg), "--input-shape", "4,64", "--format", "json",
               "--no-cache")
    note = next(n for n in report_of(r)["targets"][0]["notes"] if "meta device" in n)
    assert "more than the 1,000" in note


def test_an_init_function_imported_by_name_is_recorded_too(tmp_path):
    """``from torch.nn.init import orthogonal_`` binds the function that skips meta tensors
    before archlint patches nn.init: it is found in the user's module and recorded as well."""
    from archlint.loading.meta import build_on_meta

    path = write(tmp_path / "prebound.py", """
        import torch
        from torch import nn
        from torch.nn.init import orthogonal_


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(300, 300)
                orthogonal_(self.fc.weight, gain=3.0)
                self.raw = nn.Parameter(torch.empty(4, 4))  # never initialised
    """)
    module = _load(path, "archlint_test_prebound")
    built = build_on_meta(module.Net)
    d = built.dist(built.model.fc.weight)
    assert d is not None and math.isclose(d.var, 9.0 / 300, rel_tol=1e-9)
    assert built.uninitialised() == ["raw"]
    assert module.orthogonal_ is torch.nn.init.orthogonal_  # put back


def test_transformers_llama_gives_the_same_result_on_meta():
    """Opt-in (transformers installed): LlamaForCausalLM from a small LlamaConfig. transformers
    skips initialising a model built under torch.device("meta") -- archlint keeps it from
    noticing, so the init is recorded; its causal mask reads values of the meta forward."""
    transformers = pytest.importorskip("transformers")

    def build():
        cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512,
                                       num_hidden_layers=2, num_attention_heads=8,
                                       num_key_value_heads=2, attn_implementation="sdpa")
        return transformers.LlamaForCausalLM(cfg)

    ids = {"shape": [2, 16], "dtype": "int64", "high": 1000}
    real, meta = lint_both_ways(build, ids)
    assert real.status == meta.status == "ok", (real.error, meta.error)
    assert _findings(meta) == _findings(real)
    assert _worst_gap(real, meta) == 0.0
    real, meta = lint_both_ways(build, ids, small=0)
    assert _findings(meta) == _findings(real)
    assert _worst_gap(real, meta) <= 0.01
