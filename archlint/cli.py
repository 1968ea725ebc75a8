"""Command line: ``archlint PATH...``, ``archlint rules``, ``archlint explain CODE``.

Exit codes: 0 nothing at or above the failing severity; 1 findings; 2 usage, config or
analysis error -- an error inside archlint included: it is one line on stderr, never a traceback,
and never exit 1, which CI reads as "findings". 130: interrupted (Ctrl-C).

torch is imported only when there is a model to lint: ``archlint script.py`` on files that define
no class and build nothing at top level (what pre-commit passes on most commits) answers at once.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import click

from . import __version__
from .results import SEVERITIES
from .report import FORMATS

if TYPE_CHECKING:
    from .baseline import Baseline
    from .config import Config
    from .loading.inputs import InputSpec
    from .report.model import Report


class _DefaultGroup(click.Group):
    """``archlint model.py`` means ``archlint check model.py``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h",
                                                                          "--version")):
            args = ["check", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """The last line of defence: an error inside archlint is one line on stderr and exit
        2, never a traceback; Ctrl-C is exit 130 (click would say "Aborted!" and exit 1)."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("archlint: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            click.echo(f"archlint: internal error: {_internal_error(exc)}; please report it "
                       "with the command and the model", err=True)
            sys.exit(2)


def _internal_error(exc: BaseException) -> str:
    """``KeyError: 'x' (archlint/engine.py:120)``: the exception and archlint's innermost
    frame, on one line."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:300]
    here = str(Path(__file__).resolve().parent)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(here)]
    if frames:
        f = frames[-1]
        text += f" (archlint/{Path(f.filename).resolve().relative_to(here).as_posix()}:{f.lineno})"
    return text


class _StdoutToStderr:
    """While models run, file descriptor 1 is stderr too: what user code writes there by any
    means (C extensions, child processes) stays out of the report. Only for the real stdout
    of a process (not under click's test runner)."""

    def __init__(self) -> None:
        self.saved: Optional[int] = None

    def __enter__(self) -> "_StdoutToStderr":
        try:
            real = sys.stdout is sys.__stdout__ and sys.stdout.fileno() == 1 and \
                sys.stderr.fileno() == 2
        except (AttributeError, ValueError, OSError):
            real = False
        if real:
            sys.stdout.flush()
            self.saved = os.dup(1)
            os.dup2(2, 1)
        return self

    def restore(self) -> None:
        if self.saved is not None:
            sys.__stdout__.flush()
            os.dup2(self.saved, 1)
            os.close(self.saved)
            self.saved = None

    def __exit__(self, *exc: Any) -> None:
        self.restore()


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="archlint")
def main() -> None:
    """Find vanishing and exploding gradients in PyTorch architectures, before training."""


def _split(values: tuple[str, ...]) -> Optional[list[str]]:
    if not values:
        return None
    out: list[str] = []
    for v in values:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


def _fail(message: str) -> NoReturn:
    click.echo(f"archlint: error: {message}", err=True)
    sys.exit(2)


def _load_config(path: Optional[str], isolated: bool) -> Config:
    """The config to use; raises ConfigError (a broken plugin included)."""
    from .config import Config, checked_rules, find_config, load_config

    cfg_path = None if isolated else Path(path) if path else find_config()
    config = Config() if cfg_path is None else load_config(cfg_path)
    checked_rules(config)
    return config


def _cli_input(shape: Optional[str], dtype: Optional[str], high: Optional[int]
               ) -> Optional[InputSpec]:
    from .loading.inputs import InputError, InputSpec, TensorSpec, parse_dtype, parse_shape

    if shape is None:
        if dtype is not None or high is not None:
            raise InputError("--input-dtype/--input-high need --input-shape")
        return None
    spec = TensorSpec(shape=parse_shape(shape, "--input-shape"),
                      dtype=parse_dtype(dtype or "float32", "--input-dtype"),
                      origin="command line")
    if high is not None:
        spec.high = high
    elif not (spec.dtype.is_floating_point or spec.dtype.is_complex):
        spec.high = 2
    return InputSpec({None: spec})


