"""Examples as tests: a rule's ``bad_example`` must trigger it, its ``good_example`` must not.

For a team's own test suite::

    from archlint.testing import assert_examples
    from rules.wide_head import WideHead

    def test_wide_head_examples():
        assert_examples(WideHead)

An example is the source of a module that defines ``class Model`` (built without arguments) and,
when the rule needs particular input shapes, ``INPUT = {"shape": [...], "dtype": ...}`` (the
config's ``input:`` form). It is written to a temporary file and linted as the command line
lints ``file.py:Model``: same loading, tracing, rule options (the rule's defaults) and
suppression comments, with only the rule selected. ``archlint rules --check-examples`` runs the
same checks for every rule, and archlint's own tests run them for the built-in rules.
"""

from __future__ import annotations

import ast
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from .results import TargetResult
from .rules import ALL_RULES, Rule, check_rule

__all__ = ["ExampleCheck", "assert_examples", "check_example", "check_examples",
           "lint_example"]

EXAMPLES = ("bad", "good")


@dataclass
class ExampleCheck:
    """The outcome of linting one example of one rule."""

    rule: type[Rule]
    #: "bad" (must trigger the rule) or "good" (must not).
    example: str
    passed: bool
    #: Why it failed (or what was found), in one line.
    detail: str = ""

    def __str__(self) -> str:
        verdict = "ok" if self.passed else f"FAILED: {self.detail}"
        return f"{self.rule.code} {self.rule.name}: {self.example} example {verdict}"


def lint_example(rule: type[Rule], source: str,
                 rules: Optional[Iterable[type[Rule]]] = None) -> TargetResult:
    """Lint ``source`` (a module defining ``class Model``) as a file with only ``rule``
    selected, and return the result of ``Model``. A source rule's example (``kind =
    "source"``: a training script, with or without a model) is linted as a whole file, and the
    result of the file's source is returned.

    ``rules``: the rules the run knows (default: the built-in rules, plus ``rule`` when it is
    not one of them). A rule that judges suppression comments after every other rule ran
    (``checks_source``, such as AL900) is checked with every rule selected.
    """
    from .config import Config
    from .runner import RunOptions, run

    known = list(rules) if rules is not None else list(ALL_RULES)
    local = [r for r in [*known, rule] if r not in ALL_RULES]
    folder = Path(tempfile.mkdtemp(prefix="archlint-example-"))
    try:
        path = folder / f"{rule.code.lower()}_example.py"
        path.write_text(source)
        is_source = getattr(rule, "kind", "model") == "source"
        opts = RunOptions(paths=[str(path) if is_source else f"{path}:Model"],
                          input=_example_input(source, path),
                          select=None if rule.checks_source else [rule.code],
                          report_unused_suppressions=rule.checks_source)
        report = run(Config(local_rules=list(dict.fromkeys(local))), opts)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if is_source:
        from .engine import SOURCE_TRACER

        errors = [t for t in report.targets if t.status != "ok"]
        mine = [t for t in report.targets if t.tracer == SOURCE_TRACER]
        if mine:
            return mine[0]
        if errors and errors[0].tracer == SOURCE_TRACER:
            return errors[0]
        # nothing to say about the file's source: a clean result
        return TargetResult(target=path.name, tracer=SOURCE_TRACER, rules_run=[rule.code])
    return report.targets[0]


def _example_input(source: str, path: Path) -> Any:
    """The spec of the example's module-level ``INPUT = {...}``, or None."""
    from .loading.inputs import parse_input

    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "INPUT" for t in node.targets):
            return parse_input(ast.literal_eval(node.value), f"{path.name}: INPUT",
                               origin="example")
    return None


def check_example(rule: type[Rule], example: str,
                  rules: Optional[Iterable[type[Rule]]] = None) -> ExampleCheck:
    """Lint ``rule``'s ``"bad"`` or ``"good"`` example and judge it."""
    if example not in EXAMPLES:
        raise ValueError(f"example must be one of {EXAMPLES}, not {example!r}")
    problem = check_rule(rule, builtin=rule in ALL_RULES)
    if problem is not None:
        return ExampleCheck(rule, example, False, problem)
    source = getattr(rule, f"{example}_example")
    if not source.strip():
        return ExampleCheck(rule, example, False, f"{rule.code} has no {example}_example")
    try:
        result = lint_example(rule, source, rules)
    except Exception as exc:  # a broken example (bad INPUT...) is a failed check
        return ExampleCheck(rule, example, False, f"{type(exc).__name__}: {exc}")
    if result.status != "ok":
        return ExampleCheck(rule, example, False, f"the example could not be analysed: "
                                                  f"{result.error}")
    mine = [f for f in result.findings if f.code == rule.code]
    if example == "bad" and not mine:
        why = "; ".join(n for n in result.notes if rule.code in n)
        return ExampleCheck(rule, example, False, "the bad example does not trigger "
                            f"{rule.code}" + (f" ({why})" if why else ""))
    if example == "good" and mine:
        return ExampleCheck(rule, example, False, f"the good example triggers {rule.code}: "
                                                  f"{mine[0].message}")
    return ExampleCheck(rule, example, True, "; ".join(f.message for f in mine))


def check_examples(rule: type[Rule],
                   rules: Optional[Iterable[type[Rule]]] = None) -> list[ExampleCheck]:
    """Both examples of ``rule``: the bad one must trigger it, the good one must not."""
    return [check_example(rule, example, rules) for example in EXAMPLES]


def assert_examples(rule: type[Rule], rules: Optional[Iterable[type[Rule]]] = None) -> None:
    """For pytest: raise AssertionError saying which example of ``rule`` failed and why."""
    failed = [str(c) for c in check_examples(rule, rules) if not c.passed]
    assert not failed, "\n".join(failed)
