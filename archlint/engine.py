"""The pipeline for one built model: trace -> analyse (once) -> run the selected rules.

The model and its example input come from the loading side; what comes out is a plain
:class:`~archlint.results.TargetResult` (findings, layers, verdicts) that the reporters read.
The live :class:`Analysis` (graph, facts, gradient estimate) is handed back separately to the
callers that need it after the rules (``--measure``, tests); no result holds it. Nothing here
prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from torch import nn

from .analysis import GraphFacts, analyse_graph
from .estimate import GradientFacts, estimate_gradients
from .guard import one_line_error
from .results import Finding, LayerInfo, TargetResult, Verdict
from .graph.ir import Graph, Kind
from .ops import op_info
from .ops.opaque import named_modules, see_through, weight_owners
from .loading.sites import module_site
from .loading.build import seed_everything
from .loading.inputs import InputError, InputSpec
from .loading.meta import MetaBuild, MetaError
from .rules import ModelFacts, Rule, RuleContext, SourceContext
from .loading.targets import display_path
from .tracing import TraceError, trace_model


@dataclass
class Settings:
    rules: list[type[Rule]]
    #: Rule code -> option overrides (and "severity").
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Propose fixes for the findings, with their effect predicted (archlint.fixes).
    fixes: bool = True

    def options_for(self, rule: type[Rule]) -> dict[str, Any]:
        opts = dict(rule.options)
        opts.update({k: v for k, v in self.rule_options.get(rule.code, {}).items()
                     if k != "severity"})
        return opts

    def severity_for(self, rule: type[Rule]) -> str:
        return self.rule_options.get(rule.code, {}).get("severity", rule.severity)


def weight_layers_of(model: nn.Module) -> list[LayerInfo]:
    """Every module that owns a weight matrix (:func:`weight_owners`), by its name."""
    out = []
    for name, mod, _ in weight_owners(model):
        site = module_site(mod)
        out.append(LayerInfo(module=name, type=type(mod).__name__,
                             path=display_path(Path(site.path)) if site else None,
                             line=site.line if site else None))
    return out


@dataclass
class Analysis:
    """Everything computed for one traced model. Lives for one target's run only (it holds the
    model through the graph); what is reported is copied into a plain :class:`TargetResult`."""

    graph: Graph
    facts: GraphFacts
    gradient: Optional[GradientFacts] = None
    notes: list[str] = field(default_factory=list)
    #: The findings' fixes with their edited graphs (archlint.fixes.Proposed), for --measure
    #: and --diff.
    fixes: list[Any] = field(default_factory=list)
    #: Why part of the analysis could not be done (the gradient estimate failed), or None.
    failure: Optional[str] = None


def analyse(graph: Graph) -> Analysis:
    """Compute every shared fact once; rules only read them."""
    analysis = Analysis(graph=graph, facts=analyse_graph(graph))
    if graph.input_spec is None:
        analysis.notes.append("gradient estimate skipped: no example input (give --input-shape "
                              "or 'input:' in the config)")
        return analysis
    if graph.output is None:
        return analysis
    try:
        analysis.gradient = estimate_gradients(graph, analysis.facts)
    except Exception as exc:  # the structural rules still run; the target is an error
        analysis.failure = f"gradient estimate failed: {one_line_error(exc)}"[:300]
        analysis.notes.append(analysis.failure)
        return analysis
    ran = analysis.gradient.estimate.ran
    if ran:
        ops = ", ".join(_counted(ran))
        analysis.notes.append(f"gradient estimate: ops without a formula, estimated by running "
                              f"them alone: {ops}" + (
                                  " (a TorchScript model is one opaque layer: no per-layer "
                                  "structure to check)" if graph.output is not None and any(
                                      n.op == "opaque" and n.module_path == ""
                                      for n in graph.nodes) else ""))
    declared = analysis.gradient.estimate.declared
    if declared:
        analysis.notes.append("gradient estimate: custom autograd.Functions with the backward "
                              "gain they declare: " + ", ".join(
                                  f"{op} ({g:g})" for op, g in sorted(declared.items())))
    unknown = analysis.gradient.estimate.unknown_ops
    if unknown:
        ops = ", ".join(_counted(unknown))
        behind = len(analysis.gradient.estimate.uncertain)
        analysis.notes.append(f"gradient estimate: ops without a formula, passed through "
                              f"unchanged: {ops}" + (
                                  f"; {behind} layer{'s' if behind != 1 else ''} whose gradient "
                                  "crosses them left out of AL105/AL106" if behind else "")
                              + ("; a custom autograd.Function can declare its backward gain "
                                 "as a class attribute archlint_backward_gain = |dL/dx| / "
                                 "|dL/dy|" if any(op.endswith(".apply") for op in unknown)
                                 else ""))
    return analysis


def _counted(ops: dict[str, int]) -> list[str]:
    return [f"{op} (x{n})" if n > 1 else op for op, n in sorted(ops.items())]


def analyse_model(model: nn.Module, spec: Optional[InputSpec]) -> Analysis:
    """Trace ``model`` and compute its facts and gradient estimate, without running any rule.

    For tools and tests that read the facts themselves. Raises
    :class:`~archlint.tracing.TraceError` when the model cannot be traced.
    """
    return analyse(trace_model(model, spec))


def lint_model(model: nn.Module, display: str, spec: Optional[InputSpec],
               settings: Settings) -> TargetResult:
    """Analyse one built model and run the rules. Errors become an error result, never an
    exception."""
    return lint_and_analyse(model, display, spec, settings)[0]


def lint_and_analyse(model: nn.Module, display: str, spec: Optional[InputSpec],
                     settings: Settings, meta: Optional[MetaBuild] = None
                     ) -> tuple[TargetResult, Optional[Analysis]]:
    """:func:`lint_model`, also returning the live analysis (None when the model could not be
    traced or analysed) for the steps that run after the rules. Compiled and TorchScript
    pieces are seen through for the time of it (archlint.ops.opaque.see_through).

    ``meta``: the model was built on the meta device (archlint.loading.meta); it is traced
    there, then its small tensors are made real and its large weights are read by the
    distribution of their entries."""
    with see_through(model) as seen:
        return _lint_and_analyse(seen, display, spec, settings, meta)


def _lint_and_analyse(model: nn.Module, display: str, spec: Optional[InputSpec],
                      settings: Settings, meta: Optional[MetaBuild] = None
                      ) -> tuple[TargetResult, Optional[Analysis]]:
    result = TargetResult(target=display)
    try:
        if meta is not None:
            meta.prepare(seed_everything)
        graph = trace_model(model, spec, meta=meta)
        if meta is not None:
            meta.realise_graph(graph)
            meta.materialise_small(graph)
    except MetaError as exc:
        result.status = "error"
        result.error = f"cannot analyse on the meta device: {exc} (try --device cpu)"
        return result, None
    except TraceError as exc:
        result.status = "error"
        result.error = str(exc) if exc.mismatch else f"cannot trace: {exc}"
        return result, None
    except InputError as exc:  # the example input does not fit forward()'s arguments
        result.status = "error"
        result.error = str(exc)
        return result, None
    result.tracer = graph.tracer
    used_spec = graph.input_spec
    result.input = (used_spec.describe() if used_spec.origin.startswith("guessed") else
                    f"{used_spec.describe()} ({used_spec.origin})") if used_spec is not None \
        else None
    result.notes.extend(graph.fallback_reasons)
    if graph.output is None:
        result.notes.append("no tensor output found; gradient paths are unknown")
    else:
        why = _no_gradient(graph)
        if why is not None:
            result.notes.append(f"no gradient analysis: {why}, so no gradient flows back "
                                "into the model from it (structural rules only)")
    result.layers = weight_layers_of(model)
    try:
        analysis = analyse(graph)
    except Exception as exc:  # an analysis bug must not lose the other targets
        result.status = "error"
        result.error = f"analysis failed: {type(exc).__name__}: {exc}"[:400]
        return result, None
    result.notes.extend(analysis.notes)
    if meta is not None:
        result.notes[:0] = meta.notes
        result.notes.extend(meta.describe())
    _describe_layers(result.layers, analysis)
    gradient = analysis.gradient
    if gradient is not None:
        estimate = gradient.estimate
        used = {n.module_path for n in graph.nodes if n.is_weight_layer}
        used.update(m.rsplit(".", 1)[0] for m in estimate.grad_rms if "." in m)
        tied = _tied_names(model)
        for layer in result.layers:
            # a layer the traced forward uses but no gradient reaches gets exactly zero; a layer
            # whose weights are another's (tied embeddings) gets that layer's gradient
            name = layer.module if layer.module in estimate.grad_rms else \
                tied.get(layer.module, layer.module)
            layer.grad_rms = estimate.grad_rms.get(name, 0.0 if layer.module in used else None)
        for key, flow in (("vanishing", gradient.vanishing), ("exploding", gradient.exploding)):
            if flow is not None:
                result.gradient_flow[key] = Verdict(decades=flow.decades,
                                                    earliest=list(flow.earliest),
                                                    last=list(flow.last))
    failed: list[str] = []
    for rule in settings.rules:
        severity = settings.severity_for(rule)
        if severity == "off" or rule.kind == "source":
            continue
        if rule.needs_input and used_spec is None:
            result.notes.append(f"{rule.code} skipped: no example input (give --input-shape or "
                                "'input:' in the config)")
            continue
        ctx = RuleContext(graph=graph, facts=analysis.facts, gradient=gradient,
                          options=settings.options_for(rule), severity=severity,
                          target=display)
        try:
            result.findings.extend(rule().check(ctx))
            result.rules_run.append(rule.code)
        except Exception as exc:  # the other rules still run; the target is an error
            failed.append(f"{rule.code} ({rule.name}) failed: {one_line_error(exc)}"[:300])
            result.notes.append(failed[-1])
    result.findings = _drop_frozen(merge_same_site(result.findings), graph, analysis.facts,
                                   result.notes)
    if settings.fixes and result.findings:
        from .fixes import propose_fixes

        try:
            analysis.fixes = propose_fixes(result.findings, analysis, settings, display,
                                           notes=result.notes)
        except Exception as exc:  # the findings stand without their fixes
            result.notes.append(f"fixes failed: {type(exc).__name__}: {exc}"[:300])
    problems = ([analysis.failure] if analysis.failure else []) + failed
    if problems:  # never a silent pass: what could not be checked makes the target an error
        result.status = "error"
        result.error = problems[0] + (f" (and {len(problems) - 1} more: see the notes)"
                                      if len(problems) > 1 else "")
    return result, analysis


def _drop_frozen(findings: list[Finding], graph: Graph, facts: GraphFacts,
                 notes: list[str]) -> list[Finding]:
    """Findings about layers no gradient is ever sent through (nothing trainable before them: a
    frozen backbone under a linear probe) are not reported; a note says so."""
    frozen = facts.structure.frozen
    if not frozen:
        return findings
    kept = []
    for f in findings:
        nodes = [n for n in graph.nodes if f.module is not None and n.module_path == f.module]
        if nodes and all(n in frozen for n in nodes):
            notes.append(f"{f.code} not reported at {f.module}: no trainable parameter before "
                         "it (frozen), so training sends no gradient through it")
            continue
        kept.append(f)
    return kept


#: The result of a file's source rules is marked with this ``tracer``.
SOURCE_TRACER = "source"


def source_rules(settings: Settings) -> list[type[Rule]]:
    """The selected rules of ``kind = "source"`` that are not off."""
    return [r for r in settings.rules
            if r.kind == "source" and settings.severity_for(r) != "off"]


def lint_source(path: Path, display: str, settings: Settings,
                models: Optional[dict[str, ModelFacts]] = None) -> Optional[TargetResult]:
    """Run the source rules on one file (parsed, never imported); None when none is selected.

    A file that cannot be read or parsed gets a note (its import reports the error), never an
    exception; a rule that raises makes the result an error, the other rules still report."""
    rules = source_rules(settings)
    if not rules:
        return None
    result = TargetResult(target=display, tracer=SOURCE_TRACER)
    try:
        text = path.read_text(encoding="utf-8")
        import ast

        tree = ast.parse(text, filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None  # importing the file reports why it cannot be read
    failed = []
    for rule in rules:
        ctx = SourceContext(path=path, display=display, text=text, tree=tree,
                            options=settings.options_for(rule),
                            severity=settings.severity_for(rule), models=dict(models or {}),
                            target=display)
        try:
            result.findings.extend(rule().check(ctx))
            result.rules_run.append(rule.code)
        except Exception as exc:  # the other rules still run
            failed.append(f"{rule.code} ({rule.name}) failed: {one_line_error(exc)}"[:300])
            result.notes.append(failed[-1])
    result.findings = merge_same_site(result.findings)
    if failed:
        result.status = "error"
        result.error = failed[0]
    return result


def model_facts(name: str, analysis: Optional[Analysis]) -> ModelFacts:
    """What a source rule may want of an analysed model: the op producing its output."""
    op = None
    if analysis is not None and analysis.graph.output is not None:
        out = analysis.graph.output
        while out is not None and out.kind == Kind.OUTPUT and len(out.inputs) == 1:
            out = out.inputs[0]
        while out is not None and out.kind == Kind.RESHAPE and out.inputs:
            out = out.inputs[0]
        op = out.op if out is not None else None
    return ModelFacts(name=name, output_op=op)


def _tied_names(model: nn.Module) -> dict[str, str]:
    """Module name -> the first module name owning the same weight (tied embeddings)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, mod in named_modules(model):
        for p in mod.parameters(recurse=False):
            if p.dim() >= 2:
                owner = first.setdefault(id(p), name)
                if owner != name:
                    out[name] = owner
    return out


