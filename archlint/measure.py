"""Ground-truth probe: the per-layer weight-gradient RMS that archlint's estimator predicts.

The probe (identical for every model, CPU only):

1. put the model in train mode (every submodule's mode is restored afterwards);
2. run it once on the given inputs, under a forked RNG seeded with ``seed`` (dropout and other
   random layers are reproducible; the caller's global RNG state is untouched);
3. take the output tensor ``y`` (see :func:`select_output`);
4. draw ``r ~ N(0, 1)`` with ``y``'s shape from a generator of its own (seeded from ``seed`` but
   on a stream no example input is drawn from: were ``r`` the input itself, a model whose output
   has its input's shape would be probed with a loss correlated with its input) and form
   ``loss = sum(y * r) / sqrt(numel(y))`` -- so ``dL/dy = r / sqrt(numel(y))`` has unit total
   squared norm in expectation;
5. one backward pass, computed with :func:`torch.autograd.grad` so parameters' ``.grad`` fields are
   never touched;
6. for every module (``named_modules()``, shared modules listed once under their first name) that
   directly owns (``recurse=False``) a parameter with ``>= 2`` dimensions: the RMS over all entries
   of those of its own ``>= 2``-dim parameters that require grad.  A parameter that requires grad
   but receives no gradient (unused in this forward) counts as zeros.  Parameters that do not
   require grad are skipped; a module whose ``>= 2``-dim parameters all have
   ``requires_grad=False`` reports ``None``.

Buffers changed by the forward pass (BatchNorm running statistics, ``num_batches_tracked``) are
restored as well, so the model is left exactly as it was.  A parameter shared by several modules
(tied weights) is reported under each of them, with its total gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

from . import probe
from .ops.opaque import weight_owners

__all__ = ["MeasureResult", "measure_dead_fractions", "measure_grad_rms", "select_output"]

Inputs = Union[Tensor, Sequence[Any], Mapping[str, Any]]


@dataclass(frozen=True)
class MeasureResult:
    """Outcome of :func:`measure_grad_rms`.

    Attributes:
        rms: module name -> RMS of the loss gradient over the module's own ``>= 2``-dim parameters
            (``None`` when none of them requires grad), in ``named_modules()`` order. The root
            module, if it owns such a parameter, is listed under ``""``.
        output_shape: shape of the output tensor ``y`` the probe used.
        output_rms: RMS of ``y`` itself (the forward signal at the output).
    """

    rms: dict[str, float | None]
    output_shape: tuple[int, ...]
    output_rms: float


def select_output(output: Any) -> Tensor:
    """The tensor the probe differentiates, from whatever ``forward`` returned: chosen by
    :func:`archlint.probe.select_output`, exactly as the estimate chooses it.

    Raises:
        TypeError: if no tensor can be found.
    """
    found = probe.select_output(output, torch.is_tensor)
    if found is None:
        raise TypeError(f"model output of type {type(output).__name__} contains no tensor")
    return found


def _call(model: nn.Module, inputs: Inputs) -> Any:
    if isinstance(inputs, Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


#: Offset of the probe vector's seed: example inputs are drawn from small seeds.
PROBE_STREAM = 0x5EED_0F_9B0BE


def _probe_loss(y: Tensor, seed: int) -> Tensor:
    """``sum(y * r) / sqrt(numel(y))`` with ``r ~ N(0, 1)`` drawn from a seeded generator."""
    if not y.is_floating_point():
        raise TypeError(f"model output has dtype {y.dtype}; the probe needs a floating tensor")
    if not y.requires_grad:
        raise ValueError("model output does not depend on any parameter that requires grad")
    generator = torch.Generator(device="cpu").manual_seed(PROBE_STREAM + seed)
    r = torch.randn(y.shape, generator=generator, dtype=y.dtype, device="cpu").to(y.device)
    return (y * r).sum() / math.sqrt(max(y.numel(), 1))


def _rms(grads: list[Tensor]) -> float:
    total = sum(float(g.detach().abs().double().pow(2).sum()) for g in grads)
    count = sum(g.numel() for g in grads)
    return math.sqrt(total / count) if count else 0.0


class _ModelState:
    """Snapshot of the training flags and buffers that the probe's forward pass may change."""

    def __init__(self, model: nn.Module) -> None:
        self.modes = [(m, m.training) for m in model.modules()]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def restore(self) -> None:
        for module, training in self.modes:
            module.training = training
        with torch.no_grad():
            for buf, saved in self.buffers:
                buf.copy_(saved)


