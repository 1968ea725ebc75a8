"""Tracing: fx first, the execution tracer as fallback, functional calls equal to modules, and
every node tied to its module path and defining line."""

from __future__ import annotations

import textwrap

import pytest

from conftest import codes


def line_of(source: str, needle: str, nth: int = 0) -> int:
    """1-based line of the ``nth`` line containing ``needle`` in the dedented source."""
    hits = [i for i, line in enumerate(textwrap.dedent(source).splitlines(), 1) if needle in line]
    assert len(hits) > nth, f"{needle!r} not in source"
    return hits[nth]


def weight_nodes(analysis):
    return [n for n in analysis.graph.nodes if n.is_weight_layer]


# ------------------------------------------------------------------------------ fx vs exec

SIGMOID_STACK_DATA_DEPENDENT = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(16, 16) for _ in range(8)])
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 1.0
        for layer in self.layers:
            x = torch.sigmoid(layer(x))
        return self.head(x)
"""

# Same model, same line numbers, but traceable by torch.fx.
SIGMOID_STACK_TRACEABLE = SIGMOID_STACK_DATA_DEPENDENT.replace("if x.sum() > 0:", "if True:")


def test_traceable_model_uses_fx(lint):
    result = lint(SIGMOID_STACK_TRACEABLE)
    assert result.status == "ok", result.error
    assert result.tracer == "fx"
    assert not any(n.startswith("fx:") for n in result.notes)


def test_data_dependent_control_flow_falls_back_to_exec_tracer(lint):
    result = lint(SIGMOID_STACK_DATA_DEPENDENT)
    assert result.status == "ok", result.error
    assert result.tracer == "exec"
    # the fx failure is kept as a note saying why
    assert any(n.startswith("fx:") for n in result.notes), result.notes
    # 8 sigmoid layers: the chain (AL101) and, from the estimate on the exec-traced graph, a
    # vanishing gradient (AL105, ~5.7 decades)
    assert codes(result) == ["AL105", "AL101"]
    [f] = [f for f in result.findings if f.code == "AL101"]
    assert f.line == line_of(SIGMOID_STACK_DATA_DEPENDENT, "torch.sigmoid(layer(x))")
    assert f.data["length"] == 8


def test_exec_tracer_gives_the_same_findings_as_fx(lint):
    fx, fx_analysis = lint(SIGMOID_STACK_TRACEABLE, analysis=True)
    ex, ex_analysis = lint(SIGMOID_STACK_DATA_DEPENDENT, analysis=True)
    assert (fx.tracer, ex.tracer) == ("fx", "exec")

    def key(r):
        return [(f.code, f.line, f.column, f.module, f.data.get("length")) for f in r.findings]

    assert key(fx) == key(ex)
    assert [(layer.module, layer.line) for layer in fx.layers] == \
        [(layer.module, layer.line) for layer in ex.layers]
    # the same weight layers, in the same order, with the same module paths and sites
    assert [(n.module_path, n.site.line) for n in weight_nodes(fx_analysis)] == \
        [(n.module_path, n.site.line) for n in weight_nodes(ex_analysis)]


def test_exec_trace_restores_training_mode_and_buffers(tmp_path):
    import torch

    from archlint.engine import Settings, lint_model
    from archlint.loading.inputs import infer_input
    from archlint.rules import selected_rules
    from conftest import load_source

    src = """
    import torch
    import torch.nn as nn


    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            if x.mean() > 100:
                return x
            return self.bn(self.fc(x))
    """
    module, _ = load_source(tmp_path, src)
    model = module.Model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lint_model(model, "Model", infer_input(model),
                        Settings(rules=selected_rules(None, [])))
    assert result.tracer == "exec"
    assert not model.training and not model.bn.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------ functional calls

FUNCTIONAL_TEMPLATE = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fcs = nn.ModuleList([nn.Linear(16, 16) for _ in range(6)])
        self.acts = nn.ModuleList([ACT_MODULE for _ in range(6)])

    def forward(self, x):
        for i, fc in enumerate(self.fcs):
            x = CALL
        return x
"""


def functional_source(call: str, act_module: str = "nn.Identity()") -> str:
    return FUNCTIONAL_TEMPLATE.replace("CALL", call).replace("ACT_MODULE", act_module)


