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

from .config import Config
from .engine import Settings, TargetResult, lint_model
from .findings import Finding
from .inputs import InputSpec
from .loading import LoadedModel, LoadFailure, load_target
from .report.model import Report
from .rules import selected_rules
from .targets import Target, TargetError, display_path, resolve


@dataclass
class RunOptions:
    paths: list[str] = field(default_factory=list)
    select: Optional[list[str]] = None
    ignore: Optional[list[str]] = None
    extend_ignore: list[str] = field(default_factory=list)
    exclude: Optional[list[str]] = None
    fail_on: Optional[str] = None
    input: Optional[InputSpec] = None
    #: Called with each result as soon as it is ready (progress, streaming output).
    on_result: Optional[Callable[[TargetResult], None]] = None
    #: Extra per-target analyses (gradient estimate, measurement) run after the rules.
    post_analyses: list[Callable[[TargetResult], None]] = field(default_factory=list)


class UsageError(ValueError):
    pass


def settings_from(config: Config, opts: RunOptions) -> Settings:
    select = opts.select if opts.select is not None else config.select
    ignore = (opts.ignore if opts.ignore is not None else config.ignore) + opts.extend_ignore
    return Settings(rules=selected_rules(select, ignore), rule_options=config.rules)


def collect_targets(config: Config, opts: RunOptions) -> list[Target]:
    excludes = opts.exclude if opts.exclude is not None else config.exclude
    targets: list[Target] = []
    if opts.paths:
        for p in opts.paths:
            try:
                targets.extend(resolve(p, excludes, input_spec=opts.input,
                                       explicit=not Path(p).is_dir()))
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
        targets.extend(found)
    return targets


def _config_relative(spec: str, root: Path) -> str:
    from .targets import split_spec

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
        from .targets import split_spec

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
    report = Report(fail_on=opts.fail_on or config.fail_on)
    targets = collect_targets(config, opts)
    for target in targets:
        for loaded in load_target(target):
            if isinstance(loaded, LoadFailure):
                result = TargetResult(target=loaded.display, status="error", error=loaded.error)
            else:
                result = _lint_loaded(loaded, target, config, settings, opts)
            _apply_per_file_ignores(result, config)
            result.graph = None  # free the graph (and its model references) early
            report.targets.append(result)
            if opts.on_result is not None:
                opts.on_result(result)
    if not report.targets and opts.paths:
        report.notes.append("no models found (archlint lints nn.Module classes that build "
                            "without arguments, module-level nn.Module instances, and named "
                            "factories file.py:build)")
    return report


def _lint_loaded(loaded: LoadedModel, target: Target, config: Config, settings: Settings,
                 opts: RunOptions) -> TargetResult:
    spec = loaded.input or config.input
    result = lint_model(loaded.model, loaded.display, spec, settings)
    for post in opts.post_analyses:
        if result.status != "ok":
            break
        try:
            post(result)
        except Exception as exc:  # keep the other targets
            result.notes.append(f"{getattr(post, '__name__', 'analysis')} failed: "
                                f"{type(exc).__name__}: {exc}"[:300])
    return result


def _apply_per_file_ignores(result: TargetResult, config: Config) -> None:
    if not config.per_file_ignores:
        return
    kept: list[Finding] = []
    for f in result.findings:
        if f.path is None or not _ignored(f, config):
            kept.append(f)
    result.findings = kept


def _ignored(f: Finding, config: Config) -> bool:
    rel = f.path or ""
    try:
        rel_root = os.path.relpath(Path(rel).resolve(), config.root).replace(os.sep, "/")
    except ValueError:  # pragma: no cover
        rel_root = rel
    for pattern, codes in config.per_file_ignores.items():
        if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel_root, pattern) or \
                fnmatch.fnmatch(Path(rel).name, pattern):
            if any(f.code.startswith(c.upper()) or c.upper() == "ALL" or c == f.name
                   for c in codes):
                return True
    return False
