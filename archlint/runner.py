"""Resolve the targets of a run, build and lint each one, and collect the report.

Every failure is confined to its target: a file that cannot be imported, a class that cannot be
built or traced becomes a target with ``status: "error"`` and a one-line reason; the other
targets are still analysed.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .baseline import Baseline
from .config import Config
from .engine import Analysis, Settings, lint_and_analyse
from .results import Finding, TargetResult, target_file
from .loading.inputs import InputSpec, infer_input
from .loading.build import LoadedModel, LoadFailure, load_target
from .report.model import Report
from .rule_docs import rule_info
from .rules import code_prefixes, matches, selected_rules
from .suppressions import SuppressionIndex
from .loading.targets import NO_MODELS, Target, TargetError, display_path, resolve, split_spec


@dataclass
class RunOptions:
    paths: list[str] = field(default_factory=list)
    select: Optional[list[str]] = None
    ignore: Optional[list[str]] = None
    extend_ignore: list[str] = field(default_factory=list)
    exclude: Optional[list[str]] = None
    fail_on: Optional[str] = None
    input: Optional[InputSpec] = None
    #: Honour ``# archlint: disable`` / ``# noqa: AL...`` comments (off: ``--ignore-noqa``).
    respect_suppressions: bool = True
    #: Report suppression comments that silenced nothing (AL900); None: as the config says.
    report_unused_suppressions: Optional[bool] = None
    #: Leave out the findings this baseline lists.
    baseline: Optional[Baseline] = None
    #: Called with each result as soon as it is ready (progress, streaming output). AL900
    #: findings are only known at the end of the run and are not in what it receives.
    on_result: Optional[Callable[[TargetResult], None]] = None
    #: Also run the probe for real on each analysed target (``--measure``).
    measure: bool = False
    #: Propose fixes with their effect predicted (archlint.fixes); ``diff``: also as unified
    #: diffs where they are plain source substitutions (``--diff``).
    fixes: bool = True
    diff: bool = False


class UsageError(ValueError):
    pass


def settings_from(config: Config, opts: RunOptions) -> Settings:
    select = opts.select if opts.select is not None else config.select
    ignore = (opts.ignore if opts.ignore is not None else config.ignore) + opts.extend_ignore
    return Settings(rules=selected_rules(select, ignore, config.available_rules),
                    rule_options=config.rules, fixes=opts.fixes)


def collect_targets(config: Config, opts: RunOptions) -> list[Target]:
    excludes = opts.exclude if opts.exclude is not None else config.exclude
    targets: list[Target] = []
    if opts.paths:
        for p in opts.paths:
            # A file named without ':Name' is not "explicit": one that defines no class and
            # builds nothing at top level (a script) is skipped without being imported.
            try:
                targets.extend(resolve(p, excludes, input_spec=opts.input))
            except TargetError as exc:
                raise UsageError(str(exc)) from None
        _attach_config_entries(targets, config)
        return targets
    if not config.targets:
        raise UsageError("no targets: pass a file, directory or package.module:callable, or "
                         "list 'targets' in the config")
    for entry in config.targets:
        spec = _config_relative(entry.target, config.root)
        try:
            found = resolve(spec, excludes, kwargs=entry.kwargs,
                            input_spec=opts.input or entry.input, explicit=True)
        except TargetError as exc:
            raise UsageError(f"{config.path}: targets: {exc}") from None
        for t in found:
            if t.import_path is not None:
                t.search_path = config.root  # package.module:fn is relative to the config too
        targets.extend(found)
    return targets


def _config_relative(spec: str, root: Path) -> str:
    left, name = split_spec(spec)
    candidate = root / left
    if not Path(left).is_absolute() and (left.endswith(".py") or candidate.exists()):
        rel = display_path(candidate)
        return rel + (f":{name}" if name else "")
    return spec


def _attach_config_entries(targets: list[Target], config: Config) -> None:
    """A command-line file that the config also lists takes the config's kwargs and input."""
    by_key: dict[tuple, object] = {}
    for entry in config.targets:
        left, name = split_spec(entry.target)
        path = (config.root / left).resolve()
        by_key[(path, name)] = entry
    for t in targets:
        if t.path is None:
            continue
        entry = by_key.get((t.path, t.name))
        if entry is not None:
            if not t.kwargs:
                t.kwargs = dict(entry.kwargs)  # type: ignore[attr-defined]
            if t.input is None:
                t.input = entry.input  # type: ignore[attr-defined]


def run(config: Config, opts: RunOptions) -> Report:
    settings = settings_from(config, opts)
    rules = config.available_rules
    report = Report(fail_on=opts.fail_on or config.fail_on,
                    rules=[rule_info(r) for r in rules])
    targets = collect_targets(config, opts)
    suppressions = SuppressionIndex(code_prefixes(rules)) if opts.respect_suppressions else None
    coverage = _Coverage()
    for target in targets:
        for loaded in load_target(target):
            analysis = None
            if isinstance(loaded, LoadFailure):
                result = TargetResult(target=loaded.display, status="error", error=loaded.error)
            else:
                result, analysis = _lint_loaded(loaded, config, settings, opts)
            coverage.add(result, target, analysis)
            if suppressions is not None:
                result.findings, silenced = suppressions.filter(result.findings)
                report.suppressed += silenced
            _apply_per_file_ignores(result, config, target.path)
            if opts.baseline is not None:
                report.baselined += opts.baseline.filter(result)
            report.targets.append(result)
            if opts.on_result is not None:
                opts.on_result(result)
    unused = opts.report_unused_suppressions
    if unused is None:
        unused = config.report_unused_suppressions
    if unused and suppressions is not None:
        _report_unused_suppressions(report, suppressions, coverage, config, settings, opts)
    if opts.baseline is not None:
        stale = opts.baseline.stale(t.target for t in report.targets)
        if stale:
            report.notes.append(f"{stale} finding{'s' if stale != 1 else ''} of "
                                f"{opts.baseline.path} no longer occur; shrink the baseline with "
                                "--update-baseline")
    if not report.targets and opts.paths:
        report.notes.append(NO_MODELS)
    return report