SATURATING_VARIANTS = {
    "torch.sigmoid": ("torch.sigmoid(fc(x))", "nn.Identity()", "sigmoid"),
    "F.sigmoid": ("F.sigmoid(fc(x))", "nn.Identity()", "sigmoid"),
    "x.sigmoid()": ("fc(x).sigmoid()", "nn.Identity()", "sigmoid"),
    "nn.Sigmoid": ("self.acts[i](fc(x))", "nn.Sigmoid()", "sigmoid"),
    "torch.tanh": ("torch.tanh(fc(x))", "nn.Identity()", "tanh"),
    "F.tanh": ("F.tanh(fc(x))", "nn.Identity()", "tanh"),
    "x.tanh()": ("fc(x).tanh()", "nn.Identity()", "tanh"),
    "x.tanh_()": ("fc(x).tanh_()", "nn.Identity()", "tanh"),
    "nn.Tanh": ("self.acts[i](fc(x))", "nn.Tanh()", "tanh"),
}


@pytest.mark.parametrize("variant", list(SATURATING_VARIANTS))
def test_saturating_functional_calls_count_like_modules(variant, lint):
    call, act_module, op = SATURATING_VARIANTS[variant]
    src = functional_source(call, act_module)
    # about how AL101 counts functional calls: AL105 (which the sigmoid variants also get, at
    # ~3.1 decades) is left out
    result, a = lint(src, select=["AL101"], analysis=True)
    assert result.status == "ok", result.error
    acts = [n for n in a.graph.nodes if n.kind == "activation"]
    assert [n.op for n in acts] == [op] * 6
    assert codes(result) == ["AL101"]
    f = result.findings[0]
    assert f.data["length"] == 6
    if act_module == "nn.Identity()":
        # a functional call is located at its line in forward, in the root's scope
        assert f.line == line_of(src, "x = " + call)
        assert f.module == ""
    else:
        assert f.line == line_of(src, "self.acts = ")
        assert f.module == "acts.0"


RELU_VARIANTS = {
    "torch.relu": ("torch.relu(fc(x))", "nn.Identity()"),
    "F.relu": ("F.relu(fc(x))", "nn.Identity()"),
    "x.relu()": ("fc(x).relu()", "nn.Identity()"),
    "torch.relu_": ("torch.relu_(fc(x))", "nn.Identity()"),
    "nn.ReLU": ("self.acts[i](fc(x))", "nn.ReLU()"),
}


@pytest.mark.parametrize("variant", list(RELU_VARIANTS))
def test_relu_functional_calls_count_like_modules(variant, lint):
    call, act_module = RELU_VARIANTS[variant]
    result, a = lint(functional_source(call, act_module), analysis=True)
    assert result.status == "ok", result.error
    assert [n.op for n in a.graph.nodes if n.kind == "activation"] == ["relu"] * 6
    # every layer is judged against He init (sigma_w^2 = 2), as with nn.ReLU
    layers = a.facts.init.layers
    assert [(li.node.module_path, li.next_activation, li.target_sigma_w2) for li in layers] == \
        [(f"fcs.{i}", "relu", 2.0) for i in range(6)]
    reference = lint(functional_source("self.acts[i](fc(x))", "nn.ReLU()"))
    assert [(f.code, f.module, f.data.get("problem")) for f in result.findings] == \
        [(f.code, f.module, f.data.get("problem")) for f in reference.findings]
    assert "AL101" not in codes(result)


def test_same_stack_without_activation_uses_linear_target(lint):
    # control for the test above: with no activation in between the target is LeCun (1)
    result, a = lint(functional_source("fc(x)"), analysis=True)
    assert result.status == "ok", result.error
    layers = a.facts.init.layers
    assert [li.target_sigma_w2 for li in layers] == [1.0] * 6


def test_relu_after_tiny_init_is_judged_against_he(lint):
    # at fan-in 16, 1.18 x max-factor below He (0.354) is 0.83 x max-factor below LeCun (0.25)
    from archlint.rules.poor_initialization import PoorInitialization

    std = (2 / 16) ** 0.5 / (1.18 * PoorInitialization.options["max-factor"])
    src = functional_source("torch.relu(fc(x))").replace(
        "self.acts = ", f"[nn.init.normal_(fc.weight, std={std}) for fc in self.fcs]"
        "\n        self.acts = ")
    relu = lint(src, select=["AL104"])
    plain = lint(src.replace("torch.relu(fc(x))", "fc(x)"), select=["AL104"])
    assert "AL104" in codes(relu)
    assert all(f.data["problem"] in ("scale", "stack-scale") for f in relu.findings)
    scale = [f for f in relu.findings if f.data["problem"] == "scale"]
    # fcs.0 .. fcs.4 share their defining line: one finding for the five (fcs.5, the output
    # layer, may be small by design)
    assert [(f.module, f.data.get("merged")) for f in scale] == [("fcs.0", 5)]
    assert not [f for f in plain.findings if f.data["problem"] == "scale"]


