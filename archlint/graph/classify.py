"""Classify leaf modules and functional calls into (kind, op, attrs).

The same tables serve every tracer: fx's ``call_module``/``call_function``/``call_method`` targets
and the execution tracer's module hooks and torch-function calls all end up here, so
``torch.sigmoid(x)``, ``F.sigmoid(x)``, ``x.sigmoid()``, ``x.sigmoid_()`` and ``nn.Sigmoid()`` are
one and the same ``activation:sigmoid`` node.
"""

from __future__ import annotations

import operator
import re
from typing import Any, Optional

from torch import nn

from .ir import Kind

# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

_ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "prelu",
    nn.RReLU: "rrelu",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.Hardtanh: "hardtanh",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Hardswish: "hardswish",
    nn.Softplus: "softplus",
    nn.Softsign: "softsign",
    nn.Tanhshrink: "tanhshrink",
    nn.Softshrink: "softshrink",
    nn.Hardshrink: "hardshrink",
    nn.LogSigmoid: "logsigmoid",
    nn.Threshold: "threshold",
    nn.GLU: "glu",
    nn.Softmax: "softmax",
    nn.Softmin: "softmin",
    nn.LogSoftmax: "log_softmax",
    nn.Softmax2d: "softmax",
}

_NORM_MODULES: dict[type, str] = {
    nn.modules.batchnorm._BatchNorm: "batch_norm",
    nn.LayerNorm: "layer_norm",
    nn.GroupNorm: "group_norm",
    nn.modules.instancenorm._InstanceNorm: "instance_norm",
}
if hasattr(nn, "RMSNorm"):
    _NORM_MODULES[nn.RMSNorm] = "rms_norm"

_POOL_MODULES: dict[type, str] = {
    nn.modules.pooling._MaxPoolNd: "max_pool",
    nn.modules.pooling._AvgPoolNd: "avg_pool",
    nn.modules.pooling._AdaptiveAvgPoolNd: "adaptive_avg_pool",
    nn.modules.pooling._AdaptiveMaxPoolNd: "adaptive_max_pool",
    nn.modules.pooling._LPPoolNd: "lp_pool",
    nn.FractionalMaxPool2d: "max_pool",
    nn.FractionalMaxPool3d: "max_pool",
}

_RECURRENT_MODULES: dict[type, str] = {
    nn.RNN: "rnn",
    nn.LSTM: "lstm",
    nn.GRU: "gru",
    nn.RNNCell: "rnn_cell",
    nn.LSTMCell: "lstm_cell",
    nn.GRUCell: "gru_cell",
}

_OTHER_LEAF_MODULES: dict[type, tuple[str, str]] = {
    nn.Linear: (Kind.LINEAR, "linear"),
    nn.Bilinear: (Kind.LINEAR, "bilinear"),
    nn.modules.conv._ConvTransposeNd: (Kind.CONV, "conv_transpose"),
    nn.modules.conv._ConvNd: (Kind.CONV, "conv"),
    nn.Embedding: (Kind.EMBEDDING, "embedding"),
    nn.EmbeddingBag: (Kind.EMBEDDING, "embedding_bag"),
    nn.MultiheadAttention: (Kind.ATTENTION, "multihead_attention"),
    nn.modules.dropout._DropoutNd: (Kind.DROPOUT, "dropout"),
    nn.Flatten: (Kind.RESHAPE, "flatten"),
    nn.Unflatten: (Kind.RESHAPE, "unflatten"),
    nn.Identity: (Kind.RESHAPE, "identity"),
    nn.PixelShuffle: (Kind.RESHAPE, "pixel_shuffle"),
    nn.PixelUnshuffle: (Kind.RESHAPE, "pixel_unshuffle"),
    nn.Upsample: (Kind.OTHER, "upsample"),
    nn.modules.padding._ConstantPadNd: (Kind.OTHER, "pad"),
    nn.modules.padding._ReflectionPadNd: (Kind.OTHER, "pad"),
    nn.modules.padding._ReplicationPadNd: (Kind.OTHER, "pad"),
    nn.LocalResponseNorm: (Kind.OTHER, "local_response_norm"),
    nn.ChannelShuffle: (Kind.RESHAPE, "channel_shuffle"),
}
if hasattr(nn.modules.padding, "_CircularPadNd"):
    _OTHER_LEAF_MODULES[nn.modules.padding._CircularPadNd] = (Kind.OTHER, "pad")

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


def _lookup(table: dict[type, Any], module: nn.Module) -> Any:
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    return None


def _named_custom(module: nn.Module) -> Optional[tuple[str, str]]:
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
                return Kind.ACTIVATION, op
    if _NORM_NAME.search(type(module).__name__):
        return Kind.NORM, "rms_norm" if "rms" in cname else "layer_norm"
    return None


