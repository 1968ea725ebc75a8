"""Tests for the activation moment laws (``archlint.ops.activations``): Monte-Carlo checks against torch for every op,
high-precision reference values, edge cases and the vanilla-RNN fixed point."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from archlint.ops.activations import SUPPORTED_OPS, ActMoments, activation_moments
from archlint.ops.recurrent import rnn_step_gain, stationary_rnn_variance

# Torch implementation of every op, with the parameters passed to activation_moments.
_TORCH_OPS = {
    "relu": lambda h, p: F.relu(h),
    "relu6": lambda h, p: F.relu6(h),
    "leaky_relu": lambda h, p: F.leaky_relu(h, **p),
    "prelu": lambda h, p: F.prelu(h, torch.tensor([p.get("weight", 0.25)], dtype=h.dtype)),
    "rrelu": lambda h, p: F.rrelu(h, **{"training": True, **p}),
    "elu": lambda h, p: F.elu(h, **p),
    "selu": lambda h, p: F.selu(h),
    "celu": lambda h, p: F.celu(h, **p),
    "gelu": lambda h, p: F.gelu(h, **p),
    "silu": lambda h, p: F.silu(h),
    "mish": lambda h, p: F.mish(h),
    "sigmoid": lambda h, p: torch.sigmoid(h),
    "tanh": lambda h, p: torch.tanh(h),
    "hardtanh": lambda h, p: F.hardtanh(h, **p),
    "hardsigmoid": lambda h, p: F.hardsigmoid(h),
    "hardswish": lambda h, p: F.hardswish(h),
    "softplus": lambda h, p: F.softplus(h, **p),
    "softsign": lambda h, p: F.softsign(h),
    "tanhshrink": lambda h, p: F.tanhshrink(h),
    "softshrink": lambda h, p: F.softshrink(h, **p),
    "hardshrink": lambda h, p: F.hardshrink(h, **p),
    "logsigmoid": lambda h, p: F.logsigmoid(h),
    "threshold": lambda h, p: F.threshold(h, p.get("threshold", 0.0), p.get("value", 0.0)),
    "identity": lambda h, p: h.clone(),
}

_VARIANTS = [(op, {}) for op in SUPPORTED_OPS] + [
    ("leaky_relu", {"negative_slope": 0.2}),
    ("prelu", {"weight": -0.5}),
    ("rrelu", {"lower": 0.1, "upper": 0.6, "training": False}),
    ("elu", {"alpha": 0.5}),
    ("celu", {"alpha": 2.0}),
    ("gelu", {"approximate": "tanh"}),
    ("hardtanh", {"min_val": -2.0, "max_val": 0.5}),
    ("softplus", {"beta": 2.0, "threshold": 3.0}),
    ("softshrink", {"lambd": 1.0}),
    ("hardshrink", {"lambd": 1.5}),
    ("threshold", {"threshold": 0.5, "value": -1.0}),
]

_GRID = [(m, v) for m in (-1.0, 0.0, 2.0) for v in (0.01, 1.0, 25.0)]  # every default op
_FEW = [(-1.0, 1.0), (0.0, 0.01), (2.0, 25.0)]  # parameter variants
_SAMPLES = 1_000_000


def test_every_supported_op_has_a_torch_reference() -> None:
    assert set(_TORCH_OPS) == set(SUPPORTED_OPS)
    assert "glu" not in SUPPORTED_OPS


def _monte_carlo(op: str, params: dict, points: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (mean, var) point: sample means and standard errors of phi, phi^2 and phi'^2
    (``phi'`` from autograd), shape ``(3, len(points))``."""
    gen = torch.Generator().manual_seed(1234)
    z = torch.randn(_SAMPLES, generator=gen)
    means = torch.tensor([m for m, _ in points])
    stds = torch.tensor([math.sqrt(v) for _, v in points])
    h = (means[:, None] + stds[:, None] * z[None, :]).requires_grad_(True)
    torch.manual_seed(99)  # rrelu's random slopes
    y = _TORCH_OPS[op](h, params)
    (dy,) = torch.autograd.grad(y.sum(), h)
    y = y.detach()
    y2, g2 = y * y, dy * dy
    # Row means of phi, phi^2, phi^4, phi'^2, phi'^4 (float32 sums are pairwise: accurate enough).
    m1, m2, m4, g2m, g4m = (t.mean(dim=1).double() for t in (y, y2, y2 * y2, g2, g2 * g2))
    est = torch.stack([m1, m2, g2m])
    var = torch.stack([m2 - m1**2, m4 - m2**2, g4m - g2m**2]).clamp_min(0.0)
    return est, var.sqrt() / math.sqrt(_SAMPLES)


