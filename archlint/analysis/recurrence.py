"""Vanilla recurrent layers: how many steps they read and their per-step gradient gain.

The gain is measured by running the recurrent layer alone, with its real weights, on random
inputs over up to 64 steps and comparing the gradient that reaches the first input with the one
at the last (:func:`archlint.ops.recurrent.simulated_step_gain`): that is exact for structured
recurrent weights too (identity/orthogonal init, IRNN), where the mean-field formula below --
kept as the fallback -- assumes random ones.

Mean field (Chen, Pennington & Schoenholz 2018): with ``sigma_hh^2 = H * E[W_hh^2]``,
the hidden pre-activation variance settles at the fixed point
``q = sigma_hh^2 E[phi(z)^2] + sigma_ih^2 q_x + sigma_b^2`` and the squared gradient norm is
multiplied by ``chi = sigma_hh^2 E[phi'(z)^2]`` per step; its RMS gain is ``sqrt(chi)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..graph.ir import Graph, Kind, Node
from ..ops.recurrent import rnn_step_gain, simulated_step_gain


@dataclass
class RecurrentUse:
    node: Node
    nonlinearity: str
    steps: Optional[int]
    step_gain: Optional[float]  # RMS gradient gain per step (sqrt of chi), worst layer
    origin: str


def _mean_sq(t: Optional[torch.Tensor]) -> float:
    return float(t.detach().float().pow(2).mean()) if t is not None else 0.0


def step_gain(nonlinearity: str, w_hh: torch.Tensor, w_ih: torch.Tensor,
              b_ih: Optional[torch.Tensor], b_hh: Optional[torch.Tensor],
              input_second_moment: float = 1.0) -> float:
    """RMS gradient gain per time step of one vanilla RNN layer at its stationary state."""
    sigma_hh2 = w_hh.shape[1] * _mean_sq(w_hh)
    input_var = w_ih.shape[1] * _mean_sq(w_ih) * input_second_moment
    chi = rnn_step_gain(nonlinearity, sigma_hh2, input_var, _mean_sq(b_ih) + _mean_sq(b_hh))
    return math.sqrt(max(chi, 0.0))


def _layer_weights(m: nn.Module, layer: int) -> tuple:
    sfx = "" if isinstance(m, nn.RNNCellBase) else f"_l{layer}"
    return (getattr(m, f"weight_hh{sfx}"), getattr(m, f"weight_ih{sfx}"),
            getattr(m, f"bias_ih{sfx}", None), getattr(m, f"bias_hh{sfx}", None))


def analyse_recurrence(graph: Graph) -> list[RecurrentUse]:
    uses: list[RecurrentUse] = []
    cell_calls: dict[str, list[Node]] = {}
    for node in graph.by_kind(Kind.RECURRENT):
        m = node.module
        if node.op == "rnn" and isinstance(m, nn.RNN):
            steps, origin = _sequence_length(node, m)
            uses.append(RecurrentUse(node, m.nonlinearity, steps,
                                     _gain(m, steps, _mean_field_rnn_gain), origin))
        elif node.op == "rnn_cell" and isinstance(m, nn.RNNCell):
            cell_calls.setdefault(node.module_path or node.name, []).append(node)
    for path, calls in cell_calls.items():
        m = calls[0].module
        assert isinstance(m, nn.RNNCell)
        gain = _gain(m, len(calls), _mean_field_rnn_gain)
        uses.append(RecurrentUse(calls[0], m.nonlinearity, len(calls), gain,
                                 f"{len(calls)} calls of the cell in the traced forward"))
    return uses


def _mean_field_rnn_gain(m: nn.Module) -> float:
    layers = getattr(m, "num_layers", 1)
    gains = [step_gain(m.nonlinearity, *_layer_weights(m, k)) for k in range(layers)]
    return max(gains, key=lambda g: abs(math.log(max(g, 1e-300))))


def _gain(m: nn.Module, steps: Optional[int], fallback) -> Optional[float]:
    if steps is None:
        return None
    try:
        return simulated_step_gain(m, steps)
    except (RuntimeError, ValueError):
        return fallback(m)


def _sequence_length(node: Node, m: nn.RNN) -> tuple[Optional[int], str]:
    shape = node.input_shapes[0] if node.input_shapes else None
    if shape is None:
        return None, "no example input"
    if len(shape) == 3:
        steps = shape[1] if m.batch_first else shape[0]
    elif len(shape) == 2:
        steps = shape[0]
    else:
        return None, f"input shape {list(shape)}"
    return int(steps), f"sequence length from input shape {list(shape)}"
