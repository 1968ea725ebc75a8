"""Comparing the estimate with measured gradients: the figures ``--measure`` and
benchmarks/estimator_accuracy.py report.

The probe's loss scale is arbitrary, so the model's common offset is removed first (the median
of log10(predicted) - log10(measured) over its layers). Three figures, because a median hides
what a user reads:

- the median absolute remaining difference (decades);
- the worst layer's remaining difference;
- the spread error: the predicted first-to-last gradient ratio (the verdict's ``decades``: the
  earliest layers' mean log10 minus the last layers') minus the same ratio measured -- no offset
  removed, since the verdict reads exactly that.

Layers measured at exactly zero (identity-at-init designs) must be predicted zero too; a layer
predicted zero but measured non-zero (or the reverse) is an error, listed apart.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence


@dataclass
class Accuracy:
    error: Optional[float]  # median |residual| in decades, None without comparable layers
    baseline: Optional[float]  # the same figure for a predict-one-value-for-all estimator
    layers: int
    offset: float = 0.0
    zero_agree: int = 0
    #: Layers measured zero but predicted non-zero, or predicted zero but measured non-zero.
    zero_mismatch: list[str] = field(default_factory=list)
    #: (module, predicted, measured, residual after the offset)
    residuals: list[tuple[str, float, float, float]] = field(default_factory=list)
    #: The layer with the largest |residual| and that residual.
    worst: Optional[tuple[str, float]] = None
    predicted_decades: Optional[float] = None
    measured_decades: Optional[float] = None

    @property
    def worst_error(self) -> Optional[float]:
        return abs(self.worst[1]) if self.worst is not None else None

    @property
    def spread_error(self) -> Optional[float]:
        if self.predicted_decades is None or self.measured_decades is None:
            return None
        return self.predicted_decades - self.measured_decades

    @property
    def zero_disagree(self) -> int:
        return len(self.zero_mismatch)


def span_decades(values: dict[str, Optional[float]], earliest: Sequence[str],
                 last: Sequence[str]) -> Optional[float]:
    """Mean log10 over ``earliest`` minus mean log10 over ``last`` (None if any is not > 0)."""
    def mean_log(names: Sequence[str]) -> Optional[float]:
        logs = []
        for n in names:
            v = values.get(n)
            if v is None or not v > 0 or not math.isfinite(v):
                return None
            logs.append(math.log10(v))
        return sum(logs) / len(logs) if logs else None

    a, b = mean_log(earliest), mean_log(last)
    return None if a is None or b is None else a - b


def compare(pred: dict[str, Optional[float]], meas: dict[str, Optional[float]],
            earliest: Sequence[str] = (), last: Sequence[str] = ()) -> Accuracy:
    """Predicted against measured per-layer gradient RMS; ``earliest``/``last``: the layers the
    verdict compares (for the spread error)."""
    diffs, logs, rows = [], [], []
    acc = Accuracy(error=None, baseline=None, layers=0)
    for name, m in meas.items():
        if m is None:
            continue
        p = pred.get(name)
        if m == 0.0:
            if p is None or p < 1e-12:
                acc.zero_agree += 1
            else:
                acc.zero_mismatch.append(name)
            continue
        if p is None or p <= 0:
            acc.zero_mismatch.append(name)
            continue
        d = math.log10(p) - math.log10(m)
        diffs.append(d)
        logs.append(math.log10(m))
        rows.append((name, p, m, d))
    if earliest and last:
        acc.predicted_decades = span_decades(pred, earliest, last)
        acc.measured_decades = span_decades(meas, earliest, last)
    if not diffs:
        return acc
    acc.offset = statistics.median(diffs)
    acc.error = statistics.median(abs(d - acc.offset) for d in diffs)
    centre = statistics.median(logs)
    acc.baseline = statistics.median(abs(v - centre) for v in logs)
    acc.layers = len(diffs)
    acc.residuals = [(n, p, m, d - acc.offset) for n, p, m, d in rows]
    worst = max(acc.residuals, key=lambda r: abs(r[3]))
    acc.worst = (worst[0], worst[3])
    return acc
