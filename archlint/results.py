"""What a run produces, as plain data: findings, layers and each target's result.

Independent of how the results are detected (no torch, no graph, no model) and of how they are
printed: every reporter reads only this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {"error": 3, "warning": 2, "info": 1}


@dataclass(frozen=True)
class Site:
    """A source position: 1-based line and column."""

    path: str
    line: int
    column: int = 1

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return f"{self.path}:{self.line}:{self.column}"


@dataclass
class Finding:
    code: str
    name: str
    severity: str
    message: str
    path: Optional[str] = None
    line: Optional[int] = None
    column: Optional[int] = None
    module: Optional[str] = None
    #: What to change, in one sentence.
    hint: Optional[str] = None
    #: Extra machine-readable facts (decades, chain members...).
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["data"]:
            d.pop("data")
        return d

    def sort_key(self) -> tuple:
        return (self.path or "", self.line or 0, self.column or 0, self.code, self.module or "")


@dataclass
class LayerInfo:
    module: str
    type: str
    path: Optional[str]
    line: Optional[int]
    grad_rms: Optional[float] = None
    measured_grad_rms: Optional[float] = None
    #: Order of the layer's first use in the traced forward pass (None: not used).
    position: Optional[int] = None
    #: What consumes the layer's output: "saturating" (sigmoid, tanh...), "norm", or None.
    followed_by: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return dict(module=self.module, type=self.type, path=self.path, line=self.line,
                    grad_rms=self.grad_rms, measured_grad_rms=self.measured_grad_rms,
                    position=self.position, followed_by=self.followed_by)


@dataclass
class TargetResult:
    target: str
    status: str = "ok"  # "ok" | "error"
    error: Optional[str] = None
    tracer: Optional[str] = None
    findings: list[Finding] = field(default_factory=list)
    layers: list[LayerInfo] = field(default_factory=list)
    input: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    #: Anything later stages add (estimate summary, measurement error...).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Codes of the rules whose check ran to the end (which suppressions can be judged unused).
    rules_run: list[str] = field(default_factory=list)
    #: The live analysis (graph, model, facts) while the run needs it; never reported.
    analysis: Optional[Any] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "target": self.target, "status": self.status, "error": self.error,
            "tracer": self.tracer,
            "findings": [f.to_dict() for f in self.findings],
            "layers": [layer.to_dict() for layer in self.layers],
            "input": self.input, "notes": list(self.notes),
        }
        d.update(self.extra)
        return d