def _read_baseline(path: Path) -> Baseline:
    """The baseline file's findings; an unreadable one ends the run."""
    from .baseline import BaselineError, load_baseline

    try:
        return load_baseline(path)
    except BaselineError as exc:
        _fail(str(exc))


def _import_torch() -> None:
    """Import torch for the run and, when this process is the one importing it, exempt what the
    import created from the cyclic garbage collector (``gc.freeze``).

    Those objects (about 165k) live as long as the process, yet every full collection would
    traverse them again: about 50 ms each, and importing archlint's rules and analysing a
    model trigger several. Only objects that exist now are frozen (nothing the run creates
    later); a process that had imported torch before (tests, a caller's interpreter) keeps its
    collector as it was."""
    if "torch" in sys.modules:
        return
    import gc

    import torch  # noqa: F401

    gc.freeze()


def _nothing_to_lint(paths: tuple[str, ...]) -> bool:
    """Every path is a Python file that defines no class and builds nothing at top level, and
    holds nothing the built-in source rules look for (no loss, log, sigmoid...).

    Such files are never imported (see ``targets.might_define_models``), so the run can answer
    without importing torch, loading the config or the rules.
    """
    from .loading.targets import might_define_models, might_need_source_rules, split_spec

    if not paths:
        return False
    for p in paths:
        left, name = split_spec(p)
        path = Path(left)
        if name is not None or not left.endswith(".py") or not path.is_file() or \
                might_define_models(path) or might_need_source_rules(path):
            return False
    return True


def _open_cache(config_path: Optional[str], isolated: bool, flag: Optional[bool],
                options: dict, baseline_path: Optional[str]) -> Any:
    """The run's result cache (archlint.cache), or None when it is off. Reads the config's
    file as written, without validating it: what matters is its content, in the key."""
    from .cache import Cache, cache_enabled, cache_folder, config_baseline, run_key
    from .config import find_config

    cfg = None if isolated else Path(config_path) if config_path else find_config()
    if cfg is not None and not cfg.is_file():
        return None  # the full run reports it
    if flag is None and not cache_enabled(cfg):
        return None
    extra = [Path(baseline_path)] if baseline_path else []
    configured = config_baseline(cfg)
    if not baseline_path and configured is not None:
        extra.append(configured)
    return Cache(cache_folder(cfg), run_key(options, cfg, extra))


def _write(text: str, output: Optional[str]) -> None:
    if not output:
        click.echo(text, nl=False)
        return
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror}")


def _render(report: Report, fmt: str, statistics: bool, verbose: bool) -> str:
    if statistics:
        from .report.statistics import render_statistics

        return render_statistics(report, fmt)
    return report.render(fmt, verbose=verbose)


@main.command("check")
@click.argument("paths", nargs=-1)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Config file (.archlint.yaml or pyproject.toml). Default: the nearest one.")
@click.option("--isolated", is_flag=True, help="Ignore all configuration files.")
@click.option("--select", multiple=True, help="Rule codes or prefixes to enable (comma-separated).")
@click.option("--ignore", multiple=True, help="Rule codes or prefixes to disable.")
@click.option("--extend-ignore", multiple=True, help="Codes to disable on top of the config's.")
@click.option("--exclude", multiple=True, help="Glob patterns of files to skip.")
@click.option("--fail-on", type=click.Choice(SEVERITIES),
              help="Lowest severity that makes the exit code 1 (default: warning).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="Report format: text, json, sarif (GitHub code scanning), github (workflow "
                   "annotations).")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False),
              help="Write the report to this file instead of standard output.")
@click.option("--statistics", is_flag=True,
              help="Print how many findings each rule has instead of the findings.")
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False),
              help="Leave out the findings listed in this baseline file.")
@click.option("--update-baseline", is_flag=True,
              help="Write every current finding to the baseline file and exit 0.")
