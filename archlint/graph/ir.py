"""The one graph representation every tracer produces and every analysis reads.

A :class:`Graph` is a list of :class:`Node` in topological (execution) order. Each node is one
operation on tensors: a leaf module call (``nn.Linear``), a functional call (``torch.sigmoid``,
``x.tanh()``, ``F.linear``), a parameter read, an input or the output. Every node carries

- ``kind``: a coarse class (see :class:`Kind`) that structural rules read;
- ``op``: a canonical operation name (``"linear"``, ``"conv"``, ``"sigmoid"``, ``"batch_norm"``,
  ``"add"``, ``"cat"``...) that the signal estimator dispatches on;
- ``module_path``: the ``named_modules()`` name of the module that performs it (for functional ops
  on parameters: the module that owns the parameter);
- ``site``: where the layer is defined -- the ``self.fc = nn.Linear(...)`` line for a module call,
  the line in ``forward`` for a functional call;
- ``shape``/``dtype`` of its (first) tensor output, when known.

Analyses (:mod:`archlint.analysis`, :mod:`archlint.estimate`) compute their facts once from the
graph; every rule reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..results import Site


class Kind:
    """Coarse node classes. Plain strings so they print and serialise as themselves."""

    INPUT = "input"
    OUTPUT = "output"
    PARAM = "param"  # a parameter or buffer read (fx get_attr)
    CONSTANT = "constant"  # a tensor created inside forward that does not depend on inputs
    LINEAR = "linear"  # Linear, Bilinear, F.linear, x @ W with W a parameter
    CONV = "conv"  # Conv*, ConvTranspose*, F.conv*
    EMBEDDING = "embedding"
    ACTIVATION = "activation"  # elementwise nonlinearity (and softmax, op "softmax")
    NORM = "norm"  # batch/layer/group/instance/RMS norm
    ADD = "add"  # add / sub of tensors (residual joins live here)
    MUL = "mul"  # elementwise product / division
    CONCAT = "concat"  # cat / stack
    POOL = "pool"
    DROPOUT = "dropout"
    ATTENTION = "attention"  # MultiheadAttention, scaled_dot_product_attention
    RECURRENT = "recurrent"  # RNN / LSTM / GRU and their cells
    MATMUL = "matmul"  # product of two activations (attention scores...)
    RESHAPE = "reshape"  # view, flatten, permute, getitem, split, identity, ... (values unchanged)
    REDUCE = "reduce"  # mean / sum over dims
    OTHER = "other"


#: Node kinds that own weights the gradient has to cross (the "weight layers" of depth counts).
WEIGHT_KINDS = frozenset({Kind.LINEAR, Kind.CONV, Kind.EMBEDDING, Kind.ATTENTION, Kind.RECURRENT})

@dataclass(eq=False)
class Node:
    name: str
    kind: str
    op: str
    inputs: list["Node"] = field(default_factory=list)
    #: Which of ``inputs`` carry gradient (indices into ``inputs``). Shape-only arguments
    #: (the ``x`` of ``zeros_like(x)``, masks, indices) are excluded.
    grad_inputs: Optional[list[int]] = None
    users: list["Node"] = field(default_factory=list)
    module_path: Optional[str] = None
    module: Optional[nn.Module] = None
    #: The innermost module whose forward() performs this op ("" for the root model).
    scope: Optional[str] = None
    #: Constant (non-tensor) arguments worth keeping: dim, alpha, negative_slope, p, ...
    attrs: dict[str, Any] = field(default_factory=dict)
    shape: Optional[tuple[int, ...]] = None
    dtype: Optional[torch.dtype] = None
    #: Shapes of the tensor inputs, in the order of ``inputs`` (None where unknown).
    input_shapes: list[Optional[tuple[int, ...]]] = field(default_factory=list)
    site: Optional[Site] = None
    #: For PARAM nodes: the parameter/buffer tensor itself and its qualified name.
    tensor: Optional[torch.Tensor] = None
    target: Optional[str] = None
    #: False for values that are not tensors (sizes, Python numbers); dropped from the graph.
    is_tensor: bool = True
    #: The op's row in archlint's op table (archlint.ops.Op), None for an op it does not know.
    info: Any = field(default=None, repr=False)

    @property
    def location_module(self) -> str:
        """The module path to report: the layer itself, else the block whose forward calls it."""
        if self.module_path is not None:
            return self.module_path
        return self.scope or ""

    @property
    def is_weight_layer(self) -> bool:
        """Owns weights the gradient has to cross (functional attention has none)."""
        if self.kind == Kind.ATTENTION:
            return self.module is not None
        return self.kind in WEIGHT_KINDS

    @property
    def is_saturating(self) -> bool:
        """A sigmoid-like activation: derivative < 1 everywhere, going to zero far out."""
        return self.info is not None and self.info.saturating

    def grad_parents(self) -> list["Node"]:
        """Inputs through which gradient flows back from this node."""
        if self.grad_inputs is None:
            return list(self.inputs)
        return [self.inputs[i] for i in self.grad_inputs if i < len(self.inputs)]

    def weight(self) -> Optional[torch.Tensor]:
        """The main weight tensor of a weight layer, or None."""
        if self.module is not None:
            w = getattr(self.module, "weight", None)
            if isinstance(w, torch.Tensor):
                return w
            if isinstance(self.module, nn.MultiheadAttention):
                return self.module.in_proj_weight if self.module.in_proj_weight is not None else None
        wp = self.attrs.get("weight_param")
        if isinstance(wp, Node) and wp.tensor is not None:
            return wp.tensor
        computed = self.attrs.get("derived_weight")  # computed from parameters in forward
        if isinstance(computed, torch.Tensor):
            return computed.detach()
        for p in self.inputs:
            if p.kind == Kind.PARAM and p.tensor is not None and p.tensor.dim() >= 2:
                return p.tensor
        return None

    def __repr__(self) -> str:
        mod = f" @{self.module_path}" if self.module_path else ""
        return f"<Node {self.name} {self.kind}:{self.op}{mod}>"


@dataclass(eq=False)
class Graph:
    nodes: list[Node]
    model: nn.Module
    #: Which tracer produced the graph: "fx" or "exec".
    tracer: str
    #: Named example inputs (placeholder name -> tensor or None).
    input_nodes: list[Node] = field(default_factory=list)
    #: The node whose value is the probe output y (first tensor / logits / last_hidden_state).
    output: Optional[Node] = None
    #: Why an earlier tracer failed, if any ("fx: ...").
    fallback_reasons: list[str] = field(default_factory=list)
    #: The example input the graph was traced with (an InputSpec), None if there was none.
    input_spec: Any = None

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def by_kind(self, *kinds: str) -> list[Node]:
        return [n for n in self.nodes if n.kind in kinds]

    def weight_layers(self) -> list[Node]:
        return [n for n in self.nodes if n.is_weight_layer]

    def link_users(self) -> None:
        for n in self.nodes:
            n.users = []
        for n in self.nodes:
            for i in n.inputs:
                if n not in i.users:
                    i.users.append(n)
