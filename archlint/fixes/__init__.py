"""Fixes with their effect predicted (issue 12).

For each finding, :mod:`.candidates` proposes concrete changes (swap the saturating activations
for ReLU/GELU with He init, insert normalisation, add identity skips, re-initialise, zero the
last layer of residual branches); :mod:`.predict` carries each out on a copy of the graph
(:mod:`.graphedit`, :mod:`.plan`), re-runs the estimate and the finding's rule there, and keeps
those that bring the verdict within its limit, best first. ``--measure`` carries the kept fixes
out on a deep copy of the live model and runs the probe on it (:mod:`.live`); ``--diff`` prints
the fixes that are plain source substitutions as a unified diff (:mod:`.source`).

The findings get plain :class:`~archlint.results.Fix` records; the live outcomes (edited graphs,
the actions) stay with the target's :class:`~archlint.engine.Analysis` for ``--measure`` and
``--diff``, and go when it goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from ..results import Finding, Fix
from .candidates import Context, GENERATORS, candidates_for, register
from .predict import Limits, Outcome, evaluate, rank

#: What each rule's fixes are, for ``archlint explain`` and docs/rules.md.
DESCRIPTIONS: dict[str, list[str]] = {
    "AL101": [
        "replace the saturating activations of the chain with ReLU (or GELU) and give the "
        "layers that feed them He init",
        "insert normalisation after the weight layers of the chain (LayerNorm or BatchNorm1d "
        "for MLPs and sequences, BatchNorm or GroupNorm for convolutions)",
        "add identity skips (x + f(x)) around the blocks whose input and output shapes match",
    ],
    "AL102": [
        "insert normalisation after the weight layers of the stack",
        "add identity skips around the blocks whose input and output shapes match",
    ],
    "AL103": ["add identity skips around the blocks of the path whose shapes match"],
    "AL104": [
        "re-initialise the layers with He init (before ReLU-family activations) or LeCun init "
        "(otherwise), or orthogonal init with the matching gain",
        "an all-zero normalisation scale: set it to 1",
    ],
    "AL105": [
        "replace the saturating activations on the dominant gradient path with ReLU/GELU + He "
        "init",
        "insert normalisation after its weight layers",
        "add identity skips around its blocks",
        "re-initialise its weight layers (He/LeCun, orthogonal)",
    ],
    "AL110": [
        "initialise the biases (after a normalisation layer: its shift, beta) of the layers "
        "whose units are dead at zero",
        "replace their ReLU with LeakyReLU or GELU",
    ],
    "AL106": [
        "re-initialise the weight layers on the dominant gradient path (He/LeCun, orthogonal)",
        "insert normalisation after them",
        "replace saturating activations with ReLU/GELU + He init",
        "zero-initialise the last layer of each residual branch",
        "add identity skips around blocks",
    ],
}


def fix_documentation(code: str) -> str:
    """The ``## Fixes`` section of a rule's documentation ("" for a rule without fixes)."""
    items = DESCRIPTIONS.get(code)
    if not items:
        return ""
    import textwrap

    intro = ("archlint proposes these changes, predicts each one's effect by re-running the "
             "estimate on the edited graph, and shows those that bring the finding within its "
             "limit, best first (`fixes` in the JSON report; `--measure` also measures them on "
             "an edited copy of the model, `--diff` prints the plain source substitutions):")
    lines = ["## Fixes", textwrap.fill(intro, 96)]
    lines += [textwrap.fill(item, 96, initial_indent="- ", subsequent_indent="  ")
              for item in items]
    return "\n".join(lines)


@dataclass
class Proposed:
    """A finding and the outcomes of its kept fixes (same order as ``finding.fixes``)."""

    finding: Finding
    outcomes: list[Outcome]


#: Seconds of candidate evaluation per target: past it, the remaining findings keep no fixes
#: (and a note says so). Each candidate re-runs the estimate: on a large model that adds up.
BUDGET = 30.0


