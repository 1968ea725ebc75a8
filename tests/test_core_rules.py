"""What the rule fixtures cannot say: each rule's options, the data its findings carry, and the
structural facts behind them. Which models must or must not get which code at which line is in
tests/fixtures/rules/ (tests/test_rule_fixtures.py). The models used here are those fixtures':
the data of their findings is read from the fixture run's JSON report; options and structural
facts need a lint of their own, through the public API."""

from __future__ import annotations

import math

import pytest

from archlint.rules.exploding_gradient import ExplodingGradient
from archlint.rules.vanishing_gradient import VanishingGradient
from helpers import (codes, fixture_finding, fixture_module, fixture_target, lint_fixture,
                     lint_model, lint_source, node_of, only, structure_of)

VANISH = VanishingGradient.options["max-decades"]
EXPLODE = ExplodingGradient.options["max-decades"]


def one(result, code: str):
    """The one finding of ``code``."""
    found = only(result, code)
    assert len(found) == 1, [f.message for f in result.findings]
    return found[0]


# ====================================================================== AL101 saturating-stack

def test_saturating_chain_data():
    f = fixture_finding("AL101", "SigmoidMLP", "AL101")
    assert (f["module"], f["severity"], f["name"]) == ("net.1", "warning", "saturating-stack")
    assert f["data"]["length"] == 8 and f["data"]["limit"] == 4
    assert f["data"]["chain"] == [f"net.{2 * i + 1}" for i in range(8)]
    assert fixture_finding("AL101", "tanh_over_limit", "AL101")["data"]["length"] == 5


def test_functional_calls_are_chain_members_in_the_calling_scope():
    # a functional call has no module of its own: it belongs to the scope of the forward that
    # calls it (here the root, ""), and is named after its op; modules keep their own names
    functional = fixture_finding("AL101", "FunctionalSigmoids", "AL101")
    assert functional["module"] == ""
    assert functional["data"]["chain"] == ["sigmoid", "sigmoid_1", "sigmoid_2", "tanh", "tanh_1"]
    mixed = fixture_finding("AL101", "MethodTanhs", "AL101")
    assert mixed["data"]["chain"] == ["tanh", "tanh_", "squash", "act", "tanh_1"]


def test_max_chain_option_and_severity():
    r = lint_fixture("AL101", "tanh_at_limit", select=["AL101"],
                     options={"AL101": {"max-chain": 3, "severity": "error"}})  # 4 > 3
    f = one(r, "AL101")
    assert (f.severity, f.data["length"], f.data["limit"]) == ("error", 4, 3)


def test_chains_between_norms_against_a_lower_limit():
    # 3 tanh between LayerNorms is clean by default (fixture); with max-chain 2 every group of 3
    # is too long, and the four groups, built on one line, make one finding
    r = lint_fixture("AL101", "NormEveryThirdLayer", select=["AL101"],
                     options={"AL101": {"max-chain": 2}})
    f = one(r, "AL101")
    assert f.data["length"] == 3 and f.data["merged"] == 4


def test_severity_off_disables_the_rule():
    r = lint_fixture("AL101", "SigmoidMLP", options={"AL101": {"severity": "off"}})
    assert "AL101" not in codes(r) and "AL101" not in r.rules_run


# ===================================================================== AL102 missing-normalization

def test_unnormalised_stack_data():
    f = fixture_finding("AL102", "DeepReLUNet", "AL102")
    assert f["module"] == "body.0"
    assert (f["data"]["depth"], f["data"]["limit"]) == (24, 20)
    assert f["data"]["layers"] == [f"body.{2 * i}" for i in range(24)]
    assert fixture_finding("AL102", "over_the_limit", "AL102")["data"]["depth"] == 21


def test_max_depth_option_of_al102():
    r = lint_fixture("AL102", "at_the_limit", select=["AL102"],
                     options={"AL102": {"max-depth": 19}})
    f = one(r, "AL102")
    assert (f.data["depth"], f.data["limit"]) == (20, 19)


# ====================================================================== AL103 missing-residual

