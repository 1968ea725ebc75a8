"""The command line end to end, in a subprocess: exit codes, the JSON shape, the text format, a
directory with good, bad and broken files, factories, import paths and the config.

Each subprocess costs a torch import (~3 s), so one run is shared by several tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import MIXED_MODELS, SIGMOID_CHAIN, invoke, line_of, run_cli, two_inputs, write

GOOD = MIXED_MODELS
BAD = SIGMOID_CHAIN

BROKEN = """
import torch.nn as nn

raise RuntimeError("boom at import")


class Broken(nn.Module):
    def forward(self, x):
        return x
"""

FACTORY = """
import torch.nn as nn


def build(depth, width=8):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers)
"""

MULTI = two_inputs("TwoIn")

ZOO = """
import torch.nn as nn


def make(depth=6):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(8, 8), nn.Sigmoid()]
    return nn.Sequential(*layers)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_project")
    write(root / "models" / "good.py", GOOD)
    write(root / "models" / "bad.py", BAD)
    write(root / "models" / "sub" / "broken.py", BROKEN)
    write(root / "factory.py", FACTORY)
    write(root / "multi.py", MULTI)
    write(root / "tinypkg" / "__init__.py", "")
    write(root / "tinypkg" / "zoo.py", ZOO)
    return root


# ------------------------------------------------------------------------------ a directory

@pytest.fixture(scope="module")
def dir_json(project):
    proc = run_cli("models", "--format", "json", cwd=project)
    return proc, json.loads(proc.stdout)


def test_directory_run_exits_2_when_a_file_cannot_be_imported(dir_json):
    proc, _ = dir_json
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_json_shape(dir_json):
    _, report = dir_json
    assert set(report) >= {"version", "targets", "summary"}
    assert report["version"] == "0.1.0"
    for t in report["targets"]:
        assert set(t) >= {"target", "status", "error", "tracer", "findings", "layers"}
        assert isinstance(t["target"], str)
        assert t["status"] in ("ok", "error")
        assert isinstance(t["findings"], list) and isinstance(t["layers"], list)
        if t["status"] == "ok":
            assert t["error"] is None and t["tracer"] in ("fx", "exec")
        else:
            assert isinstance(t["error"], str) and t["tracer"] is None
        for f in t["findings"]:
            assert set(f) >= {"code", "name", "severity", "message", "path", "line", "column",
                              "module"}
            assert re.fullmatch(r"AL\d{3}", f["code"])
            assert f["severity"] in ("error", "warning", "info")
            assert isinstance(f["line"], int) and isinstance(f["column"], int)
            assert isinstance(f["path"], str) and isinstance(f["module"], str)
        for layer in t["layers"]:
            assert set(layer) >= {"module", "type", "path", "line", "grad_rms",
                                  "measured_grad_rms"}
            assert isinstance(layer["line"], int)
    s = report["summary"]
    assert set(s) >= {"targets", "errors", "findings"}
    assert set(s["findings"]) == {"error", "warning", "info"}


def test_directory_targets_and_statuses(dir_json):
    _, report = dir_json
    by_name = {t["target"]: t for t in report["targets"]}
    # Net and the module-level instances; not Block (inside Net), not Wide (needs an argument)
    assert sorted(by_name) == ["models/bad.py:Deep", "models/good.py:Net",
                               "models/good.py:instance", "models/good.py:tagged",
                               "models/sub/broken.py"]
    assert [by_name[n]["status"] for n in sorted(by_name)] == ["ok", "ok", "ok", "ok", "error"]
    error = by_name["models/sub/broken.py"]["error"]
    assert "boom at import" in error and "models/sub/broken.py:3" in error
    assert "\n" not in error
    # the deep sigmoid stack: AL101 (structure) and AL105 (the estimated gradient)
    assert report["summary"] == {**report["summary"], "targets": 5, "errors": 1,
                                 "findings": {"error": 0, "warning": 2, "info": 0}}


def test_findings_are_located_at_the_defining_line(dir_json, project):
    _, report = dir_json
    by_name = {t["target"]: t for t in report["targets"]}
    assert by_name["models/good.py:Net"]["findings"] == []
    found = by_name["models/bad.py:Deep"]["findings"]
    assert sorted(x["code"] for x in found) == ["AL101", "AL105"]
    [f] = [x for x in found if x["code"] == "AL101"]
    assert (f["code"], f["name"], f["severity"]) == ("AL101", "saturating-stack", "warning")
    assert f["path"] == "models/bad.py"
    assert f["line"] == line_of(project / "models" / "bad.py", "nn.Sigmoid()")
    assert f["module"] == "body.1"
    assert by_name["models/bad.py:Deep"]["tracer"] == "fx"


