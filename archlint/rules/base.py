"""What every rule is made of, and the context rules read their facts from.

A rule is one module holding one :class:`Rule` subclass: its code and kebab-case name, default
severity, options with defaults, documentation under ruff's headings (the class docstring, printed
by ``archlint explain CODE``), a bad and a good example model (run as tests), and ``check``, which
reads the analysed graph and yields findings. Rules never trace, import or measure.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Optional

from ..analysis import GraphFacts
from ..estimate import GradientFacts
from ..results import Finding
from ..graph.ir import Graph, Node, Site
from ..paths import display_path


@dataclass
class RuleContext:
    graph: Graph
    facts: GraphFacts
    #: The gradient estimate and its verdicts; None without an example input or tensor output.
    gradient: Optional[GradientFacts]
    options: dict[str, Any]
    severity: str
    target: str = ""


class Rule:
    code: ClassVar[str]
    name: ClassVar[str]
    severity: ClassVar[str] = "warning"
    #: Option name (kebab-case, as in the config) -> default value. The default's type is the
    #: option's type.
    options: ClassVar[dict[str, Any]] = {}
    #: Source of a model (class ``Model``) that must trigger the rule, and one that must not.
    bad_example: ClassVar[str] = ""
    good_example: ClassVar[str] = ""
    #: Does the rule need example-input shapes (sequence lengths...)?
    needs_input: ClassVar[bool] = False

    def check(self, ctx: RuleContext) -> Iterator[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses
    def finding(self, ctx: RuleContext, node: Optional[Node], message: str,
                hint: Optional[str] = None, data: Optional[dict] = None,
                module: Optional[str] = None) -> Finding:
        site: Optional[Site] = node.site if node is not None else None
        return Finding(
            code=self.code, name=self.name, severity=ctx.severity, message=message,
            path=display_path(Path(site.path)) if site else None,
            line=site.line if site else None, column=site.column if site else None,
            module=module if module is not None else (node.location_module if node else None),
            hint=hint, data=data or {},
        )

    @classmethod
    def documentation(cls) -> str:
        return textwrap.dedent(cls.__doc__ or "").strip()


def describe_ops(nodes: Iterable[Node]) -> str:
    """``"6 Sigmoid, 2 tanh"`` -- a compact count of what a chain is made of."""
    counts: dict[str, int] = {}
    for n in nodes:
        label = type(n.module).__name__ if n.module is not None else n.op
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{c} {k}" for k, c in sorted(counts.items(), key=lambda kv: -kv[1]))


def span(nodes: list[Node]) -> str:
    """``"body.1 .. body.11"`` -- the first and last module of a chain."""
    names = [n.location_module or n.name for n in nodes]
    if not names:
        return ""
    if len(names) == 1 or names[0] == names[-1]:
        return names[0] or "<root>"
    return f"{names[0] or '<root>'} .. {names[-1] or '<root>'}"
