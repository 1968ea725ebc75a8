"""Configuration: discovery, the keys and their validation (file, key and line in every error),
pyproject's [tool.archlint], and command-line flags winning over the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from archlint.config import ConfigError, find_config, load_config
from helpers import SIGMOID_CHAIN, finding_codes, invoke, report_of, write

def config_error(tmp_path: Path, text: str, name: str = ".archlint.yaml") -> str:
    path = write(tmp_path / name, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


# ------------------------------------------------------------------------------ valid configs

def test_full_config_is_parsed(tmp_path):
    path = write(tmp_path / ".archlint.yaml", """
        targets:
          - models/net.py
          - target: models/zoo.py:build
            kwargs: {depth: 4, width: 16}
            input: {shape: [2, 16]}
        select: [AL1]
        ignore: AL104, AL107
        exclude: ["legacy/*", "scratch"]
        fail-on: error
        input:
          x: {shape: [2, 3, 8, 8]}
          ids: {shape: [2, 5], dtype: int64, high: 10}
        rules:
          AL101: {max-chain: 6, severity: error}
          missing-normalization:
            max_depth: 30
        per-file-ignores:
          "tests/*": [AL103]
    """)
    cfg = load_config(path)
    assert cfg.path == path
    assert [t.target for t in cfg.targets] == ["models/net.py", "models/zoo.py:build"]
    assert cfg.targets[1].kwargs == {"depth": 4, "width": 16}
    assert cfg.targets[1].input.tensors[None].shape == (2, 16)
    assert cfg.select == ["AL1"]
    assert cfg.ignore == ["AL104", "AL107"]
    assert cfg.exclude == ["legacy/*", "scratch"]
    assert cfg.fail_on == "error"
    assert set(cfg.input.tensors) == {"x", "ids"}
    assert cfg.input.tensors["ids"].high == 10
    assert cfg.rules["AL101"] == {"max-chain": 6, "severity": "error"}
    # rule names and snake_case options are accepted and stored under the code / kebab-case
    assert cfg.rules["AL102"] == {"max-depth": 30}
    assert cfg.per_file_ignores == {"tests/*": ["AL103"]}


def test_empty_config_file_is_the_default_config(tmp_path):
    cfg = load_config(write(tmp_path / "archlint.yaml", "# nothing yet\n"))
    assert cfg.select is None and cfg.ignore == [] and cfg.fail_on == "warning"


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("text,line,needles", [
    pytest.param("select: [AL101]\n# a comment\nselcet: [AL102]\n", 3, ["selcet"],
                 id="unknown-top-level-key"),
    pytest.param("fail-on: warning\nAL101:\n  max-chain: 3\n", 2, ["AL101", "rules"],
                 id="rule-options-at-top-level-point-to-rules"),
    pytest.param("rules:\n  AL101:\n    max-chain: 3\n    max-chains: 4\n", 4,
                 ["max-chains", "AL101"], id="unknown-rule-option"),
    pytest.param("select: [AL1]\nrules:\n  AL102:\n    severity: fatal\n", 4,
                 ["severity", "fatal"], id="bad-severity"),
    pytest.param("select: [AL101]\nfail-on: critical\n", 2, ["fail-on"], id="bad-fail-on"),
    pytest.param("rules:\n  AL101: {max-chain: 3}\n  AL999: {}\n", 3, ["AL999"],
                 id="unknown-rule-under-rules"),
    pytest.param("select: AL101\nexclude: 5\n", 2, ["exclude"], id="wrong-type-for-a-list"),
    pytest.param("targets:\n  - a.py\n  - target: b.py:build\n    kwarg: {depth: 3}\n", 4,
                 ["kwarg"], id="unknown-key-in-a-target-entry"),
    pytest.param("targets:\n  - kwargs: {depth: 3}\n", 2, ["target"],
                 id="target-entry-without-target"),
    pytest.param("targets:\n  - target: a.py\n    input: {shape: [2, -3]}\n", 3,
                 ["input", "shape"], id="bad-input-spec"),
    pytest.param("input: {shape: [2, 3], dtype: float99}\n", 1, ["float99"],
                 id="bad-input-dtype"),
    pytest.param("select: [AL101]\nfail-on: error\nselect: [AL102]\n", 3, ["select"],
                 id="duplicate-key"),
    pytest.param("- AL101\n- AL102\n", 1, [], id="not-a-mapping"),
])
def test_config_error_names_file_key_and_line(tmp_path, text, line, needles):
    msg = config_error(tmp_path, text)
    assert msg.startswith(f"{tmp_path / '.archlint.yaml'}:{line}:"), msg
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize("value", ["three", "2.5", "true", "[3]"])
def test_wrong_option_type(tmp_path, value):
    msg = config_error(tmp_path, f"""
        rules:
          saturating-stack:
            severity: error
            max-chain: {value}
    """)
    assert msg.startswith(f"{tmp_path / '.archlint.yaml'}:4:")
    assert "max-chain" in msg


def test_float_option_accepts_an_integer(tmp_path):
    cfg = load_config(write(tmp_path / ".archlint.yaml", """
        rules:
          AL104: {max-factor: 20}
    """))
    assert cfg.rules["AL104"]["max-factor"] == 20.0
    assert isinstance(cfg.rules["AL104"]["max-factor"], float)


@pytest.mark.parametrize("key", ["select", "ignore", "per-file-ignores"])
def test_unknown_rule_code(tmp_path, key):
    body = ("per-file-ignores:\n  'x/*': [AL999]\n" if key == "per-file-ignores"
            else f"{key}: [AL101, AL999]\n")
    msg = config_error(tmp_path, "fail-on: warning\n" + body)
    assert msg.startswith(f"{tmp_path / '.archlint.yaml'}:")
    assert "AL999" in msg
    line = int(msg[len(str(tmp_path / ".archlint.yaml")) + 1:].split(":")[0])
    assert line in (2, 3)


@pytest.mark.parametrize("text,line", [
    ("select: [AL101]\nrules:\n  AL101:\n    max-chain: 3\n  bad: : x\n", 5),
    ("select: [AL101]\nignore: [AL102\nfail-on: error\n", 3),
    ("select: [AL101]\nrules:\n\tAL101: {}\n", 3),
    ("select: [AL101]\nfail-on: 'error\n", 3),
])
def test_yaml_syntax_error_names_file_and_line(tmp_path, text, line):
    msg = config_error(tmp_path, text)
    assert msg.startswith(f"{tmp_path / '.archlint.yaml'}:{line}:"), msg
    assert "YAML" in msg
    assert "\n" not in msg


# ------------------------------------------------------------------------------ pyproject

def test_pyproject_tool_archlint(tmp_path):
    path = write(tmp_path / "pyproject.toml", """
        [project]
        name = "demo"

        [tool.archlint]
        select = ["AL101", "AL103"]
        fail-on = "error"

        [tool.archlint.rules.AL101]
        max-chain = 8
        severity = "error"

        [tool.other]
        anything = 1
    """)
    assert find_config(tmp_path) == path
    cfg = load_config(path)
    assert cfg.select == ["AL101", "AL103"]
    assert cfg.fail_on == "error"
    assert cfg.rules == {"AL101": {"max-chain": 8, "severity": "error"}}


def test_pyproject_errors_name_file_key_and_line(tmp_path):
    msg = config_error(tmp_path, """
        [project]
        name = "demo"

        [tool.archlint]
        select = ["AL101"]
        colour = "always"
    """, name="pyproject.toml")
    assert msg.startswith(f"{tmp_path / 'pyproject.toml'}:6:")
    assert "colour" in msg
    msg = config_error(tmp_path, """
        [tool.archlint]
        select = ["AL101"]

        [tool.archlint.rules.AL101]
        max-chain = "long"
    """, name="pyproject.toml")
    assert msg.startswith(f"{tmp_path / 'pyproject.toml'}:5:")
    assert "max-chain" in msg


def test_pyproject_without_tool_archlint_is_not_a_config(tmp_path):
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n[tool.ruff]\nline-length = 99\n")
    assert find_config(tmp_path) is None or find_config(tmp_path).parent != tmp_path


# ------------------------------------------------------------------------------ discovery

def test_discovery_walks_up_from_a_subdirectory(tmp_path):
    top = write(tmp_path / "repo" / ".archlint.yaml", "select: [AL101]\n")
    deep = tmp_path / "repo" / "src" / "pkg" / "models"
    deep.mkdir(parents=True)
    assert find_config(deep) == top
    # a nearer pyproject with [tool.archlint] wins over the farther yaml...
    near = write(tmp_path / "repo" / "src" / "pyproject.toml", "[tool.archlint]\nselect = []\n")
    assert find_config(deep) == near
    # ... and in the same folder the yaml file comes first
    same = write(tmp_path / "repo" / "src" / "archlint.yaml", "select: [AL102]\n")
    assert find_config(deep) == same


def test_pyproject_without_section_does_not_stop_the_walk(tmp_path):
    top = write(tmp_path / "repo" / "archlint.yaml", "select: [AL101]\n")
    write(tmp_path / "repo" / "sub" / "pyproject.toml", "[project]\nname = 'x'\n")
    assert find_config(tmp_path / "repo" / "sub") == top


def test_cli_uses_the_config_found_from_a_subdirectory(tmp_path, monkeypatch):
    write(tmp_path / ".archlint.yaml", """
        targets:
          - target: models/deep.py:Deep
        rules:
          AL101: {severity: error}
    """)
    write(tmp_path / "models" / "deep.py", SIGMOID_CHAIN)
    (tmp_path / "work" / "here").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "here")
    # only AL101: its severity is what the discovered config changes (AL105 also fires here)
    result = invoke("--format", "json", "--select", "AL101")
    assert result.exit_code == 1, result.output
    report = report_of(result)
    [target] = report["targets"]
    assert target["target"].endswith("models/deep.py:Deep")
    assert [(f["code"], f["severity"]) for f in target["findings"]] == [("AL101", "error")]
    assert report["summary"]["findings"] == {"error": 1, "warning": 0, "info": 0}


# ------------------------------------------------------------------------------ CLI and config

def codes_of(*args: str) -> list[str]:
    return finding_codes(invoke(*args, "--format", "json"))


@pytest.fixture
def project(tmp_path, monkeypatch):
    write(tmp_path / "deep.py", SIGMOID_CHAIN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_config_error_exits_2_with_file_and_line(project):
    write(project / ".archlint.yaml", "select: [AL101]\nrules:\n  AL101:\n    max-chain: x\n")
    result = invoke("deep.py")
    assert result.exit_code == 2
    assert ".archlint.yaml:4:" in result.stderr
    assert "max-chain" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_explicit_config_path_wins_over_discovery(project):
    write(project / ".archlint.yaml", "select: [AL102]\n")
    other = write(project / "conf" / "strict.yaml", "rules:\n  AL101: {max-chain: 10}\n")
    assert codes_of("deep.py") == []          # AL101 not selected
    # the discovered select is not applied (every rule runs: AL105 on the 6-sigmoid stack), and
    # the explicit config's max-chain is: no AL101 (6 <= 10)
    assert codes_of("deep.py", "--config", str(other)) == ["AL105"]
    assert codes_of("deep.py", "--isolated") == ["AL105", "AL101"]
    bad = write(project / "conf" / "bad.yaml", "selec: [AL101]\n")
    result = invoke("deep.py", "--config", str(bad))
    assert result.exit_code == 2
    assert "bad.yaml:1:" in result.stderr


def test_cli_select_and_ignore_override_the_config(project):
    write(project / ".archlint.yaml", "select: [AL102, AL103]\n")
    assert codes_of("deep.py") == []
    assert codes_of("deep.py", "--select", "AL101") == ["AL101"]
    # a prefix selects every AL1xx rule: the 6-sigmoid stack gets AL105 as well as AL101
    assert codes_of("deep.py", "--select", "AL1") == ["AL105", "AL101"]
    write(project / ".archlint.yaml", "ignore: [AL101]\n")
    assert codes_of("deep.py") == ["AL105"]
    # --ignore replaces the config's ignore list; --extend-ignore adds to it
    assert codes_of("deep.py", "--ignore", "AL104") == ["AL105", "AL101"]
    assert codes_of("deep.py", "--extend-ignore", "AL104") == ["AL105"]


def test_cli_fail_on_overrides_the_config(project):
    # only AL101, whose severity the config changes (AL105, a warning, also fires here)
    only = ("--select", "AL101")
    write(project / ".archlint.yaml", "fail-on: error\n")
    assert invoke("deep.py", *only).exit_code == 0  # a warning does not fail
    assert invoke("deep.py", *only, "--fail-on", "warning").exit_code == 1
    write(project / ".archlint.yaml", "rules:\n  AL101: {severity: info}\n")
    assert invoke("deep.py", *only).exit_code == 0
    assert invoke("deep.py", *only, "--fail-on", "info").exit_code == 1


def test_rule_options_from_the_config_apply(project):
    # only AL101, whose options the config sets (AL105 also fires on this model)
    only = ("--select", "AL101")
    write(project / ".archlint.yaml", "rules:\n  AL101: {max-chain: 6}\n")
    assert codes_of("deep.py", *only) == []
    write(project / ".archlint.yaml", "rules:\n  AL101: {max-chain: 5}\n")
    assert codes_of("deep.py", *only) == ["AL101"]
    write(project / ".archlint.yaml", "rules:\n  AL101: {severity: 'off'}\n")
    assert codes_of("deep.py", *only) == []


def test_unknown_rule_on_the_command_line_exits_2(project):
    result = invoke("deep.py", "--select", "AL999")
    assert result.exit_code == 2
    assert "AL999" in result.stderr


def test_exclude_from_config_and_command_line(project):
    write(project / "models" / "a.py", SIGMOID_CHAIN)
    write(project / "models" / "legacy" / "b.py", SIGMOID_CHAIN)
    write(project / "models" / "scratch_c.py", SIGMOID_CHAIN)

    def targets(result):
        return sorted(t["target"] for t in report_of(result)["targets"])

    assert targets(invoke("models", "--format", "json")) == [
        "models/a.py:Deep", "models/legacy/b.py:Deep", "models/scratch_c.py:Deep"]
    write(project / ".archlint.yaml", "exclude: [legacy, 'scratch_*']\n")
    assert targets(invoke("models", "--format", "json")) == ["models/a.py:Deep"]
    # --exclude replaces the config's patterns
    assert targets(invoke("models", "--format", "json", "--exclude", "a.py")) == [
        "models/legacy/b.py:Deep", "models/scratch_c.py:Deep"]