def test_layers_list_every_module_owning_a_matrix(dir_json, project):
    _, report = dir_json
    by_name = {t["target"]: t for t in report["targets"]}
    good = project / "models" / "good.py"
    layers = [(x["module"], x["type"], x["path"], x["line"])
              for x in by_name["models/good.py:Net"]["layers"]]
    assert layers == [
        ("blocks.0.fc", "Linear", "models/good.py", line_of(good, "self.fc = nn.Linear(8, 8)")),
        ("blocks.1.fc", "Linear", "models/good.py", line_of(good, "self.fc = nn.Linear(8, 8)")),
        ("head", "Linear", "models/good.py", line_of(good, "self.head = nn.Linear")),
    ]
    inst = by_name["models/good.py:instance"]["layers"]
    assert [(x["module"], x["line"]) for x in inst] == [
        ("0", line_of(good, "instance = ")), ("2", line_of(good, "instance = "))]
    # the estimate fills grad_rms (the input is inferred from the first Linear); nothing is
    # measured without being asked
    for x in by_name["models/good.py:Net"]["layers"] + inst:
        assert isinstance(x["grad_rms"], float) and x["grad_rms"] > 0, x
        assert x["measured_grad_rms"] is None


def test_nothing_but_the_module_body_runs(dir_json, project):
    assert not (project / "MAIN_RAN").exists()
    assert not (project / "models" / "MAIN_RAN").exists()
    assert not (project / "CALLED").exists()


def test_text_format_and_exit_1(project):
    # the format of one finding line and the summary: only AL101 (AL105 also fires on bad.py)
    proc = run_cli("models/bad.py", "models/good.py", "--select", "AL101", cwd=project)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    line = line_of(project / "models" / "bad.py", "nn.Sigmoid()")
    finding = [x for x in lines if re.match(r"^\S+:\d+:\d+: AL\d{3} ", x)]
    assert len(finding) == 1
    assert re.fullmatch(rf"models/bad\.py:{line}:\d+: AL101 warning: .+ \[body\.1\]", finding[0])
    assert re.search(r"\b1 finding\b", lines[-1]) and "fx" in lines[-1]
    assert "4 targets" in lines[-1]  # Deep, Net, instance, tagged