def test_missing_residual_data():
    f = fixture_finding("AL103", "PlainCNN", "AL103")
    assert f["module"] == "stem"
    assert f["data"]["depth"] == 36  # stem + 34 convs + head
    assert f["data"]["skip_joins"] == 0 and f["data"]["longest_path"] == 36
    assert fixture_finding("AL103", "thirty_one_layers", "AL103")["data"]["depth"] == 31


@pytest.mark.parametrize("model,joins", [
    ("resnet", 17),                 # one add per block
    ("DenseNet", 34),               # one concatenation per layer
    ("PreLNTransformer", 2 * 9),    # at least two adds per block
    ("TorchEncoder", 2 * 9),
])
def test_skip_joins_are_found_from_the_graph(model, joins):
    r = lint_fixture("healthy", model, select=["AL103"])
    assert r.status == "ok", r.error
    found = len(structure_of(r).skip_joins)
    assert found == joins if model in ("resnet", "DenseNet") else found >= joins
    if model == "resnet":
        assert r.tracer == "fx"
        # the gradient reaches the stem through the skips: stem + head are the only weight
        # layers on its shortest path
        assert structure_of(r).layers_to_output[node_of(r, "stem")] == 1
        # ... so the ResNet passes any limit but 1
        strict = lint_fixture("healthy", model, select=["AL103"],
                              options={"AL103": {"max-depth": 1}})
        assert codes(strict) == ["AL103"]


def test_the_limit_applies_between_skip_joins():
    # ConvMixer: 34 weight layers from the stem to the output, a skip join in each of the 32
    # blocks: the longest plain stretch is short
    r = lint_fixture("identity_at_init", "conv_mixer", select=["AL103"])
    assert r.status == "ok" and codes(r) == []
    s = structure_of(r)
    stem = node_of(r, "0")
    assert s.layers_to_output[stem] + 1 == 34
    assert s.unskipped_run[stem] + 1 <= 2
    strict = one(lint_fixture("identity_at_init", "conv_mixer", select=["AL103"],
                              options={"AL103": {"max-depth": 1}}), "AL103")
    assert strict.data["depth"] == 2


def test_max_depth_option_of_al103():
    r = lint_fixture("AL103", "thirty_layers", select=["AL103"],
                     options={"AL103": {"max-depth": 29}})
    assert one(r, "AL103").data["depth"] == 30


# ====================================================================== AL104 poor-initialization

@pytest.mark.parametrize("model,module,problem", [
    ("ZeroHidden", "fc2", "zero"),
    ("ConstantHidden", "encoder.2", "symmetric"),
    ("IdenticalRows", "mid", "symmetric"),
    ("TinyStd", "hidden", "scale"),
    ("HugeStd", "l2", "scale"),
    ("ZeroNormScale", "ln", "zero-norm-scale"),
    ("ZeroFirstLayerOfBranch", "branch_in", "zero"),
    ("UsesZeroLinear", "b", "zero"),
    ("TiedZeroEmbedding", "embed", "zero"),
    ("NaNWeight", "fc", "nonfinite"),
    ("default_init_relu_stack", "0", "stack-scale"),
])
def test_poor_initialization_names_the_problem(model, module, problem):
    f = fixture_finding("AL104", model, "AL104")
    assert (f["module"], f["data"]["problem"]) == (module, problem)


def test_scale_factor_and_target():
    tiny = fixture_finding("AL104", "TinyStd", "AL104")["data"]
    # He std for fan-in 128 is sqrt(2/128) = 0.125: 125x the 1e-3 used
    assert 110 < 1 / tiny["factor"] < 145 and tiny["target_sigma_w2"] == 2.0
    assert fixture_finding("AL104", "HugeStd", "AL104")["data"]["factor"] > 10
    # tanh is judged against LeCun (sigma_w^2 = 1), not He
    tanh = fixture_finding("AL104", "TanhTooWide", "AL104")["data"]
    assert (tanh["problem"], tanh["target_sigma_w2"]) == ("scale", 1.0)


def test_every_spelling_of_relu_is_judged_against_he():
    found = fixture_target("AL104", "TinyInitReLUVariants")["findings"]
    assert [(f["module"], f["data"]["problem"], f["data"]["target_sigma_w2"]) for f in found] == \
        [(f"f{i}", "scale", 2.0) for i in range(1, 6)]