def _no_gradient(graph: Graph) -> Optional[str]:
    """Why the model's output carries no gradient (None when it may): it returns nothing
    tensor-like, or integers (argmax ids) / booleans."""
    out = graph.output
    if out is None:
        return None
    if out.kind == Kind.OUTPUT and not out.inputs:
        return "forward returns no tensor (None or plain values)"
    if out.dtype is not None and not (out.dtype.is_floating_point or out.dtype.is_complex):
        dtype = str(out.dtype).replace("torch.", "")
        what = f"{out.op} ids" if out.op in ("argmax", "argmin", "argsort", "topk") else "values"
        return f"forward returns {dtype} {what}"
    return None


def _describe_layers(layers: list[LayerInfo], analysis: Analysis) -> None:
    """Forward order and what follows each layer: what the gradient-flow plot draws."""
    position: dict[str, int] = {}
    for n in analysis.graph.nodes:
        if n.is_weight_layer and n.module_path is not None:
            position.setdefault(n.module_path, len(position))
    followed: dict[str, str] = {}
    for li in analysis.facts.init.layers:
        if li.node.module_path is None:
            continue
        row = op_info(li.next_activation)
        if row is not None and row.saturating:
            followed[li.node.module_path] = "saturating"
        elif li.next_activation == "norm":
            followed[li.node.module_path] = "norm"
    for layer in layers:
        layer.position = position.get(layer.module)
        layer.followed_by = followed.get(layer.module)


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
