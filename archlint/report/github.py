"""``--format github``: GitHub Actions workflow commands, shown as annotations on the diff.

``::warning file=models/net.py,line=13,col=21,title=AL101::chain of 10 saturating ...``. Levels:
error -> ``error``, warning -> ``warning``, info -> ``notice``. Data is escaped as the Actions
toolkit does (``%``, CR, LF), property values also ``:`` and ``,``.
"""

from __future__ import annotations

from typing import Optional

from ..results import target_file, unbuilt_note
from .model import Report

LEVELS = {"error": "error", "warning": "warning", "info": "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(level: str, message: str, file: Optional[str] = None, line: Optional[int] = None,
            col: Optional[int] = None, title: Optional[str] = None) -> str:
    props = []
    if file:
        props.append(f"file={escape_property(file)}")
    if file and line:
        props.append(f"line={int(line)}")
        if col:
            props.append(f"col={int(col)}")
    if title:
        props.append(f"title={escape_property(title)}")
    head = f"::{level}" + (" " + ",".join(props) if props else "")
    return f"{head}::{escape_data(message)}"


def render_github(report: Report) -> str:
    lines = []
    for t in report.targets:
        for f in t.findings:
            message = f.message + (f" [{f.module}]" if f.module else "")
            if f.hint:
                message += f"\nhint: {f.hint}"
            lines.append(command(LEVELS.get(f.severity, "warning"), message,
                                 file=f.path or target_file(t.target),
                                 line=f.line if f.path else None,
                                 col=f.column if f.path else None, title=f.code))
        if t.status != "ok":
            lines.append(command("error", f"{t.target}: {t.error}", file=target_file(t.target),
                                 title="archlint"))
    errors = {t.target for t in report.errors}
    for path, entries in report.unbuilt_by_file().items():
        if path not in errors:
            lines.append(command("notice", unbuilt_note(entries), file=path, title="archlint"))
    return "".join(line + "\n" for line in lines)