def test_layers_sharing_a_line_are_merged_and_shared_layers_are_not():
    # six layers on one line: the five hidden ones in one finding (the output may be small)
    merged = fixture_finding("AL104", "SmallInitEverywhere", "AL104")
    assert (merged["module"], merged["data"]["merged"]) == ("fcs.0", 5)
    # one Linear applied three times is one layer
    assert "merged" not in fixture_finding("AL104", "SharedTinyLinear", "AL104")["data"]


def test_an_expert_bank_is_judged_as_the_convolution_it_parameterises():
    f = fixture_finding("AL104", "MixedKernels", "AL104")
    # experts N(0, 1e-3) for a 4-in, 8-out 3x3 conv under a ReLU: He std sqrt(2/36) by
    # fan-in, sqrt(2/72) by fan-out (the closer one counts) -- not the 3 experts as a fan-in
    assert f["data"]["target_sigma_w2"] == 2.0 and "fan-in 36" in f["message"]
    assert 0.85 < (1 / f["data"]["factor"]) / (math.sqrt(2 / 72) / 1e-3) < 1.15


@pytest.mark.parametrize("model,module,fact", [
    ("GatedMLP", "blocks.0.sgu.spatial_proj", "constant_gate"),
    ("GatedMLPZeroGate", "blocks.0.sgu.spatial_proj", "constant_gate"),
    ("GatedMLP", "blocks.0.channel_proj1", "in_residual_branch"),
    ("TinyViT", "blocks.0.query", "in_residual_branch"),
    ("StarNet", "blocks.0.f1", "in_residual_branch"),
    ("OnePlusGate", "modulation", "constant_gate"),
])
def test_identity_at_init_designs_are_read_off_the_graph(model, module, fact):
    r = lint_fixture("identity_at_init", model, select=["AL104"])
    init = {li.node.module_path: li for li in r.analysis.facts.init.layers}
    assert getattr(init[module], fact) is True
    # the trunk is in no branch: the head, or a patch embedding, carries the whole signal
    trunk = next(name for name in ("head", "patch_embed", "fc2") if name in init)
    assert init[trunk].in_residual_branch is False and init[trunk].constant_gate is False


def test_gates_and_fixed_filters_that_are_not_identity_at_init():
    gate = lint_fixture("AL104", "GateStartsAtZero", select=["AL104"])
    init = {li.node.module_path: li for li in gate.analysis.facts.init.layers}
    assert init["gate"].constant_gate is False  # no bias: the gate starts near zero
    frozen = lint_fixture("identity_at_init", "FrozenEdgeFilters", select=["AL104"])
    init = {li.node.module_path: li for li in frozen.analysis.facts.init.layers}
    assert init["smooth"].trainable is False and init["smooth"].constant
    assert init["features.0"].trainable is True
    blur = lint_fixture("identity_at_init", "BlurPoolNet", select=["AL104"])
    fixed = [li for li in blur.analysis.facts.init.layers if not li.trainable]
    assert len(fixed) == 3 and all(li.symmetric for li in fixed)


def test_max_branch_factor_option():
    # std 0.02 at width 16 inside residual branches: ~12x below LeCun, within the default 100
    r = lint_fixture("identity_at_init", "TinyViT", select=["AL104"],
                     options={"AL104": {"max-branch-factor": 5.0}})
    found = {f.module for f in r.findings if f.data["problem"] == "scale"}
    assert "blocks.0.query" in found


def test_max_factor_option():
    # 8.3x below LeCun: within the default max-factor of 10 (fixture), outside 8
    r = lint_fixture("AL104", "TinyInitLinearOutputs", select=["AL104"],
                     options={"AL104": {"max-factor": 8.0}})
    assert codes(r) == ["AL104"] and r.findings[0].data["problem"] == "scale"


# ====================================================================== AL107 recurrent-horizon

