"""pytest fixtures and options; the helpers themselves are in tests/helpers.py."""

from __future__ import annotations

import pytest

from helpers import lint_source


@pytest.fixture
def lint(tmp_path):
    """``lint(source, cls="Model", select=..., options=..., input=...)``: the TargetResult of a
    model written as source text (see helpers.lint_source)."""
    def _lint(source, **kw):
        return lint_source(tmp_path, source, **kw)
    return _lint


def pytest_addoption(parser):
    parser.addoption("--overwrite", action="store_true", default=False,
                     help="Regenerate golden files (tests/golden/) instead of comparing.")
