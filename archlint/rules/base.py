"""What every rule is made of, and the context rules read their facts from.

This is the public rule API, the same for the built-in rules and a team's own
(docs/writing-rules.md). A rule is one module holding one :class:`Rule` subclass: its code and
kebab-case name, default severity, options with defaults, documentation under ruff's headings
(the class docstring, printed by ``archlint explain CODE``), a bad and a good example model (run
as tests by :mod:`archlint.testing`), and ``check``, which reads the analysed graph and its facts
from a :class:`RuleContext` and yields findings. Rules never trace, import or measure.

A rule of ``kind = "source"`` reads a file's source instead (its ``ast``, without importing it):
``check`` then receives a :class:`SourceContext`, once per file the run lints -- training
scripts without a model, and files whose models fail to build, included.
"""

from __future__ import annotations

import ast
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
    """What a rule's ``check`` reads: one traced model's graph and the facts computed on it."""

    #: The traced model: nodes in execution order (:mod:`archlint.graph.ir`).
    graph: Graph
    #: Structure (gradient paths, depths, skip joins, saturating runs), initial-weight
    #: statistics and recurrent horizons (:mod:`archlint.analysis`).
    facts: GraphFacts
    #: The gradient estimate and its verdicts; None without an example input or tensor output.
    gradient: Optional[GradientFacts]
    #: The rule's options: its declared defaults, overridden by the config's ``rules:`` table.
    options: dict[str, Any]
    #: The severity its findings get (the default, or the config's).
    severity: str
    #: The target being linted, as the report names it.
    target: str = ""


@dataclass
class ModelFacts:
    """What the analysed graph of one model of the file says, for source rules: how its output
    is produced (``"sigmoid"``, ``"softmax"``, ``"log_softmax"``, ``"linear"``...)."""

    #: The model's class name (or the module-level name it was linted under).
    name: str
    #: Canonical op of the node producing the model's output, or None when unknown.
    output_op: Optional[str] = None


@dataclass
class SourceContext:
    """What a source rule's ``check`` reads: one Python file, parsed, never imported."""

    #: The file, and its name as reports show it.
    path: Path
    display: str
    #: Its text and syntax tree (``ast.parse``).
    text: str
    tree: ast.Module
    options: dict[str, Any]
    severity: str
    #: The file's models that were built and analysed in this run, by class name (and by the
    #: module-level name of an instance): what their graphs say. Empty when none was (a script,
    #: a file whose models failed to build): read the class source then.
    models: dict[str, ModelFacts] = field(default_factory=dict)
    #: The target being linted, as the report names it.
    target: str = ""


class Rule:
    #: Capital letters, then digits; ``AL`` codes are archlint's, a team's rules use others
    #: (``TEAM001``).
    code: ClassVar[str]
    #: Kebab-case; works wherever the code does.
    name: ClassVar[str]
    severity: ClassVar[str] = "warning"
    #: Option name (kebab-case, as in the config) -> default value. The default's type is the
    #: option's type.
    options: ClassVar[dict[str, Any]] = {}
    #: Source of a model (class ``Model``) that must trigger the rule, and one that must not.
    bad_example: ClassVar[str] = ""
    good_example: ClassVar[str] = ""
    #: Does the rule need example-input shapes (sequence lengths...)? Without an input it is
    #: skipped, with a note.
    needs_input: ClassVar[bool] = False
    #: A rule that judges the source's suppression comments once every other rule has run (the
    #: built-in AL900), not the graph: its examples are checked with every rule selected.
    checks_source: ClassVar[bool] = False
    #: ``"model"``: ``check`` reads one analysed model (:class:`RuleContext`). ``"source"``:
    #: ``check`` reads one file's syntax tree (:class:`SourceContext`), without importing it; it
    #: runs on every file the run lints, scripts with no model included. Its examples are files
    #: (a training script), linted whole.
    kind: ClassVar[str] = "model"

    @classmethod
    def check_option(cls, name: str, value: Any) -> Optional[str]:
        """What is wrong with the config's ``value`` for option ``name`` (already of the
        default's type), or None. Override to refuse values out of range."""
        return None

    def check(self, ctx: RuleContext) -> Iterator[Finding]:  # pragma: no cover - abstract
        """Yield a :class:`~archlint.results.Finding` (see :meth:`finding`) for each problem."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses
    def finding(self, ctx: RuleContext, node: Optional[Node], message: str,
                hint: Optional[str] = None, data: Optional[dict] = None,
                module: Optional[str] = None) -> Finding:
        """A finding of this rule located at ``node``'s definition (the line that builds the
        layer, or the line in ``forward`` of a functional call) and named by its module path
        (or ``module``). ``hint``: what to change, in one sentence; ``data``: machine-readable
        facts for the JSON report."""
        site: Optional[Site] = node.site if node is not None else None
        return Finding(
            code=self.code, name=self.name, severity=ctx.severity, message=message,
            path=display_path(Path(site.path)) if site else None,
            line=site.line if site else None, column=site.column if site else None,
            module=module if module is not None else (node.location_module if node else None),
            hint=hint, data=data or {},
        )

    def source_finding(self, ctx: SourceContext, node: Optional[ast.AST], message: str,
                       hint: Optional[str] = None, data: Optional[dict] = None,
                       module: Optional[str] = None) -> Finding:
        """A finding of a source rule located at ``node``'s line and column in ``ctx.path``."""
        line = getattr(node, "lineno", None)
        col = getattr(node, "col_offset", None)
        return Finding(code=self.code, name=self.name, severity=ctx.severity, message=message,
                       path=ctx.display, line=line, column=col + 1 if col is not None else None,
                       module=module, hint=hint, data=data or {})

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