def test_recurrent_horizon_data():
    f = fixture_finding("AL107", "VanillaRNNClassifier", "AL107")
    assert f["module"] == "rnn"
    assert f["data"]["steps"] == 100 and f["data"]["step_gain"] < 1
    assert f["data"]["horizon"] < 100
    assert fixture_finding("AL107", "ExplodingReLURNN", "AL107")["data"]["step_gain"] > 1
    loop = fixture_finding("AL107", "RNNCellLoop", "AL107")
    assert (loop["module"], loop["data"]["steps"]) == ("cell", 100)
    assert fixture_finding("AL107", "InferredLengthRNN", "AL107")["data"]["steps"] == 32


def test_sequence_length_comes_from_the_example_input():
    model = fixture_module("AL107").VanillaRNNClassifier
    r = lint_model(model, {"shape": [2, 60, 8]}, select=["AL107"])
    assert one(r, "AL107").data["steps"] == 60


def test_min_gain_option():
    model = fixture_module("AL107").VanillaRNNClassifier
    twenty = {"shape": [2, 20, 8]}
    assert codes(lint_model(model, twenty, select=["AL107"])) == ["AL107"]  # horizon ~11
    relaxed = lint_model(model, twenty, select=["AL107"], options={"AL107": {"min-gain": 1e-8}})
    assert codes(relaxed) == []  # horizon ~30 steps


# ====================================================================== AL105 / AL106 verdicts

def test_vanishing_gradient_data():
    f = fixture_finding("AL105", "SigmoidMLP", "AL105")
    assert (f["module"], f["severity"], f["name"]) == ("body.0", "warning", "vanishing-gradient")
    assert f["data"]["decades"] < -VANISH
    target = fixture_target("AL105", "SigmoidMLP")
    assert target["gradient_decades"] == pytest.approx(f["data"]["decades"], abs=1e-3)
    # the layers that cost the decades: the sigmoids first
    labels = [label for label, _ in f["data"]["contributions"]]
    assert "Sigmoid" in labels[0], labels


def test_exploding_gradient_data():
    f = fixture_finding("AL106", "ChaoticTanhMLP", "AL106")
    assert (f["module"], f["severity"], f["name"]) == ("body.fc0", "warning",
                                                       "exploding-gradient")
    assert f["data"]["decades"] > EXPLODE


def test_scale_invariant_layers_are_not_judged_for_explosion():
    # the estimate does see almost 4 decades of growth through the 64 BatchNorm layers (AL106.py
    # checks that it is not reported)
    assert fixture_target("AL106", "DeepBatchNormReLU")["gradient_decades"] > EXPLODE


def test_layers_get_a_predicted_grad_rms():
    target = fixture_target("healthy", "DeepHeReLU")
    assert target["input"] is not None and "gradient_decades" in target
    layers = target["layers"]
    assert [x["module"] for x in layers] == [f"body.{2 * i}" for i in range(12)] + ["head"]
    for x in layers:
        assert isinstance(x["grad_rms"], float) and x["grad_rms"] > 0, x


# first op a custom einsum layer: no input can be inferred from it
CUSTOM_FIRST_OP = """
import torch
import torch.nn as nn


class Mix(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, d) / d ** 0.5)

    def forward(self, x):
        return torch.einsum("bi,ij->bj", x, self.w)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix1 = Mix(16)
        self.mix2 = Mix(16)

    def forward(self, x):
        return self.mix2(torch.relu(self.mix1(x)))
"""


def test_no_grad_rms_when_no_input_can_be_inferred(tmp_path):
    r = lint_source(tmp_path, CUSTOM_FIRST_OP)
    assert r.status == "ok", r.error
    assert r.input is None
    assert [layer.module for layer in r.layers] == ["mix1", "mix2"]
    assert all(layer.grad_rms is None for layer in r.layers)
    assert r.gradient_decades is None and not r.gradient_flow
    assert any("AL105 skipped" in n for n in r.notes), r.notes
    # control: the same model given an input is estimated
    r = lint_source(tmp_path, CUSTOM_FIRST_OP, input={"shape": [4, 16]})
    assert all(isinstance(layer.grad_rms, float) and layer.grad_rms > 0
               for layer in r.layers)