@contextlib.contextmanager
def plain_checkpoints() -> Iterator[None]:
    """Gradient checkpointing off for the probe: ``torch.utils.checkpoint.checkpoint`` runs its
    function as a plain call. The gradients are the same (checkpointing trades memory for a
    second forward pass), and a fix carried out by intercepting calls (a functional sigmoid
    swapped for a ReLU) is not undone by the recomputation, which runs outside those hooks."""
    import torch.utils.checkpoint as ckpt

    def plain_generator(*args: Any, **kwargs: Any) -> Iterator[None]:
        yield  # before the forward call; finishing after it

    class PlainFunction:
        @staticmethod
        def apply(function: Any, preserve: Any, *args: Any) -> Any:
            return function(*args)

    saved = {name: getattr(ckpt, name, None) for name in
             ("_checkpoint_without_reentrant_generator", "CheckpointFunction")}
    if any(v is None for v in saved.values()):  # another torch: leave checkpointing alone
        yield
        return
    ckpt._checkpoint_without_reentrant_generator = plain_generator  # type: ignore[assignment]
    ckpt.CheckpointFunction = PlainFunction  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(ckpt, name, value)


def measure_grad_rms(model: nn.Module, inputs: Inputs, seed: int = 0) -> MeasureResult:
    """Run the ground-truth probe (module docstring) and return per-module gradient RMS.

    Args:
        model: the network; left unchanged (modes, buffers, ``.grad`` and ``requires_grad``).
        inputs: a tensor (single positional argument), a tuple/list (positional arguments) or a
            mapping (keyword arguments). Integer tensors (token ids) are passed through as is.
        seed: seeds both the forward pass's RNG (dropout) and the probe vector ``r``.
    """
    owners = list(weight_owners(model))
    trainable = list({id(p): p for _, _, ps in owners for p in ps if p.requires_grad}.values())

    state = _ModelState(model)
    try:
        model.train()
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), plain_checkpoints():
            torch.manual_seed(seed)
            y = select_output(_call(model, inputs))
            loss = _probe_loss(y, seed)
            grads = torch.autograd.grad(loss, trainable, allow_unused=True) if trainable else ()
    finally:
        state.restore()

    grad_of = {
        id(p): (g if g is not None else torch.zeros_like(p)) for p, g in zip(trainable, grads)
    }
    rms: dict[str, float | None] = {}
    for name, _, params in owners:
        own = [grad_of[id(p)] for p in params if p.requires_grad]
        rms[name] = _rms(own) if own else None
    y_rms = math.sqrt(float(y.detach().double().pow(2).mean())) if y.numel() else 0.0
    return MeasureResult(rms=rms, output_shape=tuple(y.shape), output_rms=y_rms)


#: A unit positive for fewer than this share of its values is dead: P(z > 3) for a Gaussian
#: pre-activation whose mean is 3 spreads below zero (archlint.rules.dead_units.Z_DEAD).
DEAD_SHARE = 0.00135


def measure_dead_fractions(model: nn.Module, inputs: Inputs, modules: Sequence[str],
                           seed: int = 0) -> dict[str, tuple[float, int]]:
    """The fraction of each named module's output units that are (nearly) never positive on
    ``inputs`` (the probe's train-mode forward pass): what a ReLU after it leaves dead.

    A unit is a feature of a ``Linear``/``LayerNorm`` output (its last dimension) or a channel
    (dimension 1) otherwise; it is dead when it is positive for fewer than ``DEAD_SHARE`` of
    its values (samples times positions) -- the share the prediction calls dead. Returns module
    name -> (dead fraction, values per unit); modules not found or not called are left out.
    The model is left as it was (modes, buffers)."""
    wanted = dict(model.named_modules())
    seen: dict[str, tuple[float, int]] = {}
    hooks = []

    def hook_for(name: str, mod: nn.Module):
        last = isinstance(mod, (nn.Linear, nn.LayerNorm, nn.Bilinear))

        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if not isinstance(out, Tensor) or out.dim() == 0 or not out.is_floating_point():
                return
            t = out.detach()
            axis = t.dim() - 1 if last or t.dim() == 1 else 1
            active = (t > 0).movedim(axis, -1).reshape(-1, t.shape[axis]).double()
            dead = active.mean(0) < DEAD_SHARE
            seen[name] = (float(dead.double().mean()), int(active.shape[0]))
        return hook

    for name in modules:
        mod = wanted.get(name)
        if mod is not None:
            hooks.append(mod.register_forward_hook(hook_for(name, mod)))
    state = _ModelState(model)
    try:
        model.train()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            _call(model, inputs)
    finally:
        for h in hooks:
            h.remove()
        state.restore()
    return seen
