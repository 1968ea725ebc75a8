"""--baseline FILE / --update-baseline: adopt archlint and fail only on new findings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import (forget_imported_files, fresh_imports, invoke as invoke_cli, small_init_net,
                     write)

@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with fresh_imports():  # every write of models/net.py is a new version of the file
        yield tmp_path


def write_model(project: Path, extra: str = "", prefix: str = "") -> None:
    """models/net.py: the small-init Net (AL104 on fc1), ``extra`` lines at the end of
    __init__."""
    forget_imported_files()
    write(project / "models" / "net.py", prefix + small_init_net(extra).lstrip("\n"))


def invoke(*args: str):
    return invoke_cli("check", "--isolated", "--select", "AL104", *args)


def findings(result) -> list[tuple[str, str]]:
    data = json.loads(result.stdout)
    return [(f["code"], f["module"]) for t in data["targets"] for f in t["findings"]]


def test_update_then_check_only_new_findings(project):
    write_model(project)
    before = invoke("models", "--format", "json")
    assert before.exit_code == 1 and findings(before) == [("AL104", "fc1")]

    update = invoke("models", "--baseline", "archlint-baseline.json", "--update-baseline")
    assert update.exit_code == 0, update.output
    assert "wrote 1 finding" in update.stderr
    data = json.loads((project / "archlint-baseline.json").read_text())
    assert data["archlint-baseline"] == 1
    assert data["findings"] == [{"target": "models/net.py:Net", "module": "fc1", "code": "AL104",
                                 "count": 1}]

    again = invoke("models", "--baseline", "archlint-baseline.json", "--format", "json")
    assert again.exit_code == 0 and findings(again) == []
    assert json.loads(again.stdout)["summary"]["baselined"] == 1

    # Lines move: still known. A new problem: reported, alone.
    write_model(project, prefix="# a comment\n\n\n",
                extra="        nn.init.zeros_(self.fc2.weight)\n")
    moved = invoke("models", "--baseline", "archlint-baseline.json", "--format", "json")
    assert moved.exit_code == 1
    assert findings(moved) == [("AL104", "fc2")]


def test_text_summary_and_stale_entries(project):
    write_model(project)
    invoke("models", "--baseline", "b.json", "--update-baseline")
    write_model(project, extra="        nn.init.kaiming_normal_(self.fc1.weight)\n")
    fixed = invoke("models", "--baseline", "b.json")
    assert fixed.exit_code == 0
    assert "1 finding of b.json no longer occur" in fixed.stdout


def test_counts_matter(tmp_path):
    from archlint.baseline import load_baseline
    from archlint.results import TargetResult
    from archlint.results import Finding

    (tmp_path / "b.json").write_text(json.dumps({"archlint-baseline": 1, "findings": [
        {"target": "pkg.models:build", "module": "body.0", "code": "AL104", "count": 2}]}))
    baseline = load_baseline(tmp_path / "b.json")
    same = [Finding("AL104", "poor-initialization", "warning", f"m{i}", module="body.0")
            for i in range(3)]
    other = Finding("AL104", "poor-initialization", "warning", "x", module="body.1")
    result = TargetResult(target="pkg.models:build", findings=[*same, other])
    assert baseline.filter(result) == 2
    assert [f.message for f in result.findings] == ["m2", "x"]


def test_baseline_is_relative_to_its_own_folder(project, monkeypatch):
    write_model(project)
    (project / "ci").mkdir()
    invoke("models", "--baseline", "ci/baseline.json", "--update-baseline")
    data = json.loads((project / "ci" / "baseline.json").read_text())
    assert data["findings"][0]["target"] == "../models/net.py:Net"
    monkeypatch.chdir(project / "models")
    from_elsewhere = invoke("net.py", "--baseline", "../ci/baseline.json", "--format", "json")
    assert from_elsewhere.exit_code == 0 and findings(from_elsewhere) == []


def test_baseline_from_the_config(project):
    write_model(project)
    (project / ".archlint.yaml").write_text("baseline: archlint-baseline.json\n"
                                            "select: [AL104]\n")
    update = invoke_cli("models", "--update-baseline")
    assert update.exit_code == 0, update.output
    assert (project / "archlint-baseline.json").exists()
    assert invoke_cli("models").exit_code == 0


@pytest.mark.parametrize("content, message", [
    (None, "no such baseline file"),
    ("{not json", "invalid JSON"),
    ('{"findings": []}', "not an archlint baseline"),
    ('{"archlint-baseline": 1, "findings": [{"target": 3}]}', "findings[0]"),
    ('{"archlint-baseline": 1, "findings": {}}', "'findings' must be a list"),
])
def test_unusable_baseline_is_an_error_naming_the_file(project, content, message):
    write_model(project)
    if content is not None:
        (project / "bad.json").write_text(content)
    result = invoke("models", "--baseline", "bad.json")
    assert result.exit_code == 2
    assert "bad.json" in result.stderr and message in result.stderr


def test_update_baseline_needs_a_file(project):
    write_model(project)
    result = invoke("models", "--update-baseline")
    assert result.exit_code == 2 and "--baseline" in result.stderr
