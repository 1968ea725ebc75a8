"""``--statistics``: how many findings of each rule, most frequent first."""

from __future__ import annotations

import json
from typing import Any

from .model import Report


def statistics(report: Report) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for f in report.findings:
        row = rows.setdefault(f.code, {"code": f.code, "name": f.name, "count": 0,
                                       "severity": f.severity})
        row["count"] += 1
    return sorted(rows.values(), key=lambda r: (-r["count"], r["code"]))


def render_statistics(report: Report, fmt: str = "text") -> str:
    rows = statistics(report)
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    width = max((len(str(r["count"])) for r in rows), default=1)
    return "".join(f"{r['count']:>{width}}  {r['code']}  {r['name']:<24} {r['severity']}\n"
                   for r in rows)