def test_exit_0_on_a_clean_file(project):
    proc = run_cli("models/good.py", "--select", "AL101,AL102,AL103,AL104,AL107", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 findings" in proc.stdout.splitlines()[-1]


# ------------------------------------------------------------------------------ factories, packages

def test_factory_with_config_kwargs_package_callable_and_input_mapping(project, tmp_path):
    # the config lives at the project root; archlint runs from a subdirectory and finds it
    write(project / ".archlint.yaml", """
        targets:
          - target: factory.py:build
            kwargs: {depth: 7, width: 4}
          - target: multi.py:TwoIn
            input:
              ids: {shape: [3, 5], dtype: int64, high: 20}
              feats: {shape: [3, 150, 6]}
    """)
    try:
        (project / "models" / "sub").mkdir(exist_ok=True)
        proc = run_cli("--format", "json", cwd=project / "models" / "sub")
    finally:
        (project / ".archlint.yaml").unlink()
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    by_name = {Path(t["target"]).name: t for t in report["targets"]}
    assert sorted(by_name) == ["factory.py:build", "multi.py:TwoIn"]
    build = by_name["factory.py:build"]
    assert build["status"] == "ok"
    [f] = build["findings"]
    assert f["code"] == "AL101" and f["data"]["length"] == 7
    assert f["line"] == line_of(project / "factory.py", "nn.Tanh()")
    assert [x["module"] for x in build["layers"]] == [str(2 * i) for i in range(7)]
    two = by_name["multi.py:TwoIn"]
    assert two["status"] == "ok", two["error"]
    assert [(f["code"], f["data"]["steps"]) for f in two["findings"]] == [("AL107", 150)]


def test_package_module_callable_and_unbuildable_factory(project):
    # about resolving the import path and locating the site: only AL101 (AL105 also fires)
    proc = run_cli("tinypkg.zoo:make", "factory.py:build", "--isolated", "--format", "json",
                   "--select", "AL101", cwd=project)
    report = json.loads(proc.stdout)
    by_name = {t["target"]: t for t in report["targets"]}
    zoo = by_name["tinypkg.zoo:make"]
    assert zoo["status"] == "ok"
    [f] = zoo["findings"]
    assert (f["code"], f["path"], f["line"]) == (
        "AL101", "tinypkg/zoo.py", line_of(project / "tinypkg" / "zoo.py", "nn.Sigmoid()"))
    # a factory needing an argument, named without kwargs: a one-line error, exit 2
    build = by_name["factory.py:build"]
    assert build["status"] == "error" and "depth" in build["error"]
    assert proc.returncode == 2


def test_config_import_path_target_from_a_subdirectory(project):
    write(project / "archlint.yaml", "targets:\n  - target: tinypkg.zoo:make\n")
    try:
        proc = run_cli("--format", "json", cwd=project / "models")
    finally:
        (project / "archlint.yaml").unlink()
    report = json.loads(proc.stdout)
    assert [t["status"] for t in report["targets"]] == ["ok"], report["targets"][0]["error"]


# ------------------------------------------------------------------------------ config errors

def test_config_error_in_a_subprocess(project, tmp_path):
    write(tmp_path / ".archlint.yaml", """
        select: [AL101]
        rules:
          AL101:
            max-chain: [4]
    """)
    write(tmp_path / "bad.py", BAD)
    proc = run_cli("bad.py", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    [msg] = proc.stderr.strip().splitlines()
    assert ".archlint.yaml:4:" in msg and "max-chain" in msg


# ------------------------------------------------------------------------------ in-process checks
# (click's runner: no torch import per call)

DATA_DEPENDENT = """
import torch
import torch.nn as nn


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(6)])

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        for layer in self.layers:
            x = torch.sigmoid(layer(x))
        return x


class Failing(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() != x.sum() + 1:
            raise ValueError("this forward always fails")
        return self.fc(x)


class NoInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 8, batch_first=True)

    def forward(self, x, temperature):
        out, _ = self.rnn(x)
        return out[:, -1] / temperature.view(1)  # a one-element tensor: no guess runs
"""


@pytest.fixture
def inproc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "dd.py", DATA_DEPENDENT)
    return invoke


def test_output_says_which_tracer_and_trace_errors_are_target_errors(inproc, tmp_path):
    # only AL101 (AL105 also fires on Gated): the point is the tracer and the target errors
    result = inproc("dd.py", "--format", "json", "--select", "AL101")
    report = json.loads(result.stdout)
    by_name = {t["target"]: t for t in report["targets"]}
    assert sorted(by_name) == ["dd.py:Failing", "dd.py:Gated", "dd.py:NoInput"]
    gated = by_name["dd.py:Gated"]
    assert (gated["status"], gated["tracer"]) == ("ok", "exec")
    assert [(f["code"], f["line"]) for f in gated["findings"]] == [
        ("AL101", line_of(tmp_path / "dd.py", "torch.sigmoid(layer(x))"))]
    failing = by_name["dd.py:Failing"]
    assert failing["status"] == "error" and failing["tracer"] is None
    assert "this forward always fails" in failing["error"] and "\n" not in failing["error"]
    assert result.exit_code == 2
    # the other targets are still analysed and reported, in text too
    text = inproc("dd.py", "--select", "AL101")
    assert text.exit_code == 2
    assert re.search(r"^dd\.py:Failing: error: .*this forward always fails", text.stdout, re.M)
    assert re.search(r"^dd\.py:\d+:\d+: AL101 ", text.stdout, re.M)
    assert "exec" in text.stdout.splitlines()[-1]


def test_missing_input_for_a_rule_is_said_clearly(inproc):
    result = inproc("dd.py:NoInput")
    assert result.exit_code == 0
    notes = [x for x in result.stdout.splitlines() if "AL107" in x]
    assert len(notes) == 1 and "input" in notes[0]
    assert notes[0].startswith("dd.py:NoInput")


def test_per_file_ignores(inproc, tmp_path):
    write(tmp_path / "legacy" / "old.py", BAD)
    write(tmp_path / "new.py", BAD)
    write(tmp_path / ".archlint.yaml", "per-file-ignores:\n  'legacy/*': [AL101]\n")
    result = inproc("legacy", "new.py", "--format", "json")
    report = json.loads(result.stdout)
    found = {t["target"]: [f["code"] for f in t["findings"]] for t in report["targets"]}
    # only the listed code is dropped, and only for the matching files; AL105 (the 6-sigmoid
    # stack's vanishing gradient) is kept everywhere
    assert found == {"legacy/old.py:Deep": ["AL105"], "new.py:Deep": ["AL105", "AL101"]}
