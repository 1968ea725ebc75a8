"""How paths and target specs are written: the user's working directory's view of them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def display_path(path: Path) -> str:
    """A path as the user would write it: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # pragma: no cover - different drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel.replace(os.sep, "/")


def split_spec(spec: str) -> tuple[str, Optional[str]]:
    """``"a/b.py:Net"`` -> (``"a/b.py"``, ``"Net"``); ``"pkg.mod:fn"`` -> (``"pkg.mod"``, ``"fn"``)."""
    if ":" in spec:
        left, _, right = spec.rpartition(":")
        if left and right and not (len(left) == 1 and left.isalpha()):  # not a drive letter
            return left, right
    return spec, None
