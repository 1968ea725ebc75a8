"""Ops that move values without changing them: views, permutations, indexing, splits, dtype
casts, padding, upsampling; and dropout, which only rescales them.

Their estimate passes the statistics through; backward, each input element gets the sum of the
gradients of its copies (``numel(out) / numel(in)`` for a broadcast or upsampling, 1 for padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..graph.ir import Kind, Node
from ..meanfield.signal import Sig
from ..probe import record_fields
from .base import Backward, Gains, Propagation, kw, passthrough
from .positions import (Selection, pad_selection, selection_of_index, start_selection,
                        token_read)
from .joins import binary_shape
from .shape import (NoRule, TensorShape, norm_dim, reshape_to, same_module_shape, same_shape,
                    shape_arg)
from .table import Op, family, register


# ------------------------------------------------------------------------------- estimate

@dataclass
class TupleItem(Backward):
    """One item of a tuple-valued node (an RNN's (output, h), MHA's (output, weights))."""

    index: int

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        if go <= 0.0:
            return
        src = node.inputs[0]
        bucket = prop.items.setdefault(src, {})
        bucket[self.index] = bucket.get(self.index, 0.0) + go
        ratio = prop.numel(node) / max(prop.numel(src), 1)
        prop.g2[src] = prop.g2.get(src, 0.0) + go * ratio
        prop.gs[src] = prop.gs.get(src, 0.0) + gso * ratio
        prop.gsc[src] = prop.gsc.get(src, 0.0) + gsco * ratio


def _packed(node: Node) -> list:
    """The items of a named tuple or dataclass built in forward, in field order (Nodes or
    constants)."""
    args = list(node.attrs.get("args") or ())
    kwargs = node.attrs.get("kwargs") or {}
    fields = record_fields(node.attrs.get("call")) or ()
    return args + [kwargs.get(f) for f in fields[len(args):]]


@dataclass
class PackBackward(Backward):
    """Each item's gradient goes to the tensor it was built from."""

    slots: list  # item index -> input index, or None
    per_item = True

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        total = sum(items.values())
        for k, g in items.items():
            idx = self.slots[k] if 0 <= k < len(self.slots) else None
            if idx is None or g <= 0.0:
                continue
            src, share = node.inputs[idx], g / total
            prop.g2[src] = prop.g2.get(src, 0.0) + g
            prop.gs[src] = prop.gs.get(src, 0.0) + min(prop.gs.get(node, 0.0) * share, g)
            prop.gsc[src] = prop.gsc.get(src, 0.0) + prop.gsc.get(node, 0.0) * share


def estimate_pack(prop: Propagation, node: Node) -> None:
    """``Outputs(logits, aux)``: a record of its arguments, each item what it was built from."""
    slots, sigs = [], []
    for item in _packed(node):
        idx = next((i for i, n in enumerate(node.inputs) if n is item), None)
        slots.append(idx)
        sigs.append(prop.s_in(node, idx) if idx is not None else Sig(0.0, 0.0, 0.0, 1))
    prop.out(node, sigs, PackBackward(slots))


def estimate_reshape(prop: Propagation, node: Node) -> None:
    src = node.inputs[0] if node.inputs else None
    v = prop.value(src) if src is not None else None
    if node.op in ("getitem", "getattr") and isinstance(v, list):
        idx = node.attrs.get("index")
        if idx is None:
            args = node.attrs.get("args") or ()
            idx = args[1] if len(args) > 1 and isinstance(args[1], int) else 0
            fields = record_fields(src.attrs.get("call")) or ()
            if len(args) > 1 and isinstance(args[1], str) and args[1] in fields:
                idx = fields.index(args[1])  # a record's field
        item = v[idx] if isinstance(idx, int) and -len(v) <= idx < len(v) else v[0]
        prop.out(node, Sig(item.q, item.m, item.s, prop.numel(node)).with_w(item.w_),
                 TupleItem(idx if isinstance(idx, int) else 0))
        return
    passthrough(prop, node)
    sel = selection_of_index(node) if node.op == "getitem" else None
    if sel is not None:
        prop.backward_of[node] = SelectPositions(prop.backward_of[node].entries, sel=sel)
        own = token_read(prop, node, sel)
        if own is not None:  # the class token read alone: its own statistics
            prop.sig[node] = Sig(own.q, own.m, own.s, prop.numel(node)).with_w(own.w_)


@dataclass
class SelectPositions(Gains):
    """``x[:, 0]``: the gradient reaches only the selected positions of the sequence."""

    sel: Optional[Selection] = None

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        src = node.inputs[0] if node.inputs else None
        before = prop.g2.get(src, 0.0) if src is not None else 0.0
        super().apply(prop, node, go, gso, gsco, items)
        if src is not None and self.sel is not None:
            start_selection(prop, src, self.sel, prop.g2.get(src, 0.0) - before)


