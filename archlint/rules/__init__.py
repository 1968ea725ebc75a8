"""The rule registry. One module per rule; codes are fixed forever once released."""

from __future__ import annotations

from typing import Iterable, Optional

from .base import Rule, RuleContext
from .missing_normalization import MissingNormalization
from .missing_residual import MissingResidual
from .poor_initialization import PoorInitialization
from .recurrent_horizon import RecurrentHorizon
from .saturating_stack import SaturatingStack
from .vanishing_gradient import VanishingGradient
from .exploding_gradient import ExplodingGradient
from .unused_suppression import UnusedSuppression

#: Every rule, in code order.
ALL_RULES: list[type[Rule]] = sorted(
    [SaturatingStack, MissingNormalization, MissingResidual, PoorInitialization,
     RecurrentHorizon, VanishingGradient, ExplodingGradient, UnusedSuppression],
    key=lambda r: r.code,
)

#: Codes reserved for rules that live in other modules or are yet to come.
RESERVED: dict[str, str] = {}


def register(rule: type[Rule]) -> None:
    """Add a rule (used by the gradient estimator's AL105/AL106)."""
    if all(r.code != rule.code for r in ALL_RULES):
        ALL_RULES.append(rule)
        ALL_RULES.sort(key=lambda r: r.code)


def find_rule(key: str) -> Optional[type[Rule]]:
    """A rule by code (``AL101``, any case) or name (``saturating-stack``)."""
    k = key.strip()
    for r in ALL_RULES:
        if r.code.lower() == k.lower() or r.name == k.lower():
            return r
    return None


def known_selector(sel: str) -> bool:
    """Whether ``sel`` (a code prefix such as ``AL1``, ``ALL``, or a rule name) matches a rule."""
    s = sel.strip()
    if s.upper() == "ALL":
        return True
    if find_rule(s) is not None:
        return True
    if s.upper() in RESERVED or s.lower() in RESERVED.values():
        return True
    return any(r.code.startswith(s.upper()) for r in ALL_RULES) and s.upper().startswith("AL")


def _matches(rule: type[Rule], sel: str) -> bool:
    s = sel.strip()
    return s.upper() == "ALL" or rule.code.startswith(s.upper()) or rule.name == s.lower()


def selected_rules(select: Optional[Iterable[str]], ignore: Iterable[str]) -> list[type[Rule]]:
    """Rules enabled by ``select`` (None = all) minus ``ignore``; the most specific wins."""
    sel = list(select) if select is not None else ["ALL"]
    ign = list(ignore)
    out = []
    for r in ALL_RULES:
        best_sel = max((_specificity(r, s) for s in sel if _matches(r, s)), default=-1)
        best_ign = max((_specificity(r, s) for s in ign if _matches(r, s)), default=-1)
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


__all__ = ["ALL_RULES", "Rule", "RuleContext", "find_rule", "selected_rules", "known_selector",
           "register", "RESERVED"]
