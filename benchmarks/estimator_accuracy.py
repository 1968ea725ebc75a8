"""How well does archlint's gradient estimate match measured gradients?

For every model of the zoo (benchmarks/zoo.py; torchvision/transformers entries join when those
packages import): archlint lints the model and predicts each layer's weight-gradient RMS; the
probe (archlint.measure, a real forward and backward with its own random streams) measures them.
Per model, three figures in decades (see archlint/estimate/accuracy.py):

- ``med``: the median |log10 predicted - log10 measured| after removing the model's offset;
- ``worst``: the worst layer's remaining difference (and which layer);
- ``spread``: the predicted first-to-last gradient ratio minus the measured one, over the layers
  the AL105 verdict compares -- no offset removed.

and the verdicts: AL105/AL106 from the prediction (archlint's findings) and from measurement
(the same layer lists, the same limit, measured values). Layers predicted zero but measured
non-zero (or the reverse) are counted apart as ``zero!``.

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

import archlint  # noqa: E402
from archlint.estimate.accuracy import compare, span_decades  # noqa: E402
from archlint.measure import measure_grad_rms  # noqa: E402
from zoo import ZOO, make_inputs  # noqa: E402

LIMIT = 3.0  # the verdicts' default limit (AL105/AL106 max-decades)


def _verdict(vanish, explode) -> str:
    if vanish is not None and vanish < -LIMIT:
        return "AL105"
    if explode is not None and explode > LIMIT:
        return "AL106"
    return "-"


def run(filters: list[str], verbose: bool) -> int:
    rows = []
    for entry in ZOO:
        if filters and not any(f in entry.name for f in filters):
            continue
        t0 = time.perf_counter()
        try:
            report = archlint.lint(entry.build(), example_input=entry.input, name=entry.name,
                                   fixes=False)
        except Exception as exc:  # report, keep going
            print(f"{entry.name:24s} LINT FAILED: {type(exc).__name__}: {exc}")
            rows.append(None)
            continue
        t_lint = time.perf_counter() - t0
        target = report.targets[0].to_dict()
        if target["status"] != "ok":
            print(f"{entry.name:24s} ERROR: {target['error']}")
            rows.append(None)
            continue
        pred = {layer["module"]: layer["grad_rms"] for layer in target["layers"]}
        meas = measure_grad_rms(entry.build(), make_inputs(entry.input)).rms
        flows = target.get("gradient_flow") or {}
        vanish, explode = flows.get("vanishing"), flows.get("exploding")
        res = compare(pred, meas, *(vanish["earliest"], vanish["last"]) if vanish else ())
        codes = {f["code"] for f in target["findings"]}
        said = "AL105" if "AL105" in codes else "AL106" if "AL106" in codes else "-"
        measured_explode = span_decades(meas, explode["earliest"], explode["last"]) \
            if explode else None
        truth = _verdict(res.measured_decades, measured_explode)
        unknown = [n for n in target["notes"] if "without a formula" in n]
        worst = f"{res.worst_error:.2f} {res.worst[0][:18]:18s}" if res.worst else "  -" + " " * 20
        agree = "" if said == truth else f"  VERDICT {said} vs measured {truth}"
        print(f"{entry.name:24s} n={res.layers:3d} med={_fmt(res.error)} worst={worst} "
              f"spread={_fmt(res.spread_error, signed=True)} zero-ok={res.zero_agree} "
              f"zero!={res.zero_disagree} {target['tracer']} t={t_lint:.2f}s"
              f"{' UNKNOWN ' + unknown[0].split(': ')[-1] if unknown else ''}{agree}")
        if verbose:
            for name, p, m, d in res.residuals:
                print(f"      {name:40s} pred={p:.3e} meas={m:.3e} resid={d:+.2f}")
            for name in res.zero_mismatch:
                print(f"      {name:40s} ZERO MISMATCH pred={pred.get(name)} meas={meas.get(name)}")
        rows.append((entry.name, res, said, truth))
    done = [r for r in rows if r is not None]
    meds = [r[1].error for r in done if r[1].error is not None]
    worsts = [(r[1].worst_error, r[0]) for r in done if r[1].worst_error is not None]
    spreads = [(abs(r[1].spread_error), r[0]) for r in done if r[1].spread_error is not None]
    bases = [r[1].baseline for r in done if r[1].baseline is not None]
    if meds:
        print(f"\nmodels: {len(rows)} (failed {len(rows) - len(done)})  "
              f"median error: {statistics.median(meds):.3f} decades (know-nothing baseline "
              f"{statistics.median(bases):.3f}, worst model {max(meds):.3f})")
        print(f"worst layer: median over models {statistics.median(w for w, _ in worsts):.3f}, "
              f"worst {max(worsts)[0]:.2f} ({max(worsts)[1]})")
        if spreads:
            print(f"spread error: median |.| {statistics.median(s for s, _ in spreads):.3f}, "
                  f"worst {max(spreads)[0]:.2f} ({max(spreads)[1]}), "
                  f"{sum(1 for s, _ in spreads if s > 0.3)} above 0.3, "
                  f"{sum(1 for s, _ in spreads if s > 0.5)} above 0.5 (of {len(spreads)})")
        bad = [r[0] for r in done if r[2] != r[3]]
        zeros = sum(r[1].zero_disagree for r in done)
        print(f"verdicts: {len(done) - len(bad)}/{len(done)} agree"
              f"{' -- disagree: ' + ', '.join(bad) if bad else ''}; zero mismatches: {zeros}")
    return 0


def _fmt(v, signed: bool = False):
    if not isinstance(v, float):
        return "  -  "
    return f"{v:+.3f}" if signed else f"{v:.3f}"


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    sys.exit(run(args, "--verbose" in sys.argv or "-v" in sys.argv))
