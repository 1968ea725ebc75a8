"""Tracing: fx first, the execution tracer as fallback, and every node tied to its module path
and defining line. (How functional calls, shared and tied layers and custom layer subclasses are
judged by the rules is in tests/fixtures/rules/.)"""

from __future__ import annotations

import textwrap

import pytest

from helpers import (codes, fixture_file, graph_of, line_of, lint_fixture, lint_model, load_source,
                     model_source, weight_nodes)


# ------------------------------------------------------------------------------ fx vs exec

def sigmoid_stack(condition: str) -> str:
    """8 Linear + sigmoid; the ``if condition`` at the top of forward decides whether torch.fx
    can trace it. The same lines either way."""
    return model_source("""
        self.layers = nn.ModuleList([nn.Linear(16, 16) for _ in range(8)])
        self.head = nn.Linear(16, 2)
    """, f"""
        if {condition}:
            x = x * 1.0
        for layer in self.layers:
            x = torch.sigmoid(layer(x))
        return self.head(x)
    """)


SIGMOID_STACK_DATA_DEPENDENT = sigmoid_stack("x.sum() > 0")
SIGMOID_STACK_TRACEABLE = sigmoid_stack("True")


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
    fx = lint(SIGMOID_STACK_TRACEABLE)
    ex = lint(SIGMOID_STACK_DATA_DEPENDENT)
    assert (fx.tracer, ex.tracer) == ("fx", "exec")

    def key(r):
        return [(f.code, f.line, f.column, f.module, f.data.get("length")) for f in r.findings]

    assert key(fx) == key(ex)
    assert [(layer.module, layer.line) for layer in fx.layers] == \
        [(layer.module, layer.line) for layer in ex.layers]
    # the same weight layers, in the same order, with the same module paths and sites
    assert [(n.module_path, n.site.line) for n in weight_nodes(fx)] == \
        [(n.module_path, n.site.line) for n in weight_nodes(ex)]


def test_exec_trace_restores_training_mode_and_buffers(tmp_path):
    import torch

    src = model_source("""
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
    """, """
        if x.mean() > 100:
            return x
        return self.bn(self.fc(x))
    """)
    module, _ = load_source(tmp_path, src)
    model = module.Model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lint_model(model)
    assert result.tracer == "exec"
    assert not model.training and not model.bn.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


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
    result = lint(src)
    assert result.status == "ok", result.error
    assert result.tracer == tracer
    # no custom block appears as an opaque node
    assert not any(n.op in ("Block", "Inner") for n in graph_of(result).nodes)
    layers = [(n.module_path, n.site.line) for n in weight_nodes(result)]
    proj, out = line_of(src, "self.proj = nn.Linear"), line_of(src, "self.out = nn.Linear")
    assert layers == [
        ("blocks.0.inner.proj", proj), ("blocks.0.out", out),
        ("blocks.1.inner.proj", proj), ("blocks.1.out", out),
        ("blocks.2.inner.proj", proj), ("blocks.2.out", out),
        ("head", line_of(src, "self.head = nn.Linear")),
    ]
    acts = [(n.op, n.scope, n.site.line) for n in graph_of(result).nodes if n.kind == "activation"]
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
    layers = "    nn.Linear(8, 8),\n    nn.Sigmoid(),\n" * 5  # one module a line
    src = model_source(f"self.body = nn.Sequential(\n{layers})", "return self.body(x)")
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


# ------------------------------------------------------------------------------ shared modules

def test_shared_linear_applied_several_times():
    # AL101.py's WeightTiedRecurrence: one Linear applied six times
    result = lint_fixture("AL101", "WeightTiedRecurrence")
    assert result.status == "ok", result.error
    cell_calls = [n for n in weight_nodes(result) if n.module_path == "cell"]
    assert len(cell_calls) == 6
    assert {n.site.line for n in cell_calls} == \
        {line_of(fixture_file("AL101"), "self.cell = nn.Linear")}
    # every application is a step of the chain (reported where tanh is applied: AL101.py)
    assert [(f.code, f.data["length"]) for f in result.findings] == [("AL101", 6)]
    # the layers list names the module once
    assert [layer.module for layer in result.layers] == ["cell", "readout"]


TIED = model_source("""
    self.embed = nn.Embedding(100, 16)
    self.ln = nn.LayerNorm(16)
    self.head = nn.Linear(16, 100, bias=False)
    self.head.weight = self.embed.weight
""", "return self.head(self.ln(self.embed(ids)))", args="ids")


def test_weight_tied_language_model_is_clean(lint):
    result = lint(TIED)
    assert result.status == "ok", result.error
    assert result.tracer == "fx"
    assert codes(result) == []
    assert [(layer.module, layer.type) for layer in result.layers] == [
        ("embed", "Embedding"), ("head", "Linear")]
    assert [n.module_path for n in weight_nodes(result)] == ["embed", "head"]


MATMUL_TIED = model_source("""
    self.embed = nn.Embedding(100, 16)
    self.ln = nn.LayerNorm(16)
""", """
    GUARD
    return self.ln(self.embed(ids)) @ HEAD
""", args="ids")


def test_weight_tied_head_as_matmul_on_the_parameter(lint):
    # x @ W with W the parameter itself is a linear layer owned by W's module
    src = MATMUL_TIED.replace("GUARD", "pass").replace("HEAD", "self.embed.weight")
    src = src.replace("nn.Embedding(100, 16)", "nn.Embedding(16, 16)")
    result = lint(src)
    head = [n for n in weight_nodes(result) if n.kind == "linear"]
    assert [(n.module_path, n.site.line) for n in head] == \
        [("embed", line_of(src, "@ self.embed.weight"))]


@pytest.mark.parametrize("tracer", ["fx", "exec"])
@pytest.mark.parametrize("head", ["self.embed.weight.t()", "self.embed.weight.T"])
def test_weight_tied_head_through_a_transpose_is_a_weight_layer(tracer, head, lint):
    guard = "pass" if tracer == "fx" else "ids = ids if ids.sum() >= 0 else -ids"
    src = MATMUL_TIED.replace("GUARD", guard).replace("HEAD", head)
    result = lint(src)
    assert result.status == "ok", result.error
    assert result.tracer == tracer
    assert [(n.kind, n.module_path) for n in weight_nodes(result)] == \
        [("embedding", "embed"), ("linear", "embed")]


# ------------------------------------------------------------------------------ errors

def test_forward_that_fails_is_an_error_result_not_an_exception(lint):
    src = model_source("self.fc = nn.Linear(8, 8)", """
        if x.sum() != x.sum() + 1:
            raise ValueError("this forward always fails")
        return self.fc(x)
    """)
    result = lint(src, input={"shape": [2, 8]})
    assert result.status == "error"
    assert result.error.startswith("cannot trace:")
    assert "ValueError" in result.error and "\n" not in result.error
    assert result.findings == []
