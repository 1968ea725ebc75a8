"""A candidate fix as a list of actions on the nodes of the analysed graph.

The same actions are carried out on a copy of the graph (to predict the fix's effect with the
estimate, :func:`apply_to_graph`) and on a deep copy of the live model (to measure it,
:mod:`archlint.fixes.live`), so what is predicted and what is measured are the same change:

- ``activation``: the activation node becomes ``op`` (ReLU, GELU);
- ``weight``: the weight layer gets ``tensor`` as its weight (a re-initialisation: the tensor is
  drawn once and used by both);
- ``norm_scale``: the normalisation layer gets ``tensor`` as its scale;
- ``bias``: the layer gets ``tensor`` as its bias;
- ``norm_after``: a new normalisation layer (``make()``) after the node;
- ``skip``: the data input of ``node`` is added to the data input of ``other``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..graph.metainit import Dist, is_meta, meta_like
from torch import nn

from ..graph.ir import Graph, Kind, Node
from ..ops.linear import fan_in
from . import graphedit


@dataclass(eq=False)
class Action:
    kind: str
    node: Node
    other: Optional[Node] = None
    op: Optional[str] = None
    #: The new tensor, or a function drawing it (called once, when first needed).
    tensor: Any = None
    make: Optional[Callable[[], nn.Module]] = None

    def value(self) -> torch.Tensor:
        if callable(self.tensor):
            self.tensor = self.tensor()
        return self.tensor


@dataclass(eq=False)
class Candidate:
    #: Machine-readable kind: replace-activation, insert-normalization, add-skip,
    #: reinitialize, zero-init-residual, norm-scale.
    kind: str
    description: str
    #: The modules it changes (module paths; a functional call is named by its scope).
    modules: list[str]
    parameters: dict[str, Any]
    actions: list[Action]
    #: Preference among candidates that predict the same verdict (lower first).
    rank: int = 0
    #: Source substitutions this fix amounts to, when it is one (archlint.fixes.source).
    source: list[dict[str, Any]] = field(default_factory=list)

    def edit(self) -> dict[str, Any]:
        return {"kind": self.kind, "modules": list(self.modules),
                "parameters": dict(self.parameters)}


def apply_to_graph(candidate: Candidate, graph: Graph) -> Graph:
    """A copy of ``graph`` with the candidate's actions carried out."""
    edited, mapping = graphedit.copy_graph(graph)
    act_modules: dict[int, nn.Module] = {}
    clones: dict[int, nn.Module] = {}
    for a in candidate.actions:
        node = mapping[a.node]
        if a.kind == "activation":
            graphedit.set_activation(edited, node, a.op, act_modules)
        elif a.kind == "weight":
            graphedit.set_weight(edited, node, a.value(), clones=clones)
        elif a.kind == "norm_scale":
            graphedit.set_weight(edited, node, a.value(), clones=clones)
        elif a.kind == "bias":
            graphedit.set_weight(edited, node, a.value(), name="bias", clones=clones)
        elif a.kind == "norm_after":
            graphedit.insert_after(edited, node, a.make(), a.op, "fixnorm")
        elif a.kind == "skip":
            graphedit.add_skip(edited, node, mapping[a.other])
        else:  # pragma: no cover - a candidate generator's bug
            raise ValueError(f"unknown action {a.kind!r}")
    return edited


# --------------------------------------------------------------------------- initialisations

#: scheme -> (what the text says, the torch call the source diff writes)
SCHEMES = {
    "he": ("He", "nn.init.kaiming_normal_({w}, nonlinearity=\"relu\")"),
    "lecun": ("LeCun", "nn.init.kaiming_normal_({w}, nonlinearity=\"linear\")"),
    "orthogonal": ("orthogonal", "nn.init.orthogonal_({w}, gain={gain})"),
}


def _seed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def initializer(node: Node, scheme: str, target_sigma_w2: float = 2.0
                ) -> Optional[Callable[[], torch.Tensor]]:
    """A function drawing a fresh weight for the layer ``node`` under ``scheme`` (he, lecun,
    orthogonal) from a generator seeded by the layer's name -- ``sigma_w^2 = fan_in * Var(W)``
    is 2 (He), 1 (LeCun), or ``target_sigma_w2`` for orthogonal rows (torch's orthogonal_ with
    the matching gain) -- or None where the layer cannot take it."""
    w = node.weight()
    if w is None or w.dim() < 2 or node.attrs.get("derived_weight") is not None:
        return None
    fi = fan_in(node, w)
    if not fi:
        return None
    if scheme == "orthogonal" and node.module is None and fi != math.prod(w.shape[1:]):
        return None  # x @ W: torch's orthogonal_ reads the layout of nn.Linear
    shape, dtype = tuple(w.shape), w.dtype
    seed = _seed(f"{node.module_path}:{scheme}")

    def draw() -> torch.Tensor:
        if is_meta(w):  # a large weight of a model on the meta device: its distribution only
            rows = shape[0]
            cols = max(math.prod(shape) // max(rows, 1), 1)
            var = target_sigma_w2 * min(rows, cols) / max(rows * cols, 1) \
                if scheme == "orthogonal" else (2.0 if scheme == "he" else 1.0) / fi
            return meta_like(w, Dist(0.0, var))
        gen = torch.Generator().manual_seed(seed)
        out = torch.empty(shape, dtype=torch.float32)
        if scheme == "orthogonal":
            nn.init.orthogonal_(out, gain=math.sqrt(target_sigma_w2), generator=gen)
        else:
            out.normal_(0.0, math.sqrt((2.0 if scheme == "he" else 1.0) / fi), generator=gen)
        return out.to(dtype)

    return draw


def init_gain(scheme: str, target_sigma_w2: float) -> float:
    return math.sqrt(target_sigma_w2) if scheme == "orthogonal" else 1.0


# --------------------------------------------------------------------------- normalisation

def norm_for(node: Node, family: str) -> Optional[tuple[str, str, Callable[[], nn.Module]]]:
    """(class name, op, factory) of a normalisation layer of ``family`` (layer, batch, group)
    fitting the output of ``node``, or None when it does not fit."""
    shape = node.shape
    if not shape or len(shape) < 2 or node.dtype is not None and not node.dtype.is_floating_point:
        return None
    if node.kind == Kind.CONV:
        channels = shape[1]
        if family == "batch" and 3 <= len(shape) <= 5:
            cls = {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(shape)]
            return cls.__name__, "batch_norm", lambda: cls(channels)
        if family == "group":
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
            return "GroupNorm", "group_norm", lambda: nn.GroupNorm(groups, channels)
        return None
    width = shape[-1]
    if family == "layer":
        return "LayerNorm", "layer_norm", lambda: nn.LayerNorm(width)
    if family == "batch" and len(shape) == 2:
        return "BatchNorm1d", "batch_norm", lambda: nn.BatchNorm1d(width)
    return None
