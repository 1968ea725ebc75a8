"""Output formats: each a pure function of the report."""

from __future__ import annotations

from typing import Any

from .model import Report, summarize  # noqa: F401

#: ``--format`` values, in the order ``--help`` lists them.
FORMATS = ("text", "json", "sarif", "github")


def render(report: Report, fmt: str = "text", *, verbose: bool = False, **options: Any) -> str:
    """Render ``report`` in one of :data:`FORMATS`."""
    if fmt == "text":
        from .text import render_text

        return render_text(report, verbose=verbose)
    if fmt == "json":
        from .json_format import render_json

        return render_json(report)
    if fmt == "sarif":
        from .sarif import render_sarif

        return render_sarif(report, **options)
    if fmt == "github":
        from .github import render_github

        return render_github(report)
    raise ValueError(f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})")
