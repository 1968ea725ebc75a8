"""Output formats: each a pure function of the report."""

from __future__ import annotations

from .model import Report, summarize  # noqa: F401