# ------------------------------------------------------------------------------ sites, paths

NESTED = """
import torch
import torch.nn as nn


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.proj(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.out = nn.Linear(8, 8)

    def forward(self, x):
        return self.out(self.inner(x)).sigmoid()


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(
            Block(),
            Block(),
            Block(),
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        GUARD
        return self.head(self.blocks(x))
"""


@pytest.mark.parametrize("tracer", ["fx", "exec"])
def test_custom_blocks_are_traced_through_with_paths_and_sites(tracer, lint):
    guard = "pass" if tracer == "fx" else "x = x if x.sum() > -1e9 else x * 2"
    src = NESTED.replace("GUARD", guard)
    result, a = lint(src, analysis=True)
    assert result.status == "ok", result.error
    assert result.tracer == tracer
    # no custom block appears as an opaque node
    assert not any(n.op in ("Block", "Inner") for n in a.graph.nodes)
    layers = [(n.module_path, n.site.line) for n in weight_nodes(a)]
    proj, out = line_of(src, "self.proj = nn.Linear"), line_of(src, "self.out = nn.Linear")
    assert layers == [
        ("blocks.0.inner.proj", proj), ("blocks.0.out", out),
        ("blocks.1.inner.proj", proj), ("blocks.1.out", out),
        ("blocks.2.inner.proj", proj), ("blocks.2.out", out),
        ("head", line_of(src, "self.head = nn.Linear")),
    ]
    acts = [(n.op, n.scope, n.site.line) for n in a.graph.nodes if n.kind == "activation"]
    tanh, sig = line_of(src, "torch.tanh(self.proj(x))"), line_of(src, ".sigmoid()")
    assert acts == [
        ("tanh", "blocks.0.inner", tanh), ("sigmoid", "blocks.0", sig),
        ("tanh", "blocks.1.inner", tanh), ("sigmoid", "blocks.1", sig),
        ("tanh", "blocks.2.inner", tanh), ("sigmoid", "blocks.2", sig),
    ]
    # 6 saturating activations in a row: reported once, at the first, inside its block
    assert codes(result) == ["AL101"]
    f = result.findings[0]
    assert (f.line, f.module, f.data["length"]) == (tanh, "blocks.0.inner", 6)
    assert f.path.endswith(".py")


def test_site_of_layer_inside_multiline_sequential(lint):
    src = """
    import torch.nn as nn


    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Linear(8, 8),
                nn.Sigmoid(),
                nn.Linear(8, 8),
                nn.Sigmoid(),
                nn.Linear(8, 8),
                nn.Sigmoid(),
                nn.Linear(8, 8),
                nn.Sigmoid(),
                nn.Linear(8, 8),
                nn.Sigmoid(),
            )

        def forward(self, x):
            return self.body(x)
    """
    result = lint(src)
    assert codes(result) == ["AL101"]
    f = result.findings[0]
    assert f.module == "body.1"
    assert f.line == line_of(src, "nn.Sigmoid()")
    # the column where nn.Sigmoid() starts on its line
    assert f.column == textwrap.dedent(src).splitlines()[f.line - 1].index("nn.Sigmoid") + 1
    assert [(layer.module, layer.line) for layer in result.layers] == [
        ("body.0", line_of(src, "nn.Linear", 0)), ("body.2", line_of(src, "nn.Linear", 1)),
        ("body.4", line_of(src, "nn.Linear", 2)), ("body.6", line_of(src, "nn.Linear", 3)),
        ("body.8", line_of(src, "nn.Linear", 4)),
    ]


def test_layer_built_in_subclass_init_is_sited_where_it_is_constructed(lint):
    src = """
    import torch.nn as nn


    class ZeroLinear(nn.Linear):
        def __init__(self, n):
            super().__init__(n, n)
            nn.init.zeros_(self.weight)


    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = ZeroLinear(8)
            self.c = nn.Linear(8, 2)

        def forward(self, x):
            return self.c(self.b(self.a(x).relu()).relu())
    """
    result = lint(src)
    al104 = [f for f in result.findings if f.code == "AL104" and f.data["problem"] == "zero"]
    assert [(f.module, f.line) for f in al104] == [("b", line_of(src, "self.b = ZeroLinear"))]


# ------------------------------------------------------------------------------ shared modules

SHARED = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 2)
        INIT

    def forward(self, x):
        for _ in range(STEPS):
            x = torch.tanh(self.fc(x))
        return self.head(x)
