"""How well does archlint's gradient estimate match measured gradients?

For every model of the zoo (benchmarks/zoo.py; torchvision/transformers entries join when those
packages import): archlint traces the model and predicts each layer's weight-gradient RMS; the
probe (archlint.measure) runs one real forward and backward. Per model we print the median
|log10(predicted) - log10(measured)| after removing the model's common offset (the median of the
differences), and beside it the same figure for a know-nothing estimator that predicts one value
for every layer. Layers whose measured gradient is exactly zero (identity-at-init designs) are
checked separately: the estimate must call them zero too.

    python benchmarks/estimator_accuracy.py [NAME_SUBSTRING ...] [--verbose]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from archlint.loading.inputs import parse_input  # noqa: E402
from archlint.measure import measure_grad_rms  # noqa: E402
from archlint.estimate.accuracy import compare  # noqa: E402
from archlint.estimate.propagate import estimate_graph  # noqa: E402
from archlint.tracing import trace_model  # noqa: E402
from zoo import ZOO, make_inputs  # noqa: E402


def run(filters: list[str], verbose: bool) -> int:
    rows = []
    for entry in ZOO:
        if filters and not any(f in entry.name for f in filters):
            continue
        model = entry.build()
        spec = parse_input(entry.input, entry.name)
        t0 = time.perf_counter()
        try:
            graph = trace_model(model, spec)
            est = estimate_graph(graph)
        except Exception as exc:  # report, keep going
            print(f"{entry.name:24s} ESTIMATE FAILED: {type(exc).__name__}: {exc}")
            rows.append((entry.name, None, None))
            continue
        t_est = time.perf_counter() - t0
        meas = measure_grad_rms(model, make_inputs(entry.input)).rms
        res = compare(est.grad_rms, meas)
        unknown = ",".join(sorted(est.unknown_ops)) or "-"
        print(f"{entry.name:24s} layers={res.layers:3d} err={_fmt(res.error)} "
              f"baseline={_fmt(res.baseline)} zero-ok={res.zero_agree} "
              f"zero-bad={res.zero_disagree} missing={len(res.missing)}"
              f" tracer={graph.tracer} t={t_est:.2f}s unknown={unknown}")
        if verbose:
            for name, p, m, d in res.residuals:
                print(f"      {name:40s} pred={p:.3e} meas={m:.3e} resid={d:+.2f}")
            for name in res.missing:
                print(f"      {name:40s} NOT PREDICTED")
        rows.append((entry.name, res.error, res.baseline))
    errs = [e for _, e, _ in rows if e is not None]
    bases = [b for _, _, b in rows if b is not None]
    if errs:
        worst = max((r for r in rows if r[1] is not None), key=lambda r: r[1])
        print(f"\nmodels: {len(rows)}  overall median error: {statistics.median(errs):.3f} decades"
              f"  (know-nothing baseline: {statistics.median(bases):.3f})  worst: {worst[0]} "
              f"{worst[1]:.3f}  failed: {sum(1 for r in rows if r[1] is None)}")
    return 0


def _fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else "  -  "


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    sys.exit(run(args, "--verbose" in sys.argv or "-v" in sys.argv))
