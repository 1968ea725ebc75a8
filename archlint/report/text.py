"""Human-readable output: ``path:line:col: CODE [severity] message (module)``."""

from __future__ import annotations

from typing import Optional

from ..results import Fix, unbuilt_note
from .model import Report

#: Notes about how a model was traced: shown with -v only (the model was analysed anyway).
TRACER_NOTES = ("fx:", "torch.fx")


def shown_by_default(note: str) -> bool:
    """Whether a target's note is printed without -v: what the user must know (a rule or the
    estimate that could not run, why there is no gradient analysis, --measure's figure), not
    the tracer's internals."""
    if note.startswith(TRACER_NOTES):
        return False
    return ("skipped" in note or "failed" in note or note.startswith("no gradient analysis")
            or note.startswith("no tensor output") or note.startswith("estimate vs measured")
            or note.startswith(("dead units of", "built as", "analysed on the meta device",
                                "meta device:")))


def _decades(x: Optional[float]) -> str:
    """Decades as the findings say them: how far the earliest layers' gradient is below the
    last layers' -- or, marked ``+``, clearly above (half a decade or more)."""
    if x is None:
        return "?"
    return f"+{x:.1f}" if x >= 0.5 else f"{abs(x):.1f}"


def fix_line(fx: Fix, now: Optional[float]) -> str:
    """``replace the 10 Sigmoid in body with ReLU + He init -> predicted 0.1 decades (now
    7.4)``; with --measure, the measured figure beside the predicted one."""
    text = fx.description
    if fx.predicted_gradient_decades is None:
        return text
    text += f" -> predicted {_decades(fx.predicted_gradient_decades)}"
    if fx.measured:
        text += f", measured {_decades(fx.measured_gradient_decades)}"
    text += " decades"
    if now is not None:
        text += f" (now {_decades(now)})"
    return text


def _diffs(report: Report) -> list[str]:
    """``--diff``: the best fix of each finding that is a plain source substitution, once per
    distinct diff."""
    shown: dict[str, list[str]] = {}
    order: list[tuple[str, str]] = []
    for t in report.targets:
        for f in t.findings:
            fx = next((x for x in f.fixes if x.diff), None)
            if fx is None:
                continue
            where = f"{f.code} at {f.path}:{f.line}" if f.path else f"{f.code} in {t.target}"
            if fx.diff not in shown:
                shown[fx.diff] = []
                order.append((fx.diff, fx.description))
            shown[fx.diff].append(where)
    lines = []
    for diff, description in order:
        lines.append(f"fix for {', '.join(shown[diff])}: {description} (not applied: review "
                     "it before you apply it)")
        lines += diff.rstrip("\n").split("\n")
    return lines


def render_text(report: Report, verbose: bool = False) -> str:
    lines: list[str] = []
    for t in report.targets:
        for f in t.findings:
            loc = f"{f.path}:{f.line}:{f.column}" if f.path else t.target
            mod = f" [{f.module}]" if f.module else ""
            lines.append(f"{loc}: {f.code} {f.severity}: {f.message}{mod}")
            now = t.gradient_decades
            for fx in f.fixes[:2]:
                lines.append(f"    fix: {fix_line(fx, now)}")
            if verbose and f.hint:
                lines.append(f"    hint: {f.hint}")
        if t.status != "ok":
            lines.append(f"{t.target}: error: {t.error}")
            for note in t.notes:
                if note != t.error and (verbose or shown_by_default(note)):
                    lines.append(f"{t.target}: note: {note}")
        elif verbose:
            detail = "source read, not imported" if t.tracer == "source" else \
                f"traced with {t.tracer}" if t.tracer else "not traced"
            if t.input:
                detail += f"; input {t.input}"
            lines.append(f"{t.target}: {detail}; {len(t.findings)} finding(s)")
            for note in t.notes:
                lines.append(f"    note: {note}")
        else:
            for note in t.notes:
                if shown_by_default(note):
                    lines.append(f"{t.target}: note: {note}")
    errors = {t.target for t in report.errors}
    for path, entries in report.unbuilt_by_file().items():
        if path not in errors:  # else its error line says the same
            lines.append(f"{path}: note: {unbuilt_note(entries)}")
    lines += _diffs(report)
    for note in report.notes:
        lines.append(f"note: {note}")
    c = report.counts()
    total = sum(c.values())
    n = len(report.targets)
    tracers = sorted({t.tracer for t in report.targets if t.tracer and t.tracer != "source"})
    sources = sum(1 for t in report.targets if t.tracer == "source")
    if sources:
        tracers.append(f"{sources} source file{'s' if sources != 1 else ''}")
    summary = (f"Found {total} finding{'s' if total != 1 else ''} "
               f"({c['error']} error, {c['warning']} warning, {c['info']} info) in {n} "
               f"target{'s' if n != 1 else ''}")
    if tracers:
        summary += f" (traced with {', '.join(tracers)})"
    if report.errors:
        summary += f"; {len(report.errors)} target{'s' if len(report.errors) != 1 else ''} " \
                   "could not be analysed"
    if report.suppressed:
        summary += f"; {report.suppressed} suppressed by comments"
    if report.baselined:
        summary += f"; {report.baselined} already in the baseline"
    lines.append(summary + ".")
    return "\n".join(lines) + "\n"