@click.option("--report-unused-suppressions", "unused_suppressions", is_flag=True, default=None,
              help="Report suppression comments that silence nothing (AL900).")
@click.option("--ignore-noqa", is_flag=True,
              help="Ignore every '# archlint: disable' and '# noqa: AL...' comment.")
@click.option("--input-shape", help="Example input shape for every target, e.g. 8,3,32,32.")
@click.option("--input-dtype", help="Example input dtype (float32, int64, ...).")
@click.option("--input-high", type=int, help="Integer inputs: ids drawn from [0, HIGH).")
@click.option("--measure", is_flag=True,
              help="Also run the probe for real (one forward and backward on CPU): fills "
                   "measured_grad_rms and reports the estimator's error per target.")
@click.option("--fixes/--no-fixes", "fixes", default=True, show_default=True,
              help="Propose fixes under each finding, their effect predicted by the estimate "
                   "(with --measure: also measured on an edited copy of the model).")
@click.option("--diff", "diff", is_flag=True,
              help="Also print the fixes that are plain source substitutions as a unified "
                   "diff (shown, never applied; needs libcst).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a gradient-flow plot (.png, .svg, .pdf or .html; needs matplotlib).")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Seconds each model may take to build and be analysed (default 120, or "
                   "'timeout' in the config; 0: no limit). Past it, that model is an error.")
@click.option("--subprocess/--no-subprocess", "subprocess_mode", default=None,
              help="Lint in a child process (a new one after each that dies): survives "
                   "models that call os._exit, crash the interpreter or hang in C code (slower "
                   "to start: the child imports torch). Default: 'subprocess' in the config, "
                   "else off.")
@click.option("--device", type=click.Choice(("auto", "cpu", "meta")), default=None,
              help="Where models are built: cpu (for real), meta (no weights allocated: their "
                   "statistics come from the recorded initialisation; no --measure), auto "
                   "(meta above --meta-threshold parameters, with a note). Default: 'device' in "
                   "the config, else auto.")
@click.option("--meta-threshold", metavar="PARAMS",
              help="--device auto: build on the meta device above this many parameters (e.g. "
                   "200M, the default, or 'meta-threshold' in the config).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes to spread the targets over (default: 'jobs' in the "
                   "config, else one per core; 1: all in this process). Output order is stable.")
@click.option("--cache/--no-cache", "use_cache", default=None,
              help="Reuse the results of unchanged targets from the cache folder "
                   "(.archlint_cache/ next to the config, or in the working directory). "
                   "Default: 'cache' in the config, else on.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracer, input and notes per target.")
