"""The result cache (archlint.cache) and ``-j N``.

A cached result must report exactly what a cold run reports; a run whose targets are all cached
must answer without importing torch; what a result depends on (the target's file, the local
files it imports, the config, the options) invalidates it; a corrupt entry is ignored with a
note. ``-j N`` gives the report ``-j 1`` gives, in the same order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, write

BLOCKS = """
from torch import nn


class Block(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.{act}()

    def forward(self, x):
        return self.act(self.fc(x))
"""

MODEL = """
from torch import nn

from blocks import Block


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*[Block(32) for _ in range(12)])
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)  # noqa: AL104

    def forward(self, x):
        return self.body(x)
"""

CONFIG = """
input:
  shape: [4, 32]
per-file-ignores:
  "other.py": [AL103]
"""


def _project(tmp_path: Path, act: str = "Tanh") -> Path:
    write(tmp_path / ".archlint.yaml", CONFIG)
    write(tmp_path / "blocks.py", BLOCKS.format(act=act))
    write(tmp_path / "deep.py", MODEL)
    write(tmp_path / "other.py", MODEL.replace("Deep", "Other").replace("12", "3"))
    return tmp_path


def _run(cwd: Path, *args: str, probe: bool = False) -> subprocess.CompletedProcess:
    """``archlint ARGS`` in a fresh process; ``probe``: it also says on stderr whether torch
    was imported."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import sys, runpy\n"
            f"sys.argv = ['archlint', *{list(args)!r}]\n"
            "try:\n    runpy.run_module('archlint', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('TORCH_IMPORTED', 'torch' in sys.modules, file=sys.stderr)\n"
            "sys.exit(code)\n") if probe else None
    cmd = [sys.executable, "-c", code] if probe else [sys.executable, "-m", "archlint", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def _torch_imported(proc) -> bool:
    return "TORCH_IMPORTED True" in proc.stderr


def test_a_cached_run_reports_exactly_what_a_cold_run_reports_without_torch(tmp_path):
    _project(tmp_path)
    cold = _run(tmp_path, ".", "--format", "json", "-j", "1", probe=True)
    assert cold.returncode == 1, cold.stderr
    assert _torch_imported(cold)
    assert (tmp_path / ".archlint_cache" / ".gitignore").read_text().strip().endswith("*")
    warm = _run(tmp_path, ".", "--format", "json", "-j", "1", probe=True)
    assert warm.returncode == 1
    assert not _torch_imported(warm)
    assert warm.stdout == cold.stdout
    for fmt in ("text", "sarif"):  # every format from the same results
        assert _run(tmp_path, ".", "--format", fmt).stdout == \
            _run(tmp_path, ".", "--format", fmt, "--no-cache").stdout
    report = json.loads(warm.stdout)
    assert [t["target"] for t in report["targets"]] == ["blocks.py:Block", "deep.py:Deep",
                                                         "other.py:Other"]


def test_an_imported_local_file_invalidates_the_targets_that_import_it(tmp_path):
    _project(tmp_path)
    before = json.loads(_run(tmp_path, "deep.py", "--format", "json").stdout)
    write(tmp_path / "blocks.py", BLOCKS.format(act="ReLU"))  # only the imported file changes
    after = _run(tmp_path, "deep.py", "--format", "json", probe=True)
    assert _torch_imported(after)
    cold = _run(tmp_path, "deep.py", "--format", "json", "--no-cache")
    assert after.stdout == cold.stdout
    assert json.loads(after.stdout) != before


def test_options_and_config_are_part_of_the_key(tmp_path):
    _project(tmp_path)
    _run(tmp_path, "deep.py", "--format", "json")
    other = _run(tmp_path, "deep.py", "--format", "json", "--select", "AL101", probe=True)
    assert _torch_imported(other)  # another selection: not the cached result
    assert other.stdout == _run(tmp_path, "deep.py", "--format", "json", "--select", "AL101",
                                "--no-cache").stdout
    write(tmp_path / ".archlint.yaml", CONFIG.replace("[4, 32]", "[2, 32]"))
    changed = _run(tmp_path, "deep.py", "--format", "json", probe=True)
    assert _torch_imported(changed)
    assert "[2, 32]" in changed.stdout


def test_corrupt_or_foreign_entries_are_ignored_with_a_note(tmp_path):
    _project(tmp_path)
    first = _run(tmp_path, "deep.py", "--format", "json")
    entries = list((tmp_path / ".archlint_cache").rglob("*.json"))
    assert entries
    for i, path in enumerate(entries):
        path.write_text("{not json" if i % 2 == 0 else json.dumps({"archlint-cache": 99}))
    again = _run(tmp_path, "deep.py", "--format", "json")
    assert again.returncode == first.returncode
    data = json.loads(again.stdout)
    assert any(n.startswith("cache: ignored") for n in data["notes"])
    assert data["targets"] == json.loads(first.stdout)["targets"]
    clean = _run(tmp_path, "deep.py", "--format", "json")  # rewritten: no note any more
    assert clean.stdout == first.stdout


def test_no_cache_writes_nothing_and_the_config_can_turn_it_off(tmp_path):
    _project(tmp_path)
    _run(tmp_path, "deep.py", "--no-cache")
    assert not (tmp_path / ".archlint_cache").exists()
    write(tmp_path / ".archlint.yaml", CONFIG + "cache: false\n")
    _run(tmp_path, "deep.py")
    assert not (tmp_path / ".archlint_cache").exists()
    write(tmp_path / ".archlint.yaml", CONFIG + "cache-dir: build/lint-cache\n")
    _run(tmp_path, "deep.py")
    assert (tmp_path / "build" / "lint-cache" / ".gitignore").exists()


def test_error_results_are_not_cached(tmp_path):
    write(tmp_path / "broken.py", "import torch\nclass Net(torch.nn.Module):\n"
                                  "    def __init__(self):\n        super().__init__()\n"
                                  "        raise RuntimeError('no')\n")
    first = _run(tmp_path, "broken.py:Net", "--format", "json")
    assert first.returncode == 2
    again = _run(tmp_path, "broken.py:Net", "--format", "json", probe=True)
    assert _torch_imported(again)
    assert again.stdout == first.stdout


def test_parallel_jobs_report_what_one_process_reports_in_the_same_order(tmp_path):
    _project(tmp_path)
    write(tmp_path / "broken.py", "import torch\nclass Net(torch.nn.Module):\n"
                                  "    def __init__(self):\n        super().__init__()\n"
                                  "        self.fc = torch.nn.Linear(32, 32)\n"
                                  "    def forward(self, x):\n        raise ValueError('no')\n")
    for i in range(3):
        write(tmp_path / f"m{i}.py", MODEL.replace("Deep", f"M{i}").replace("12", str(2 + i)))
    one = _run(tmp_path, ".", "--format", "json", "--no-cache", "-j", "1")
    two = _run(tmp_path, ".", "--format", "json", "--no-cache", "-j", "2")
    assert one.returncode == two.returncode == 2
    assert two.stdout == one.stdout
    names = [t["target"] for t in json.loads(two.stdout)["targets"]]
    assert names == sorted(names, key=lambda n: n.split(":")[0]) and len(names) == 7


def test_jobs_option_is_checked():
    proc = subprocess.run([sys.executable, "-m", "archlint", "x.py", "-j", "0"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "-j" in proc.stderr


def test_a_config_baseline_is_applied_alike_from_the_cache(tmp_path):
    _project(tmp_path)
    made = _run(tmp_path, "deep.py", "--update-baseline", "--baseline", "base.json")
    assert made.returncode == 0, made.stderr
    write(tmp_path / ".archlint.yaml", CONFIG + "baseline: base.json\n")
    cold = _run(tmp_path, "deep.py", "other.py", "--format", "json")
    warm = _run(tmp_path, "deep.py", "other.py", "--format", "json", probe=True)
    assert not _torch_imported(warm)
    assert warm.stdout == cold.stdout
    assert json.loads(warm.stdout)["summary"]["baselined"] > 0
