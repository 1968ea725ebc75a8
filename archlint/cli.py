"""Command line: ``archlint PATH...``, ``archlint rules``, ``archlint explain CODE``.

Exit codes: 0 nothing at or above the failing severity; 1 findings; 2 usage, config or
analysis error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from . import __version__
from .config import Config, ConfigError, find_config, load_config
from .inputs import InputError, InputSpec, parse_dtype, parse_shape, TensorSpec
from .findings import SEVERITIES

FORMATS = ("text", "json")


class _DefaultGroup(click.Group):
    """``archlint model.py`` means ``archlint check model.py``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h",
                                                                          "--version")):
            args = ["check", *args]
        return super().parse_args(ctx, args)


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


def _fail(message: str) -> None:
    click.echo(f"archlint: error: {message}", err=True)
    sys.exit(2)


def _load_config(path: Optional[str], isolated: bool) -> Config:
    if isolated:
        return Config()
    cfg_path = Path(path) if path else find_config()
    if cfg_path is None:
        return Config()
    return load_config(cfg_path)


def _cli_input(shape: Optional[str], dtype: Optional[str], high: Optional[int]
               ) -> Optional[InputSpec]:
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
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False),
              help="Write the report to this file instead of standard output.")
@click.option("--input-shape", help="Example input shape for every target, e.g. 8,3,32,32.")
@click.option("--input-dtype", help="Example input dtype (float32, int64, ...).")
@click.option("--input-high", type=int, help="Integer inputs: ids drawn from [0, HIGH).")
@click.option("-v", "--verbose", is_flag=True, help="Show tracer, input and notes per target.")
def check(paths: tuple[str, ...], config_path: Optional[str], isolated: bool,
          select: tuple[str, ...], ignore: tuple[str, ...], extend_ignore: tuple[str, ...],
          exclude: tuple[str, ...], fail_on: Optional[str], fmt: str, output: Optional[str],
          input_shape: Optional[str], input_dtype: Optional[str], input_high: Optional[int],
          verbose: bool) -> None:
    """Lint the models in PATHS (files, directories, file.py:Name, package.module:callable)."""
    from .report.json_format import render_json
    from .report.text import render_text
    from .rules import known_selector
    from .runner import RunOptions, UsageError, run

    try:
        config = _load_config(config_path, isolated)
        spec = _cli_input(input_shape, input_dtype, input_high)
    except (ConfigError, InputError) as exc:
        _fail(str(exc))
        return
    sel, ign = _split(select), _split(ignore)
    for code in (sel or []) + (ign or []) + (_split(extend_ignore) or []):
        if not known_selector(code):
            _fail(f"unknown rule {code!r} (see 'archlint rules')")
    opts = RunOptions(paths=list(paths), select=sel, ignore=ign,
                      extend_ignore=_split(extend_ignore) or [],
                      exclude=_split(exclude), fail_on=fail_on, input=spec)
    try:
        report = run(config, opts)
    except UsageError as exc:
        _fail(str(exc))
        return
    text = render_json(report) if fmt == "json" else render_text(report, verbose=verbose)
    if output:
        try:
            Path(output).write_text(text)
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror}")
    else:
        click.echo(text, nl=False)
    for t in report.errors:
        if fmt != "text" or output:
            click.echo(f"archlint: {t.target}: {t.error}", err=True)
    sys.exit(report.exit_code())


@main.command("rules")
def rules_cmd() -> None:
    """List every rule: code, name, default severity and summary."""
    from .rules import ALL_RULES

    for r in ALL_RULES:
        click.echo(f"{r.code}  {r.name:<24} {r.severity:<8} {r.summary()}")


@main.command("explain")
@click.argument("code")
def explain(code: str) -> None:
    """Print a rule's documentation (by code or name)."""
    from .rules import RESERVED, find_rule

    rule = find_rule(code)
    if rule is None:
        if code.upper() in RESERVED:
            _fail(f"{code.upper()} ({RESERVED[code.upper()]}) is reserved for the gradient "
                  "estimator and not available in this version")
        _fail(f"unknown rule {code!r} (see 'archlint rules')")
        return
    click.echo(f"# {rule.code} {rule.name} (default severity: {rule.severity})\n")
    click.echo(rule.documentation())
    if rule.options:
        click.echo("\n## Defaults\n" + "\n".join(f"- {k}: {v}" for k, v in rule.options.items()))


if __name__ == "__main__":  # pragma: no cover
    main()
