"""The op table: one row per operation, holding everything archlint knows about it.

A row (:class:`Op`) says which torch.nn layers and which functions / tensor methods *are* the op,
its coarse :class:`~archlint.graph.ir.Kind`, whether it passes gradient to its inputs, what the
structural rules need (does it saturate, its peak derivative, does He init suit it), how to
compute its output shape without running it, and how the gradient estimate propagates statistics
forward and backward through it. Tracers, shape propagation, the facts, the estimate and the
rules all look ops up here: adding an op is one row in the family module it belongs to
(:mod:`archlint.ops`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from torch import nn

from ..graph.ir import Kind


@dataclass(frozen=True, eq=False)
class Op:
    """Everything archlint knows about one operation."""

    #: Canonical name: the ``op`` of graph nodes performing it.
    name: str
    kind: str = Kind.OTHER
    #: torch.nn layer classes that perform the op (their subclasses too).
    modules: tuple[type, ...] = ()
    #: Canonical function / tensor-method names (see :func:`canonical_name`) that perform it.
    functions: tuple[str, ...] = ()
    #: Does the output carry gradient back to the inputs (False: shape queries, comparisons,
    #: ``*_like`` factories, ``argmax``...)?
    grad: bool = True

    # --- what structural rules read (activations)
    #: Derivative < 1 everywhere and going to zero for large inputs (sigmoid, tanh...).
    saturating: bool = False
    #: The largest value of the derivative, where it is below 1 (sigmoid 1/4).
    peak_derivative: Optional[float] = None
    #: Variance-preserving init is He's (sigma_w^2 = 2): the rectifier family.
    rectifier: bool = False
    #: phi(c x) = c phi(x) for c > 0: scale passes through it unchanged.
    homogeneous: bool = False
    #: Constant attributes of a layer of this op worth keeping (negative_slope, p...).
    module_attrs: Optional[Callable[[nn.Module], dict]] = None

    # --- shapes without running the op
    #: ``(name, args, kwargs) -> value`` for a function call (name: the canonical name called).
    shape: Optional[Callable[..., Any]] = None
    #: ``(module, args, kwargs) -> value`` for a layer call.
    module_shape: Optional[Callable[..., Any]] = None

    # --- the gradient estimate
    #: Moment law of an elementwise activation: ``params -> law`` (see archlint.meanfield).
    law: Optional[Callable[[dict], Any]] = None
    #: The law's parameters with torch's names and defaults.
    params: Optional[dict[str, Any]] = None
    #: ``(propagation, node) -> None``: sets the node's forward statistics and the backward
    #: rule that goes with them. None: passed through unchanged and reported as unknown.
    estimate: Optional[Callable[..., None]] = None


OPS: dict[str, Op] = {}
_BY_FUNCTION: dict[str, Op] = {}
_BY_MODULE: dict[type, Op] = {}


def register(*ops: Op) -> None:
    """Add rows to the table; a name, function or module may belong to one row only."""
    for op in ops:
        if op.name in OPS:
            raise ValueError(f"op {op.name!r} registered twice")
        OPS[op.name] = op
        for f in op.functions:
            if f in _BY_FUNCTION:
                raise ValueError(f"function {f!r} belongs to {_BY_FUNCTION[f].name!r} and "
                                 f"{op.name!r}")
            _BY_FUNCTION[f] = op
        for m in op.modules:
            if m in _BY_MODULE:
                raise ValueError(f"{m.__name__} belongs to {_BY_MODULE[m].name!r} and "
                                 f"{op.name!r}")
            _BY_MODULE[m] = op


def family(kind: str, names: Iterable[str], **common: Any) -> list[Op]:
    """Rows for several ops that share everything but their name (called as functions by
    their own name)."""
    return [Op(name=n, kind=kind, functions=(n,), **common) for n in names]


def op_info(name: Optional[str]) -> Optional[Op]:
    """The row of an op name (a node's ``op``), or None for an op archlint does not know."""
    return OPS.get(name) if name else None


def function_op(name: str) -> Optional[Op]:
    """The row of a canonical function / method name."""
    return _BY_FUNCTION.get(name)


def module_op(module: nn.Module) -> Optional[Op]:
    """The row of a torch.nn layer (or a subclass of one), by the nearest class in its MRO."""
    for cls in type(module).__mro__:
        op = _BY_MODULE.get(cls)
        if op is not None:
            return op
    return None


def canonical_name(target: Any) -> str:
    """A lowercase name for an fx target / torch function / method name: ``__iadd__``, ``add_``
    and ``torch.add`` are all ``add``. Aliases (``expit``, ``divide``...) are the table's
    business: they are functions of their op's row."""
    import operator

    from ..probe import record_fields

    if isinstance(target, str):
        name = target
    elif target is operator.getitem:
        return "getitem"
    elif record_fields(target) is not None:
        return "record"  # a named tuple or dataclass of outputs (GoogLeNetOutputs...)
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
    return name
