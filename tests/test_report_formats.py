"""--format sarif (validated against the official schema), --format github, --statistics,
--output."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from archlint.results import Finding, TargetResult
from archlint.report.github import escape_data, escape_property, render_github
from archlint.report.model import Report
from archlint.report.sarif import sarif_log
from archlint.report.statistics import render_statistics, statistics
from archlint.rules import ALL_RULES
from helpers import invoke, line_of, run_paths, write

SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"

NET = '''
import torch.nn as nn


class Sigmoids(nn.Module):
    def __init__(self, depth=8):
        super().__init__()
        self.body = nn.Sequential(*[m for _ in range(depth)
                                    for m in (nn.Linear(32, 32), nn.Sigmoid())])  # chain

    def forward(self, x):
        return self.body(x)


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*[nn.Linear(16, 16) for _ in range(24)])  # deep

    def forward(self, x):
        return self.body(x)


class SmallInit(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 16)  # small
        self.fc2 = nn.Linear(16, 4)
        nn.init.normal_(self.fc1.weight, std=1e-3)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        raise RuntimeError("cannot build this one")

    def forward(self, x):
        return x
'''

CONFIG = '''
select: [AL101, AL102, AL103, AL104]
rules:
  AL101: {severity: error}
  AL104: {severity: info}
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    write(root / "models" / "net.py", NET)
    write(root / ".archlint.yaml", CONFIG)
    return root


@pytest.fixture(scope="module")
def report(project):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        return run_paths("models", config=project / ".archlint.yaml")


@pytest.fixture(scope="module")
def sarif(report, project):
    return sarif_log(report, root=project)


# ------------------------------------------------------------------------------ SARIF

def test_sarif_is_valid_against_the_official_schema(sarif):
    schema = json.loads(SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    assert validator_class is jsonschema.Draft4Validator
    validator = validator_class(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(sarif), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    assert sarif["version"] == "2.1.0"


def test_sarif_lists_every_rule_with_its_documentation(sarif):
    rules = sarif["runs"][0]["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.code for r in ALL_RULES]
    levels = {"warning": "warning", "error": "error", "info": "note"}
    for meta, rule in zip(rules, ALL_RULES):
        assert meta["name"] == rule.name
        assert meta["defaultConfiguration"]["level"] == levels[rule.severity]
        assert meta["shortDescription"]["text"]
        assert meta["fullDescription"]["text"]
        assert "## Why is this bad?" in meta["help"]["markdown"]
        assert meta["help"]["text"] == rule.documentation()


def test_sarif_results_have_levels_relative_paths_and_positions(sarif, project):
    run_ = sarif["runs"][0]
    rules = run_["tool"]["driver"]["rules"]
    results = run_["results"]
    assert run_["originalUriBaseIds"]["%SRCROOT%"]["uri"] == project.resolve().as_uri() + "/"
    by_rule = {r["ruleId"]: r for r in results}
    assert {"AL101", "AL104"} <= set(by_rule)
    assert by_rule["AL101"]["level"] == "error"  # raised in the config
    assert by_rule["AL104"]["level"] == "note"  # lowered to info in the config
    assert {r["level"] for r in results} == {"error", "warning", "note"}  # Deep: default
    net = project / "models" / "net.py"
    for result in results:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"] == {"uri": "models/net.py", "uriBaseId": "%SRCROOT%"}
        assert location["region"]["startLine"] >= 1 and location["region"]["startColumn"] >= 1
        assert result["partialFingerprints"]
    chain = by_rule["AL101"]["locations"][0]["physicalLocation"]["region"]
    assert chain["startLine"] == line_of(net, "# chain")
    small = [r for r in results if r["ruleId"] == "AL104" and "fc1" in r["message"]["text"]]
    assert small[0]["locations"][0]["physicalLocation"]["region"] == {
        "startLine": line_of(net, "# small"), "startColumn": 20}


def test_sarif_reports_failed_targets_as_notifications(sarif):
    invocation = sarif["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    notes = [n for n in invocation["toolExecutionNotifications"] if n["level"] == "error"]
    assert len(notes) == 1
    assert "Broken" in notes[0]["message"]["text"]
    assert "cannot build this one" in notes[0]["message"]["text"]
    assert notes[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
        "models/net.py"


def test_sarif_fingerprints_do_not_depend_on_lines(report, project):
    first = sarif_log(report, root=project)["runs"][0]["results"][0]
    for t in report.targets:
        for f in t.findings:
            f.line = (f.line or 0) + 10
    try:
        moved = sarif_log(report, root=project)["runs"][0]["results"][0]
    finally:
        for t in report.targets:
            for f in t.findings:
                f.line -= 10
    assert moved["partialFingerprints"] == first["partialFingerprints"]
    assert moved["locations"] != first["locations"]


def test_cli_writes_sarif_to_the_output_file(project, monkeypatch):
    monkeypatch.chdir(project)
    result = invoke("check", "models/net.py:SmallInit", "--format", "sarif",
                    "--output", "out/archlint.sarif")
    assert result.exit_code == 0, result.output  # AL104 is info here: below --fail-on
    assert result.stdout == ""
    log = json.loads((project / "out" / "archlint.sarif").read_text())
    assert [r["ruleId"] for r in log["runs"][0]["results"]] == ["AL104"]


# ------------------------------------------------------------------------------ GitHub

def test_github_escaping_follows_the_actions_toolkit():
    assert escape_data("50% of\r\nunits: a,b") == "50%25 of%0D%0Aunits: a,b"
    assert escape_property("dir,x/a:b%.py") == "dir%2Cx/a%3Ab%25.py"


def test_github_annotations(report):
    lines = render_github(report).splitlines()
    assert all(line.startswith(("::error ", "::warning ", "::notice ")) for line in lines)
    chain = [line for line in lines if "title=AL101::" in line]
    assert chain and chain[0].startswith("::error file=models/net.py,line=")
    assert ",col=" in chain[0]
    assert any(line.startswith("::notice file=models/net.py,") and "title=AL104::" in line
               for line in lines)
    assert any(line.startswith("::warning file=models/net.py,line=") for line in lines)
    broken = [line for line in lines if "Broken" in line]
    assert broken == [line for line in broken if line.startswith(
        "::error file=models/net.py,title=archlint::models/net.py:Broken: ")]
    assert len(broken) == 1


def test_github_escapes_messages_and_paths():
    finding = Finding(code="AL104", name="poor-initialization", severity="warning",
                      message="100% zero\nweights", path="odd,dir/a:b.py", line=3, column=5,
                      module="fc", hint="init it")
    report = Report(targets=[TargetResult(target="odd,dir/a:b.py:Net", findings=[finding])])
    assert render_github(report) == (
        "::warning file=odd%2Cdir/a%3Ab.py,line=3,col=5,title=AL104::"
        "100%25 zero%0Aweights [fc]%0Ahint: init it\n")


# ------------------------------------------------------------------------------ statistics

def test_statistics_counts_per_rule(report):
    rows = statistics(report)
    counts = {r["code"]: r["count"] for r in rows}
    assert counts == {c: sum(f.code == c for f in report.findings) for c in counts}
    assert [r["count"] for r in rows] == sorted((r["count"] for r in rows), reverse=True)
    text = render_statistics(report)
    assert text.splitlines()[0].split()[:2] == [str(rows[0]["count"]), rows[0]["code"]]
    assert json.loads(render_statistics(report, "json")) == rows


def test_cli_statistics(project, monkeypatch):
    monkeypatch.chdir(project)
    result = invoke("check", "models/net.py:SmallInit", "--statistics",
                    "--format", "json", "--select", "AL104")
    assert json.loads(result.stdout) == [
        {"code": "AL104", "name": "poor-initialization", "count": 1, "severity": "info"}]
    bad = invoke("check", "models", "--statistics", "--format", "sarif")
    assert bad.exit_code == 2 and "--statistics" in bad.stderr


def test_isolated_run_keeps_default_levels(project, monkeypatch):
    monkeypatch.chdir(project)
    report = run_paths("models/net.py:Sigmoids")
    log = sarif_log(report, root=project)
    assert {r["level"] for r in log["runs"][0]["results"]} == {"warning"}