"""


def test_shared_linear_applied_several_times(lint):
    src = SHARED.replace("INIT", "pass").replace("STEPS", "6")
    result, a = lint(src, analysis=True)
    assert result.status == "ok", result.error
    fc_calls = [n for n in weight_nodes(a) if n.module_path == "fc"]
    assert len(fc_calls) == 6
    assert {n.site.line for n in fc_calls} == {line_of(src, "self.fc = nn.Linear")}
    # every application is a step of the chain: 6 tanh > 4
    assert codes(result) == ["AL101"]
    assert result.findings[0].data["length"] == 6
    assert result.findings[0].line == line_of(src, "torch.tanh(self.fc(x))")
    # the layers list names the module once
    assert [layer.module for layer in result.layers] == ["fc", "head"]


def test_shared_linear_short_chain_is_clean(lint):
    result = lint(SHARED.replace("INIT", "pass").replace("STEPS", "3"))
    assert result.status == "ok", result.error
    assert codes(result) == []


def test_shared_linear_bad_init_is_reported_once(lint):
    src = SHARED.replace("INIT", "nn.init.normal_(self.fc.weight, std=1e-3)").replace("STEPS", "3")
    result = lint(src)
    al104 = [f for f in result.findings if f.code == "AL104"]
    assert [(f.module, f.line) for f in al104] == [("fc", line_of(src, "self.fc = nn.Linear"))]
    assert "merged" not in al104[0].data


TIED = """
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 100, bias=False)
        self.head.weight = self.embed.weight
        INIT

    def forward(self, ids):
        return self.head(self.ln(self.embed(ids)))
"""


def test_weight_tied_language_model_is_clean(lint):
    result, a = lint(TIED.replace("INIT", "pass"), analysis=True)
    assert result.status == "ok", result.error
    assert result.tracer == "fx"
    assert codes(result) == []
    assert [(layer.module, layer.type) for layer in result.layers] == [
        ("embed", "Embedding"), ("head", "Linear")]
    assert [n.module_path for n in weight_nodes(a)] == ["embed", "head"]


def test_weight_tied_zero_weight_reported_once(lint):
    src = TIED.replace("INIT", "nn.init.zeros_(self.embed.weight)")
    result = lint(src)
    al104 = [f for f in result.findings if f.code == "AL104"]
    assert len(al104) == 1
    assert al104[0].data["problem"] == "zero"
    assert al104[0].module == "embed"
    assert al104[0].line == line_of(src, "self.embed = nn.Embedding")


MATMUL_TIED = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.ln = nn.LayerNorm(16)

    def forward(self, ids):
        GUARD
        return self.ln(self.embed(ids)) @ HEAD
"""


def test_weight_tied_head_as_matmul_on_the_parameter(lint):
    # x @ W with W the parameter itself is a linear layer owned by W's module
    src = MATMUL_TIED.replace("GUARD", "pass").replace("HEAD", "self.embed.weight")
    src = src.replace("nn.Embedding(100, 16)", "nn.Embedding(16, 16)")
    result, a = lint(src, analysis=True)
    head = [n for n in weight_nodes(a) if n.kind == "linear"]
    assert [(n.module_path, n.site.line) for n in head] == \
        [("embed", line_of(src, "@ self.embed.weight"))]


@pytest.mark.parametrize("tracer", ["fx", "exec"])
@pytest.mark.parametrize("head", ["self.embed.weight.t()", "self.embed.weight.T"])
def test_weight_tied_head_through_a_transpose_is_a_weight_layer(tracer, head, lint):
    guard = "pass" if tracer == "fx" else "ids = ids if ids.sum() >= 0 else -ids"
    src = MATMUL_TIED.replace("GUARD", guard).replace("HEAD", head)
    result, a = lint(src, analysis=True)
    assert result.status == "ok", result.error
    assert result.tracer == tracer
    assert [(n.kind, n.module_path) for n in weight_nodes(a)] == \
        [("embedding", "embed"), ("linear", "embed")]


# ------------------------------------------------------------------------------ errors

def test_forward_that_fails_is_an_error_result_not_an_exception(lint):
    src = """
    import torch.nn as nn


    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            if x.sum() != x.sum() + 1:
                raise ValueError("this forward always fails")
            return self.fc(x)
    """
    result = lint(src, input={"shape": [2, 8]})
    assert result.status == "error"
    assert result.error.startswith("cannot trace:")
    assert "ValueError" in result.error and "\n" not in result.error
    assert result.findings == []
