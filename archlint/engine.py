"""The pipeline for one model: trace -> analyse (once) -> run the selected rules -> results.

target -> model -> graph -> facts -> findings -> report (ARCHITECTURE.md). Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch import nn

from .analysis.init_stats import analyse_init
from .analysis.recurrence import analyse_recurrence
from .analysis.gradient_flow import analyse_gradient_flow
from .analysis.structure import analyse_structure
from .findings import Finding
from .graph.ir import Graph
from .graph.sites import module_site
from .inputs import InputSpec
from .rules import Rule, RuleContext
from .signal.estimate import estimate_graph
from .targets import display_path
from .tracing import TraceError, trace_model


@dataclass
class Settings:
    rules: list[type[Rule]]
    #: Rule code -> option overrides (and "severity").
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def options_for(self, rule: type[Rule]) -> dict[str, Any]:
        opts = dict(rule.options)
        opts.update({k: v for k, v in self.rule_options.get(rule.code, {}).items()
                     if k != "severity"})
        return opts

    def severity_for(self, rule: type[Rule]) -> str:
        return self.rule_options.get(rule.code, {}).get("severity", rule.severity)


@dataclass
class LayerInfo:
    module: str
    type: str
    path: Optional[str]
    line: Optional[int]
    grad_rms: Optional[float] = None
    measured_grad_rms: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return dict(module=self.module, type=self.type, path=self.path, line=self.line,
                    grad_rms=self.grad_rms, measured_grad_rms=self.measured_grad_rms)


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
    graph: Optional[Graph] = field(default=None, repr=False)

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


def weight_layers_of(model: nn.Module) -> list[LayerInfo]:
    """Every module that directly owns a parameter of 2+ dims, by its named_modules() name."""
    out = []
    for name, mod in model.named_modules():
        if any(p.dim() >= 2 for p in mod.parameters(recurse=False)):
            site = module_site(mod)
            out.append(LayerInfo(module=name, type=type(mod).__name__,
                                 path=display_path(Path(site.path)) if site else None,
                                 line=site.line if site else None))
    return out


def analyse(graph: Graph) -> list[str]:
    """Compute every shared fact once; rules only read them. Returns notes for the user."""
    notes: list[str] = []
    graph.facts["structure"] = analyse_structure(graph)
    graph.facts["init"] = analyse_init(graph)
    graph.facts["recurrence"] = analyse_recurrence(graph)
    if graph.facts.get("input_spec") is None:
        notes.append("gradient estimate skipped: no example input (give --input-shape or "
                     "'input:' in the config)")
        return notes
    if graph.output is None:
        return notes
    try:
        estimate = estimate_graph(graph)
    except Exception as exc:  # the structural rules still run
        notes.append(f"gradient estimate failed: {type(exc).__name__}: {exc}"[:300])
        return notes
    graph.facts["estimate"] = estimate
    if estimate.unknown_ops:
        ops = ", ".join(f"{op} (x{n})" if n > 1 else op
                        for op, n in sorted(estimate.unknown_ops.items()))
        notes.append(f"gradient estimate: ops without a formula, passed through unchanged: {ops}")
    graph.facts["gradient_flow"] = analyse_gradient_flow(graph, estimate)
    graph.facts["gradient_flow_exploding"] = analyse_gradient_flow(
        graph, estimate, skip_scale_invariant=True)
    return notes


def lint_model(model: nn.Module, display: str, spec: Optional[InputSpec],
               settings: Settings) -> TargetResult:
    """Analyse one built model. Tracing errors become an error result, never an exception."""
    result = TargetResult(target=display)
    try:
        graph = trace_model(model, spec)
    except TraceError as exc:
        result.status, result.error = "error", f"cannot trace: {exc}"
        return result
    result.graph = graph
    result.tracer = graph.tracer
    used = graph.facts.get("input_spec")
    result.input = f"{used.describe()} ({used.origin})" if used is not None else None
    result.notes.extend(graph.fallback_reasons)
    if graph.output is None:
        result.notes.append("no tensor output found; gradient paths are unknown")
    result.layers = weight_layers_of(model)
    try:
        result.notes.extend(analyse(graph))
    except Exception as exc:  # an analysis bug must not lose the other targets
        result.status = "error"
        result.error = f"analysis failed: {type(exc).__name__}: {exc}"[:400]
        return result
    estimate = graph.facts.get("estimate")
    if estimate is not None:
        used = {n.module_path for n in graph.nodes if n.is_weight_layer}
        used.update(m.rsplit(".", 1)[0] for m in estimate.grad_rms if "." in m)
        for layer in result.layers:
            # a layer the traced forward uses but no gradient reaches gets exactly zero
            layer.grad_rms = estimate.grad_rms.get(
                layer.module, 0.0 if layer.module in used else None)
        flow = graph.facts.get("gradient_flow")
        if flow is not None:
            result.extra["gradient_decades"] = round(flow.decades, 3)
        verdicts = {}
        for key, fact in (("vanishing", "gradient_flow"), ("exploding", "gradient_flow_exploding")):
            f = graph.facts.get(fact)
            if f is not None:
                verdicts[key] = {"decades": round(f.decades, 3), "earliest": list(f.earliest),
                                 "last": list(f.last)}
        if verdicts:
            result.extra["gradient_flow"] = verdicts
    for rule in settings.rules:
        severity = settings.severity_for(rule)
        if severity == "off":
            continue
        if rule.needs_input and used is None:
            result.notes.append(f"{rule.code} skipped: no example input (give --input-shape or "
                                "'input:' in the config)")
            continue
        ctx = RuleContext(graph=graph, structure=graph.facts["structure"],
                          options=settings.options_for(rule), severity=severity,
                          target=display)
        try:
            result.findings.extend(rule().check(ctx))
            result.rules_run.append(rule.code)
        except Exception as exc:
            result.notes.append(f"{rule.code} failed: {type(exc).__name__}: {exc}"[:300])
    result.findings = merge_same_site(result.findings)
    return result


def merge_same_site(findings: list[Finding]) -> list[Finding]:
    """One finding per (code, line): layers built in a loop share their definition line."""
    groups: dict[tuple, list[Finding]] = {}
    order: list[tuple] = []
    for f in findings:
        key = (f.code, f.path, f.line, f.column, f.data.get("problem"))
        if f.path is None:
            key = key + (id(f),)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(f)
    out = []
    for key in order:
        group = groups[key]
        first = group[0]
        if len(group) > 1:
            others = [g.module for g in group[1:] if g.module]
            first.message += (f" (and {len(group) - 1} more layer"
                              f"{'s' if len(group) > 2 else ''} defined on this line: "
                              f"{_short_list(others)})")
            first.data["merged"] = len(group)
        out.append(first)
    return sorted(out, key=Finding.sort_key)


def _short_list(names: list[str], limit: int = 4) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... {len(names) - limit} more"