class _Coverage:
    """Which source files each result's rules looked at: where suppressions can be judged."""

    def __init__(self) -> None:
        self.first_result: dict[Path, TargetResult] = {}
        self.rules_run: dict[Path, set[str]] = {}
        self.unsure: set[Path] = set()  # files of targets that could not be analysed

    def add(self, result: TargetResult, target: Target, analysis: Optional[Analysis]) -> None:
        own = _target_file(result.target, target)
        if result.status != "ok":
            if own is not None:
                self.unsure.add(own)
            return
        files = {own} if own is not None else set()
        if analysis is not None:
            files.update(Path(n.site.path).resolve() for n in analysis.graph.nodes
                         if n.site is not None)
        files.update(Path(layer.path).resolve() for layer in result.layers if layer.path)
        for f in files:
            if not f.is_file() or not _user_file(f):
                continue
            self.first_result.setdefault(f, result)
            self.rules_run.setdefault(f, set()).update(result.rules_run)

    def judged(self) -> dict[Path, set[str]]:
        return {f: codes for f, codes in self.rules_run.items() if f not in self.unsure}


def _user_file(path: Path) -> bool:
    """Not an installed library's file (their comments are not the user's to fix)."""
    return not any(part in ("site-packages", "dist-packages") for part in path.parts)


def _target_file(display: str, target: Target) -> Optional[Path]:
    own = target_file(display)
    if own is not None:
        return Path(own).resolve()
    return target.path.resolve() if target.path is not None else None


def _report_unused_suppressions(report: Report, index: SuppressionIndex, coverage: _Coverage,
                                config: Config, settings: Settings, opts: RunOptions) -> None:
    from .rules.unused_suppression import UnusedSuppression

    ignore = (opts.ignore if opts.ignore is not None else config.ignore) + opts.extend_ignore
    rules = config.available_rules
    if not selected_rules([UnusedSuppression.code], ignore, rules):
        return
    severity = settings.severity_for(UnusedSuppression)
    if severity == "off":
        return
    known = {r.code: r.code for r in rules}
    known.update({r.name: r.code for r in rules})
    unused, malformed = index.unused(coverage.judged(), known)
    rule = UnusedSuppression()
    found = [rule.unused(u, severity) for u in unused]
    found += [rule.malformed(m, severity) for m in malformed]
    touched: dict[int, TargetResult] = {}
    for f in found:
        result = coverage.first_result[Path(f.path or "").resolve()]
        kept = [f]
        holder = TargetResult(target=result.target, findings=kept)
        _apply_per_file_ignores(holder, config, None)
        if opts.baseline is not None:
            report.baselined += opts.baseline.filter(holder)
        result.findings.extend(holder.findings)
        touched[id(result)] = result
    for result in touched.values():
        result.findings.sort(key=Finding.sort_key)


def _lint_loaded(loaded: LoadedModel, config: Config, settings: Settings, opts: RunOptions
                 ) -> tuple[TargetResult, Optional[Analysis]]:
    spec = loaded.input or config.input or infer_input(loaded.model)
    result, analysis = lint_and_analyse(loaded.model, loaded.display, spec, settings)
    if opts.measure and analysis is not None:
        _measure(loaded, analysis, result)
    if opts.diff and analysis is not None and analysis.fixes:
        from .fixes import add_diffs

        result.notes.extend(add_diffs(analysis.fixes))
    return result, analysis


def _measure(loaded: LoadedModel, analysis: Analysis, result: TargetResult) -> None:
    """``--measure``: the probe's gradients into the layers, the error figure into the result."""
    from .measure_step import measure_target

    spec = analysis.graph.input_spec
    if spec is None:
        result.notes.append("--measure skipped: no example input")
        return
    try:
        measured = measure_target(loaded.model, spec, result.layers)
    except Exception as exc:  # keep the other targets
        result.notes.append(f"measure_target failed: {type(exc).__name__}: {exc}"[:300])
        return
    for layer in result.layers:
        layer.measured_grad_rms = measured.grad_rms.get(layer.module)
    result.measurement = m = measured.measurement
    if m.median_decades is not None:
        result.notes.append(f"estimate vs measured gradients: median error "
                            f"{m.median_decades:.3f} decades over {m.layers} layers")
    if analysis.fixes:
        from .fixes import measure_fixes

        result.notes.extend(measure_fixes(loaded.model, spec, analysis.fixes))


def _apply_per_file_ignores(result: TargetResult, config: Config,
                            target_file: Optional[Path]) -> None:
    """Drop the findings a ``per-file-ignores`` pattern covers.

    A pattern covers a finding when it matches the file the finding points at, or the file of
    the target (so ``legacy/*.py: [ALL]`` also covers the layers those models import).
    """
    if not config.per_file_ignores:
        return
    own = display_path(target_file) if target_file is not None else None
    result.findings = [f for f in result.findings
                       if not any(_ignored(f, p, config) for p in (f.path, own) if p)]


def _ignored(f: Finding, rel: str, config: Config) -> bool:
    try:
        rel_root = os.path.relpath(Path(rel).resolve(), config.root).replace(os.sep, "/")
    except ValueError:  # pragma: no cover
        rel_root = rel
    for pattern, codes in config.per_file_ignores.items():
        if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel_root, pattern) or \
                fnmatch.fnmatch(Path(rel).name, pattern):
            if any(matches(f.code, f.name, c) for c in codes):
                return True
    return False
