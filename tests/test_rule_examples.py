"""Every rule's own documented examples: the bad one must trigger it, the good one must not."""

import pytest

from archlint.rules import ALL_RULES

from helpers import codes, lint_source

#: Rules that read the analysed graph. Rules with ``checks_source`` (AL900 unused-suppression)
#: work on source comments after a whole run; tests/test_suppressions.py runs their examples.
GRAPH_RULES = [r for r in ALL_RULES if not getattr(r, "checks_source", False)]


@pytest.mark.parametrize("rule", GRAPH_RULES, ids=lambda r: r.code)
def test_bad_example_triggers(rule, tmp_path):
    assert rule.bad_example.strip(), f"{rule.code} has no bad example"
    result = lint_source(tmp_path, rule.bad_example, select=[rule.code])
    assert result.status == "ok", result.error
    assert rule.code in codes(result), result.notes


@pytest.mark.parametrize("rule", GRAPH_RULES, ids=lambda r: r.code)
def test_good_example_is_clean(rule, tmp_path):
    assert rule.good_example.strip(), f"{rule.code} has no good example"
    result = lint_source(tmp_path, rule.good_example, select=[rule.code])
    assert result.status == "ok", result.error
    assert rule.code not in codes(result), [f.message for f in result.findings]


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.code)
def test_rule_documentation_has_ruff_headings(rule):
    doc = rule.documentation()
    for heading in ("## What it does", "## Why is this bad?", "## Example", "## Use instead",
                    "## References"):
        assert heading in doc, f"{rule.code} docs lack {heading!r}"
    assert rule.code.startswith("AL") and len(rule.code) == 5
    assert rule.name == rule.name.lower() and " " not in rule.name
