"""Recurrent layers: a local numerical simulation instead of a closed form.

SIGNAL.md's known gap: the gated mean-field recursions (LSTM/GRU) assume independent weights per
step, while a real cell reuses W_hh, which slows the decay (0.35 vs 0.28 per step). So a recurrent
layer is estimated by running *that layer alone* on synthetic inputs with the predicted moments,
and back-propagating a synthetic gradient with the predicted per-element scale -- with the real
weights, at a batch of at most 16, on CPU. The rest of the model is never run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..graph.ir import Node

_MAX_BATCH = 16


@dataclass
class RecurrentSim:
    outputs: list[Any]  # Sig per flattened output tensor (out, h[, c])
    weight_mean_sq: dict[str, float] = field(default_factory=dict)
    weight_counts: dict[str, int] = field(default_factory=dict)
    input_g2: list[float] = field(default_factory=list)


def _sig_of(t: torch.Tensor, unit_dim: int = -1):
    from .propagate import Sig

    t = t.detach().float()
    q = float(t.pow(2).mean())
    m = float(t.mean())
    units = t.movedim(unit_dim, -1).reshape(-1, t.shape[unit_dim])
    s = float(units.mean(0).pow(2).mean()) if units.shape[0] > 1 else q
    return Sig(q, m, min(s, q), t.numel())


def _synthetic(shape: Sequence[int], sig, gen: torch.Generator) -> torch.Tensor:
    var = max(sig.q - sig.m * sig.m, 0.0)
    coh = min(max(sig.s - sig.m * sig.m, 0.0), var)
    x = torch.randn(tuple(shape), generator=gen) * math.sqrt(max(var - coh, 0.0))
    if coh > 0:
        x = x + torch.randn(shape[-1], generator=gen) * math.sqrt(coh)
    return x + sig.m


def simulate_recurrent(node: Node, ins: list, go: Optional[dict[int, float]],
                       last_only: bool = False) -> RecurrentSim:
    m = node.module
    if not isinstance(m, (nn.RNNBase, nn.RNNCellBase)) or not node.input_shapes or \
            node.input_shapes[0] is None:
        raise ValueError("recurrent node without module or input shape")
    gen = torch.Generator().manual_seed(1234)
    x_shape = list(node.input_shapes[0])
    batch_dim = None
    if isinstance(m, nn.RNNBase) and len(x_shape) == 3:
        batch_dim = 0 if m.batch_first else 1
    elif isinstance(m, nn.RNNCellBase) and len(x_shape) == 2:
        batch_dim = 0
    scale = 1.0
    if batch_dim is not None and x_shape[batch_dim] > _MAX_BATCH:
        scale = x_shape[batch_dim] / _MAX_BATCH
        x_shape[batch_dim] = _MAX_BATCH
    x = _synthetic(x_shape, ins[0], gen).requires_grad_(True)
    extra: list[torch.Tensor] = []
    for i in range(1, len(node.inputs)):
        shape = node.input_shapes[i] if i < len(node.input_shapes) else None
        if shape is None:
            continue
        shape = list(shape)
        if batch_dim is not None and scale > 1 and len(shape) >= 2:
            bd = 1 if isinstance(m, nn.RNNBase) else 0
            shape[bd] = _MAX_BATCH
        extra.append(_synthetic(shape, ins[i], gen).requires_grad_(True))
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    training = m.training
    try:
        m.train()
        with torch.enable_grad():
            if isinstance(m, nn.LSTMCell) and len(extra) >= 2:
                out = m(x, (extra[0], extra[1]))
            elif isinstance(m, nn.LSTM) and len(extra) >= 2:
                out = m(x, (extra[0], extra[1]))
            elif extra:
                out = m(x, extra[0])
            else:
                out = m(x)
            flat = _flatten(out)
            outputs = [_sig_of(t) for t in flat]
            result = RecurrentSim(outputs=outputs)
            if go is None:
                return result
            grads_out = []
            for k, t in enumerate(flat):
                g2 = go.get(k, 0.0)
                g = torch.randn(t.shape, generator=gen) * math.sqrt(max(g2, 0.0))
                if k == 0 and last_only and isinstance(m, nn.RNNBase) and t.dim() == 3:
                    tdim = 1 if m.batch_first else 0
                    steps = t.shape[tdim]
                    mask = torch.zeros_like(t)
                    mask.select(tdim, steps - 1).fill_(1.0)
                    g = g * mask * math.sqrt(steps)
                grads_out.append(g)
            targets = [x, *extra] + [p for _, p in params]
            grads = torch.autograd.grad(flat, targets, grads_out, allow_unused=True)
    finally:
        m.train(training)
    n_in = 1 + len(extra)
    result.input_g2 = [float(g.pow(2).mean()) if g is not None else 0.0 for g in grads[:n_in]]
    total, count = 0.0, 0
    for (name, p), g in zip(params, grads[n_in:]):
        if p.dim() < 2:
            continue
        count += p.numel()
        if g is not None:
            total += float(g.pow(2).sum()) * scale  # batch sums: squared grads scale with B
    path = node.module_path or ""
    if count:
        result.weight_mean_sq[path] = total / count
        result.weight_counts[path] = count
    return result


def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    out: list[torch.Tensor] = []
    for v in value:
        out.extend(_flatten(v))
    return out