def _rare_event_floor(mean: float, var: float) -> tuple[float, float, float]:
    """Tolerance for events too rare to be sampled (expected count ~ 1): 30 samples of the
    largest plausible magnitude of phi, phi^2 and phi'^2 (slopes are O(1) for every op)."""
    scale = 1.0 + abs(mean) + 6.0 * math.sqrt(var)
    return 30.0 * scale / _SAMPLES, 30.0 * scale**2 / _SAMPLES, 30.0 / _SAMPLES


@pytest.mark.parametrize(("op", "params"), _VARIANTS, ids=lambda v: str(v))
def test_matches_monte_carlo(op: str, params: dict) -> None:
    points = _FEW if params else _GRID
    est, err = _monte_carlo(op, params, points)
    for i, (m, v) in enumerate(points):
        got = activation_moments(op, m, v, **params)
        predicted = (got.mean_out, got.second_out, got.grad_gain)
        floors = _rare_event_floor(m, v)
        for j, name in enumerate(("mean_out", "second_out", "grad_gain")):
            mc, se = float(est[j, i]), float(err[j, i])
            # 6 standard errors, 0.2% slack for float32 sampling, the rare-event floor.
            tol = 6.0 * se + 2e-3 * abs(predicted[j]) + floors[j]
            assert abs(predicted[j] - mc) <= tol, (op, params, m, v, name, predicted[j], mc, se)
            if name != "mean_out" and abs(mc) > 1e-6 and se < 4e-3 * abs(mc):
                assert abs(predicted[j] / mc - 1.0) < 0.02, (op, params, m, v, name)


# (op, params, mean, var) -> (E[phi], E[phi^2], E[phi'^2]) from adaptive mpmath quadrature at
# 30 digits, split at the kinks and around the mean.
_REFERENCE = [
    ("tanh", {}, 0.0, 1e4, (0.0, 0.992021482480513, 0.0053191446440146225)),
    ("tanh", {}, 0.5, 4.0, (0.18078311545341494, 0.6447285957199524, 0.24864353736003125)),
    ("tanh", {}, 10.0, 0.01, (0.9999999957944167, 0.9999999915888332, 7.363499490760754e-17)),
    ("sigmoid", {}, -3.0, 100.0, (0.38391056883627617, 0.3463256376978476, 0.006319543659596926)),
    ("gelu", {}, 2.0, 1e4, (40.90021245680195, 5161.585674768317, 0.5085410680554096)),
    ("silu", {}, -1.0, 0.5, (-0.19486611682473362, 0.0583369420733397, 0.06520224931442754)),
    ("softsign", {}, 0.0, 25.0, (0.0, 0.534106700220459, 0.052457897281364345)),
    ("elu", {}, -3.0, 0.25, (-0.9435838605027743, 0.8912544924275894, 0.0040867712535722555)),
    ("hardswish", {}, 0.5, 4.0, (0.8554585339811149, 2.6434147958886913, 0.6107795252806162)),
    ("relu6", {}, 5.0, 4.0, (4.608415159555644, 23.409528292755496, 0.685252795948237)),
    ("mish", {}, 1.0, 9.0, (1.661709161817962, 7.382352376075832, 0.6505257440847324)),
    (
        "softplus",
        {"beta": 2.0, "threshold": 3.0},
        1.0,
        2.0,
        (1.2814865376262448, 2.7835698920213354, 0.6365961955294087),
    ),
    (
        "gelu",
        {"approximate": "tanh"},
        -0.5,
        30.0,
        (1.9088526148719247, 12.905208503390805, 0.4719924138833715),
    ),
    ("logsigmoid", {}, 0.0, 400.0, (-8.011563570610072, 200.04765817529494, 0.48013421585762917)),
    ("tanhshrink", {}, 2.0, 3.0, (1.304345268352307, 3.531417868324662, 0.6780407401071388)),
    (
        "celu",
        {"alpha": 2.0},
        -1.0,
        10.0,
        (0.011850865993452284, 4.171136614401369, 0.49675487848107436),
    ),
]


