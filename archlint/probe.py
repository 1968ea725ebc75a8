"""Which output the gradient probe differentiates, chosen by one function for everyone.

A model's ``forward`` may return a tensor, a tuple, a dict or a Hugging Face ``ModelOutput``. The
probe's ``y`` is, recursively:

* a leaf (a tensor, or whatever stands for one) is used as is;
* a mapping, or any object with ``keys()`` and item access (``ModelOutput``): its ``logits``
  entry, else its ``last_hidden_state`` entry (when that entry is itself a leaf), else the first
  value, in key order, that contains a leaf;
* a tuple or list: the first item that contains a leaf;
* a dataclass instance (a research model's ``Output(logits=..., aux=...)``): as the mapping of
  its fields.

The estimate (on the fx graph's output structure and on the execution trace's real output) and
``--measure`` (on the real output) all call :func:`select_output`, so they can never pick
different tensors. Plain Python, no torch: the caller says what a leaf is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Optional

#: Entries of a mapping output preferred over the others, in this order.
PREFERRED_KEYS = ("logits", "last_hidden_state")


def select_output(value: Any, is_leaf: Callable[[Any], bool]) -> Optional[Any]:
    """The leaf of ``value`` that the probe differentiates (see the module docstring), or None
    when ``value`` holds no leaf."""
    if is_leaf(value):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        keys = list(value.keys())
        for key in PREFERRED_KEYS:
            if key in keys and is_leaf(value[key]):
                return value[key]
        return _first((value[k] for k in keys), is_leaf)
    if isinstance(value, (tuple, list)):
        return _first(value, is_leaf)
    return None


def record_fields(cls: Any) -> Optional[tuple[str, ...]]:
    """The fields of a named tuple or dataclass class (an output record built in forward), or
    None for anything else."""
    if not isinstance(cls, type):
        return None
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return tuple(cls._fields)
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    return None


def _first(items: Any, is_leaf: Callable[[Any], bool]) -> Optional[Any]:
    for item in items:
        found = select_output(item, is_leaf)
        if found is not None:
            return found
    return None