def check(paths: tuple[str, ...], config_path: Optional[str], isolated: bool,
          select: tuple[str, ...], ignore: tuple[str, ...], extend_ignore: tuple[str, ...],
          exclude: tuple[str, ...], fail_on: Optional[str], fmt: str, output: Optional[str],
          statistics: bool, baseline_path: Optional[str], update_baseline: bool,
          unused_suppressions: Optional[bool], ignore_noqa: bool, input_shape: Optional[str],
          input_dtype: Optional[str], input_high: Optional[int], measure: bool,
          fixes: bool, diff: bool, plot_path: Optional[str], timeout: Optional[float],
          subprocess_mode: Optional[bool], device: Optional[str],
          meta_threshold: Optional[str], jobs: Optional[int], use_cache: Optional[bool],
          verbose: bool) -> None:
    """Lint the models in PATHS (files, directories, file.py:Name, package.module:callable)."""
    if statistics and fmt not in ("text", "json"):
        _fail("--statistics prints text or json, not --format " + fmt)
    baseline = None
    if baseline_path and not update_baseline:
        baseline = _read_baseline(Path(baseline_path))
    if not update_baseline and _nothing_to_lint(paths):
        from .report.model import Report
        from .loading.targets import NO_MODELS

        _write(_render(Report(fail_on=fail_on or "warning", notes=[NO_MODELS]), fmt, statistics,
                       verbose), output)
        sys.exit(0)
    cache = None
    if not update_baseline and use_cache is not False:
        cache = _open_cache(config_path, isolated, use_cache, dict(
            select=_split(select), ignore=_split(ignore), extend_ignore=_split(extend_ignore),
            exclude=_split(exclude), fail_on=fail_on, input=[input_shape, input_dtype,
                                                             input_high],
            unused=unused_suppressions, noqa=not ignore_noqa, measure=measure, fixes=fixes,
            diff=diff, device=device, meta_threshold=meta_threshold, isolated=isolated,
            baseline=baseline_path), baseline_path)
    if cache is not None and not plot_path:
        from .cache import cached_report, config_baseline

        used = baseline
        if used is None and not baseline_path:  # the config's baseline, read without torch
            configured = config_baseline(cache.key.config)
            if configured is not None:
                from .baseline import BaselineError, load_baseline

                try:
                    used = load_baseline(configured)
                except BaselineError:
                    cache = None  # the full run reports it
        report = cached_report(cache, list(paths), used) if cache is not None else None
        if report is not None:  # every target cached: answered without importing torch
            _write(_render(report, fmt, statistics, verbose), output)
            sys.exit(report.exit_code())

    _import_torch()
    from .config import ConfigError, parse_count
    from .loading.inputs import InputError
    from .rules import known_selector
    from .runner import RunOptions, UsageError, run

    try:
        config = _load_config(config_path, isolated)
        spec = _cli_input(input_shape, input_dtype, input_high)
        threshold = None if meta_threshold is None else parse_count(meta_threshold,
                                                                    "--meta-threshold")
    except (ConfigError, InputError) as exc:
        _fail(str(exc))
        return
    sel, ign = _split(select), _split(ignore)
    for code in (sel or []) + (ign or []) + (_split(extend_ignore) or []):
        if not known_selector(code, config.available_rules):
            _fail(f"unknown rule {code!r} (see 'archlint rules')")
    if update_baseline:
        target = Path(baseline_path) if baseline_path else config.baseline
        if target is None:
            _fail("--update-baseline needs --baseline FILE (or 'baseline' in the config)")
            return
    elif baseline is None and config.baseline is not None:
        baseline = _read_baseline(config.baseline)
    redirect = _StdoutToStderr()
    stdout = sys.stdout  # the report's, whatever user code's prints are redirected to

    def finish(report: Report) -> NoReturn:
        """Print the report and exit (also from the watchdog's thread, see abandoned)."""
        if plot_path:
            from .report.plot import PlotError, render_plot

            try:
                render_plot(report.targets, plot_path,
                            float(config.rules.get("AL105", {}).get("max-decades", 3.0)))
            except PlotError as exc:
                _fail(str(exc))
        if update_baseline:
            _update_baseline(report, target)
        _write(_render(report, fmt, statistics, verbose), output)
        for t in report.errors:
            if fmt != "text" or output or statistics:
                click.echo(f"archlint: {t.target}: {t.error}", err=True)
        sys.exit(report.exit_code())

    def abandoned(report: Report) -> None:
        """The main thread is stuck in a model's C code: print the report from this thread and
        end the process."""
        code = 2
        try:
            redirect.restore()
            sys.stdout = stdout
            finish(report)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # pragma: no cover - last resort
            click.echo(f"archlint: internal error: {_internal_error(exc)}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    opts = RunOptions(paths=list(paths), select=sel, ignore=ign,
                      extend_ignore=_split(extend_ignore) or [],
                      exclude=_split(exclude), fail_on=fail_on, input=spec,
                      respect_suppressions=not ignore_noqa,
                      report_unused_suppressions=unused_suppressions, baseline=baseline,
                      measure=measure, fixes=fixes, diff=diff and fixes, timeout=timeout,
                      subprocess=subprocess_mode, on_abandoned=abandoned, device=device,
                      meta_threshold=threshold, cache=cache,
                      jobs=jobs or config.jobs or len(os.sched_getaffinity(0))
                      if hasattr(os, "sched_getaffinity") else jobs or config.jobs or
                      os.cpu_count() or 1)
    if measure and (device or config.device) == "meta":
        click.echo("archlint: note: --measure needs real weights and the models are built on "
                   "the meta device (--device meta): nothing will be measured", err=True)
    try:
        with redirect:
            report = run(config, opts)
    except UsageError as exc:
        _fail(str(exc))
        return
    finish(report)


