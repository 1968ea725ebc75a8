"""``--format json``: the documented shape (keys may be added, never renamed)."""

from __future__ import annotations

import json
import math
from typing import Any

from .model import Report


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def render_json(report: Report) -> str:
    return json.dumps(_clean(report.to_dict()), indent=2) + "\n"