def is_leaf_module(module: nn.Module) -> bool:
    """Leaves are torch.nn's own layers; custom blocks are traced through."""
    if isinstance(module, _CONTAINERS):
        return False
    if isinstance(module, _COMPOSITE_LEAVES):
        return True
    if classify_known_module(module) is not None:
        return True
    if _named_custom(module) is not None:
        return True
    mod = type(module).__module__
    builtin = mod.startswith("torch.nn.") or mod.startswith("torch.ao.nn.")
    return builtin and not any(True for _ in module.children())


def classify_known_module(module: nn.Module) -> Optional[tuple[str, str, dict]]:
    """(kind, op, attrs) for a torch.nn layer type (or a subclass of one), else None."""
    op = _lookup(_ACTIVATION_MODULES, module)
    if op is not None:
        return Kind.ACTIVATION, op, _activation_attrs(module, op)
    op = _lookup(_NORM_MODULES, module)
    if op is not None:
        return Kind.NORM, op, {}
    op = _lookup(_POOL_MODULES, module)
    if op is not None:
        return Kind.POOL, op, _pool_attrs(module)
    op = _lookup(_RECURRENT_MODULES, module)
    if op is not None:
        attrs = {}
        if isinstance(module, (nn.RNN, nn.RNNCell)):
            attrs["nonlinearity"] = module.nonlinearity
        return Kind.RECURRENT, op, attrs
    found = _lookup(_OTHER_LEAF_MODULES, module)
    if found is not None:
        kind, op = found
        attrs = {}
        if kind == Kind.DROPOUT:
            attrs["p"] = float(getattr(module, "p", 0.0))
        return kind, op, attrs
    return None


def classify_module(module: nn.Module) -> tuple[str, str, dict]:
    known = classify_known_module(module)
    if known is not None:
        return known
    named = _named_custom(module)
    if named is not None:
        return named[0], named[1], {}
    return Kind.OTHER, type(module).__name__, {}


def _activation_attrs(module: nn.Module, op: str) -> dict:
    attrs: dict[str, Any] = {}
    for name in ("negative_slope", "alpha", "lambd", "min_val", "max_val", "beta", "threshold",
                 "value", "lower", "upper", "approximate", "dim"):
        if hasattr(module, name):
            v = getattr(module, name)
            if isinstance(v, (int, float, str)) or v is None:
                attrs[name] = v
    if op == "prelu":
        attrs["weight"] = float(module.weight.detach().float().mean())
    return attrs


def _pool_attrs(module: nn.Module) -> dict:
    attrs: dict[str, Any] = {}
    for name in ("kernel_size", "stride", "output_size", "padding"):
        if hasattr(module, name):
            attrs[name] = getattr(module, name)
    return attrs


# --------------------------------------------------------------------------------------------
# Functions and methods
# --------------------------------------------------------------------------------------------

_FUNC_ACTIVATIONS = {
    "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu",
    "mish", "sigmoid", "tanh", "hardtanh", "hardsigmoid", "hardswish", "softplus", "softsign",
    "tanhshrink", "softshrink", "hardshrink", "logsigmoid", "threshold", "glu", "softmax",
    "softmin", "log_softmax", "swish",
}
_ALIASES = {
    "log_sigmoid": "logsigmoid", "swish": "silu", "expit": "sigmoid", "hard_sigmoid": "hardsigmoid",
    "hard_swish": "hardswish", "hard_tanh": "hardtanh", "clip": "clamp",
    "sub": "add", "rsub": "add", "subtract": "add", "truediv": "div", "divide": "div",
    "multiply": "mul", "concat": "cat", "concatenate": "cat",
}
_FUNC_NORMS = {"batch_norm": "batch_norm", "layer_norm": "layer_norm", "group_norm": "group_norm",
               "instance_norm": "instance_norm", "rms_norm": "rms_norm", "normalize": "normalize"}
_FUNC_POOLS = {
    "max_pool1d": "max_pool", "max_pool2d": "max_pool", "max_pool3d": "max_pool",
    "avg_pool1d": "avg_pool", "avg_pool2d": "avg_pool", "avg_pool3d": "avg_pool",
    "adaptive_avg_pool1d": "adaptive_avg_pool", "adaptive_avg_pool2d": "adaptive_avg_pool",
    "adaptive_avg_pool3d": "adaptive_avg_pool", "adaptive_max_pool1d": "adaptive_max_pool",
    "adaptive_max_pool2d": "adaptive_max_pool", "adaptive_max_pool3d": "adaptive_max_pool",
    "max_pool1d_with_indices": "max_pool", "max_pool2d_with_indices": "max_pool",
    "lp_pool1d": "lp_pool", "lp_pool2d": "lp_pool",
}
_FUNC_DROPOUT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                 "feature_alpha_dropout", "stochastic_depth", "drop_path"}
_RESHAPE = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "contiguous",
    "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "tile", "getitem", "split", "chunk",
    "unbind", "narrow", "select", "index_select", "flip", "roll", "movedim", "moveaxis",
    "swapaxes", "view_as", "reshape_as", "to", "type", "type_as", "float", "half", "double",
    "bfloat16", "clone", "identity", "broadcast_to", "gather", "take_along_dim", "masked_select",
    "pixel_shuffle", "pixel_unshuffle", "cpu", "cuda", "channel_shuffle", "unfold", "fold",
    "as_strided", "diagonal", "tril", "triu", "masked_fill", "where", "pad", "interpolate",
    "upsample", "upsample_nearest", "upsample_bilinear", "contiguous_format",
}
_ADD = {"add", "sub"}
_MUL = {"mul", "div", "floordiv"}
_CONCAT = {"cat", "stack", "hstack", "vstack", "dstack", "column_stack"}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "logsumexp", "prod", "nanmean", "norm",
           "std", "var", "cumsum"}
