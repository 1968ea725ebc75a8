"""What pre-commit and CI runs rely on: files without models, --output, per-file-ignores, exit
codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import ROOT, invoke as invoke_cli, small_init_net, write, write_model_using_a_block

SCRIPT = '''
"""Training script: no class, nothing built at import; importing it would fail loudly."""
import sys

raise SystemExit("this script must not be imported")
'''

BAD = small_init_net()


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    """The CLI with only AL104, the rule these models are written for."""
    return invoke_cli(*args, "--select", "AL104")


def test_files_without_models_pass_without_importing_torch(project):
    write(project / "train.py", SCRIPT)
    write(project / "utils.py", "def helper():\n    return 1\n")
    code = textwrap.dedent("""
        import sys
        from archlint.cli import main
        try:
            main(["train.py", "utils.py"])
        except SystemExit as exc:
            print("exit", exc.code)
        print("torch imported:", "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert "exit 0" in out.stdout and "torch imported: False" in out.stdout
    assert "must not be imported" not in out.stdout + out.stderr


def test_scripts_next_to_a_model_are_not_imported(project):
    write(project / "train.py", SCRIPT)
    write(project / "net.py", BAD)
    result = invoke("check", "--isolated", "train.py", "net.py", "--format", "json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert [t["target"] for t in data["targets"]] == ["net.py:Net"]


def test_output_file_and_exit_codes(project):
    write(project / "net.py", BAD)
    result = invoke("check", "--isolated", "net.py", "-o", "reports/archlint.json",
                    "--format", "json")
    assert result.exit_code == 1
    assert result.stdout == ""
    data = json.loads((project / "reports" / "archlint.json").read_text())
    assert data["summary"]["findings"]["warning"] == 1
    assert invoke("check", "--isolated", "net.py", "--fail-on", "error").exit_code == 0
    unknown = invoke("check", "--isolated", "net.py", "--select", "AL999")
    assert unknown.exit_code == 2 and "AL999" in unknown.stderr


@pytest.mark.parametrize("pattern", ["net.py", "*.py", "models/*", "ALL"])
def test_per_file_ignores(project, pattern):
    write(project / "models" / "net.py", BAD)
    file_pattern = "models/net.py" if pattern == "ALL" else pattern
    codes = "[ALL]" if pattern == "ALL" else "[AL104]"
    write(project / ".archlint.yaml", f'per-file-ignores:\n  "{file_pattern}": {codes}\n')
    assert invoke("check", "models").exit_code == 0
    assert invoke("check", "--isolated", "models").exit_code == 1


def test_per_file_ignores_match_the_target_file_too(project):
    """Layers defined in a shared module: ignoring the model's file covers them as well."""
    write_model_using_a_block(project / "legacy", "shared_blocks_pfi", "old")
    plain = invoke("check", "--isolated", "legacy/old.py:Net", "--format", "json")
    paths = [f["path"] for t in json.loads(plain.stdout)["targets"] for f in t["findings"]]
    assert paths == ["legacy/shared_blocks_pfi.py"]
    write(project / ".archlint.yaml", 'per-file-ignores:\n  "legacy/old.py": [AL104]\n')
    result = invoke("check", "legacy/old.py:Net", "--format", "json")
    assert result.exit_code == 0, result.output


def test_per_file_ignores_are_validated(project):
    write(project / "net.py", BAD)
    write(project / ".archlint.yaml", 'per-file-ignores:\n  "*.py": [AL999]\n')
    result = invoke("check", "net.py")
    assert result.exit_code == 2 and ".archlint.yaml:2" in result.stderr


def test_new_config_keys_are_validated(project):
    write(project / "net.py", BAD)
    write(project / ".archlint.yaml", "report-unused-suppressions: yes please\n")
    result = invoke("check", "net.py")
    assert result.exit_code == 2 and "report-unused-suppressions" in result.stderr
