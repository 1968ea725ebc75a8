"""Suppression comments (# archlint: disable, # noqa: AL..., disable-file) and AL900. (Which
comments AL900 reports: tests/fixtures/rules/AL900.py.)"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from archlint.rules.unused_suppression import UnusedSuppression
from archlint.suppressions import parse_suppressions
from helpers import (fixture_file, fixture_select, invoke, line_of, model_source, report_of,
                     run_paths, write, write_model_using_a_block)

# fc1 is initialised 1000x too small (AL104); body is a chain of 8 sigmoids (AL101).
MODEL = '''
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 64){fc1}
        layers = []
        for _ in range(8):
            layers += [nn.Linear(64, 64), nn.Sigmoid()]{body}
        self.body = nn.Sequential(*layers)
        nn.init.normal_(self.fc1.weight, std=1e-3)

    def forward(self, x):
        return self.body(self.fc1(x).relu())
'''


def model(tmp_path: Path, fc1: str = "", body: str = "", header: str = "",
          name: str = "model.py") -> Path:
    return write(tmp_path / name, header + MODEL.format(fc1=fc1, body=body))


#: The rules these models are written for (other rules may see more in them).
RULES = ["AL101", "AL103", "AL104"]


def lint(*paths: Path, config: dict | None = None, **options):
    options.setdefault("select", RULES)
    return run_paths(*paths, config=config, **options)


def codes(report) -> list[str]:
    return sorted(f.code for f in report.findings)


# ------------------------------------------------------------------------------ parsing

def test_parses_every_form_and_only_comments():
    src = textwrap.dedent('''
        a = 1  # archlint: disable=AL101,AL104
        b = 2  # archlint: disable
        c = 3  # noqa: E501, AL104
        d = 4  # noqa: E501
        e = 5  # noqa
        f = "# archlint: disable=AL101"
        g = """
        # archlint: disable-file=AL101
        """
        h = 6  # type: ignore  # noqa:AL101
        i = 7  # archlint: disable = saturating-stack , AL104
        # archlint: disable-file=AL102
        # ARCHLINT: DISABLE-FILE
        j = 8  # archlint: disabel=AL101
    ''')
    fs = parse_suppressions(src)
    by_line = {line: [s.codes for s in sups] for line, sups in fs.by_line.items()}
    assert by_line == {2: [("AL101", "AL104")], 3: [None], 4: [("AL104",)],
                       11: [("AL101",)], 12: [("saturating-stack", "AL104")]}
    assert [s.codes for s in fs.file_level] == [("AL102",), None]
    assert [m.line for m in fs.malformed] == [15]


def test_unfinished_source_keeps_the_comments_before_the_error():
    fs = parse_suppressions("x = 1  # archlint: disable=AL101\ny = (\n")
    assert list(fs.by_line) == [1]


# ------------------------------------------------------------------------------ applying

def test_unsuppressed_model_has_both_findings(tmp_path):
    report = lint(model(tmp_path))
    assert codes(report) == ["AL101", "AL104"]
    assert report.suppressed == 0


@pytest.mark.parametrize("comment", ["  # archlint: disable=AL104", "  # noqa: AL104",
                                     "  # archlint: disable", "  # noqa: E501,AL104",
                                     "  # archlint: disable=poor-initialization"])
def test_comment_on_the_defining_line_silences_it(tmp_path, comment):
    report = lint(model(tmp_path, fc1=comment))
    assert codes(report) == ["AL101"]
    assert report.suppressed == 1
    assert json.loads(report.render("json"))["summary"]["suppressed"] == 1


@pytest.mark.parametrize("comment", ["  # noqa", "  # noqa: E501", "  # archlint: disable=AL101",
                                     "  # some words about archlint: disable"])
def test_other_comments_do_not_silence_it(tmp_path, comment):
    report = lint(model(tmp_path, fc1=comment))
    assert codes(report) == ["AL101", "AL104"]


def test_comment_on_the_loop_line_silences_the_chain(tmp_path):
    report = lint(model(tmp_path, body="  # archlint: disable=AL101"))
    assert codes(report) == ["AL104"]


def test_file_level_forms(tmp_path):
    one = lint(model(tmp_path, header="# archlint: disable-file=AL104\n", name="one.py"))
    assert codes(one) == ["AL101"]
    every = lint(model(tmp_path, header="# archlint: disable-file\n", name="every.py"))
    assert codes(every) == [] and every.suppressed == 2


def test_ignore_noqa_brings_them_back(tmp_path):
    path = model(tmp_path, fc1="  # archlint: disable=AL104",
                 header="# archlint: disable-file=AL101\n")
    assert codes(lint(path)) == []
    assert codes(lint(path, respect_suppressions=False)) == ["AL101", "AL104"]


def test_comment_where_the_layer_is_defined_in_another_file(tmp_path):
    blocks = "blocks_" + tmp_path.name.replace("-", "_")
    path = write_model_using_a_block(tmp_path, blocks, "net", "  # archlint: disable=AL104")
    report = lint(path)
    assert report.suppressed >= 1
    assert "AL104" not in codes(report)


def test_functional_op_is_silenced_on_its_forward_line(tmp_path):
    def source(comment: str) -> str:
        return model_source("self.layers = nn.ModuleList([nn.Linear(32, 32) for _ in range(8)])",
                            f"""
            for layer in self.layers:
                x = torch.sigmoid(layer(x)){comment}
            return x
        """)

    plain = write(tmp_path / "plain.py", source(""))
    found = lint(plain).findings
    assert [f.code for f in found] == ["AL101"]
    assert found[0].line == line_of(plain, "torch.sigmoid")
    quiet = write(tmp_path / "quiet.py", source("  # archlint: disable=AL101"))
    assert codes(lint(quiet)) == []


# ------------------------------------------------------------------------------ AL900

def unused(report) -> list:
    return [f for f in report.findings if f.code == "AL900"]


def test_unused_check_is_opt_in(tmp_path):
    path = model(tmp_path, body="  # archlint: disable=AL104")
    assert unused(lint(path)) == []
    found = unused(lint(path, report_unused_suppressions=True))
    assert [(f.line, f.severity, f.data["unused"]) for f in found] == \
        [(line_of(path, "layers +="), "info", ["AL104"])]


def test_config_turns_the_unused_check_on_and_sets_its_severity(tmp_path):
    path = model(tmp_path, body="  # archlint: disable=AL104")
    config = {"report_unused_suppressions": True, "rules": {"AL900": {"severity": "warning"}}}
    report = lint(path, config=config)
    assert [f.severity for f in unused(report)] == ["warning"]
    assert report.exit_code() == 1


def test_unused_suppression_data():
    """What AL900 says of AL900.py's comments (which comments it reports: the fixture test)."""
    path = fixture_file("AL900")
    report = run_paths(path, select=fixture_select(path), report_unused_suppressions=True)
    by_line = {f.line: f.data for f in unused(report)}
    assert by_line[line_of(path, "disable=AL104,AL101,AL999")] == {"unused": ["AL101"],
                                                                    "unknown": ["AL999"]}
    assert by_line[line_of(path, "disable-file=AL103")] == {"unused": ["AL103"], "unknown": []}
    assert by_line[line_of(path, "LEARNING_RATE")]["unused"] == ["*"]
    assert all(f.severity == "info" for f in unused(report))