def estimate_where(prop: Propagation, node: Node) -> None:
    """``torch.where(cond, a, b)``: a mask's fill value (a constant, ``finfo.min``) carries
    nothing; the gradient goes to the operands that carry signal, each for its share."""
    live = [k for k, i in enumerate(node.inputs)
            if i in node.grad_parents() and prop.carries_signal(i)]
    if not live:
        passthrough(prop, node)
        return
    n = prop.numel(node)
    sigs = [prop.s_in(node, k) for k in live]
    share = 1.0 / len(live)
    out = Sig(sum(s.q for s in sigs) * share, sum(s.m for s in sigs) * share,
              sum(s.s for s in sigs) * share, n)
    prop.out(node, out, Gains([(k, share * n / max(s.numel, 1)) for k, s in zip(live, sigs)]))


def estimate_pad(prop: Propagation, node: Node) -> None:
    """Each input element lands in exactly one output element: its gradient passes as is."""
    x = prop.s_in(node)
    prop.out(node, Sig(x.q, x.m, x.s, prop.numel(node)).with_w(x.w_), PadBackward([(0, 1.0)]))


class PadBackward(Gains):
    """Padding added where the gradient is concentrated (a class token's row padded with zeros)
    passes that part to nothing."""

    def apply(self, prop: Propagation, node: Node, go: float, gso: float, gsco: float,
              items: dict[int, float]) -> None:
        split = pad_selection(prop, node, go) if go > 0 else None
        if split is None:
            super().apply(prop, node, go, gso, gsco, items)
            return
        parent = node.inputs[0]
        if parent in set(node.grad_parents()):
            prop.g2[parent] = prop.g2.get(parent, 0.0) + split[0]
            prop.gs[parent] = prop.gs.get(parent, 0.0) + gso
            prop.gsc[parent] = prop.gsc.get(parent, 0.0) + gsco


def estimate_dropout(prop: Propagation, node: Node) -> None:
    p = float(node.attrs.get("p", kw(node, "p", 1, 0.5)))
    training = kw(node, "training", 2, True)
    if node.module is not None:
        training = True  # the probe runs in train mode
    x = prop.s_in(node)
    if not training or p <= 0:
        prop.out(node, Sig(x.q, x.m, x.s, prop.numel(node)).with_w(x.w_), Gains([(0, 1.0)]))
        return
    keep = max(1 - p, 1e-6)
    prop.out(node, Sig(x.q / keep, x.m, x.s, prop.numel(node)).with_w(x.w_),
             Gains([(0, 1.0 / keep)]))


# ------------------------------------------------------------------------------- shapes

def _tensor_rule(rule):
    """A shape rule that needs a tensor first argument."""
    def checked(name: str, args: Any, kwargs: dict) -> Any:
        x = args[0] if args else None
        if not isinstance(x, TensorShape):
            raise NoRule(name)
        return rule(name, x, args, kwargs)
    return checked


_DTYPE_METHODS = {"float": torch.float32, "double": torch.float64, "half": torch.float16,
                  "bfloat16": torch.bfloat16, "long": torch.int64, "int": torch.int32,
                  "bool": torch.bool}


