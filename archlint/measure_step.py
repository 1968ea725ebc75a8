"""``--measure``: run the probe for real on an analysed target and compare with the estimate.

A step after the rules: it gets the built model, the example input the estimate used and the
predicted layers, and returns what it measured. The runner stores that in the target's result
(``layers[*].measured_grad_rms`` and ``measurement``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from torch import nn

from .estimate.accuracy import compare
from .loading.inputs import InputError, InputSpec, call_arguments
from .measure import measure_grad_rms
from .ops.opaque import see_through
from .results import LayerInfo, Measurement


@dataclass
class Measured:
    #: Module name -> measured weight-gradient RMS (None: no parameter of it requires grad).
    grad_rms: dict[str, Optional[float]]
    measurement: Measurement


def measure_target(model: nn.Module, spec: InputSpec, layers: list[LayerInfo],
                   earliest: Sequence[str] = (), last: Sequence[str] = ()) -> Measured:
    """One real probe on ``model`` with ``spec``'s tensors, compared with ``layers``' predicted
    ``grad_rms`` (``earliest``/``last``: the verdict's layers, for the spread error)."""
    with see_through(model, wrap_scripts=False) as seen:  # compiled modules are not compiled
        args, kwargs = call_arguments(seen, spec.bind(seen))
        if args and kwargs:
            raise InputError("cannot call forward() with both *args and keyword arguments")
        measured = measure_grad_rms(seen, args or kwargs).rms
    acc = compare({layer.module: layer.grad_rms for layer in layers}, measured, earliest, last)
    return Measured(grad_rms=measured,
                    measurement=Measurement(
                        median_decades=acc.error, layers=acc.layers,
                        zero_by_design_agree=acc.zero_agree,
                        zero_by_design_disagree=acc.zero_disagree,
                        worst_layer=acc.worst[0] if acc.worst else None,
                        worst_decades=acc.worst[1] if acc.worst else None,
                        predicted_spread=acc.predicted_decades,
                        measured_spread=acc.measured_decades,
                        offset_decades=acc.offset if acc.layers else None,
                        zero_mismatch=list(acc.zero_mismatch)))


def measure_dead_units(model: nn.Module, spec: InputSpec, findings: list) -> list[str]:
    """``--measure`` for AL110: the fraction of dead units of each reported layer on the live
    model (the example input's batch), into the finding's data and message. Returns notes."""
    from .measure import measure_dead_fractions

    layers = [(f, d) for f in findings if f.code == "AL110"
              for d in f.data.get("layers") or () if isinstance(d, dict) and d.get("module")]
    if not layers:
        return []
    with see_through(model, wrap_scripts=False) as seen:
        args, kwargs = call_arguments(seen, spec.bind(seen))
        measured = measure_dead_fractions(seen, args or kwargs, [d["module"] for _, d in layers])
    parts: dict[int, list[str]] = {}
    notes = []
    for f, d in layers:
        got = measured.get(d["module"])
        if got is None:
            continue
        d["measured_dead_fraction"], samples = got
        parts.setdefault(id(f), []).append(f"{d['module']} {100 * got[0]:.0f}%")
        notes.append(f"dead units of {d['module']}: predicted {100 * d['dead_fraction']:.0f}%, "
                     f"measured {100 * got[0]:.0f}% (active for under 0.14% of "
                     f"{samples} values)")
    for f, _ in layers:
        if id(f) in parts and "measured:" not in f.message:
            f.message += f"; measured: {', '.join(parts[id(f)])}"
    return notes
