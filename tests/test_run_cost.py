"""What a plain run leaves out: the modules it does not need, the garbage collector's work on
torch's objects, a second torch thread for the weight statistics (benchmarks/speed.py measures
the time; these check the behaviour behind it)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import ROOT, invoke as invoke_cli, write

MODEL = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 1, stride=2), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))
"""

#: Needed only by options this run does not use (cache, -j, a baseline, fixes to show or
#: measure, other formats, a config file, an inferred input, a model fx cannot trace).
NOT_NEEDED = ("archlint.cache", "archlint.worker", "archlint.baseline", "archlint.fixes",
              "archlint.measure", "archlint.report.sarif", "archlint.report.plot",
              "archlint.loading.infer", "archlint.loading.pairs", "archlint.tracing.exec_tracer",
              "yaml")


def _probe(tmp_path, *args: str) -> dict:
    write(tmp_path / "net.py", MODEL)
    code = textwrap.dedent(f"""
        import gc, json, sys
        from archlint.cli import main
        sys.argv = ['archlint', *{list(args)!r}]
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        import torch
        print(json.dumps({{"exit": code, "modules": sorted(sys.modules),
                          "frozen": gc.get_freeze_count(), "threads": torch.get_num_threads()}}),
              file=sys.stderr)
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stderr.strip().splitlines()[-1])


def test_a_plain_run_imports_only_what_it_uses(tmp_path):
    got = _probe(tmp_path, "net.py:Net", "--isolated", "--input-shape", "2,3,16,16",
                 "--no-cache", "--no-fixes")
    assert got["exit"] == 0
    assert "archlint.rules" in got["modules"] and "torch" in got["modules"]  # it did lint
    assert [m for m in NOT_NEEDED if m in got["modules"]] == []


def test_the_run_that_imports_torch_freezes_its_objects_and_keeps_its_threads(tmp_path):
    got = _probe(tmp_path, "net.py:Net", "--isolated", "--input-shape", "2,3,16,16",
                 "--no-cache")
    assert got["exit"] == 0
    assert got["frozen"] > 10_000  # torch's objects, out of the collector's full passes
    threads = subprocess.run([sys.executable, "-c", "import torch; "
                              "print(torch.get_num_threads())"], capture_output=True,
                             text=True, timeout=120).stdout.strip()
    assert got["threads"] == int(threads)  # the weight statistics' one thread was given back


def test_a_process_that_had_torch_already_keeps_its_collector(tmp_path):
    write(tmp_path / "net.py", MODEL)
    before = gc.get_freeze_count()
    result = invoke_cli("check", str(tmp_path / "net.py") + ":Net", "--isolated",
                        "--input-shape", "2,3,16,16", "--no-cache")
    assert result.exit_code == 0, result.output
    assert gc.get_freeze_count() == before


def test_on_one_thread_sets_one_thread_and_gives_the_setting_back():
    from archlint.graph.weightstats import on_one_thread

    seen = []

    @on_one_thread
    def stat(fail: bool) -> None:
        seen.append(torch.get_num_threads())
        if fail:
            raise ValueError("boom")

    threads = torch.get_num_threads()
    stat(False)
    with pytest.raises(ValueError):
        stat(True)
    assert seen == [1, 1]
    assert torch.get_num_threads() == threads


def test_sum_sq_follows_in_place_changes_and_matches_the_norm():
    from archlint.graph.weightstats import sum_sq

    w = torch.nn.Parameter(torch.randn(16, 8, 3, 3))
    first = sum_sq(w)
    assert first == float(torch.linalg.vector_norm(w.detach())) ** 2
    assert sum_sq(w) == first
    with torch.no_grad():
        w.mul_(2.0)  # an in-place write (a fix's re-initialisation) is seen
    assert sum_sq(w) == pytest.approx(4 * first, rel=1e-6)
    half = torch.randn(4, 4).half()
    assert sum_sq(half) == float(torch.linalg.vector_norm(half.float())) ** 2
