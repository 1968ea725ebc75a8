"""``torch.autograd.Function`` subclasses kept as one op.

A custom Function carries its own backward -- a straight-through estimator (``sign`` forward,
identity backward), a gradient reversal (identity forward, ``-lambda`` backward) -- which the
ops of its forward do not tell. While a tracer runs, ``Function.apply`` of a class written
outside torch records one call (:class:`FunctionCall`, op ``<class>.apply``) instead of the ops
of its forward. The estimate has no formula for it, so it runs the Function alone with its real
backward (archlint.ops.opaque) and says so; where that cannot be done it is reported as an op
without a formula and the layers behind it get no verdict.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import torch

#: ``Function.apply`` as defined (a classmethod, or a C classmethod descriptor in newer torch).
_APPLY = torch.autograd.Function.__dict__["apply"]

#: What the active tracer does with a call: ``(call, args, kwargs) -> value``.
_HANDLERS: list[Callable[["FunctionCall", tuple, dict], Any]] = []


class FunctionCall:
    """``cls.apply`` as a plain callable, named after the class (``STE.apply``)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.__name__ = f"{cls.__name__}.apply"
        self.__qualname__ = self.__name__
        self.__module__ = cls.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _original(self.cls)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<autograd.Function {self.cls.__module__}.{self.cls.__qualname__}>"


def _original(cls: type) -> Callable[..., Any]:
    """The unpatched ``cls.apply``."""
    return _APPLY.__get__(None, cls)


def _apply(cls: type, *args: Any, **kwargs: Any) -> Any:
    handler = _HANDLERS[-1] if _HANDLERS else None
    if handler is None or cls.__module__.startswith("torch."):  # checkpointing and the like
        return _original(cls)(*args, **kwargs)
    return handler(FunctionCall(cls), args, kwargs)


@contextlib.contextmanager
def functions_as_calls(handler: Callable[[FunctionCall, tuple, dict], Any]) -> Iterator[None]:
    """For the time of a trace, custom Functions' ``apply`` goes to ``handler``."""
    _HANDLERS.append(handler)
    patched = torch.autograd.Function.__dict__.get("apply") is _APPLY
    if patched:
        torch.autograd.Function.apply = classmethod(_apply)
    try:
        yield
    finally:
        _HANDLERS.pop()
        if patched and not _HANDLERS:
            torch.autograd.Function.apply = _APPLY


def fx_handler(call: FunctionCall, args: tuple, kwargs: dict) -> Any:
    """fx: one ``call_function`` node when an argument is a proxy."""
    proxy: Optional[torch.fx.Proxy] = None

    def find(a: Any) -> None:
        nonlocal proxy
        if proxy is None and isinstance(a, torch.fx.Proxy):
            proxy = a

    torch.fx.node.map_aggregate((args, kwargs), find)
    if proxy is None:
        return call(*args, **kwargs)
    return proxy.tracer.create_proxy("call_function", call, args, kwargs)
