"""Recurrent layers (RNN / LSTM / GRU and their cells): simulated, not solved.

The gated mean-field recursions assume fresh weights at every step, while a real cell reuses
``W_hh``, which slows the decay measurably (0.35 vs 0.28 per step for a default LSTM). So a
recurrent layer is estimated by running *that layer alone* (:func:`run_alone`) with its real
weights on synthetic inputs carrying the predicted moments, and back-propagating a synthetic
gradient of the predicted scale -- at a batch of at most 16, on the CPU; the rest of the model is
never run. The same simulation gives AL107 the per-step gradient gain of a vanilla RNN
(:func:`simulated_step_gain`); the mean-field fixed point (:func:`rnn_step_gain`) is kept as
its fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..graph.ir import Kind, Node
from ..meanfield.signal import Sig
from .activations import activation_moments
from .base import Backward, Propagation
from .shape import NoRule, same_module_shape
from .table import Op, register

_MAX_BATCH = 16


# ------------------------------------------------------------------------------- the simulation

def _flatten(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    out: list[torch.Tensor] = []
    for v in value:
        out.extend(_flatten(v))
    return out


@dataclass
class Run:
    outputs: list[torch.Tensor]  # flattened: (out, h[, c]) or the last hidden state
    grads: Optional[tuple] = None  # gradients with respect to ``wrt``


def run_alone(m: nn.Module, x: torch.Tensor, extra: Sequence[torch.Tensor], training: bool,
              grads_out: Optional[Callable[[list[torch.Tensor]], list]] = None,
              wrt: Sequence[torch.Tensor] = (), unroll: bool = False) -> Run:
    """Run one recurrent layer by itself (its mode restored afterwards).

    ``extra``: the initial state as the model passes it. ``unroll``: step a cell over the first
    axis of ``x`` from a zero state (the output is the last hidden state). ``grads_out`` maps the
    flattened outputs to ``(output, gradient)`` pairs to back-propagate to ``wrt``.
    """
    was = m.training
    try:
        m.train(training)
        with torch.enable_grad():
            if unroll:
                h = None
                for t in range(x.shape[0]):
                    h = m(x[t], h)
                out: Any = h
            elif isinstance(m, (nn.LSTMCell, nn.LSTM)) and len(extra) >= 2:
                out = m(x, (extra[0], extra[1]))
            elif extra:
                out = m(x, extra[0])
            else:
                out = m(x)
            flat = _flatten(out)
            run = Run(outputs=flat)
            if grads_out is not None:
                pairs = grads_out(flat)
                run.grads = torch.autograd.grad([o for o, _ in pairs], list(wrt),
                                                [g for _, g in pairs], allow_unused=True)
    finally:
        m.train(was)
    return run


def _sig_of(t: torch.Tensor, unit_dim: int = -1) -> Sig:
    t = t.detach().float()
    q = float(t.pow(2).mean())
    m = float(t.mean())
    units = t.movedim(unit_dim, -1).reshape(-1, t.shape[unit_dim])
    s = float(units.mean(0).pow(2).mean()) if units.shape[0] > 1 else q
    return Sig(q, m, min(s, q), t.numel())


def _synthetic(shape: Sequence[int], sig: Sig, gen: torch.Generator) -> torch.Tensor:
    var = max(sig.q - sig.m * sig.m, 0.0)
    coh = min(max(sig.s - sig.m * sig.m, 0.0), var)
    x = torch.randn(tuple(shape), generator=gen) * math.sqrt(max(var - coh, 0.0))
    if coh > 0:
        x = x + torch.randn(shape[-1], generator=gen) * math.sqrt(coh)
    return x + sig.m


@dataclass
class RecurrentSim:
    outputs: list[Sig]  # per flattened output tensor (out, h[, c])
    weight_mean_sq: dict[str, float] = field(default_factory=dict)
    weight_counts: dict[str, int] = field(default_factory=dict)
    input_g2: list[float] = field(default_factory=list)


def simulate_recurrent(node: Node, ins: list[Sig], go: Optional[dict[int, float]],
                       last_only: bool = False) -> RecurrentSim:
    """The layer of ``node`` on synthetic inputs with moments ``ins``; with ``go`` (per-output
    gradient second moments) also its weight gradients and its inputs' gradients."""
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
            shape[1 if isinstance(m, nn.RNNBase) else 0] = _MAX_BATCH
        extra.append(_synthetic(shape, ins[i], gen).requires_grad_(True))
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]

    def grads_out(flat: list[torch.Tensor]) -> list:
        pairs = []
        for k, t in enumerate(flat):
            g = torch.randn(t.shape, generator=gen) * math.sqrt(max(go.get(k, 0.0), 0.0))
            if k == 0 and last_only and isinstance(m, nn.RNNBase) and t.dim() == 3:
                tdim = 1 if m.batch_first else 0
                steps = t.shape[tdim]
                mask = torch.zeros_like(t)
                mask.select(tdim, steps - 1).fill_(1.0)
                g = g * mask * math.sqrt(steps)
            pairs.append((t, g))
        return pairs

    run = run_alone(m, x, extra, training=True, grads_out=None if go is None else grads_out,
                    wrt=[x, *extra] + [p for _, p in params])
    result = RecurrentSim(outputs=[_sig_of(t) for t in run.outputs])
    if go is None:
        return result
    grads = run.grads
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


