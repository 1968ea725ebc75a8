"""Comparing the estimate with measured gradients: the error figure used by ``--measure`` and
benchmarks/estimator_accuracy.py.

The probe's loss scale is arbitrary, so the model's common offset is removed first (the median
of log10(predicted) - log10(measured) over its layers); the error is the median absolute
remaining difference, in decades. Layers measured at exactly zero (identity-at-init designs) are
counted apart: the estimate must call them zero too.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Accuracy:
    error: Optional[float]  # median |residual| in decades, None without comparable layers
    baseline: Optional[float]  # the same figure for a predict-one-value-for-all estimator
    layers: int
    offset: float = 0.0
    zero_agree: int = 0
    zero_disagree: int = 0
    missing: list[str] = field(default_factory=list)
    #: (module, predicted, measured, residual after the offset)
    residuals: list[tuple[str, float, float, float]] = field(default_factory=list)


def compare(pred: dict[str, Optional[float]], meas: dict[str, Optional[float]]) -> Accuracy:
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
                acc.zero_disagree += 1
            continue
        if p is None or p <= 0:
            acc.missing.append(name)
            continue
        d = math.log10(p) - math.log10(m)
        diffs.append(d)
        logs.append(math.log10(m))
        rows.append((name, p, m, d))
    if not diffs:
        return acc
    acc.offset = statistics.median(diffs)
    acc.error = statistics.median(abs(d - acc.offset) for d in diffs)
    centre = statistics.median(logs)
    acc.baseline = statistics.median(abs(v - centre) for v in logs)
    acc.layers = len(diffs)
    acc.residuals = [(n, p, m, d - acc.offset) for n, p, m, d in rows]
    return acc
