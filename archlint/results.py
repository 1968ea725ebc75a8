"""What a run produces, as plain data: findings, layers, each target's result, and what the
reports say about the rules.

Independent of how the results are detected (no torch, no graph, no model) and of how they are
printed: every reporter reads only this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .paths import split_spec

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {"error": 3, "warning": 2, "info": 1}


def target_file(target: str) -> Optional[str]:
    """The ``.py`` file a target names (``models/net.py:Net`` -> ``models/net.py``); None for
    ``package.module:callable`` targets and for model objects linted from Python."""
    left, _ = split_spec(target)
    return left if left.endswith(".py") else None


@dataclass(frozen=True)
class Site:
    """A source position: 1-based line and column."""

    path: str
    line: int
    column: int = 1

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return f"{self.path}:{self.line}:{self.column}"


@dataclass
class Fix:
    """A change that would bring a finding within its limit, with its effect predicted by the
    estimate on the edited graph (and, with ``--measure``, measured on an edited copy of the
    model)."""

    description: str
    #: Machine-readable: ``kind`` (replace-activation, insert-normalization, add-skip,
    #: reinitialize, zero-init-residual, norm-scale), ``modules``, ``parameters``.
    edit: dict[str, Any]
    #: The target's ``gradient_decades`` after the edit (None without a gradient verdict).
    predicted_gradient_decades: Optional[float] = None
    #: The same, measured by the real probe on an edited copy of the model (``--measure``).
    measured_gradient_decades: Optional[float] = None
    measured: bool = False
    #: A unified diff of the source, for fixes that are plain substitutions (``--diff``).
    diff: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"description": self.description, "edit": self.edit,
                             "predicted_gradient_decades": _round(
                                 self.predicted_gradient_decades)}
        if self.measured:
            d["measured_gradient_decades"] = _round(self.measured_gradient_decades)
        if self.diff is not None:
            d["diff"] = self.diff
        return d


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 3)


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
    #: Changes predicted to bring the finding within its limit, best first (archlint.fixes).
    fixes: list[Fix] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["data"]:
            d.pop("data")
        d["fixes"] = [fx.to_dict() for fx in self.fixes]
        return d

    def sort_key(self) -> tuple:
        return (self.path or "", self.line or 0, self.column or 0, self.code, self.module or "")


@dataclass(frozen=True)
class RuleInfo:
    """A rule as the reports describe it (SARIF's rule table), read off the rule class."""

    code: str
    name: str
    severity: str
    #: One sentence: the first of "What it does".
    summary: str
    #: The whole "What it does" section, on one line.
    description: str
    #: The rule's documentation (markdown, under ruff's headings).
    documentation: str
    #: Option name -> default.
    options: dict[str, Any] = field(default_factory=dict)


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
class Verdict:
    """One gradient-flow comparison: the predicted gradient of the earliest weight layers
    against the last ones'."""

    #: log10(earliest / last): negative when the gradient vanishes towards the input.
    decades: float
    earliest: list[str] = field(default_factory=list)
    last: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"decades": round(self.decades, 3), "earliest": list(self.earliest),
                "last": list(self.last)}


@dataclass
class Measurement:
    """``--measure``: how far the estimate is from the gradients of one real probe."""

    #: Median |log10 predicted - log10 measured| over the layers, after removing the model's
    #: common offset; None when no layer could be compared.
    median_decades: Optional[float]
    layers: int
    #: Layers measured at exactly zero that the estimate also calls zero / does not.
    zero_by_design_agree: int = 0
    zero_by_design_disagree: int = 0
    #: The layer farthest from its measurement after the offset, and that distance (signed).
    worst_layer: Optional[str] = None
    worst_decades: Optional[float] = None
    #: The verdict's earliest-vs-last decades, predicted and measured (no offset removed).
    predicted_spread: Optional[float] = None
    measured_spread: Optional[float] = None
    #: The model's common offset (median log10 predicted / measured).
    offset_decades: Optional[float] = None
    #: Layers predicted zero but measured non-zero, or the reverse.
    zero_mismatch: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def r(v: Optional[float]) -> Optional[float]:
            return None if v is None else round(v, 4)

        return {"median_decades": r(self.median_decades),
                "layers": self.layers, "zero_by_design_agree": self.zero_by_design_agree,
                "zero_by_design_disagree": self.zero_by_design_disagree,
                "worst_layer": self.worst_layer, "worst_decades": r(self.worst_decades),
                "predicted_spread": r(self.predicted_spread),
                "measured_spread": r(self.measured_spread),
                "offset_decades": r(self.offset_decades),
                "zero_mismatch": list(self.zero_mismatch)}

    def describe(self) -> str:
        """The one line ``--measure`` prints: every figure a user reads, worst case first."""
        if self.layers == 0:
            text = "no layer with a non-zero gradient to compare"
        elif self.layers == 1:
            text = (f"one layer compared: only the common offset, "
                    f"{self.offset_decades:+.2f} decades")
        else:
            text = (f"median error {self.median_decades:.3f} decades over {self.layers} layers "
                    f"(common offset {self.offset_decades:+.2f}); worst layer {self.worst_layer} "
                    f"{self.worst_decades:+.2f}")
        if self.predicted_spread is not None and self.measured_spread is not None:
            text += (f"; spread error {self.predicted_spread - self.measured_spread:+.2f} "
                     f"(earliest vs last layers: predicted {self.predicted_spread:+.2f}, "
                     f"measured {self.measured_spread:+.2f} decades)")
        if self.zero_mismatch:
            names = ", ".join(self.zero_mismatch[:3]) + (" ..." if len(self.zero_mismatch) > 3
                                                         else "")
            text += (f"; {len(self.zero_mismatch)} layer(s) predicted zero but measured "
                     f"non-zero, or the reverse (errors): {names}")
        return "estimate vs measured gradients: " + text


