"""The rules, and how a set of rules is assembled, searched and selected.

Every rule is one :class:`~archlint.rules.base.Rule` subclass with a ``code``. The built-in rules
are the modules of this package; a team's own rules are modules of its repository, listed under
``local-rules`` in the config; an installed package can add rules through an ``archlint.rules``
entry point (:func:`plugin_rules`). All are registered the same way: :func:`rules_in_module`
takes every rule class a module defines, :func:`check_rule` says what is wrong with one
(:func:`checked` refuses a group holding one), and :func:`rule_set` joins groups of rules,
refusing a code or a name used twice.

Codes are fixed forever once released. ``AL`` codes are archlint's own; a local rule's code is
other capital letters followed by digits (``TEAM001``), so ``# noqa:`` tools accept it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Iterable, Optional

from ..results import SEVERITIES
from .base import ModelFacts, Rule, RuleContext, SourceContext

#: What a rule code looks like: capital letters, then digits.
CODE_PATTERN = re.compile(r"^([A-Z]+)([0-9]+)$")
#: The letters of archlint's own codes; local rules use other letters.
BUILTIN_PREFIX = "AL"
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class RuleError(ValueError):
    """A rule class that cannot be registered; the message names the class and its file."""


def rules_in_module(module: ModuleType) -> list[type[Rule]]:
    """The rules ``module`` defines: its own :class:`Rule` subclasses that have a ``code``.

    Classes imported from elsewhere, and bases without a code, are not counted.
    """
    return [obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, Rule) and obj is not Rule
            and obj.__module__ == module.__name__ and getattr(obj, "code", None) is not None]


def describe(rule: type[Rule]) -> str:
    """``rules/team.py: BigLinear`` -- where a rule class is defined, for messages."""
    from ..loading.targets import display_path

    if rule.__module__.startswith(__name__ + "."):
        return f"built-in rule {rule.code} {rule.name}"
    try:
        where = display_path(Path(inspect.getfile(rule)))
    except (TypeError, OSError):
        where = rule.__module__
    return f"{where}: {rule.__qualname__}"


def check_rule(rule: type[Rule], builtin: bool = False) -> Optional[str]:
    """What keeps ``rule`` from being registered, or None."""
    code = rule.code
    m = CODE_PATTERN.match(code) if isinstance(code, str) else None
    if m is None:
        return (f"code {code!r} is not a rule code (capital letters, then digits, e.g. "
                "TEAM001)")
    if not builtin and m.group(1) == BUILTIN_PREFIX:
        return (f"code {code} uses archlint's own prefix {BUILTIN_PREFIX}; give your rules "
                "other letters (e.g. TEAM001)")
    name = getattr(rule, "name", None)
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        return f"name {name!r} is not a kebab-case name (e.g. 'wide-linear-head')"
    if rule.severity not in SEVERITIES:
        return f"severity {rule.severity!r} is not one of {', '.join(SEVERITIES)}"
    if not isinstance(rule.options, dict) or not all(
            isinstance(k, str) and _NAME_PATTERN.match(k) and k != "severity"
            for k in rule.options):
        return "options must map kebab-case names (not 'severity') to their defaults"
    if getattr(rule, "kind", "model") not in ("model", "source"):
        return f"kind {rule.kind!r} is not 'model' or 'source'"
    if rule.check is Rule.check:
        return "defines no check(self, ctx) method"
    if not rule.documentation():
        return "has no documentation (the class docstring)"
    return None


def checked(rules: Iterable[type[Rule]], builtin: bool = False) -> list[type[Rule]]:
    """``rules``, each passed through :func:`check_rule`; the first problem raises
    :class:`RuleError` naming the class and its file."""
    out = list(rules)
    for rule in out:
        if not (inspect.isclass(rule) and issubclass(rule, Rule)):
            raise RuleError(f"{rule!r} is not a Rule subclass")
        problem = check_rule(rule, builtin)
        if problem is not None:
            raise RuleError(f"{describe(rule)}: {problem}")
    return out


def rule_set(*groups: Iterable[type[Rule]]) -> list[type[Rule]]:
    """The rules of every group, in code order; a code or name used twice raises
    :class:`RuleError` naming both classes."""
    seen: dict[str, type[Rule]] = {}
    for group in groups:
        for rule in group:
            for key in (rule.code, rule.name):
                other = seen.get(key)
                if other is not None and other is not rule:
                    raise RuleError(f"{describe(rule)}: {key} is already used by "
                                    f"{describe(other)}")
                seen[key] = rule
    return sorted(set(seen.values()), key=lambda r: r.code)


def _builtin_rules() -> list[type[Rule]]:
    found: list[type[Rule]] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += checked(rules_in_module(module), builtin=True)
    return rule_set(found)


#: Every built-in rule, in code order.
ALL_RULES: list[type[Rule]] = _builtin_rules()

#: The entry-point group through which installed packages add rules.
ENTRY_POINT_GROUP = "archlint.rules"


@functools.lru_cache(maxsize=None)
def plugin_rules() -> tuple[type[Rule], ...]:
    """The rules of installed packages: each ``archlint.rules`` entry point names a module (all
    its rules) or one rule class. A plugin that cannot be used raises :class:`RuleError`."""
    from importlib.metadata import entry_points

    found: list[type[Rule]] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"plugin {ep.name} = {ep.value}"
        if ep.dist is not None:
            where += f" (package {ep.dist.metadata['Name']} {ep.dist.version})"
        try:
            obj = ep.load()
        except Exception as exc:
            raise RuleError(f"{where}: cannot import: {type(exc).__name__}: {exc}"[:400]) \
                from None
        try:
            found += checked(rules_in_module(obj) if inspect.ismodule(obj) else [obj])
        except RuleError as exc:
            raise RuleError(f"{where}: {exc}") from None
    return tuple(found)


def find_rule(key: str, rules: Optional[Iterable[type[Rule]]] = None) -> Optional[type[Rule]]:
    """A rule by code (``AL101``, any case) or name (``saturating-stack``) among ``rules``
    (default: the built-in rules)."""
    k = key.strip()
    for r in ALL_RULES if rules is None else rules:
        if r.code.lower() == k.lower() or r.name == k.lower():
            return r
    return None


def matches(code: str, name: str, sel: str) -> bool:
    """Whether selector ``sel`` covers the rule ``code``/``name``: ``ALL``, the name, or a
    prefix of the code with all its letters (``AL``, ``AL1``, ``TEAM0``; not ``A``)."""
    s = sel.strip()
    if s.upper() == "ALL" or s.lower() == name:
        return True
    m, sm = CODE_PATTERN.match(code), re.match(r"^([A-Za-z]+)[0-9]*$", s)
    return bool(m and sm and sm.group(1).upper() == m.group(1)
                and code.startswith(s.upper()))


def known_selector(sel: str, rules: Optional[Iterable[type[Rule]]] = None) -> bool:
    """Whether ``sel`` (``ALL``, a code prefix such as ``AL1``, or a rule name) matches one of
    ``rules`` (default: the built-in rules)."""
    return sel.strip().upper() == "ALL" or any(
        matches(r.code, r.name, sel) for r in (ALL_RULES if rules is None else rules))


def selected_rules(select: Optional[Iterable[str]], ignore: Iterable[str],
                   rules: Optional[Iterable[type[Rule]]] = None) -> list[type[Rule]]:
    """``rules`` (default: the built-in rules) enabled by ``select`` (None = all) minus
    ``ignore``; the most specific selector wins."""
    sel = list(select) if select is not None else ["ALL"]
    ign = list(ignore)
    out = []
    for r in ALL_RULES if rules is None else rules:
        best_sel = max((_specificity(r, s) for s in sel if matches(r.code, r.name, s)),
                       default=-1)
        best_ign = max((_specificity(r, s) for s in ign if matches(r.code, r.name, s)),
                       default=-1)
        if best_sel >= 0 and best_sel > best_ign:
            out.append(r)
    return out


def _specificity(rule: type[Rule], sel: str) -> int:
    s = sel.strip()
    if s.upper() == "ALL":
        return 0
    if rule.name == s.lower():
        return len(rule.code)
    return len(s)


def code_prefixes(rules: Iterable[type[Rule]]) -> set[str]:
    """The letters of the rules' codes (``{"AL", "TEAM"}``): which ``# noqa:`` codes are ours."""
    return {m.group(1) for r in rules if (m := CODE_PATTERN.match(r.code))}


__all__ = ["ALL_RULES", "BUILTIN_PREFIX", "CODE_PATTERN", "ENTRY_POINT_GROUP", "ModelFacts",
           "Rule", "RuleContext", "SourceContext", "RuleError", "check_rule", "checked", "code_prefixes", "describe", "find_rule",
           "known_selector", "matches", "plugin_rules", "rule_set", "rules_in_module",
           "selected_rules"]