@pytest.mark.parametrize(("op", "params", "mean", "var", "expected"), _REFERENCE)
def test_matches_high_precision_reference(op, params, mean, var, expected) -> None:
    got = activation_moments(op, mean, var, **params)
    for value, ref in zip((got.mean_out, got.second_out, got.grad_gain), expected):
        assert value == pytest.approx(ref, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("var", [1e-6, 0.3, 1.0, 7.0, 1e4])
@pytest.mark.parametrize("mean", [-10.0, -0.5, 0.0, 3.0, 10.0])
def test_relu_family_closed_forms(mean: float, var: float) -> None:
    s = math.sqrt(var)
    cdf = 0.5 * math.erfc(-mean / s / math.sqrt(2.0))
    pdf = math.exp(-0.5 * (mean / s) ** 2) / math.sqrt(2.0 * math.pi)
    relu = activation_moments("relu", mean, var)
    assert relu.mean_out == pytest.approx(mean * cdf + s * pdf, rel=1e-9, abs=1e-300)
    second = (mean**2 + var) * cdf + mean * s * pdf
    assert relu.second_out == pytest.approx(second, rel=1e-8, abs=1e-300)
    assert relu.grad_gain == pytest.approx(cdf, rel=1e-12, abs=1e-300)
    a = 0.2
    leaky = activation_moments("leaky_relu", mean, var, negative_slope=a)
    total = mean**2 + var
    assert leaky.second_out == pytest.approx(
        relu.second_out + a * a * (total - relu.second_out), rel=1e-8
    )
    assert leaky.grad_gain == pytest.approx(cdf + a * a * (1.0 - cdf), rel=1e-12)


def test_rrelu_modes() -> None:
    lower, upper = 0.1, 0.3
    evaluation = activation_moments("rrelu", -0.5, 2.0, lower=lower, upper=upper, training=False)
    leaky = activation_moments("leaky_relu", -0.5, 2.0, negative_slope=0.2)
    assert evaluation.second_out == pytest.approx(leaky.second_out, rel=1e-12)
    assert evaluation.grad_gain == pytest.approx(leaky.grad_gain, rel=1e-12)
    # Training: E[a^2] = (l^2 + l u + u^2)/3 replaces the squared slope.
    train = activation_moments("rrelu", 0.0, 1.0, lower=lower, upper=upper)
    assert train.grad_gain == pytest.approx(0.5 + 0.5 * (lower**2 + lower * upper + upper**2) / 3)


def test_zero_mean_textbook_values() -> None:
    assert activation_moments("relu", 0.0, 3.0).second_out == pytest.approx(1.5)
    assert activation_moments("relu", 0.0, 3.0).grad_gain == pytest.approx(0.5)
    ident = activation_moments("identity", 1.5, 2.0)
    assert (ident.mean_out, ident.second_out, ident.grad_gain) == pytest.approx((1.5, 4.25, 1.0))
    selu = activation_moments("selu", 0.0, 1.0)  # the SELU fixed point: mean 0, variance 1
    assert selu.mean_out == pytest.approx(0.0, abs=1e-9)
    assert selu.second_out == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("op", SUPPORTED_OPS)
def test_zero_variance_evaluates_the_function(op: str) -> None:
    h = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    y = _TORCH_OPS[op](h, {} if op != "rrelu" else {"training": False})
    (dy,) = torch.autograd.grad(y.sum(), h)
    got = activation_moments(op, 0.7, 0.0, **({} if op != "rrelu" else {"training": False}))
    value = float(y.detach())
    assert got.mean_out == pytest.approx(value, rel=1e-9)
    assert got.second_out == pytest.approx(value**2, rel=1e-9)
    assert got.grad_gain == pytest.approx(float(dy) ** 2, rel=1e-6)  # torch's 1/6 is float32


@pytest.mark.parametrize("op", ["tanh", "sigmoid", "gelu", "silu", "softplus", "elu", "hardtanh"])
def test_continuous_across_regimes(op: str) -> None:
    """Moments are smooth in var; no jump where the integration strategy changes."""
    values = [activation_moments(op, 0.3, v).second_out for v in (0.5624, 0.5625, 0.5626)]
    assert values[1] - values[0] == pytest.approx(values[2] - values[1], rel=1e-3, abs=1e-10)


def test_argument_validation() -> None:
    with pytest.raises(ValueError):
        activation_moments("glu", 0.0, 1.0)
    with pytest.raises(ValueError):
        activation_moments("relu", 0.0, -1.0)
    with pytest.raises(ValueError):
        activation_moments("relu", math.nan, 1.0)
    with pytest.raises(TypeError):
        activation_moments("relu", 0.0, 1.0, alpha=1.0)
    with pytest.raises(ValueError):
        activation_moments("gelu", 0.0, 1.0, approximate="fast")
    plain = activation_moments("relu", 0.0, 1.0)
    assert activation_moments("relu", 0.0, 1.0, inplace=True) == plain
    moments = activation_moments("tanh", 0.0, 1.0)
    assert isinstance(moments, ActMoments)
    assert moments.var_out == pytest.approx(moments.second_out)


def test_calls_are_fast() -> None:
    points = [(0.01 * i - 1.0, 0.05 + 0.37 * i) for i in range(200)]
    for op in ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid"):
        start = time.perf_counter()
        for m, v in points:
            activation_moments(op, m, v + 1e-3 * hash(op) % 7)
        per_call = (time.perf_counter() - start) / len(points)
        assert per_call < 1e-3, (op, per_call)  # target is ~1e-5; generous for loaded CI


# ---------------------------------------------------------------------------------------------
# Vanilla RNN
# ---------------------------------------------------------------------------------------------


def test_relu_rnn_fixed_point_is_closed_form() -> None:
    q = stationary_rnn_variance("relu", 1.0 / 3.0, 0.2, 0.01)
    assert q == pytest.approx(0.21 / (1.0 - 1.0 / 6.0))
    assert rnn_step_gain("relu", 1.0 / 3.0, 0.2, 0.01) == pytest.approx(1.0 / 6.0)
    assert stationary_rnn_variance("relu", 2.5, 0.2) == math.inf


def test_tanh_rnn_fixed_point_solves_the_map() -> None:
    q = stationary_rnn_variance("tanh", 1.5, 0.3, 0.02)
    assert q == pytest.approx(1.5 * activation_moments("tanh", 0.0, q).second_out + 0.32, rel=1e-10)
    gain = rnn_step_gain("tanh", 1.5, 0.3, 0.02)
    assert gain == pytest.approx(1.5 * activation_moments("tanh", 0.0, q).grad_gain)
    assert stationary_rnn_variance("tanh", 0.5, 0.0) == 0.0  # starts (and stays) at h = 0


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_step_gain_matches_simulation(nonlinearity: str) -> None:
    """Default-init nn.RNN, unrolled by hand: per-step decay of ||dL/dh_t||^2."""
    torch.manual_seed(0)
    hidden = inputs = 512
    rnn = torch.nn.RNN(inputs, hidden, nonlinearity=nonlinearity)
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    batch, steps = 32, 30
    x = torch.randn(steps, batch, inputs)
    h = torch.zeros(batch, hidden)
    states = []
    with torch.no_grad():
        drive = x @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + rnn.bias_hh_l0
    for t in range(steps):
        h = act(drive[t] + h @ rnn.weight_hh_l0.T)
        states.append(h)
    loss = (states[-1] * torch.randn(batch, hidden)).sum()
    norms = [g.pow(2).sum().item() for g in torch.autograd.grad(loss, states)]
    measured = sum(norms[t - 1] / norms[t] for t in range(15, steps)) / (steps - 15)
    # sigma_hh^2 = 1/3; input variance D/(3H); two biases of variance 1/(3H) each
    predicted = rnn_step_gain(
        nonlinearity, 1.0 / 3.0, inputs / (3.0 * hidden), 2.0 / (3.0 * hidden)
    )
    assert measured == pytest.approx(predicted, rel=0.05)
    if nonlinearity == "tanh":
        assert predicted == pytest.approx(0.209, abs=1e-3)  # chi = (1/3) E[tanh'(z)^2] at default init