_PROBE_STEPS = 64
_PROBE_BATCH = 16


def simulated_step_gain(m: nn.Module, steps: int) -> float:
    """RMS gradient gain per step of a vanilla RNN (or a cell stepped in a loop), from the layer
    run alone in eval mode: the loss reads only the last step's output, and the gain is the
    geometric mean ratio of the input gradients at the first and the last step."""
    T = max(2, min(int(steps), _PROBE_STEPS))
    gen = torch.Generator().manual_seed(0)
    cell = not isinstance(m, nn.RNNBase)
    if cell:
        shape = (T, _PROBE_BATCH, m.input_size)
    else:
        shape = (_PROBE_BATCH, T, m.input_size) if m.batch_first else \
            (T, _PROBE_BATCH, m.input_size)
    x = torch.randn(shape, generator=gen).requires_grad_(True)

    def last_step(flat: list[torch.Tensor]) -> list:
        out = flat[0]
        if cell:
            return [(out, torch.randn(out.shape, generator=gen))]
        last = out[:, -1] if m.batch_first else out[-1]
        r = torch.randn(last.shape, generator=gen)
        g = torch.zeros_like(out)
        (g[:, -1] if m.batch_first else g[-1]).copy_(r)
        return [(out, g)]

    (gx,) = run_alone(m, x, (), training=False, grads_out=last_step, wrt=[x],
                      unroll=cell).grads
    if not cell and m.batch_first:
        gx = gx.transpose(0, 1)
    norms = gx.detach().double().pow(2).mean(dim=(1, 2)).sqrt()
    end = float(norms[-1])
    if end <= 0 or not math.isfinite(end):
        raise ValueError("no gradient at the last step")
    nonzero = [t for t in range(T - 1) if float(norms[t]) > 0 and math.isfinite(float(norms[t]))]
    if not nonzero:
        return 0.0
    t0 = nonzero[0]
    return (float(norms[t0]) / end) ** (1.0 / (T - 1 - t0))


# ------------------------------------------------------------------------------- mean field

_RNN_DIVERGED = 1e12


def stationary_rnn_variance(nonlinearity: str, sigma_hh2: float, input_var: float,
                            bias_var: float = 0.0, *, tol: float = 1e-12,
                            max_iter: int = 10_000) -> float:
    """Stationary variance ``q*`` of a vanilla RNN's hidden pre-activation.

    The pre-activation ``z_t = W_hh h_{t-1} + W_ih x_t + b`` of ``h_t = phi(z_t)`` is, in the
    mean-field limit, ``N(0, q_t)`` with ``q_t = sigma_hh2 * E[phi(z_{t-1})^2] + input_var +
    bias_var``; this iterates that map from ``h_0 = 0`` to its fixed point. ``sigma_hh2`` is
    ``H * Var(W_hh)`` (PyTorch's default: 1/3), ``input_var`` what the input contributes
    (``D * Var(W_ih) * E[x^2]``), ``bias_var`` ``Var(b_ih) + Var(b_hh)``. Returns ``math.inf``
    when the recursion diverges (ReLU with ``sigma_hh2 >= 2``).
    """
    drive = float(input_var) + float(bias_var)
    if nonlinearity == "relu":
        return drive / (1.0 - 0.5 * sigma_hh2) if sigma_hh2 < 2.0 else math.inf
    q = drive
    for _ in range(max_iter):
        q_next = sigma_hh2 * activation_moments(nonlinearity, 0.0, q).second_out + drive
        if q_next > _RNN_DIVERGED:
            return math.inf
        if abs(q_next - q) <= tol * max(q_next, 1e-300):
            return q_next
        q = q_next
    return q


