"""``--measure``: run the probe for real on each analysed target and compare with the estimate."""

from __future__ import annotations

from .results import TargetResult
from .measure import measure_grad_rms
from .estimate.accuracy import compare


def measure_target(result: TargetResult) -> None:
    """Fill ``measured_grad_rms`` of every layer and the estimator's error for this target."""
    if result.analysis is None:
        return
    graph = result.analysis.graph
    spec = graph.input_spec
    if spec is None:
        result.notes.append("--measure skipped: no example input")
        return
    model = graph.model
    inputs = spec.bind(model)
    measured = measure_grad_rms(model, inputs).rms
    for layer in result.layers:
        layer.measured_grad_rms = measured.get(layer.module)
    predicted = {layer.module: layer.grad_rms for layer in result.layers}
    acc = compare(predicted, measured)
    result.extra["estimate_error"] = {
        "median_decades": None if acc.error is None else round(acc.error, 4),
        "layers": acc.layers,
        "zero_by_design_agree": acc.zero_agree,
        "zero_by_design_disagree": acc.zero_disagree,
    }
    if acc.error is not None:
        result.notes.append(f"estimate vs measured gradients: median error {acc.error:.3f} "
                            f"decades over {acc.layers} layers")
