"""Resolve the targets of a run, build and lint each one, and collect the report.

Every failure is confined to its target: a path that does not exist, a file that cannot be
imported, a class that cannot be built, traced or analysed in time, user code that calls
``sys.exit`` becomes a target with ``status: "error"`` and a one-line reason; the other targets
are still analysed (:mod:`archlint.pipeline`). In the subprocess mode each target is linted in a
child process (:mod:`archlint.worker`), which also survives ``os._exit``, crashes and C code
that never returns.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

from .config import Config
from .engine import SOURCE_TRACER, Settings
from .guard import can_interrupt, watch_interrupts
from .pipeline import Item, Job, error, lint_target
from .watchdog import Watchdog
from .results import Finding, Outcome, TargetResult, Unbuilt, target_file
from .loading.inputs import InputSpec
from .report.model import Report
from .rule_docs import rule_info
from .rules import code_prefixes, matches, selected_rules
from .suppressions import SuppressionIndex
from .loading.targets import (NO_MODELS, Target, TargetError, config_relative, display_path,
                               resolve, split_spec)

if TYPE_CHECKING:  # imported where used: a plain run needs neither the cache nor -j's children
    from .baseline import Baseline
    from .cache import Cache
    from .worker import ChildPool


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
    #: Seconds per model (None: the config's ``timeout``; 0: no limit).
    timeout: Optional[float] = None
    #: Lint each target in a child process (None: the config's ``subprocess``).
    subprocess: Optional[bool] = None
    #: "cpu", "meta" or "auto" (None: the config's ``device``), and the parameter count above
    #: which "auto" analyses on the meta device (None: the config's ``meta-threshold``).
    device: Optional[str] = None
    meta_threshold: Optional[int] = None
    #: Worker processes for the targets (None: the config's ``jobs``, else one per core).
    jobs: Optional[int] = None
    #: The result cache (archlint.cache.Cache), or None.
    cache: Optional[Cache] = None
    #: In-process, when a model hangs in C code past its time limit the run is finished in
    #: another thread, which calls this with the report; it must end the process (the main
    #: thread stays stuck). None: no such rescue (the run waits).
    on_abandoned: Optional[Callable[[Report], None]] = None


class UsageError(ValueError):
    pass


def settings_from(config: Config, opts: RunOptions) -> Settings:
    select = opts.select if opts.select is not None else config.select
    ignore = (opts.ignore if opts.ignore is not None else config.ignore) + opts.extend_ignore
    return Settings(rules=selected_rules(select, ignore, config.available_rules),
                    rule_options=config.rules, fixes=opts.fixes)


@dataclass
class Unresolved:
    """A command-line path or config entry that names nothing (a missing file): its own error
    target; the other targets are still analysed."""

    display: str
    error: str


def collect_targets(config: Config, opts: RunOptions) -> list[Target | Unresolved]:
    excludes = opts.exclude if opts.exclude is not None else config.exclude
    targets: list[Target | Unresolved] = []
    if opts.paths:
        for p in opts.paths:
            # A file named without ':Name' is not "explicit": one that defines no class and
            # builds nothing at top level (a script) is skipped without being imported.
            try:
                targets.extend(resolve(p, excludes, input_spec=opts.input))
            except TargetError as exc:
                targets.append(Unresolved(p, _without_prefix(str(exc), split_spec(p)[0])))
        _attach_config_entries([t for t in targets if isinstance(t, Target)], config)
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
            targets.append(Unresolved(entry.target, f"{config.path}: targets: {exc}"))
            continue
        for t in found:
            if t.import_path is not None:
                t.search_path = config.root  # package.module:fn is relative to the config too
            if entry.feeds is not None:
                t.feeds, t.feeds_where = _config_feeds(entry.feeds, config.root), \
                    entry.feeds_where
        targets.extend(found)
    return targets


def _without_prefix(message: str, left: str) -> str:
    """``nope.py: no such file or directory`` -> ``no such file or directory`` (the target's
    name is printed before it anyway)."""
    return message[len(left) + 2:] if message.startswith(left + ": ") else message


def _config_feeds(feeds: str, root: Path) -> str:
    """``feeds: models/d.py:Disc`` is relative to the config's folder, like ``target:``."""
    return config_relative(feeds, root) if ":" in feeds else feeds


_config_relative = config_relative


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
            if entry.feeds is not None and t.feeds is None:  # type: ignore[attr-defined]
                t.feeds = _config_feeds(entry.feeds, config.root)  # type: ignore[attr-defined]
                t.feeds_where = entry.feeds_where  # type: ignore[attr-defined]


def run(config: Config, opts: RunOptions) -> Report:
    return _Run(config, opts).execute()