def rnn_step_gain(nonlinearity: str, sigma_hh2: float, input_var: float,
                  bias_var: float = 0.0) -> float:
    """Per-step backward gain ``chi = sigma_hh2 * E[phi'(z)^2]`` at the stationary variance:
    ``E||dL/dh_{t-1}||^2 / E||dL/dh_t||^2`` through the recurrent weights (ReLU:
    ``sigma_hh2 / 2`` at any variance). Arguments as in :func:`stationary_rnn_variance`."""
    q = stationary_rnn_variance(nonlinearity, sigma_hh2, input_var, bias_var)
    if not math.isfinite(q):
        q = _RNN_DIVERGED
    return sigma_hh2 * activation_moments(nonlinearity, 0.0, q).grad_gain


# ------------------------------------------------------------------------------- estimate

def _reads_last_step(node: Node) -> bool:
    """Does the recurrent output reach the loss only through its last time step?"""
    from .base import kw

    outs = [u for u in node.users if u.kind == Kind.RESHAPE and u.op == "getitem"]
    seq_users = [u for u in outs if u.attrs.get("index", kw(u, "index", 1, 0)) == 0]
    if not outs:
        return False
    for u in seq_users:
        for v in u.users:
            if v.kind == Kind.RESHAPE and v.op == "getitem":
                shape_in, shape_out = u.shape, v.shape
                if shape_in and shape_out and len(shape_out) < len(shape_in):
                    continue
            return False
    return True


@dataclass
class RecurrentBackward(Backward):
    ins: list[Sig]
    per_item = True

    def apply(self, prop: Propagation, node: Node, go_: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        go = dict(items)
        if not go and prop.g2.get(node, 0.0) > 0:
            go = {0: prop.g2[node]}
        if not any(v > 0 for v in go.values()):
            return
        sim = simulate_recurrent(node, self.ins, go, last_only=_reads_last_step(node))
        for module, ms in sim.weight_mean_sq.items():
            prop.add_weight_grad(module, ms, sim.weight_counts[module], node)
        parents = node.grad_parents()
        for i, gin in enumerate(sim.input_g2):
            if i < len(node.inputs) and node.inputs[i] in parents:
                prop.g2[node.inputs[i]] = prop.g2.get(node.inputs[i], 0.0) + gin
        total_out = sum(go.values())
        if total_out > 0 and sim.input_g2 and sim.input_g2[0] > 0:
            prop.decades[node] = 0.5 * math.log10(sim.input_g2[0] / total_out)


def estimate_recurrent(prop: Propagation, node: Node) -> None:
    ins = [prop.s_in(node, i) for i in range(len(node.inputs))]
    prop.out(node, simulate_recurrent(node, ins, None).outputs, RecurrentBackward(ins))


# ------------------------------------------------------------------------------- shapes

def _rnn_shape(mod: nn.Module, args: Any, kwargs: dict) -> Any:
    x = same_module_shape(mod, args, kwargs)
    if isinstance(mod, nn.RNNCellBase):
        h = x.with_shape(x.shape[:-1] + (mod.hidden_size,))
        return (h, h) if isinstance(mod, nn.LSTMCell) else h
    if not isinstance(mod, nn.RNNBase):
        raise NoRule(type(mod).__name__)
    d = 2 if mod.bidirectional else 1
    hidden = mod.proj_size if getattr(mod, "proj_size", 0) else mod.hidden_size
    out = x.with_shape(x.shape[:-1] + (d * hidden,))
    if x.dim() == 3:
        batch = x.shape[0] if mod.batch_first else x.shape[1]
        h = x.with_shape((d * mod.num_layers, batch, hidden))
        c = x.with_shape((d * mod.num_layers, batch, mod.hidden_size))
    else:
        h = x.with_shape((d * mod.num_layers, hidden))
        c = x.with_shape((d * mod.num_layers, mod.hidden_size))
    return (out, (h, c)) if isinstance(mod, nn.LSTM) else (out, h)


def _nonlinearity(m: nn.Module) -> dict:
    return {"nonlinearity": m.nonlinearity} if isinstance(m, (nn.RNN, nn.RNNCell)) else {}


register(*(Op(name=name, kind=Kind.RECURRENT, modules=(cls,), module_attrs=_nonlinearity,
              module_shape=_rnn_shape, estimate=estimate_recurrent)
           for name, cls in (("rnn", nn.RNN), ("lstm", nn.LSTM), ("gru", nn.GRU),
                             ("rnn_cell", nn.RNNCell), ("lstm_cell", nn.LSTMCell),
                             ("gru_cell", nn.GRUCell))))
