"""`archlint rules`, `archlint explain`, and docs/rules.md generated from the rule classes."""

from __future__ import annotations

import json

import pytest

from archlint.rule_docs import REFERENCE_COMMAND, markdown_reference, summary
from archlint.rules import ALL_RULES

from helpers import ROOT, invoke

RULES_MD = ROOT / "docs" / "rules.md"


def test_rules_lists_code_name_severity_and_summary():
    result = invoke("rules")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == len(ALL_RULES)
    for line, rule in zip(lines, ALL_RULES):
        assert line.split()[:3] == [rule.code, rule.name, rule.severity]
        assert line.endswith(summary(rule))
    assert any(line.startswith("AL900  unused-suppression") for line in lines)


def test_rules_json():
    data = json.loads(invoke("rules", "--format", "json").stdout)
    assert [r["code"] for r in data] == [r.code for r in ALL_RULES]
    assert all(r["documentation"] and r["summary"] for r in data)


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.code)
def test_explain_prints_the_rules_own_documentation(rule):
    for key in (rule.code, rule.code.lower(), rule.name):
        result = invoke("explain", key)
        assert result.exit_code == 0
        assert result.stdout.startswith(f"# {rule.code} {rule.name} (default severity: "
                                        f"{rule.severity})")
        assert rule.documentation() in result.stdout
        for option, default in rule.options.items():
            assert f"- {option}: {default}" in result.stdout


def test_summaries_are_one_full_sentence():
    for rule in ALL_RULES:
        text = summary(rule)
        assert "\n" not in text and text.endswith(".") and len(text) > 20, (rule.code, text)


def test_explain_unknown():
    unknown = invoke("explain", "AL999")
    assert unknown.exit_code == 2 and "unknown rule 'AL999'" in unknown.stderr


def test_rules_reference_is_up_to_date():
    expected = markdown_reference(ALL_RULES)
    actual = RULES_MD.read_text() if RULES_MD.exists() else ""
    assert actual == expected, \
        f"docs/rules.md is out of date: regenerate it with `{REFERENCE_COMMAND}`"


def test_rules_reference_holds_every_rule_and_matches_the_cli():
    text = RULES_MD.read_text()
    for rule in ALL_RULES:
        assert f"## {rule.code} {rule.name}" in text
        assert "### What it does" in text
    assert invoke("rules", "--format", "markdown").stdout == text