def propose_fixes(findings: list[Finding], analysis: Any, settings: Any, target: str = "",
                  limit: int = 5, notes: Optional[list[str]] = None,
                  budget: float = BUDGET) -> list[Proposed]:
    """Fill ``finding.fixes`` for each finding with fixes predicted to bring it within its
    limit (at most ``limit``, best first); returns the live outcomes for --measure / --diff.
    A finding whose candidates cannot be generated keeps no fixes (and a line in ``notes``)."""
    graph = analysis.graph
    ctx = Context(graph=graph, facts=analysis.facts, gradient=analysis.gradient)
    rules = {r.code: r for r in settings.rules}
    limits = Limits()
    for code, attr in (("AL105", "vanishing"), ("AL106", "exploding")):
        rule = rules.get(code)
        if rule is not None:
            setattr(limits, attr, float(settings.options_for(rule).get("max-decades", 3.0)))
    g = analysis.gradient
    before = (g.vanishing.decades if g is not None and g.vanishing else None,
              g.exploding.decades if g is not None and g.exploding else None)
    out: list[Proposed] = []
    cache: dict = {}
    start = time.monotonic()
    for finding in findings:
        if finding.code not in GENERATORS:
            continue
        if time.monotonic() - start > budget:
            if notes is not None:
                notes.append(f"fixes: stopped after {budget:g} s of predictions; "
                             f"{finding.code} and the findings after it have none")
            break
        rule = rules.get(finding.code)
        try:
            cands = candidates_for(finding, ctx)
        except Exception as exc:  # never lose the finding over its fixes
            if notes is not None:
                notes.append(f"fixes for {finding.code} failed: {type(exc).__name__}: "
                             f"{exc}"[:300])
            continue
        options = settings.options_for(rule) if rule is not None else {}
        severity = settings.severity_for(rule) if rule is not None else finding.severity
        outcomes = [o for o in (evaluate(c, finding, graph, rule, options, severity, limits,
                                         before, target, cache) for c in cands)
                    if o is not None]
        kept = rank(outcomes)[:limit]
        finding.fixes = [Fix(description=o.candidate.description, edit=o.candidate.edit(),
                             predicted_gradient_decades=o.vanishing) for o in kept]
        if kept:
            out.append(Proposed(finding, kept))
    return out


def measure_fixes(model: Any, spec: Any, proposed: list[Proposed]) -> list[str]:
    """``--measure``: run the probe on an edited copy of ``model`` for every kept fix and fill
    ``measured_gradient_decades``. Returns notes for fixes that could not be measured."""
    from .live import LiveEditError, measure_fix

    notes: list[str] = []
    done: dict[tuple, Optional[float]] = {}
    for p in proposed:
        for fix, outcome in zip(p.finding.fixes, p.outcomes):
            flow = outcome.gradient.vanishing if outcome.gradient is not None else None
            if flow is None:
                continue
            key = (fix.description, tuple(flow.earliest), tuple(flow.last))
            if key not in done:
                try:
                    done[key] = measure_fix(model, outcome.graph_before, outcome.candidate,
                                            spec, list(flow.earliest), list(flow.last))
                except (LiveEditError, Exception) as exc:
                    done[key] = None
                    notes.append(f"measuring the fix failed ({fix.description}): "
                                 f"{type(exc).__name__}: {exc}"[:300])
            fix.measured = True
            fix.measured_gradient_decades = done[key]
    return notes


def add_diffs(proposed: list[Proposed]) -> list[str]:
    """``--diff``: a unified diff on every kept fix that is a plain source substitution.
    Returns notes (libcst missing)."""
    from .source import NoDiff, available, diff_for

    if not proposed:
        return []
    if not available():
        return ["--diff needs libcst: pip install 'archlint[diff]'"]
    for p in proposed:
        for fix, outcome in zip(p.finding.fixes, p.outcomes):
            try:
                fix.diff = diff_for(outcome.candidate.source) or None
            except NoDiff:
                continue
            except Exception:  # a file libcst cannot parse: no diff, the fix stands
                continue
    return []


__all__ = ["add_diffs", "measure_fixes", "DESCRIPTIONS", "Proposed", "fix_documentation", "propose_fixes", "register",
           "Context"]
