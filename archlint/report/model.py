"""The report: every target's result and the summary the exit code is computed from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..results import SEVERITIES, SEVERITY_RANK, Finding, RuleInfo, TargetResult, Unbuilt


@dataclass
class Report:
    targets: list[TargetResult] = field(default_factory=list)
    fail_on: str = "warning"
    #: Problems outside any target (no targets found...).
    notes: list[str] = field(default_factory=list)
    #: Findings silenced by ``# archlint: disable`` / ``# noqa: AL...`` comments.
    suppressed: int = 0
    #: Findings left out because the baseline file already lists them.
    baselined: int = 0
    #: Every rule the run could use (selected or not), for the formats that describe them.
    rules: list[RuleInfo] = field(default_factory=list)
    #: Models the files define that archlint could not build (constructors needing arguments).
    unbuilt: list[Unbuilt] = field(default_factory=list)

    def unbuilt_by_file(self) -> dict[str, list[Unbuilt]]:
        out: dict[str, list[Unbuilt]] = {}
        for u in self.unbuilt:
            out.setdefault(u.path, []).append(u)
        return out

    @property
    def findings(self) -> list[Finding]:
        return [f for t in self.targets for f in t.findings]

    @property
    def errors(self) -> list[TargetResult]:
        return [t for t in self.targets if t.status != "ok"]

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in SEVERITIES}
        for f in self.findings:
            counts[f.severity] = counts.get(f.severity, 0) + 1
        return counts

    def failing(self) -> list[Finding]:
        floor = SEVERITY_RANK[self.fail_on]
        return [f for f in self.findings if SEVERITY_RANK.get(f.severity, 0) >= floor]

    def exit_code(self) -> int:
        if self.errors:
            return 2
        return 1 if self.failing() else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "targets": [t.to_dict() for t in self.targets],
            "unbuilt": [u.to_dict() for u in self.unbuilt],
            "notes": list(self.notes),
            "summary": summarize(self),
        }

    def render(self, fmt: str = "text", **options: Any) -> str:
        """The report as the CLI prints it with ``--format fmt`` (text, json, sarif, github)."""
        from . import render

        return render(self, fmt, **options)

    def __str__(self) -> str:
        return self.render("text")


def summarize(report: Report) -> dict[str, Any]:
    return {"targets": len(report.targets), "errors": len(report.errors),
            "unbuilt": len(report.unbuilt),
            "findings": report.counts(), "suppressed": report.suppressed,
            "baselined": report.baselined}