# Outputs that carry no gradient to any input (shape queries, comparisons, factory *_like).
_NO_GRAD = {
    "size", "dim", "numel", "eq", "ne", "lt", "le", "gt", "ge", "argmax", "argmin", "argsort",
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "detach",
    "isnan", "isinf", "isfinite", "sign", "floor", "ceil", "round", "trunc", "long", "int",
    "bool", "logical_not", "logical_and", "logical_or", "bitwise_not", "bitwise_and",
    "bitwise_or", "arange", "zeros", "ones", "empty", "full", "rand", "randn", "randint",
    "tensor", "as_tensor", "triu_indices", "tril_indices", "nonzero", "topk_indices",
    "is_floating_point", "is_contiguous", "get_device", "item", "tolist", "stride", "all", "any",
    "lshift", "rshift", "and_", "or_", "not_", "invert", "mod", "remainder",
}


def canonical_name(target: Any) -> str:
    """A lowercase op name for an fx target / torch function / method name."""
    if isinstance(target, str):
        name = target
    elif target is operator.getitem:
        return "getitem"
    else:
        name = getattr(target, "__name__", None) or str(target)
    name = name.strip("_")
    if name.startswith("i") and name[1:] in {"add", "sub", "mul", "truediv", "floordiv", "matmul",
                                              "and", "or"}:
        name = name[1:]  # __iadd__ -> add
    if name.endswith("_") and len(name) > 1:
        name = name[:-1]  # relu_ -> relu
    name = name.lower()
    if name.startswith("r") and name[1:] in {"add", "mul", "truediv", "matmul", "sub"}:
        name = "rsub" if name == "rsub" else name[1:]  # __radd__ -> add
    return _ALIASES.get(name, name)


def classify_call(name: str, param_operand: bool = False) -> tuple[str, str]:
    """(kind, op) for a functional call or tensor method, by canonical name.

    ``param_operand`` says whether one operand of a matmul-like call is a parameter, which
    makes ``x @ self.W`` a linear layer rather than an activation-activation product.
    """
    if name in _FUNC_ACTIVATIONS:
        return Kind.ACTIVATION, _ALIASES.get(name, name)
    if name in ("linear", "addmm", "bilinear"):
        return Kind.LINEAR, "linear"
    if name in ("matmul", "mm", "bmm", "einsum", "baddbmm", "addbmm", "tensordot", "inner"):
        return (Kind.LINEAR, "linear") if param_operand else (Kind.MATMUL, name)
    if name in ("conv1d", "conv2d", "conv3d", "convolution"):
        return Kind.CONV, "conv"
    if name.startswith("conv_transpose"):
        return Kind.CONV, "conv_transpose"
    if name in ("embedding", "embedding_bag"):
        return Kind.EMBEDDING, name
    if name in _FUNC_NORMS:
        return Kind.NORM, _FUNC_NORMS[name]
    if name in _FUNC_POOLS:
        return Kind.POOL, _FUNC_POOLS[name]
    if name in _FUNC_DROPOUT:
        return Kind.DROPOUT, "dropout"
    if name in ("scaled_dot_product_attention", "multi_head_attention_forward"):
        return Kind.ATTENTION, name
    if name in _ADD:
        return Kind.ADD, name
    if name in _MUL:
        return Kind.MUL, name
    if name in _CONCAT:
        return Kind.CONCAT, name
    if name in _REDUCE:
        return Kind.REDUCE, name
    if name in _RESHAPE:
        return Kind.RESHAPE, name
    if name in ("clamp", "clamp_min", "clamp_max", "abs", "exp", "log", "sqrt", "rsqrt", "pow",
                "neg", "reciprocal", "erf", "sin", "cos", "square", "log1p", "expm1", "softmax"):
        return Kind.OTHER, name
    return Kind.OTHER, name


def carries_gradient(name: str) -> bool:
    return name not in _NO_GRAD
