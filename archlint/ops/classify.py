"""Which op a layer or a call is: the table's rows, looked up from what a tracer sees.

The same lookups serve every tracer: fx's ``call_module``/``call_function``/``call_method``
targets and the execution tracer's module hooks and torch-function calls all end up here, so
``torch.sigmoid(x)``, ``F.sigmoid(x)``, ``x.sigmoid()``, ``x.sigmoid_()`` and ``nn.Sigmoid()`` are
one and the same ``activation:sigmoid`` node.
"""

from __future__ import annotations

import re
from typing import Optional

from torch import nn

from ..graph.ir import Kind
from .linear import MATMUL_LIKE
from .table import OPS, Op, function_op, module_op

#: Module types kept whole even though they may own submodules.
_COMPOSITE_LEAVES = (nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase)

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)

# Custom modules recognised by class name when they are parameter-light leaves (Hugging Face's
# GELUActivation, LlamaRMSNorm, T5LayerNorm, timm's LayerNorm2d ...). Order matters: "gelu"
# before "tanh" (PytorchGELUTanh), "silu"/"swish" before "sigmoid".
_NAMED_ACTIVATIONS = [
    ("gelu", "gelu"),
    ("silu", "silu"),
    ("swish", "silu"),
    ("mish", "mish"),
    ("leakyrelu", "leaky_relu"),
    ("relu6", "relu6"),
    ("relu", "relu"),
    ("softplus", "softplus"),
    ("sigmoid", "sigmoid"),
    ("tanh", "tanh"),
]
_NORM_NAME = re.compile(r"norm", re.IGNORECASE)


def _named_custom(module: nn.Module) -> Optional[Op]:
    """Recognise parameter-light custom activation / norm modules by class name."""
    if any(True for _ in module.children()):
        return None
    params = list(module.parameters(recurse=False))
    if any(p.dim() >= 2 for p in params):
        return None
    cname = type(module).__name__.lower()
    if not params:
        for key, op in _NAMED_ACTIVATIONS:
            if key in cname and "norm" not in cname:
                return OPS[op]
    if _NORM_NAME.search(type(module).__name__):
        return OPS["rms_norm" if "rms" in cname else "layer_norm"]
    return None


def is_leaf_module(module: nn.Module) -> bool:
    """Leaves are torch.nn's own layers; custom blocks are traced through."""
    if isinstance(module, _CONTAINERS):
        return False
    if isinstance(module, _COMPOSITE_LEAVES):
        return True
    if module_op(module) is not None:
        # a subclass that overrides forward (weight standardisation, LoRA...) does something
        # else than the layer it derives from: follow its forward
        return not _overrides_forward(module)
    if _named_custom(module) is not None:
        return True
    mod = type(module).__module__
    builtin = mod.startswith("torch.nn.") or mod.startswith("torch.ao.nn.")
    return builtin and not any(True for _ in module.children())


def _overrides_forward(module: nn.Module) -> bool:
    """Does a subclass of a torch.nn layer, written outside torch, replace its forward?"""
    if getattr(module, "_archlint_opaque", False):
        return False
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch."):
            return type(module).forward is not cls.forward
    return False


def classify_module(module: nn.Module) -> tuple[str, str, dict, Optional[Op]]:
    """(kind, op, attrs, row) for a leaf layer; unknown layers are ``other`` under their class
    name."""
    row = module_op(module)
    if row is not None:
        attrs = row.module_attrs(module) if row.module_attrs is not None else {}
        return row.kind, row.name, attrs, row
    row = _named_custom(module)
    if row is not None:
        return row.kind, row.name, {}, row
    return Kind.OTHER, type(module).__name__, {}, None


def classify_call(name: str, param_operand: bool = False) -> tuple[str, str, Optional[Op]]:
    """(kind, op, row) for a functional call or tensor method, by canonical name.

    ``param_operand`` says whether one operand of a matmul-like call is a parameter, which
    makes ``x @ self.W`` a linear layer rather than an activation-activation product.
    """
    if param_operand and name in MATMUL_LIKE:
        row = OPS["linear"]
        return row.kind, row.name, row
    row = function_op(name)
    if row is None:
        return Kind.OTHER, name, None
    return row.kind, row.name, row


def carries_gradient(name: str) -> bool:
    row = function_op(name)
    return row is None or row.grad


__all__ = ["classify_module", "classify_call", "carries_gradient", "is_leaf_module"]