class _Run:
    """One run: the targets in order, each model's outcome collected into the report as it
    comes (from :func:`~archlint.pipeline.lint_target` in-process, or from child processes)."""

    def __init__(self, config: Config, opts: RunOptions) -> None:
        self.config, self.opts = config, opts
        self.settings = settings_from(config, opts)
        rules = config.available_rules
        self.report = Report(fail_on=opts.fail_on or config.fail_on,
                             rules=[rule_info(r) for r in rules])
        self.targets = collect_targets(config, opts)
        self.next = 0
        self.suppressions = SuppressionIndex(code_prefixes(rules)) \
            if opts.respect_suppressions else None
        self.coverage = _Coverage()
        self.timeout = config.timeout if opts.timeout is None else (opts.timeout or None)
        self.in_children = config.subprocess if opts.subprocess is None else opts.subprocess
        self.device = opts.device or config.device
        self.meta_threshold = config.meta_threshold if opts.meta_threshold is None \
            else opts.meta_threshold
        self.pool: Optional[ChildPool] = None
        #: -j N: the child pools linting targets side by side.
        self.pools: list[ChildPool] = []
        self.stopping = False
        self.jobs = max(1, (opts.jobs if opts.jobs is not None else config.jobs) or 1)
        #: The target being linted and the models of it already reported.
        self.current: Optional[Target] = None
        self.reported: set[str] = set()
        #: Files whose source rules have reported (once per file).
        self.source_files: set[str] = set()
        #: The source rules run with the last target of each file, knowing what the graphs
        #: of the file's models linted before said (``ModelFacts`` by name).
        self.last_of_file: dict[Path, int] = {}
        for t in self.targets:
            if isinstance(t, Target) and t.path is not None:
                self.last_of_file[t.path.resolve()] = id(t)
        self.file_facts: dict[Path, dict] = {}

    def job(self, target: Target, skip: frozenset = frozenset(),
            done: frozenset = frozenset()) -> Job:
        path = target.path.resolve() if target.path is not None else None
        return Job(target, self.settings, default_input=self.config.input,
                   measure=self.opts.measure, diff=self.opts.diff, timeout=self.timeout,
                   skip=skip, done=done, device=self.device, meta_threshold=self.meta_threshold,
                   source=path is None or self.last_of_file.get(path) == id(target),
                   facts=dict(self.file_facts.get(path, {})) if path is not None else {})

    def children(self) -> ChildPool:
        if self.pool is None:
            self.pool = self.new_pool()
        return self.pool

    def execute(self) -> Report:
        watchdog = None
        if not self.in_children and self.timeout and self.opts.on_abandoned is not None \
                and can_interrupt():
            watchdog = Watchdog(self._take_over)
        steps = _steps_to(watchdog) if watchdog is not None else None
        try:
            with watch_interrupts():
                if not self.lint_in_parallel():
                    while self.next < len(self.targets):
                        target = self.targets[self.next]
                        self.next += 1
                        if self.in_children:
                            self.lint(target, self.children().lint)
                        else:
                            self.lint(target, lambda job: lint_target(job, on_step=steps))
        except BaseException:  # Ctrl-C: no child outlives the run
            self.stopping = True
            for pool in [self.pool, *self.pools]:
                if pool is not None:
                    pool.abort()
            raise
        finally:
            if watchdog is not None:
                watchdog.stop()
            for pool in [self.pool, *self.pools]:
                if pool is not None:
                    pool.close()
        return self.finish()

    def lint_in_parallel(self) -> bool:
        """``-j N``: the targets the cache does not hold are linted by up to N child processes
        at once (each imports torch once and lints one target after another); their results
        are collected in the targets' order. False (nothing done) when fewer than two targets
        need linting: one process then does it all."""
        cache = self.opts.cache
        hits: dict[int, Any] = {}
        misses: list[int] = []
        for i, t in enumerate(self.targets):
            if not isinstance(t, Target):
                continue
            entry = _load(cache, t)
            if entry is not None:
                hits[i] = entry
            else:
                misses.append(i)
        workers = min(self.jobs, len(misses))
        if workers < 2:
            return False
        done: dict[int, list[Item]] = {}
        collected: set[int] = set()
        ready = threading.Condition()
        queue = list(misses)
        # the source rules run with the last target of each file and read what the graphs of
        # the file's other targets said: that target waits until they are collected (they come
        # before it in the queue, and never wait themselves)
        by_file: dict[Path, list[int]] = {}
        for j, u in enumerate(self.targets):
            if isinstance(u, Target) and u.path is not None:
                by_file.setdefault(u.path.resolve(), []).append(j)
        siblings = {group[-1]: group[:-1] for group in by_file.values() if len(group) > 1}

        def work(pool: ChildPool) -> None:
            while not self.stopping:
                with ready:
                    if not queue:
                        return
                    i = queue.pop(0)
                    while not self.stopping and any(j not in collected
                                                    for j in siblings.get(i, ())):
                        ready.wait(0.2)
                target = self.targets[i]
                assert isinstance(target, Target)
                try:
                    items = list(pool.lint(self.job(target)))
                except Exception as exc:  # pragma: no cover - archlint's own failure
                    items = [error(target.display, f"{type(exc).__name__}: {exc}"[:300])]
                with ready:
                    done[i] = items
                    ready.notify_all()

        _warm_up()  # what every child would import on its first model, imported once here
        for _ in range(workers):  # forked before any thread starts
            pool = self.new_pool(fork=True)
            pool.start()
            self.pools.append(pool)
        threads = [threading.Thread(target=work, args=(pool,), daemon=True)
                   for pool in self.pools]
        for th in threads:
            th.start()
        for i, target in enumerate(self.targets):
            self.next = i + 1
            if not isinstance(target, Target):
                self.lint(target, lambda job: iter(()))
                continue
            self.current, self.reported = target, set()
            if i in hits:
                from .cache import items_from

                for item in items_from(hits[i]):
                    self.collect(item, target)
            else:
                with ready:
                    while i not in done:
                        ready.wait(0.2)  # a short wait: Ctrl-C is seen at once
                    items = done.pop(i)
                self.collect_all(target, items)
            with ready:
                collected.add(i)
                ready.notify_all()
        for th in threads:
            th.join()
        return True

    def new_pool(self, fork: bool = False) -> ChildPool:
        from .worker import ChildPool

        return ChildPool(self.config.path, self.settings, measure=self.opts.measure,
                         timeout=self.timeout, diff=self.opts.diff, device=self.device,
                         meta_threshold=self.meta_threshold, fork=fork)

    def lint(self, target: Target | Unresolved,
             linter: Callable[[Job], Iterator[Item]]) -> None:
        if isinstance(target, Unresolved):
            self.collect(error(target.display, target.error), None)
            return
        self.current, self.reported = target, set()
        if self.cached(target):
            return
        self.collect_all(target, linter(self.job(target)))

    def cached(self, target: Target) -> bool:
        """Collect the target's results from the cache; False when they are not there."""
        entry = _load(self.opts.cache, target)
        if entry is None:
            return False
        from .cache import items_from

        for item in items_from(entry):
            self.collect(item, target)
        return True

    def collect_all(self, target: Target, items: Iterable[Item]) -> None:
        """Collect a target's fresh results, and keep them in the cache when it has one."""
        cache = self.opts.cache
        if cache is None:
            for item in items:
                self.collect(item, target)
            return
        from .cache import Entry, entry_items, hashes, identity_of, target_files

        files = target_files(target)
        if files is None:  # not cached: its dependencies cannot be known
            for item in items:
                self.collect(item, target)
            return
        deps = hashes(files)
        report = self.report
        mark = (len(report.targets), len(report.unbuilt), report.suppressed, report.baselined)
        raw: list[dict] = []
        ok = True
        matched = dict(opts_baseline.matched) if (opts_baseline := self.opts.baseline) else {}
        for item in items:
            raw.extend(entry_items([item]))
            if isinstance(item, Outcome):
                ok = ok and item.result.status == "ok"
                deps.update(hashes(Path(f) for f in item.files))
                deps.update(hashes(Path(layer.path) for layer in item.result.layers
                                   if layer.path))
            self.collect(item, target)
        if not ok:
            return  # a failure may not happen again: linted anew next time
        shown = [{"result": dataclasses.asdict(r)} for r in report.targets[mark[0]:]] + \
            [{"unbuilt": dataclasses.asdict(u)} for u in report.unbuilt[mark[1]:]]
        cache.store(identity_of(target), Entry(
            items=raw, shown=shown, suppressed=report.suppressed - mark[2],
            baselined=report.baselined - mark[3], files=deps,
            matched=[[list(k), n - matched.get(k, 0)] for k, n in
                     (opts_baseline.matched.items() if opts_baseline else ())
                     if n != matched.get(k, 0)]))

    def _take_over(self, kind: str, what: str, limit: float) -> None:
        """In the watchdog's thread, the main one being stuck in C code: the stuck model is a
        timeout error, the rest of the run goes to child processes, the command line gets the
        report (and ends the process)."""
        assert self.opts.on_abandoned is not None
        try:
            reason = (f"did not finish within {limit:g} s and could not be interrupted (C "
                      "code?); archlint carried on with the other models in child processes")
            target = self.current
            assert target is not None
            if kind == "import":
                self.collect(error(target.display, f"cannot import {target.display}: {reason}"),
                             target)
            else:
                verb = f"build {what}" if kind == "build" else "analyse"
                self.collect(error(what, f"cannot {verb}: {reason}"), target)
                job = self.job(target, skip=frozenset({what} if kind == "build" else ()),
                               done=frozenset(self.reported | {what}))
                for item in self.children().lint(job):
                    self.collect(item, target)
            while self.next < len(self.targets):
                target = self.targets[self.next]
                self.next += 1
                self.lint(target, self.children().lint)
            if self.pool is not None:
                self.pool.close()
            report = self.finish()
        except BaseException as exc:  # pragma: no cover - last resort
            report = self.report
            report.notes.append(f"archlint could not finish the run after a model hung: "
                                f"{type(exc).__name__}: {exc}"[:300])
        self.opts.on_abandoned(report)

    def collect(self, item: Item, target: Optional[Target]) -> None:
        """One model's outcome into the report: suppressions, per-file ignores, baseline."""
        report, opts = self.report, self.opts
        if isinstance(item, Unbuilt):
            report.unbuilt.append(item)
            return
        result = item.result
        if item.facts and target is not None and target.path is not None:
            known = self.file_facts.setdefault(target.path.resolve(), {})
            known.update({f.name: f for f in item.facts})
        source = result.tracer == SOURCE_TRACER
        if source:  # a file's source rules: once per file, however many of its targets
            if result.target in self.source_files:
                return
            self.source_files.add(result.target)
        self.reported.add(result.target)
        self.coverage.add(result, target, item.files)
        if self.suppressions is not None:
            result.findings, silenced = self.suppressions.filter(result.findings)
            report.suppressed += silenced
        if source and result.status == "ok" and not result.findings and not result.notes:
            return  # nothing to say about the file's source: no target of its own
        _apply_per_file_ignores(result, self.config,
                                target.path if target is not None else None)
        if opts.baseline is not None:
            report.baselined += opts.baseline.filter(result)
        report.targets.append(result)
        if opts.on_result is not None:
            opts.on_result(result)

    def finish(self) -> Report:
        report, opts, config = self.report, self.opts, self.config
        unused = opts.report_unused_suppressions
        if unused is None:
            unused = config.report_unused_suppressions
        if unused and self.suppressions is not None:
            _report_unused_suppressions(report, self.suppressions, self.coverage, config,
                                        self.settings, opts)
        if opts.baseline is not None:
            stale = opts.baseline.stale(t.target for t in report.targets)
            if stale:
                report.notes.append(f"{stale} finding{'s' if stale != 1 else ''} of "
                                    f"{opts.baseline.path} no longer occur; shrink the baseline "
                                    "with --update-baseline")
        if not report.targets and opts.paths:
            report.notes.append(NO_MODELS)
        if opts.cache is not None:
            report.notes.extend(opts.cache.notes)
            opts.cache.store_settings(self.settings_record(bool(unused)))
        return report

    def settings_record(self, unused: bool) -> dict:
        """What answering from the cache without torch needs of the config and the rules
        (archlint.cache.cached_report)."""
        config, opts = self.config, self.opts
        return {"rules": [dataclasses.asdict(r) for r in self.report.rules],
                "fail_on": self.report.fail_on, "report_unused": unused,
                "exclude": opts.exclude if opts.exclude is not None else config.exclude,
                "root": str(config.root),
                "entries": [{"target": e.target, "kwargs": e.kwargs} for e in config.targets]}