@dataclass
class Unbuilt:
    """A model a file defines that archlint could not build by itself (its constructor needs
    arguments): listed, never skipped silently."""

    #: The file, as displayed.
    path: str
    #: The class name.
    name: str
    #: How it is called: ``ResNet(cfg)``.
    call: str
    reason: str
    #: How to lint it anyway (a factory to name, kwargs in the config).
    hint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unbuilt_note(entries: list[Unbuilt], hint: Optional[str] = None) -> str:
    """``2 models need arguments: ResNet(cfg), Block(cin, cout); name a factory ...``: one
    file's entries."""
    if hint is None:
        hint = entries[0].hint if entries else ""
    n = len(entries)
    text = (f"{n} model{'s' if n != 1 else ''} need{'s' if n == 1 else ''} arguments: "
            + ", ".join(e.call for e in entries))
    return text + (f"; {hint}" if hint else "")


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
    #: Codes of the rules whose check ran to the end (which suppressions can be judged unused).
    rules_run: list[str] = field(default_factory=list)
    #: The gradient estimate's verdicts: "vanishing" (AL105's comparison) and "exploding"
    #: (AL106's, which leaves out layers followed by normalisation), where there was one.
    gradient_flow: dict[str, Verdict] = field(default_factory=dict)
    #: Set by ``--measure``.
    measurement: Optional[Measurement] = None

    @property
    def gradient_decades(self) -> Optional[float]:
        """The vanishing verdict's decades (negative: the earliest layers get less gradient)."""
        flow = self.gradient_flow.get("vanishing")
        return flow.decades if flow is not None else None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "target": self.target, "status": self.status, "error": self.error,
            "tracer": self.tracer,
            "findings": [f.to_dict() for f in self.findings],
            "layers": [layer.to_dict() for layer in self.layers],
            "input": self.input, "notes": list(self.notes),
        }
        if self.gradient_decades is not None:
            d["gradient_decades"] = round(self.gradient_decades, 3)
        if self.gradient_flow:
            d["gradient_flow"] = {k: v.to_dict() for k, v in self.gradient_flow.items()}
        if self.measurement is not None:
            d["estimate_error"] = self.measurement.to_dict()
        return d


@dataclass
class Outcome:
    """One model's result, and the source files its analysis looked at (where suppression
    comments can be judged unused); ``facts``: what its graph says, for the source rules
    (``archlint.rules.ModelFacts``)."""

    result: TargetResult
    files: list[str] = field(default_factory=list)
    facts: list[Any] = field(default_factory=list)


def result_from_dict(d: dict[str, Any]) -> TargetResult:
    """The :class:`TargetResult` that ``dataclasses.asdict(result)`` describes (the subprocess
    mode sends results as plain JSON, never pickles)."""
    d = dict(d)
    d["findings"] = [Finding(**{**f, "fixes": [Fix(**fx) for fx in f.get("fixes") or []]})
                     for f in d.get("findings", [])]
    d["layers"] = [LayerInfo(**layer) for layer in d.get("layers", [])]
    d["gradient_flow"] = {k: Verdict(**v) for k, v in (d.get("gradient_flow") or {}).items()}
    if d.get("measurement") is not None:
        d["measurement"] = Measurement(**d["measurement"])
    return TargetResult(**d)
