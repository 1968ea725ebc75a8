"""Shared helpers: build models from source text, lint them, run the CLI."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_source(tmp_path: Path, source: str, name: Optional[str] = None):
    """Write ``source`` to a file under tmp_path and import it with site recording on."""
    from archlint.loading.sites import recording_module_sites

    name = name or f"m_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    with recording_module_sites():
        spec.loader.exec_module(module)
    return module, path


def lint_source(tmp_path: Path, source: str, cls: str = "Model", select=None, options=None,
                input=None, analysis: bool = False):
    """Build ``cls`` from ``source`` and lint it; returns the TargetResult, or with
    ``analysis=True`` the pair (TargetResult, the engine's Analysis: graph, facts, gradient)."""
    import torch

    from archlint.engine import Settings, lint_and_analyse
    from archlint.loading.inputs import infer_input, parse_input
    from archlint.rules import selected_rules

    module, _ = load_source(tmp_path, source)
    from archlint.loading.sites import recording_module_sites

    with recording_module_sites():
        torch.manual_seed(0)
        model = getattr(module, cls)()
    raw = input if input is not None else getattr(module, "INPUT", None)
    spec = parse_input(raw, "test input") if raw is not None else infer_input(model)
    settings = Settings(rules=selected_rules(select, []), rule_options=options or {})
    result, facts = lint_and_analyse(model, cls, spec, settings)
    return (result, facts) if analysis else result


def codes(result) -> list[str]:
    return [f.code for f in result.findings]


def run_cli(*args: str, cwd: Optional[Path] = None, timeout: int = 300):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "archlint", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def lint(tmp_path):
    def _lint(source, **kw):
        return lint_source(tmp_path, source, **kw)
    return _lint


def pytest_addoption(parser):
    parser.addoption("--overwrite", action="store_true", default=False,
                     help="Regenerate golden files (tests/golden/) instead of comparing.")
