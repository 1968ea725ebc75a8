"""``--format sarif``: SARIF 2.1.0, as GitHub code scanning (and other SARIF viewers) read it.

One run; the driver lists every rule with its documentation as help; each finding is a result
with a level (error / warning / note), a location relative to ``%SRCROOT%`` (the working
directory archlint ran in: run it from the repository root), its start line and column, and a
fingerprint made of the target, the module and the code (stable when lines move). Targets that
could not be analysed are tool execution notifications of the invocation.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import quote

from .. import __version__
from ..results import Finding, RuleInfo, Unbuilt, target_file, unbuilt_note
from .model import Report

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "%SRCROOT%"
LEVELS = {"error": "error", "warning": "warning", "info": "note"}


def render_sarif(report: Report, rules: Optional[Sequence[RuleInfo]] = None,
                 root: Optional[Path] = None) -> str:
    return json.dumps(sarif_log(report, rules, root), indent=2) + "\n"


def sarif_log(report: Report, rules: Optional[Sequence[RuleInfo]] = None,
              root: Optional[Path] = None) -> dict[str, Any]:
    """The SARIF log as a dict. ``rules`` default to the rules of the run (``report.rules``)."""
    if rules is None:
        rules = report.rules
    root = (root or Path.cwd()).resolve()
    index = {r.code: i for i, r in enumerate(rules)}
    results = []
    for t in report.targets:
        for f in t.findings:
            results.append(_result(f, t.target, index, root))
    notifications = [_notification(t.target, t.error or "could not be analysed", root)
                     for t in report.errors]
    for path, entries in report.unbuilt_by_file().items():
        notifications.append(_unbuilt(path, entries, root))
    notifications += [{"level": "note", "message": {"text": n}} for n in report.notes]
    run: dict[str, Any] = {
        "tool": {"driver": {
            "name": "archlint",
            "version": __version__,
            "semanticVersion": __version__,
            "rules": [_rule(r) for r in rules],
        }},
        "originalUriBaseIds": {SRCROOT: {"uri": _file_uri(root) + "/"}},
        "invocations": [{
            "executionSuccessful": not report.errors,
            "toolExecutionNotifications": notifications,
        }],
        "results": results,
        "columnKind": "unicodeCodePoints",
        "properties": {"summary": {"targets": len(report.targets),
                                   "errors": len(report.errors),
                                   "suppressed": report.suppressed,
                                   "baselined": report.baselined}},
    }
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}


def _rule(rule: RuleInfo) -> dict[str, Any]:
    doc = rule.documentation
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.description},
        "help": {"text": doc, "markdown": f"# {rule.code} {rule.name}\n\n{doc}"},
        "defaultConfiguration": {"level": LEVELS.get(rule.severity, "warning")},
        "properties": {"tags": ["gradient-flow", "pytorch"], "options": dict(rule.options)},
    }


def _artifact(path: str, root: Path) -> dict[str, Any]:
    """A relative URI under %SRCROOT% when the file is inside it, else an absolute file URI.

    Paths in the report are absolute or relative to ``root`` (the working directory of the run).
    """
    p = Path(path)
    absolute = p if p.is_absolute() else (root / p)
    try:
        rel = absolute.resolve().relative_to(root)
    except ValueError:
        return {"uri": _file_uri(absolute.resolve())}
    # bytes: a path undecodable in the file-system encoding holds surrogates; its bytes quote
    return {"uri": quote(os.fsencode(rel.as_posix())), "uriBaseId": SRCROOT}


def _file_uri(path: Path) -> str:
    try:
        return path.as_uri()
    except (UnicodeEncodeError, ValueError):  # surrogates from an undecodable file name
        return "file://" + quote(os.fsencode(path.as_posix()))


def _result(f: Finding, target: str, index: dict[str, int], root: Path) -> dict[str, Any]:
    text = f.message + (f" [{f.module}]" if f.module else "")
    if f.hint:
        text += f"\nHint: {f.hint}"
    res: dict[str, Any] = {
        "ruleId": f.code,
        "level": LEVELS.get(f.severity, "warning"),
        "message": {"text": text},
    }
    if f.code in index:
        res["ruleIndex"] = index[f.code]
    location: dict[str, Any] = {}
    path = f.path or target_file(target)
    if path is not None:
        physical: dict[str, Any] = {"artifactLocation": _artifact(path, root)}
        if f.path and f.line:
            region: dict[str, Any] = {"startLine": int(f.line)}
            if f.column:
                region["startColumn"] = int(f.column)
            physical["region"] = region
        location["physicalLocation"] = physical
    qualified = target + (f"::{f.module}" if f.module else "")
    location["logicalLocations"] = [{"fullyQualifiedName": qualified,
                                     "name": f.module or target, "kind": "member"}]
    res["locations"] = [location]
    key = "\0".join((target, f.module or "", f.code))
    res["partialFingerprints"] = {"archlintFinding/v1": hashlib.sha256(key.encode()).hexdigest()}
    props: dict[str, Any] = {"target": target, "severity": f.severity}
    if f.module:
        props["module"] = f.module
    if f.hint:
        props["hint"] = f.hint
    if f.fixes:
        # every fix with its predicted (and measured) effect; those that are plain source
        # substitutions (--diff) are SARIF fixes too, as replacements a viewer can offer
        props["fixes"] = [{k: v for k, v in fx.to_dict().items() if k != "diff"}
                          for fx in f.fixes]
        fixes = [{"description": {"text": fx.description},
                  "artifactChanges": _changes(fx.diff, root)} for fx in f.fixes if fx.diff]
        fixes = [fx for fx in fixes if fx["artifactChanges"]]
        if fixes:
            res["fixes"] = fixes
    res["properties"] = props
    return res


def _changes(diff: str, root: Path) -> list[dict[str, Any]]:
    """A unified diff (archlint.fixes.source) as SARIF artifact changes: one replacement per
    hunk, its old lines deleted and its new lines inserted."""
    changes: list[dict[str, Any]] = []
    current: Optional[dict[str, Any]] = None
    hunk: Optional[dict[str, Any]] = None
    for line in diff.splitlines():
        if line.startswith("--- a/"):
            name = line[len("--- a/"):]
            path = name if (root / name).exists() else "/" + name
            current = {"artifactLocation": _artifact(path, root), "replacements": []}
            changes.append(current)
            hunk = None
        elif line.startswith("+++ "):
            continue
        elif line.startswith("@@") and current is not None:
            old = line.split()[1][1:].split(",")
            start, length = int(old[0]), int(old[1]) if len(old) > 1 else 1
            hunk = {"deletedRegion": {"startLine": start, "endLine": start + length - 1},
                    "insertedContent": {"text": ""}}
            current["replacements"].append(hunk)
        elif hunk is not None and line[:1] in (" ", "+"):
            hunk["insertedContent"]["text"] += line[1:] + "\n"
    return [c for c in changes if c["replacements"]]


def _notification(target: str, error: str, root: Path) -> dict[str, Any]:
    note: dict[str, Any] = {"level": "error", "message": {"text": f"{target}: {error}"},
                            "descriptor": {"id": "target-error"}}
    path = target_file(target)
    if path is not None:
        note["locations"] = [{"physicalLocation": {"artifactLocation": _artifact(path, root)}}]
    return note


def _unbuilt(path: str, entries: list[Unbuilt], root: Path) -> dict[str, Any]:
    return {"level": "warning", "message": {"text": f"{path}: {unbuilt_note(entries)}"},
            "descriptor": {"id": "models-not-built"},
            "locations": [{"physicalLocation": {"artifactLocation": _artifact(path, root)}}]}
