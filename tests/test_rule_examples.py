"""Every rule's own documented examples: the bad one must trigger it, the good one must not.

Run with the public helper a team uses for its own rules (archlint.testing)."""

import pytest

from archlint.rules import ALL_RULES
from archlint.testing import check_example


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.code)
def test_bad_example_triggers(rule):
    check = check_example(rule, "bad")
    assert check.passed, check.detail


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.code)
def test_good_example_is_clean(rule):
    check = check_example(rule, "good")
    assert check.passed, check.detail


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.code)
def test_rule_documentation_has_ruff_headings(rule):
    doc = rule.documentation()
    for heading in ("## What it does", "## Why is this bad?", "## Example", "## Use instead",
                    "## References"):
        assert heading in doc, f"{rule.code} docs lack {heading!r}"
    assert rule.code.startswith("AL") and len(rule.code) == 5
    assert rule.name == rule.name.lower() and " " not in rule.name
