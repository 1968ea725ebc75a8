"""Baseline: adopt archlint in a repository that already has findings, and fail only on new ones.

``archlint --baseline FILE --update-baseline`` writes every current finding to FILE;
``archlint --baseline FILE`` then leaves out the findings FILE lists. A finding is known by its
target, the module it points at and its code -- never by line numbers, so editing a file does not
bring old findings back. Counts are kept: if a target gains a second AL104 on the same module, one
of the two is new.

Targets are stored relative to the baseline file's folder, so the file works from any working
directory.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .results import Finding
from .paths import split_spec

if TYPE_CHECKING:
    from .results import TargetResult
    from .report.model import Report

FORMAT_VERSION = 1
Key = tuple[str, str, str]  # (target, module, code)


class BaselineError(ValueError):
    """The baseline file cannot be used; the message names it."""


def portable_target(target: str, folder: Path) -> str:
    """``models/net.py:Net`` relative to ``folder`` (import paths are kept as they are)."""
    left, name = split_spec(target)
    if not left.endswith(".py"):
        return target
    try:
        rel = os.path.relpath(Path(left).resolve(), folder.resolve())
    except ValueError:  # pragma: no cover - another drive on Windows
        rel = left
    rel = rel.replace(os.sep, "/")
    return rel + (f":{name}" if name else "")


def finding_key(target: str, finding: Finding, folder: Path) -> Key:
    return (portable_target(target, folder), finding.module or "", finding.code)


@dataclass
class Baseline:
    path: Path
    counts: Counter = field(default_factory=Counter)
    #: What this run matched, to report entries that no longer match anything.
    matched: Counter = field(default_factory=Counter)

    @property
    def folder(self) -> Path:
        return self.path.resolve().parent

    def filter(self, result: TargetResult) -> int:
        """Drop the findings of ``result`` the baseline lists; returns how many were dropped."""
        kept: list[Finding] = []
        dropped = 0
        for f in result.findings:
            key = finding_key(result.target, f, self.folder)
            if self.matched[key] < self.counts.get(key, 0):
                self.matched[key] += 1
                dropped += 1
            else:
                kept.append(f)
        result.findings = kept
        return dropped

    def stale(self, targets_run: Iterable[str]) -> int:
        """Entries of the targets of this run that matched no finding (fixed since)."""
        ran = {portable_target(t, self.folder) for t in targets_run}
        return sum(n - self.matched.get(key, 0) for key, n in self.counts.items()
                   if key[0] in ran and n > self.matched.get(key, 0))


def load_baseline(path: Path) -> Baseline:
    path = Path(path)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise BaselineError(f"{path}: no such baseline file (create it with "
                            "--update-baseline)") from None
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read the baseline: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}:{exc.lineno}: not a baseline file (invalid JSON: "
                            f"{exc.msg})") from None
    if not isinstance(data, dict) or data.get("archlint-baseline") != FORMAT_VERSION:
        raise BaselineError(f"{path}: not an archlint baseline (expected "
                            f"\"archlint-baseline\": {FORMAT_VERSION}; write one with "
                            "--update-baseline)")
    entries = data.get("findings")
    if not isinstance(entries, list):
        raise BaselineError(f"{path}: 'findings' must be a list")
    baseline = Baseline(path=path)
    for i, e in enumerate(entries):
        ok = (isinstance(e, dict) and isinstance(e.get("target"), str)
              and isinstance(e.get("module", ""), str) and isinstance(e.get("code"), str)
              and isinstance(e.get("count", 1), int) and not isinstance(e.get("count", 1), bool)
              and e.get("count", 1) > 0)
        if not ok:
            raise BaselineError(f"{path}: findings[{i}]: expected {{target, module, code, "
                                f"count}}, got {e!r}"[:300])
        baseline.counts[(e["target"], e.get("module", ""), e["code"])] += e.get("count", 1)
    return baseline


def render_baseline(report: Report, path: Path) -> str:
    """The baseline file for every finding of ``report``."""
    folder = Path(path).resolve().parent
    counts: Counter = Counter()
    for t in report.targets:
        for f in t.findings:
            counts[finding_key(t.target, f, folder)] += 1
    entries = [{"target": k[0], "module": k[1], "code": k[2], "count": n}
               for k, n in sorted(counts.items())]
    doc = {"archlint-baseline": FORMAT_VERSION,
           "comment": "Findings accepted when archlint was adopted; regenerate with "
                      "'archlint --baseline FILE --update-baseline'.",
           "findings": entries}
    return json.dumps(doc, indent=2) + "\n"


def write_baseline(report: Report, path: Path) -> int:
    """Write the baseline; returns the number of findings it holds."""
    path = Path(path)
    text = render_baseline(report, path)
    try:
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True)
        path.write_text(text)
    except OSError as exc:
        raise BaselineError(f"{path}: cannot write the baseline: {exc.strerror}") from None
    return len(report.findings)
