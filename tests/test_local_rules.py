"""A team's own rules, kept in its repository and enabled by the config's ``local-rules``: they
work wherever the built-in rules do, and every way of getting them wrong is a config error."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import archlint
from archlint.cli import main
from archlint.config import ConfigError, load_config
from archlint.testing import assert_examples, check_examples

RULE = '''
"""The team's serving budget: no linear layer wider than it."""

from archlint.graph.ir import Kind
from archlint.rules import Rule


class WideLinear(Rule):
    """
    ## What it does
    Reports linear layers with more output features than `max-features`.

    ## Why is this bad?
    Our serving hardware runs out of memory above that width.

    ## Example
    ```python
    self.head = nn.Linear(64, 4096)
    ```

    ## Use instead
    ```python
    self.head = nn.Linear(64, 512)
    ```

    ## References
    - The team's serving guide.
    """

    code = "TEAM001"
    name = "wide-linear"
    options = {"max-features": 1024}

    bad_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2048)

    def forward(self, x):
        return self.fc(x)
"""
    good_example = bad_example.replace("2048", "512")

    def check(self, ctx):
        limit = ctx.options["max-features"]
        for node in ctx.graph.nodes:
            if node.kind == Kind.LINEAR and node.module is not None and \\
                    node.module.out_features > limit:
                yield self.finding(
                    ctx, node, f"{node.module.out_features} output features (limit {limit})",
                    hint="make the layer narrower", data={"width": node.module.out_features})
'''

NET = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(16, 64)
        self.head = nn.Linear(64, 2048){comment}

    def forward(self, x):
        return self.head(self.body(x).relu())
'''


def make_repo(root: Path, config: str = "local-rules: [rules/]\n", comment: str = "",
              rule: str = RULE) -> Path:
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "wide_linear.py").write_text(rule)
    # not rule modules: never imported
    (root / "rules" / "_helpers.py").write_text("raise RuntimeError('a private helper')\n")
    (root / "rules" / "test_wide_linear.py").write_text("raise RuntimeError('a test file')\n")
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "net.py").write_text(NET.format(comment=comment).lstrip())
    (root / "archlint.yaml").write_text(textwrap.dedent(config))
    return root


def cli(root: Path, monkeypatch, *args: str):
    monkeypatch.chdir(root)
    return CliRunner().invoke(main, list(args))


def findings(result) -> list[dict]:
    return [f for t in json.loads(result.stdout)["targets"] for f in t["findings"]]


def codes(result) -> list[str]:
    return sorted(f["code"] for f in findings(result))


HEAD_LINE = 8  # self.head = nn.Linear(64, 2048) in models/net.py


# ------------------------------------------------------------------------------ like built-ins

def test_local_rule_reports_on_the_layer_line(tmp_path, monkeypatch):
    root = make_repo(tmp_path)
    result = cli(root, monkeypatch, "models/net.py")
    assert result.exit_code == 1, result.output
    assert f"models/net.py:{HEAD_LINE}:21: TEAM001 warning: 2048 output features (limit " \
           f"1024) [head]" in result.stdout
    data = findings(cli(root, monkeypatch, "models/net.py", "--format", "json"))
    [f] = [f for f in data if f["code"] == "TEAM001"]
    assert (f["name"], f["module"], f["line"], f["data"]) == \
        ("wide-linear", "head", HEAD_LINE, {"width": 2048})


def test_select_ignore_by_code_prefix_and_name(tmp_path, monkeypatch):
    root = make_repo(tmp_path)
    for select in ("TEAM001", "TEAM", "team0", "wide-linear"):
        assert codes(cli(root, monkeypatch, "models/net.py", "--select", select,
                         "--format", "json")) == ["TEAM001"], select
    assert codes(cli(root, monkeypatch, "models/net.py", "--ignore", "TEAM",
                     "--format", "json")) == []
    unknown = cli(root, monkeypatch, "models/net.py", "--select", "TE")
    assert unknown.exit_code == 2 and "unknown rule 'TE'" in unknown.stderr


def test_options_from_the_config_with_their_declared_type(tmp_path, monkeypatch):
    root = make_repo(tmp_path, "local-rules: [rules/]\nrules:\n  wide-linear: "
                               "{max-features: 4096}\n")
    assert codes(cli(root, monkeypatch, "models/net.py", "--format", "json")) == []
    (root / "archlint.yaml").write_text("local-rules: [rules/]\nrules:\n  TEAM001: "
                                        "{max-features: 100, severity: error}\n")
    [f] = findings(cli(root, monkeypatch, "models/net.py", "--format", "json"))
    assert (f["severity"], f["message"]) == ("error", "2048 output features (limit 100)")
    (root / "archlint.yaml").write_text("local-rules: [rules/]\nrules:\n  TEAM001: "
                                        "{max-features: wide}\n")
    bad = cli(root, monkeypatch, "models/net.py")
    assert bad.exit_code == 2
    assert "archlint.yaml:3: rules.TEAM001.max-features: expected int, got 'wide'" in bad.stderr


def test_per_file_ignores(tmp_path, monkeypatch):
    root = make_repo(tmp_path, "local-rules: [rules/]\nper-file-ignores:\n  "
                               "'models/*.py': [TEAM001]\n")
    assert codes(cli(root, monkeypatch, "models/net.py", "--format", "json")) == []


@pytest.mark.parametrize("comment", ["  # archlint: disable=TEAM001", "  # noqa: TEAM001",
                                     "  # archlint: disable=wide-linear",
                                     "  # noqa: E501, TEAM001"])
def test_suppression_comments(comment, tmp_path, monkeypatch):
    root = make_repo(tmp_path, comment=comment)
    result = cli(root, monkeypatch, "models/net.py", "--format", "json")
    assert codes(result) == [] and json.loads(result.stdout)["summary"]["suppressed"] == 1


def test_unused_and_unknown_local_codes_in_noqa(tmp_path, monkeypatch):
    root = make_repo(tmp_path, comment="  # noqa: TEAM001")
    (root / "models" / "net.py").write_text(
        (root / "models" / "net.py").read_text().replace("nn.Linear(16, 64)",
                                                         "nn.Linear(16, 64)  # noqa: TEAM999"))
    result = cli(root, monkeypatch, "models/net.py", "--report-unused-suppressions",
                 "--format", "json")
    [f] = [f for f in findings(result) if f["code"] == "AL900"]
    assert "not archlint rule: TEAM999" in f["message"] and f["line"] == HEAD_LINE - 1


def test_sarif_describes_the_local_rule(tmp_path, monkeypatch):
    root = make_repo(tmp_path)
    log = json.loads(cli(root, monkeypatch, "models/net.py", "--format", "sarif").stdout)
    run = log["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert rules["TEAM001"]["name"] == "wide-linear"
    assert "serving hardware" in rules["TEAM001"]["help"]["text"]
    [res] = [r for r in run["results"] if r["ruleId"] == "TEAM001"]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]][res["ruleIndex"]] == "TEAM001"


def test_rules_and_explain_find_local_rules_through_the_config(tmp_path, monkeypatch):
    root = make_repo(tmp_path)
    listing = cli(root, monkeypatch, "rules")
    assert listing.exit_code == 0
    assert any(line.split()[:3] == ["TEAM001", "wide-linear", "warning"]
               for line in listing.stdout.splitlines())
    for key in ("TEAM001", "team001", "wide-linear"):
        text = cli(root, monkeypatch, "explain", key)
        assert text.exit_code == 0
        assert text.stdout.startswith("# TEAM001 wide-linear (default severity: warning)")
        assert "- max-features: 1024" in text.stdout
    isolated = cli(root, monkeypatch, "explain", "TEAM001", "--isolated")
    assert isolated.exit_code == 2 and "unknown rule 'TEAM001'" in isolated.stderr
    elsewhere = cli(tmp_path.parent, monkeypatch, "explain", "TEAM001", "--config",
                    str(root / "archlint.yaml"))
    assert elsewhere.exit_code == 0


def test_pyproject_config(tmp_path, monkeypatch):
    root = make_repo(tmp_path)
    (root / "archlint.yaml").unlink()
    (root / "pyproject.toml").write_text('[tool.archlint]\nlocal-rules = ["rules/wide_linear.py"]'
                                         '\nselect = ["TEAM"]\n')
    assert codes(cli(root, monkeypatch, "models/net.py", "--format", "json")) == ["TEAM001"]


def test_python_api(tmp_path):
    root = make_repo(tmp_path)
    rule = load_config(root / "archlint.yaml").local_rules[0]
    import torch.nn as nn

    model = nn.Sequential(nn.Linear(8, 4096))
    report = archlint.lint(model, local_rules=[rule], select=["TEAM001"])
    assert [f.code for f in report.findings] == ["TEAM001"]
    with pytest.raises(ValueError, match="unknown rule 'TEAM001'"):
        archlint.lint(model, select=["TEAM001"])


# ------------------------------------------------------------------------------ examples

def test_examples_as_tests(tmp_path):
    rule = load_config(make_repo(tmp_path) / "archlint.yaml").local_rules[0]
    assert_examples(rule)
    assert [c.passed for c in check_examples(rule)] == [True, True]


def test_check_examples_on_the_command_line(tmp_path, monkeypatch):
    root = make_repo(tmp_path)
    ok = cli(root, monkeypatch, "rules", "--check-examples", "--select", "TEAM")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines() == ["TEAM001 wide-linear: bad example ok",
                                      "TEAM001 wide-linear: good example ok",
                                      "2 of 2 examples behave as documented."]
    broken = tmp_path / "broken"
    make_repo(broken, rule=RULE.replace('bad_example.replace("2048", "512")', "bad_example"))
    failed = cli(broken, monkeypatch, "rules", "--check-examples", "--select", "TEAM001")
    assert failed.exit_code == 1
    assert "TEAM001 wide-linear: good example FAILED: the good example triggers TEAM001" in \
        failed.stdout
    rule = load_config(broken / "archlint.yaml").local_rules[0]
    with pytest.raises(AssertionError, match="good example FAILED"):
        assert_examples(rule)


# ------------------------------------------------------------------------------ config errors

ERRORS = {
    "broken module": (RULE.replace("from archlint.rules import Rule",
                                   "from archlint.rules import Rule\nundefined_name"),
                      "local-rules.0: cannot import rules/wide_linear.py: NameError: name "
                      "'undefined_name' is not defined (rules/wide_linear.py:"),
    "bad code": (RULE.replace('"TEAM001"', '"team-1"'),
                 "local-rules.0: rules/wide_linear.py: WideLinear: code 'team-1' is not a rule "
                 "code (capital letters, then digits, e.g. TEAM001)"),
    "archlint's prefix": (RULE.replace('"TEAM001"', '"AL950"'),
                          "code AL950 uses archlint's own prefix AL"),
    "built-in name": (RULE.replace('"wide-linear"', '"saturating-stack"'),
                      "local-rules: rules/wide_linear.py: WideLinear: saturating-stack is "
                      "already used by built-in rule AL101 saturating-stack"),
    "bad option name": (RULE.replace('{"max-features": 1024}', '{"severity": 1}'),
                        "options must map kebab-case names (not 'severity')"),
    "no check": (RULE.replace("    def check(self, ctx):", "    def chek(self, ctx):"),
                 "WideLinear: defines no check(self, ctx) method"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_rule_module_errors_are_config_errors(case, tmp_path, monkeypatch):
    rule, message = ERRORS[case]
    root = make_repo(tmp_path, rule=rule)
    for args in (["models/net.py"], ["rules"], ["explain", "AL101"]):
        result = cli(root, monkeypatch, *args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("archlint: error: ") and "archlint.yaml:1: " in \
            result.stderr, result.stderr
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.output


def test_duplicate_code_names_both_files(tmp_path, monkeypatch):
    root = make_repo(tmp_path)
    (root / "rules" / "copy.py").write_text(RULE.replace("WideLinear", "Copy")
                                            .replace('"wide-linear"', '"copy"'))
    result = cli(root, monkeypatch, "models/net.py")
    assert result.exit_code == 2
    assert "local-rules: rules/wide_linear.py: WideLinear: TEAM001 is already used by " \
           "rules/copy.py: Copy" in result.stderr


@pytest.mark.parametrize("entry,message", [
    ("missing/", "local-rules.0: missing/: no such file or folder"),
    ("models/net.py", "local-rules.0: models/net.py defines no Rule subclass with a code"),
    ("{a: 1}", "local-rules: expected a list of strings"),
])
def test_bad_entries(entry, message, tmp_path, monkeypatch):
    root = make_repo(tmp_path, f"local-rules: [{entry}]\n" if "{" not in entry
                     else f"local-rules: {entry}\n")
    result = cli(root, monkeypatch, "models/net.py")
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_load_config_raises_config_error(tmp_path):
    root = make_repo(tmp_path, rule=ERRORS["bad code"][0])
    with pytest.raises(ConfigError, match="archlint.yaml:1: local-rules.0"):
        load_config(root / "archlint.yaml")


# ------------------------------------------------------------------------------ plugins

@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed package whose ``archlint.rules`` entry point names its rule module."""
    from archlint.rules import plugin_rules

    site = tmp_path / "site"
    info = site / "team_rules-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-rules\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[archlint.rules]\nteam = team_rules\n")
    (site / "team_rules.py").write_text(RULE)
    monkeypatch.syspath_prepend(str(site))
    plugin_rules.cache_clear()
    yield site
    sys.modules.pop("team_rules", None)
    plugin_rules.cache_clear()


def test_installed_plugin_rules_need_no_config(plugin, tmp_path, monkeypatch):
    root = make_repo(tmp_path / "repo", config="select: [TEAM]\n")
    assert codes(cli(root, monkeypatch, "models/net.py", "--format", "json")) == ["TEAM001"]
    assert "TEAM001  wide-linear" in cli(root, monkeypatch, "rules", "--isolated").stdout
    assert cli(root, monkeypatch, "explain", "wide-linear").exit_code == 0


def test_broken_plugin_is_an_error_naming_it(plugin, tmp_path, monkeypatch):
    from archlint.rules import plugin_rules

    (plugin / "team_rules.py").write_text(RULE.replace('"TEAM001"', '"AL950"'))
    sys.modules.pop("team_rules", None)
    plugin_rules.cache_clear()
    root = make_repo(tmp_path / "repo", config="select: [AL1]\n")
    for args in (["models/net.py"], ["rules", "--isolated"]):
        result = cli(root, monkeypatch, *args)
        assert result.exit_code == 2
        assert "plugin team = team_rules (package team-rules 1.0): " in result.stderr
        assert "team_rules.py: WideLinear: code AL950 uses archlint's own prefix AL" in \
            result.stderr, result.stderr
