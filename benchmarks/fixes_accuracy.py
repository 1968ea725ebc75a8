"""How well does archlint predict the effect of its own fixes?

For every planted gradient defect of the repository (the examples, the rules' bad examples and
the rule fixture files: the corpus the fix test uses), lint each model, apply every proposed fix
to a copy of the live model and run the probe on it (`--measure`'s path), then compare the
predicted `gradient_decades` after the fix with the measured one.

Prints, per finding, the best fix (predicted / measured decades after it), then over all fixes and
over the best fix of each finding: how many, the median, 90th percentile and worst
|predicted - measured|, the share within 0.5 decades, and how many vanishing findings have a fix
predicted and measured within the limit that agree within 0.5 decades (the bar of the fix test).

    python benchmarks/fixes_accuracy.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_fixes import AGREE, LIMIT, VANISHING, _lint_measured, _passes, _sources  # noqa: E402


def _figures(label: str, errors: list[float]) -> str:
    if not errors:
        return f"{label}: none"
    errors = sorted(errors)
    p90 = errors[min(len(errors) - 1, int(0.9 * len(errors)))]
    within = sum(e <= 0.5 for e in errors) / len(errors)
    return (f"{label}: {len(errors)}, |predicted - measured| median {statistics.median(errors):.2f}"
            f", p90 {p90:.2f}, worst {errors[-1]:.2f} decades; {within:.0%} within 0.5")


def main() -> None:
    every: list[float] = []
    best: list[float] = []
    findings = passing = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in _sources(Path(tmp)):
            for display, result, _notes in _lint_measured(path):
                for f in result.findings:
                    if not f.fixes:
                        continue
                    measured = [fx for fx in f.fixes if fx.measured_gradient_decades is not None
                                and fx.predicted_gradient_decades is not None]
                    errors = [abs(fx.predicted_gradient_decades - fx.measured_gradient_decades)
                              for fx in measured]
                    every += errors
                    if errors:
                        best.append(errors[0])
                    if f.code in VANISHING:
                        findings += 1
                        passing += any(_passes(fx) for fx in f.fixes)
                    top = measured[0] if measured else None
                    what = (f"{top.description[:60]:60s} pred {top.predicted_gradient_decades:+6.2f}"
                            f" meas {top.measured_gradient_decades:+6.2f}") if top else "no measured fix"
                    name = display.split("/")[-1]
                    print(f"{name[:38]:38s} {f.code}  {what}")
    print()
    print(_figures("all measured fixes", every))
    print(_figures("best fix of each finding", best))
    print(f"vanishing-gradient findings ({', '.join(sorted(VANISHING))}) with a fix predicted and "
          f"measured within {LIMIT:g} decades, agreeing within {AGREE:g}: {passing} of {findings}")


if __name__ == "__main__":
    main()
