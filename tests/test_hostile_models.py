"""Odd models: non-finite weights, gradients that underflow, errors inside archlint's frames.
(Which line gets which code for the non-finite and underflowing models: AL104.py, AL105.py.)"""

from helpers import fixture_finding, fixture_target, run_cli


def test_nan_weights_are_reported():
    f = fixture_finding("AL104", "NaNWeight", "AL104")
    assert (f["module"], f["data"]["problem"]) == ("fc", "nonfinite")


def test_underflowing_gradient_is_vanishing_not_zero_by_design():
    f = fixture_finding("AL105", "underflowing", "AL105")
    assert f["module"] == "0" and f["data"]["decades"] < -100


def test_zero_init_designs_stay_zero_by_design():
    # healthy.py: no rule reports it; the first layer of each branch gets exactly no gradient,
    # the zero-initialised last one does
    target = fixture_target("healthy", "ZeroInitBranches")
    assert target["findings"] == []
    zeros = [x["module"] for x in target["layers"] if x["grad_rms"] == 0.0]
    assert "blocks.0.f" in zeros and "blocks.0.g" not in zeros


def test_error_location_never_points_into_archlint(tmp_path):
    proc = run_cli("os.path:join", "--isolated", cwd=tmp_path)
    assert proc.returncode == 2
    assert "TypeError" in proc.stdout and "archlint/loading" not in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_weight_statistics_cache_survives_id_reuse():
    # CPython reuses the id of a dead tensor; the cache must not hand its stats to a new one
    import torch

    from archlint.meanfield import signal as E

    old = torch.randn(4, 4)
    new = torch.randn(2, 8) * 3
    key = (id(new), new._version, id(None), 1, False, 1)
    E._weight_cache[key] = (lambda: old, E._none_ref, E.linear_stats(old, None))
    stats = E.linear_stats(new, None)
    assert (stats.out, stats.fan_in) == (2, 8)
    assert abs(stats.a - float(new.pow(2).sum()) / 2) < 1e-3
