"""Where a layer is defined: source sites for modules and for functional calls.

Modules: while archlint imports and builds a model, ``nn.Module.__init__`` is wrapped so each
module remembers the line that constructed it (the ``self.fc = nn.Linear(...)`` line, or the
``nn.Linear(...)`` line inside an ``nn.Sequential(...)``). Functional calls: the first frame of
the call stack outside torch and archlint (the line in ``forward``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from types import CodeType, FrameType
from typing import Iterator, Optional

import torch
from torch import nn

from ..results import Site

SITE_ATTR = "_archlint_site"

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_ARCHLINT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_SKIP_PREFIXES = (_TORCH_DIR, _ARCHLINT_DIR)


def _internal(filename: str) -> bool:
    return filename.startswith(_SKIP_PREFIXES) or filename.startswith("<frozen")


def _installed(filename: str) -> bool:
    return "site-packages" in filename or "dist-packages" in filename


@functools.lru_cache(maxsize=512)
def _positions(code: CodeType) -> tuple:
    """The source positions of a code object's instructions (one __init__ builds many layers)."""
    return tuple(code.co_positions())


def frame_site(frame: FrameType) -> Site:
    """The site of the instruction a frame is executing, with its column when Python knows it."""
    code = frame.f_code
    line = frame.f_lineno or code.co_firstlineno
    column = 1
    try:
        pos = _positions(code)[frame.f_lasti // 2]
        if pos[0] is not None:
            line = pos[0]
        if pos[2] is not None:
            column = pos[2] + 1
    except (AttributeError, IndexError):  # pragma: no cover - older Pythons
        pass
    return Site(path=code.co_filename, line=line, column=column)


def user_site(start: Optional[FrameType] = None) -> Optional[Site]:
    """The first frame outside torch and archlint, walking outwards from ``start``."""
    frame = start if start is not None else sys._getframe(1)
    while frame is not None:
        if not _internal(frame.f_code.co_filename):
            return frame_site(frame)
        frame = frame.f_back
    return None


_original_init = nn.Module.__init__


def _recording_init(self: nn.Module, *args, **kwargs) -> None:
    _original_init(self, *args, **kwargs)
    if SITE_ATTR in self.__dict__:
        return
    frame = sys._getframe(1)
    # Skip the constructor chain of this very object (subclass __init__ -> super().__init__()),
    # and installed libraries: a layer built inside a library is located where the user's code
    # asked for it, and a model archlint builds itself at its class (see module_site).
    while frame is not None and (
        _internal(frame.f_code.co_filename) or _installed(frame.f_code.co_filename)
        or frame.f_locals.get("self") is self
    ):
        if frame.f_code.co_filename.startswith(_ARCHLINT_DIR):
            return  # archlint built it (a model class of a linted file): its class is its site
        frame = frame.f_back
    if frame is not None:
        self.__dict__[SITE_ATTR] = frame_site(frame)


@contextlib.contextmanager
def recording_module_sites() -> Iterator[None]:
    """Within this block, every constructed nn.Module records its construction site."""
    if nn.Module.__init__ is _recording_init:
        yield
        return
    nn.Module.__init__ = _recording_init
    try:
        yield
    finally:
        nn.Module.__init__ = _original_init


def module_site(module: nn.Module) -> Optional[Site]:
    """The construction site of a module, else the line of its class definition."""
    site = module.__dict__.get(SITE_ATTR)
    if site is not None:
        return site
    cls = type(module)
    try:
        path = inspect.getsourcefile(cls)
        _, line = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return None
    if path is None:
        return None
    return Site(path=path, line=line, column=1)
