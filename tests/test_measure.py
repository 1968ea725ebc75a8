"""Tests for the ground-truth probe ``archlint.measure.measure_grad_rms``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from archlint.measure import MeasureResult, measure_grad_rms, select_output


def _probe_vector(shape: torch.Size, seed: int) -> torch.Tensor:
    from archlint.measure import PROBE_STREAM

    return torch.randn(shape, generator=torch.Generator().manual_seed(PROBE_STREAM + seed))


def test_probe_vector_is_not_the_example_input() -> None:
    # a model whose output has its input's shape: r must not equal x (both drawn from seed 0)
    from archlint.loading.inputs import TensorSpec

    x = TensorSpec((4, 8)).make(seed=0)
    assert not torch.allclose(_probe_vector(torch.Size([4, 8]), 0), x)


def test_single_linear_matches_hand_computed_gradient() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    seed = 7

    result = measure_grad_rms(layer, x, seed=seed)

    # loss = sum(y * r) / sqrt(N) with y = x W^T + b  =>  dL/dW = r^T x / sqrt(N)
    r = _probe_vector(torch.Size([5, 3]), seed)
    grad_w = r.T @ x / math.sqrt(15)
    expected = grad_w.pow(2).mean().sqrt().item()
    assert isinstance(result, MeasureResult)
    assert list(result.rms) == [""]  # the root module owns the weight; the bias is 1-D
    assert result.rms[""] == pytest.approx(expected, rel=1e-6)
    assert result.output_shape == (5, 3)
    expected_y = (x @ layer.weight.T + layer.bias).pow(2).mean().sqrt().item()
    assert result.output_rms == pytest.approx(expected_y, rel=1e-6)


def test_matches_manual_backward_on_mlp() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )
    x = torch.randn(6, 8)

    result = measure_grad_rms(model, (x,), seed=3)

    y = model(x)
    loss = (y * _probe_vector(y.shape, 3)).sum() / math.sqrt(y.numel())
    loss.backward()
    for name in ("0", "2", "4"):
        grad = model.get_submodule(name).weight.grad
        assert result.rms[name] == pytest.approx(grad.pow(2).mean().sqrt().item(), rel=1e-6)
    assert set(result.rms) == {"0", "2", "4"}


class _Stateful(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.frozen = nn.Linear(8, 8)
        self.frozen.weight.requires_grad_(False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen(self.drop(self.bn(self.fc(x)))))


def test_model_state_is_restored() -> None:
    torch.manual_seed(0)
    model = _Stateful()
    model.eval()
    model.drop.train()  # mixed modes must come back exactly
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    modes = {k: m.training for k, m in model.named_modules()}
    requires = {k: p.requires_grad for k, p in model.named_parameters()}
    x = torch.randn(10, 6)
    rng = torch.get_rng_state()

    result = measure_grad_rms(model, x)

    assert {k: m.training for k, m in model.named_modules()} == modes
    assert {k: p.requires_grad for k, p in model.named_parameters()} == requires
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 0.5))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    assert torch.equal(torch.get_rng_state(), rng)
    assert result.rms["frozen"] is None  # its only matrix does not require grad
    assert result.rms["fc"] > 0 and result.rms["head"] > 0
    assert "bn" not in result.rms  # owns only 1-D parameters


def test_probe_runs_in_train_mode_and_is_seeded() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Dropout(0.5), nn.Linear(64, 4)).eval()
    x = torch.randn(32, 16)
    first = measure_grad_rms(model, x, seed=5)
    again = measure_grad_rms(model, x, seed=5)
    other = measure_grad_rms(model, x, seed=6)
    assert first.rms == again.rms
    assert first.rms != other.rms

    # With dropout active the result differs from the same probe run in eval mode.
    y = model(x)
    (y * _probe_vector(y.shape, 5)).sum().div(math.sqrt(y.numel())).backward()
    eval_rms = model[0].weight.grad.pow(2).mean().sqrt().item()
    assert first.rms["0"] != pytest.approx(eval_rms, rel=1e-3)


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.ignored = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor):
        return ((self.used(x), None), self.ignored(x))


class _DictOut(nn.Module):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.other = nn.Linear(4, 5)
        self.chosen = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor):
        return {"hidden": self.other(x), self.key: self.chosen(x)}


def test_tuple_output_uses_first_tensor_recursively() -> None:
    torch.manual_seed(0)
    result = measure_grad_rms(_TupleOut(), torch.randn(8, 4))
    assert result.rms["used"] > 0
    assert result.rms["ignored"] == 0.0  # requires grad but received none: counted as zeros
    assert result.output_shape == (8, 3)


@pytest.mark.parametrize("key", ["logits", "last_hidden_state"])
def test_dict_output_prefers_logits_then_last_hidden_state(key: str) -> None:
    torch.manual_seed(0)
    result = measure_grad_rms(_DictOut(key), torch.randn(8, 4))
    assert result.output_shape == (8, 3)
    assert result.rms["chosen"] > 0
    assert result.rms["other"] == 0.0


def test_select_output_rules() -> None:
    a, b, c = torch.zeros(1), torch.zeros(2), torch.zeros(3)
    assert select_output({"x": None, "y": [a, b]}) is a
    assert select_output({"pooler_output": b, "last_hidden_state": a}) is a
    assert select_output({"last_hidden_state": a, "logits": c}) is c
    assert select_output([None, (b, a)]) is b
    with pytest.raises(TypeError):
        select_output({"x": 1})


class _KeysObject:
    """Stand-in for a Hugging Face ModelOutput that is not a Mapping."""

    def __init__(self, **items: torch.Tensor) -> None:
        self._items = items

    def keys(self):
        return self._items.keys()

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._items[key]


def test_select_output_accepts_objects_with_keys() -> None:
    a, b = torch.zeros(1), torch.zeros(2)
    assert select_output(_KeysObject(hidden_states=a, logits=b)) is b


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = self.first  # the same module registered twice
        self.tied = nn.Linear(4, 4)
        self.tied.weight = self.first.weight  # a parameter shared by two modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tied(self.second(self.first(x)))


def test_shared_modules_appear_once() -> None:
    torch.manual_seed(0)
    model = _Shared()
    result = measure_grad_rms(model, torch.randn(3, 4))
    assert list(result.rms) == ["first", "tied"]
    # Both owners of the tied weight report its total gradient.
    assert result.rms["first"] == pytest.approx(result.rms["tied"])


class _Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1) * scale)


def test_integer_inputs_and_keyword_arguments() -> None:
    torch.manual_seed(0)
    inputs = {"ids": torch.randint(0, 50, (4, 7)), "scale": torch.ones(4, 1)}
    result = measure_grad_rms(_Embedder(), inputs)
    assert result.rms["embed"] > 0
    assert result.rms["head"] > 0


def test_rejects_outputs_without_gradient() -> None:
    model = nn.Linear(3, 3)
    model.requires_grad_(False)
    with pytest.raises(ValueError):
        measure_grad_rms(model, torch.randn(2, 3))
    assert all(not p.requires_grad for p in model.parameters())
