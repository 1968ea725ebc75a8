"""Every rule on fixture files: models that must trigger it, and look-alikes that must not.

Convention of ``tests/fixtures/rules/*.py`` (like ruff's ``resources/test/fixtures``):

- ``AL101.py`` ... ``AL107.py``, ``AL900.py``: one file per rule code, holding several models
  written the way research code writes them. ``healthy.py``: architectures known to train, on
  which no rule may report anything.
- The models linted are those ``archlint FILE`` lints: every ``nn.Module`` class that builds
  without arguments and is not only a block of another model of the file, and every
  module-level ``nn.Module`` instance. They go through the CLI in-process (``--format json``).
- A line that must be reported carries ``# expect: AL101`` (several codes: ``# expect: AL101,
  AL105``). For every selected code, the lines reported must be exactly the lines expected:
  nothing missing, nothing extra, no line twice for one model, nothing outside the file. A model
  none of whose lines carries a comment must get no finding. The comparison is by line: a clean
  model must not share a reportable line (a block class, a helper that builds layers) with a
  model that triggers.
- ``INPUTS = {"Name": {"shape": [2, 100, 8], "dtype": "int64", "high": 50}}`` (optional, module
  level; the form of the config's ``input:``): the example input of the models whose input must
  not be inferred from their first layer. The test passes it in a config file's ``targets:``.
- ``SELECT = ["AL1"]`` (optional, module level): the rules to run, as for ``--select``; default:
  the file's code. Every code an ``# expect:`` names must be selected. AL900 turns on
  ``--report-unused-suppressions``.
- Every model must be analysed (status ok, linted with its INPUTS entry, no selected rule nor
  the gradient estimate skipped or failed). A rule's file holds at least one model that gets its
  code and one that does not; ``healthy.py`` holds no ``# expect:``.

The fixtures' docstrings and comments say which former tests their cases replace.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import (FIXTURES, ROOT, expected_findings, fixture_inputs, fixture_report,
                     fixture_select, model_name)

FILES = sorted(FIXTURES.glob("*.py"))
RULE_FILE = re.compile(r"AL\d{3}")


def _problems(path: Path, report: dict, expected: dict[int, set[str]]) -> list[str]:
    """Every difference between what was reported and what the fixture expects."""
    rel = path.relative_to(ROOT)  # in messages: tests/fixtures/rules/AL101.py:LINE
    inputs = fixture_inputs(path)
    problems = []
    got: dict[int, dict[str, str]] = {}  # line -> code -> "target: message"
    for t in report["targets"]:
        name = t["target"]
        if t["status"] != "ok":
            problems.append(f"{name}: {t['status']}: {t['error']}")
            continue
        if model_name(name) in inputs and not (t["input"] or "").endswith("(config)"):
            problems.append(f"{name}: not linted with its INPUTS entry (input: {t['input']})")
        problems += [f"{name}: {n}" for n in t["notes"]
                     if re.match(r"(AL\d{3}|gradient estimate) (skipped|failed)", n)]
        seen = set()
        for f in t["findings"]:
            # paths are relative to the folder the report was made in
            if f["path"] is None or (FIXTURES / f["path"]).resolve() != path.resolve():
                problems.append(f"{f['path']}:{f['line']}: {f['code']} reported outside the "
                                f"fixture ({name}): {f['message']}")
                continue
            if (f["code"], f["line"]) in seen:
                problems.append(f"{rel}:{f['line']}: {f['code']} reported twice for {name}")
            seen.add((f["code"], f["line"]))
            got.setdefault(f["line"], {}).setdefault(f["code"], f"{name}: {f['message']}")
    for line in sorted(set(expected) | set(got)):
        want, have = expected.get(line, set()), got.get(line, {})
        problems += [f"{rel}:{line}: expected {code}, not reported"
                     for code in sorted(want - set(have))]
        problems += [f"{rel}:{line}: {code} reported, not expected ({have[code]})"
                     for code in sorted(set(have) - want)]
    return problems


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_fixture(path):
    expected = expected_findings(path)
    select = fixture_select(path)
    for line, want in expected.items():
        stray = [c for c in want if not any(c.startswith(s) for s in select)]
        assert not stray, f"{path.name}:{line}: expects {stray}, not in SELECT {select}"

    report = fixture_report(path.stem)
    problems = _problems(path, report, expected)
    assert not problems, "\n".join(problems)

    if RULE_FILE.fullmatch(path.stem):
        code = path.stem
        triggered = [t["target"] for t in report["targets"]
                     if any(f["code"] == code for f in t["findings"])]
        clean = [t["target"] for t in report["targets"] if t["target"] not in triggered]
        assert triggered and clean, (f"{path.name}: needs models that trigger {code} and models "
                                     f"that must not (triggered: {triggered}, clean: {clean})")
    else:
        assert report["targets"] and not expected, f"{path.name}: models that must stay clean"