@_tensor_rule
def dtype_shape(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    return TensorShape(x.shape, _DTYPE_METHODS[name])


@_tensor_rule
def _to(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    dtype = next((a for a in list(args[1:]) + list(kwargs.values())
                  if isinstance(a, torch.dtype)), None)
    other = next((a for a in args[1:] if isinstance(a, TensorShape)), None)
    return TensorShape(x.shape, dtype or (other.dtype if other else x.dtype))


@_tensor_rule
def _type_as(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    return TensorShape(x.shape, args[1].dtype)


@_tensor_rule
def _view(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    if len(args) == 2 and isinstance(args[1], torch.dtype):
        raise NoRule("view as dtype")
    return reshape_to(x, shape_arg(args[1:] or kwargs.get("shape", ())))


@_tensor_rule
def _view_as(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    return x.with_shape(args[1].shape)


def _flat(x: TensorShape, s: int, e: int) -> TensorShape:
    return x.with_shape(x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])


@_tensor_rule
def _flatten(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    n = x.dim()
    s = norm_dim(args[1] if len(args) > 1 else kwargs.get("start_dim", 0), max(n, 1))
    e = norm_dim(args[2] if len(args) > 2 else kwargs.get("end_dim", -1), max(n, 1))
    if n == 0:
        return x.with_shape((1,))
    return _flat(x, s, e)


def _flatten_module(mod: nn.Flatten, args: Any, kwargs: dict) -> TensorShape:
    x = same_module_shape(mod, args, kwargs)
    n = x.dim()
    return _flat(x, norm_dim(mod.start_dim, n), norm_dim(mod.end_dim, n))


@_tensor_rule
def _unflatten(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    d = norm_dim(args[1], x.dim())
    sizes = list(args[2])
    if -1 in sizes:
        known = math.prod(v for v in sizes if v != -1)
        sizes = [x.shape[d] // known if v == -1 else v for v in sizes]
    return x.with_shape(x.shape[:d] + tuple(sizes) + x.shape[d + 1:])


@_tensor_rule
def _permute(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    order = shape_arg(args[1:] or kwargs.get("dims", ()))
    return x.with_shape(tuple(x.shape[norm_dim(i, x.dim())] for i in order))


@_tensor_rule
def _transpose(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    a, b = norm_dim(args[1], x.dim()), norm_dim(args[2], x.dim())
    s = list(x.shape)
    s[a], s[b] = s[b], s[a]
    return x.with_shape(s)


@_tensor_rule
def _t(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    return x.with_shape(x.shape[::-1])


@_tensor_rule
def _movedim(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    s = list(x.shape)
    src, dst = norm_dim(args[1], x.dim()), norm_dim(args[2], x.dim())
    v = s.pop(src)
    s.insert(dst, v)
    return x.with_shape(s)


@_tensor_rule
def _unsqueeze(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    d = norm_dim(args[1] if len(args) > 1 else kwargs["dim"], x.dim() + 1)
    return x.with_shape(x.shape[:d] + (1,) + x.shape[d:])


@_tensor_rule
def _squeeze(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if dim is None:
        return x.with_shape(tuple(s for s in x.shape if s != 1))
    dims = {norm_dim(d, x.dim()) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    return x.with_shape(tuple(s for i, s in enumerate(x.shape) if not (i in dims and s == 1)))


@_tensor_rule
def _expand(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    dims = shape_arg(args[1:] or kwargs.get("size", ()))
    pad = len(dims) - x.dim()
    return x.with_shape(tuple(x.shape[i - pad] if d == -1 else d for i, d in enumerate(dims)))


@_tensor_rule
def _repeat(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    reps = shape_arg(args[1:])
    shape = (1,) * (len(reps) - x.dim()) + x.shape
    return x.with_shape(tuple(s * r for s, r in zip(shape, reps)))


@_tensor_rule
def _repeat_interleave(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    reps = args[1] if len(args) > 1 else kwargs.get("repeats")
    dim = args[2] if len(args) > 2 else kwargs.get("dim")
    if isinstance(reps, bool) or not isinstance(reps, int):
        raise NoRule("repeats given as a tensor")
    if dim is None:
        return x.with_shape((math.prod(x.shape) * reps,))
    d = norm_dim(dim, x.dim())
    return x.with_shape(x.shape[:d] + (x.shape[d] * reps,) + x.shape[d + 1:])


@_tensor_rule
def _split(name: str, x: TensorShape, args: Any, kwargs: dict) -> tuple:
    n = x.dim()
    if name == "unbind":
        d = norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), n)
        return tuple(x.with_shape(x.shape[:d] + x.shape[d + 1:]) for _ in range(x.shape[d]))
    d = norm_dim(args[2] if len(args) > 2 else kwargs.get("dim", 0), n)
    size = x.shape[d]
    arg = args[1] if len(args) > 1 else kwargs.get("split_size_or_sections",
                                                    kwargs.get("chunks", kwargs.get("split_size")))
    if name == "chunk":
        step = math.ceil(size / int(arg))
        sizes = [min(step, size - i) for i in range(0, size, step)]
    elif isinstance(arg, (list, tuple)):
        sizes = [int(a) for a in arg]
    else:
        if name == "tensor_split":
            raise NoRule("tensor_split")
        sizes = [min(int(arg), size - i) for i in range(0, size, int(arg))]
    return tuple(x.with_shape(x.shape[:d] + (s,) + x.shape[d + 1:]) for s in sizes)


@_tensor_rule
def _getitem(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    idx = args[1]
    if not isinstance(idx, tuple):
        idx = (idx,)
    if any(isinstance(i, (TensorShape, list)) for i in idx):
        raise NoRule("advanced indexing")
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    out: list[int] = []
    dim = 0
    for i in idx:
        if i is Ellipsis:
            keep = x.dim() - n_real
            out.extend(x.shape[dim:dim + keep])
            dim += keep
        elif i is None:
            out.append(1)
        elif isinstance(i, int):
            dim += 1
        elif isinstance(i, slice):
            out.append(len(range(*i.indices(x.shape[dim]))))
            dim += 1
        else:
            raise NoRule("index type")
    out.extend(x.shape[dim:])
    return x.with_shape(out)


@_tensor_rule
def _pad(name: str, x: TensorShape, args: Any, kwargs: dict) -> TensorShape:
    pads = list(args[1] if len(args) > 1 else kwargs["pad"])
    s = list(x.shape)
    for i in range(len(pads) // 2):
        s[x.dim() - 1 - i] += pads[2 * i] + pads[2 * i + 1]
    return x.with_shape(s)


@_tensor_rule
def size_shape(name: str, x: TensorShape, args: Any, kwargs: dict) -> Any:
    """Shape queries evaluate to plain values: ``x.size()``, ``x.shape[-1]``, ``x.dim()``."""
    if name == "dim":
        return x.dim()
    if name == "numel":
        return math.prod(x.shape)
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    return torch.Size(x.shape) if dim is None else x.shape[norm_dim(dim, x.dim())]


# ------------------------------------------------------------------------------- the rows

def _moves(names: tuple, shape=None, **extra: Any) -> list[Op]:
    return family(Kind.RESHAPE, names, shape=shape, estimate=estimate_reshape, **extra)


_PADS = tuple(c for c in (getattr(nn.modules.padding, n, None) for n in (
    "_ConstantPadNd", "_ReflectionPadNd", "_ReplicationPadNd", "_CircularPadNd")) if c)

register(
    *_moves(("view", "reshape"), _view),
    *_moves(("view_as", "reshape_as", "expand_as"), _view_as),
    *_moves(("permute",), _permute),
    *_moves(("transpose", "swapaxes", "swapdims"), _transpose),
    *_moves(("t",), _t),
    *_moves(("movedim", "moveaxis"), _movedim),
    *_moves(("unsqueeze",), _unsqueeze),
    *_moves(("squeeze",), _squeeze),
    *_moves(("expand", "broadcast_to"), _expand),
    *_moves(("repeat", "tile"), _repeat),
    *_moves(("repeat_interleave",), _repeat_interleave),
    *_moves(("split", "chunk", "unbind", "tensor_split"), _split),
    Op(name="record", kind=Kind.RESHAPE, functions=("record",), estimate=estimate_pack),
    *_moves(("getitem",), _getitem),
    *_moves(("to", "type"), _to),
    *_moves(("type_as",), _type_as),
    *_moves(("float", "half", "double", "bfloat16"), dtype_shape),
    *_moves(("contiguous", "clone", "tril", "triu", "masked_fill", "flip", "roll"), same_shape),
    *family(Kind.RESHAPE, ("where",), shape=binary_shape, estimate=estimate_where),
    *_moves(("narrow", "select", "index_select", "gather", "take_along_dim", "masked_select",
             "cpu", "cuda", "as_strided", "diagonal", "contiguous_format")),
    Op(name="flatten", kind=Kind.RESHAPE, modules=(nn.Flatten,), functions=("flatten",),
       shape=_flatten, module_shape=_flatten_module, estimate=estimate_reshape),
    Op(name="unflatten", kind=Kind.RESHAPE, modules=(nn.Unflatten,), functions=("unflatten",),
       shape=_unflatten, estimate=estimate_reshape),
    Op(name="pixel_shuffle", kind=Kind.RESHAPE, modules=(nn.PixelShuffle,),
       functions=("pixel_shuffle",), estimate=estimate_reshape),
    Op(name="pixel_unshuffle", kind=Kind.RESHAPE, modules=(nn.PixelUnshuffle,),
       functions=("pixel_unshuffle",), estimate=estimate_reshape),
    Op(name="channel_shuffle", kind=Kind.RESHAPE, modules=(nn.ChannelShuffle,),
       functions=("channel_shuffle",), shape=same_shape, module_shape=same_module_shape,
       estimate=estimate_reshape),
    Op(name="pad", kind=Kind.RESHAPE, modules=_PADS, functions=("pad",), shape=_pad,
       estimate=estimate_pad),
    Op(name="upsample", kind=Kind.RESHAPE, modules=(nn.Upsample,),
       functions=("upsample", "interpolate", "upsample_nearest", "upsample_bilinear"),
       estimate=estimate_reshape),
    Op(name="dropout", kind=Kind.DROPOUT, modules=(nn.modules.dropout._DropoutNd,),
       functions=("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                  "feature_alpha_dropout", "stochastic_depth", "drop_path"),
       module_attrs=lambda m: {"p": float(getattr(m, "p", 0.0))}, shape=same_shape,
       module_shape=same_module_shape, estimate=estimate_dropout),
    # shape queries: plain values, no gradient
    *family(Kind.OTHER, ("size", "dim", "numel"), grad=False, shape=size_shape),
    *family(Kind.OTHER, ("shape",), shape=size_shape),
)