def _update_baseline(report: Report, path: Path) -> None:
    from .baseline import BaselineError, write_baseline

    try:
        n = write_baseline(report, path)
    except BaselineError as exc:
        _fail(str(exc))
        return
    click.echo(f"archlint: wrote {n} finding{'s' if n != 1 else ''} of {len(report.targets)} "
               f"target{'s' if len(report.targets) != 1 else ''} to {path}", err=True)
    for t in report.errors:
        click.echo(f"archlint: {t.target}: {t.error}", err=True)
    # A target that could not be analysed has no findings in the baseline: say so by the code.
    sys.exit(2 if report.errors else 0)


def _config_options(command):
    """``--config`` / ``--isolated``: whose local rules a command sees."""
    command = click.option("--isolated", is_flag=True,
                           help="Ignore all configuration files (built-in rules only).")(command)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False),
                        help="Config file whose local rules to include. Default: the nearest "
                             "one.")(command)


def _available_rules(config_path: Optional[str], isolated: bool) -> list:
    """The built-in rules and the local rules of the config (exit 2 on a config error)."""
    from .config import ConfigError

    try:
        return _load_config(config_path, isolated).available_rules
    except ConfigError as exc:
        _fail(str(exc))


@main.command("rules")
@click.option("--format", "fmt", type=click.Choice(("text", "markdown", "json")), default="text",
              show_default=True,
              help="markdown: the rules reference (docs/rules.md is generated with it).")
@click.option("--check-examples", is_flag=True,
              help="Lint every rule's bad example (must trigger it) and good example (must "
                   "not); exit 1 if one fails.")
@click.option("--select", multiple=True, help="Only these rule codes, prefixes or names.")
@_config_options
def rules_cmd(fmt: str, check_examples: bool, select: tuple[str, ...],
              config_path: Optional[str], isolated: bool) -> None:
    """List every rule (built-in and the config's local rules): code, name, default severity
    and summary."""
    from .rule_docs import markdown_reference, rules_json, rules_table
    from .rules import known_selector, selected_rules

    rules = _available_rules(config_path, isolated)
    sel = _split(select)
    for code in sel or []:
        if not known_selector(code, rules):
            _fail(f"unknown rule {code!r} (see 'archlint rules')")
    rules = selected_rules(sel, [], rules)
    if check_examples:
        _check_examples(rules)
    elif fmt == "markdown":
        click.echo(markdown_reference(rules), nl=False)
    elif fmt == "json":
        click.echo(rules_json(rules), nl=False)
    else:
        click.echo(rules_table(rules), nl=False)


def _check_examples(rules: list) -> None:
    from .testing import check_examples

    failed = 0
    for rule in rules:
        for check in check_examples(rule, rules):
            click.echo(str(check))
            failed += not check.passed
    n = 2 * len(rules)
    click.echo(f"{n - failed} of {n} examples behave as documented.")
    sys.exit(1 if failed else 0)


@main.command("explain")
@click.argument("code")
@_config_options
def explain(code: str, config_path: Optional[str], isolated: bool) -> None:
    """Print a rule's documentation (by code or name), local rules included."""
    from .rule_docs import explain as explain_text
    from .rules import find_rule

    rule = find_rule(code, _available_rules(config_path, isolated))
    if rule is None:
        _fail(f"unknown rule {code!r} (see 'archlint rules')")
        return
    click.echo(explain_text(rule), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