def test_rules_that_did_not_run_are_not_judged(tmp_path):
    path = model(tmp_path, fc1="  # archlint: disable=AL104")
    report = lint(path, select=["AL101"], report_unused_suppressions=True)
    assert unused(report) == []


def test_ignoring_al900_keeps_a_comment(tmp_path):
    path = model(tmp_path, body="  # archlint: disable=AL104")
    assert unused(lint(path, report_unused_suppressions=True, ignore=["AL900"])) == []


def test_target_that_failed_is_not_judged(tmp_path):
    path = write(tmp_path / "model.py", '''
        import torch.nn as nn

        class Broken(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)  # archlint: disable=AL104
                raise ValueError("no")

            def forward(self, x):
                return self.fc(x)
    ''')
    report = lint(path, report_unused_suppressions=True)
    assert report.errors and unused(report) == []


def test_al900_examples(tmp_path):
    """AL900's own bad and good examples, linted as files (they need a whole run)."""
    bad = write(tmp_path / "bad.py", UnusedSuppression.bad_example)
    good = write(tmp_path / "good.py", UnusedSuppression.good_example)
    assert "AL900" in codes(lint(bad, report_unused_suppressions=True))
    assert "AL900" not in codes(lint(good, report_unused_suppressions=True))


def test_cli_flag(tmp_path):
    path = model(tmp_path, body="  # archlint: disable=AL104")
    result = invoke("check", "--isolated", "--report-unused-suppressions",
                    "--select", ",".join(RULES), "--format", "json", str(path))
    data = report_of(result)
    assert "AL900" in [f["code"] for t in data["targets"] for f in t["findings"]]
