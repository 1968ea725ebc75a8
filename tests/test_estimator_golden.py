"""The estimator pinned: every zoo model's predicted per-layer gradient RMS against a golden file.

Any change to the estimator's numbers shows up here as a failing test and, once regenerated, as a
diff of ``tests/golden/estimator/*.json`` to review. Regenerate with::

    python -m pytest tests/test_estimator_golden.py --overwrite
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from helpers import ROOT, lint_model, run_cli

GOLDEN = ROOT / "tests" / "golden" / "estimator"


def _load_zoo():
    """benchmarks/zoo.py under a private name (a test may write its own ``zoo.py``)."""
    spec = importlib.util.spec_from_file_location("archlint_bench_zoo", ROOT / "benchmarks" /
                                                  "zoo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ZOO = _load_zoo().ZOO

#: Relative tolerance: only floating-point summation order (BLAS) may differ between machines.
RTOL = 1e-4


def _snapshot(entry) -> dict:
    target = lint_model(entry.build(), entry.input, name=entry.name)
    assert target.status == "ok", target.error
    data = target.to_dict()
    return {
        "model": entry.name,
        "tracer": data["tracer"],
        "gradient_decades": data.get("gradient_decades"),
        "findings": sorted(f["code"] for f in data["findings"]),
        "notes": [n for n in data["notes"] if n.startswith("gradient estimate")],
        "grad_rms": {layer["module"]: (None if layer["grad_rms"] is None
                                       else float(f"{layer['grad_rms']:.6g}"))
                     for layer in data["layers"]},
    }


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if a == b:
        return True
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-300)


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_estimate_matches_golden(entry, request):
    path = GOLDEN / f"{entry.name}.json"
    optional = entry.name.startswith(("tv_", "hf_"))
    if request.config.getoption("--overwrite"):
        path.write_text(json.dumps(_snapshot(entry), indent=1, sort_keys=True) + "\n")
        return
    if not path.exists():
        if optional:
            pytest.skip(f"no golden file for the optional entry {entry.name}")
        pytest.fail(f"{path.name} missing; regenerate with --overwrite")
    want = json.loads(path.read_text())
    got = _snapshot(entry)
    assert got["tracer"] == want["tracer"]
    assert got["findings"] == want["findings"]
    assert got["notes"] == want["notes"]
    assert _close(got["gradient_decades"], want["gradient_decades"]), \
        (got["gradient_decades"], want["gradient_decades"])
    assert set(got["grad_rms"]) == set(want["grad_rms"])
    bad = {m: (got["grad_rms"][m], v) for m, v in want["grad_rms"].items()
           if not _close(got["grad_rms"][m], v)}
    assert not bad, f"grad_rms changed (got, golden): {bad}"


def test_every_core_entry_has_a_golden_file():
    names = {e.name for e in ZOO}
    stale = sorted(p.stem for p in GOLDEN.glob("*.json") if p.stem not in names
                   and not p.stem.startswith(("tv_", "hf_")))
    assert not stale, f"golden files without a zoo entry: {stale}"


def test_examples_output_matches_golden(request):
    """What a new user sees first: ``archlint --config examples/archlint.yaml``, byte for byte."""
    path = ROOT / "tests" / "golden" / "examples.txt"
    proc = run_cli("--config", "examples/archlint.yaml")
    assert proc.returncode == 1, proc.stderr
    if request.config.getoption("--overwrite"):
        path.write_text(proc.stdout)
        return
    assert proc.stdout == path.read_text()