def _load(cache: Optional[Cache], target: Target) -> Any:
    """The cache's entry for ``target``, or None (no cache, or not in it)."""
    if cache is None:
        return None
    from .cache import identity_of

    return cache.load(identity_of(target))


def _warm_up() -> None:
    """Import, before forking the -j children, what building a model imports lazily (torch's
    meta kernels, about a second) so that no child pays for it."""
    import torch

    from .loading.meta import build_on_meta

    try:
        build_on_meta(lambda: torch.nn.Linear(2, 2))
    except Exception:  # pragma: no cover - only a warm-up
        pass


def _steps_to(watchdog: Watchdog) -> Callable[[str, str, Optional[float]], None]:
    def step(kind: str, what: str, limit: Optional[float]) -> None:
        if kind == "idle":
            watchdog.idle()
        else:
            watchdog.step(kind, what, limit)
    return step


class _Coverage:
    """Which source files each result's rules looked at: where suppressions can be judged."""

    def __init__(self) -> None:
        self.first_result: dict[Path, TargetResult] = {}
        self.rules_run: dict[Path, set[str]] = {}
        self.unsure: set[Path] = set()  # files of targets that could not be analysed

    def add(self, result: TargetResult, target: Optional[Target], sites: list[str]) -> None:
        own = _target_file(result.target, target)
        if result.status != "ok":
            if own is not None:
                self.unsure.add(own)
            return
        files = {own} if own is not None else set()
        files.update(Path(f).resolve() for f in sites)
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


def _target_file(display: str, target: Optional[Target]) -> Optional[Path]:
    own = target_file(display)
    if own is not None:
        return Path(own).resolve()
    return target.path.resolve() if target is not None and target.path is not None else None


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
