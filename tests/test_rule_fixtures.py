"""Every rule on fixture files: models that must trigger it, and look-alikes that must not.

Convention of ``tests/fixtures/rules/*.py`` (like ruff's ``resources/test/fixtures``):

- ``AL101.py`` ... ``AL107.py``, ``AL900.py``: one file per rule code, holding several models
  written the way research code writes them. ``healthy.py``: architectures known to train, which
  no rule may report.
- The file is linted as ``archlint FILE`` lints it (in-process, ``--format json``): every
  ``nn.Module`` class that builds without arguments and is not only a block of another model of
  the file, and every module-level ``nn.Module`` instance.
- A line that must be reported carries ``# expect: AL101`` (several codes: ``# expect: AL101,
  AL105``). For every selected code, the lines reported must be exactly the lines expected:
  nothing missing, nothing extra, and no line twice for one model. A model that carries no
  comment must get no finding. A clean model must not share a reportable line (a block, a
  helper that builds layers) with a model that triggers: the comparison is by line.
- ``INPUTS = {"Name": {"shape": [2, 100, 8], "dtype": "int64", "high": 50}}`` (optional, module
  level; the form of the config's ``input:``): the example input of the models whose input must
  not be inferred from their first layer. The test passes it through a config file.
- ``SELECT = ["AL1"]`` (optional, module level): the rules to run, as for ``--select``; default:
  the file's code. AL900 turns on ``--report-unused-suppressions``.
- Every model must be analysed (status ok; no selected rule, nor the gradient estimate, skipped
  for want of an input or failed), and a rule's file must hold at least one model that triggers
  it and one that does not.

Comments in the fixtures say which former test a case replaces where that helps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import (FIXTURES, ROOT, expected_findings, fixture_inputs, fixture_select, invoke,
                     models_in, report_of)

FILES = sorted(FIXTURES.glob("*.py"))
RULE_FILE = re.compile(r"AL\d{3}")


def _lint_fixture_file(path: Path, tmp_path: Path) -> dict:
    """``archlint`` over the fixture's models, with its inputs; the JSON report."""
    targets = models_in(path)
    inputs = fixture_inputs(path)
    unknown = set(inputs) - {t.rpartition(":")[2] for t in targets}
    assert not unknown, f"{path.name}: INPUTS names models archlint does not lint: {unknown}"
    config = tmp_path / "archlint.yaml"
    config.write_text(json.dumps({"targets": [
        {"target": str(path.parent / t), "input": inputs[t.rpartition(":")[2]]}
        for t in targets if t.rpartition(":")[2] in inputs]}))
    select = fixture_select(path)
    args = [*targets, "--format", "json", "--select", ",".join(select), "--config", str(config)]
    if any("AL900".startswith(s) or s.startswith("AL900") for s in select):
        args.append("--report-unused-suppressions")
    result = invoke(*args)
    assert result.exit_code in (0, 1), f"{path.name}: exit {result.exit_code}\n{result.output}"
    return report_of(result)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_fixture(path, tmp_path, monkeypatch):
    monkeypatch.chdir(path.parent)
    rel = path.relative_to(ROOT)  # in messages: tests/fixtures/rules/AL101.py:LINE
    expected = expected_findings(path)
    select = fixture_select(path)
    for line, want in expected.items():
        stray = [c for c in want if not any(c.startswith(s) for s in select)]
        assert not stray, f"{rel}:{line}: expects {stray}, which SELECT {select} does not run"

    report = _lint_fixture_file(path, tmp_path)

    problems = []
    got: dict[int, dict[str, list[str]]] = {}  # line -> code -> targets reporting it
    for t in report["targets"]:
        name = t["target"]
        if t["status"] != "ok":
            problems.append(f"{name}: {t['status']}: {t['error']}")
            continue
        skipped = [n for n in t["notes"]
                   if re.match(r"(AL\d{3}|gradient estimate) (skipped|failed)", n)]
        if skipped:
            problems.append(f"{name}: {skipped}")
        seen = set()
        for f in t["findings"]:
            where = f"{f['path']}:{f['line']}"
            if f["path"] is None or Path(f["path"]).resolve() != path.resolve():
                problems.append(f"{where}: {f['code']} reported outside the fixture ({name}): "
                                f"{f['message']}")
                continue
            if (f["code"], f["line"]) in seen:
                problems.append(f"{rel}:{f['line']}: {f['code']} reported twice for {name}")
            seen.add((f["code"], f["line"]))
            got.setdefault(f["line"], {}).setdefault(f["code"], []).append(name)

    messages = {(f["line"], f["code"]): f"{t['target']}: {f['message']}"
                for t in report["targets"] for f in t["findings"]}
    for line in sorted(set(expected) | set(got)):
        want, have = expected.get(line, set()), set(got.get(line, {}))
        for code in sorted(want - have):
            problems.append(f"{rel}:{line}: expected {code}, not reported")
        for code in sorted(have - want):
            problems.append(f"{rel}:{line}: {code} reported, not expected "
                            f"({messages[(line, code)]})")
    assert not problems, "\n".join(problems)

    if RULE_FILE.fullmatch(path.stem):
        clean = [t["target"] for t in report["targets"] if not t["findings"]]
        triggered = [t["target"] for t in report["targets"] if t["findings"]]
        assert triggered and clean, (f"{rel}: needs models that trigger {path.stem} and models "
                                     f"that must not (triggered: {triggered}, clean: {clean})")
    else:
        assert report["targets"], f"{rel}: no models"
