"""Rule documentation, rendered from the rule classes themselves.

Every rule documents itself in its docstring under ruff's headings (What it does / Why is this
bad? / Example / Use instead / References). ``archlint explain CODE`` prints it, ``archlint rules``
lists the rules, SARIF carries it as the rules' help, and ``docs/rules.md`` is generated from it
(``archlint rules --format markdown > docs/rules.md``): the reference cannot drift from the code.
"""

from __future__ import annotations

import json
import re
from typing import Iterable, Optional

from .results import RuleInfo
from .rules.base import Rule

REFERENCE_COMMAND = "archlint rules --format markdown > docs/rules.md"


def sections(rule: type[Rule]) -> dict[str, str]:
    """The documentation split by its ``## Heading`` lines (heading -> body)."""
    out: dict[str, str] = {}
    heading: Optional[str] = None
    lines: list[str] = []
    for line in rule.documentation().splitlines():
        m = re.match(r"^##\s+(.*?)\s*$", line)
        if m:
            if heading is not None:
                out[heading] = "\n".join(lines).strip()
            heading, lines = m.group(1), []
        else:
            lines.append(line)
    if heading is not None:
        out[heading] = "\n".join(lines).strip()
    return out


def summary(rule: type[Rule]) -> str:
    """The first sentence of "What it does", on one line (an introduced list is condensed)."""
    body = sections(rule).get("What it does") or rule.documentation()
    intro: list[str] = []
    items: list[str] = []
    for line in body.split("\n\n")[0].splitlines():
        if line.lstrip().startswith("- "):
            items.append(line.lstrip()[2:])
        elif items:
            items[-1] += " " + line.strip()
        else:
            intro.append(line)
    text = _first_sentence(" ".join(" ".join(intro).split()))
    if text.endswith(":") and items:
        heads = [re.split(r"[(,;:]", item, maxsplit=1)[0].strip().rstrip(".") for item in items]
        text = text[:-1].rstrip() + " " + ", ".join(h for h in heads if h) + "."
    return text if text.endswith(".") else text.rstrip(":") + "."


def _first_sentence(text: str) -> str:
    """Up to the first full stop outside parentheses and code spans."""
    depth, code = 0, False
    for i, ch in enumerate(text):
        if ch == "`":
            code = not code
        elif not code and ch == "(":
            depth += 1
        elif not code and ch == ")":
            depth = max(0, depth - 1)
        elif ch == "." and not code and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            return text[:i + 1]
    return text


def rule_info(rule: type[Rule]) -> RuleInfo:
    """What the reports say about ``rule``."""
    what = sections(rule).get("What it does", summary(rule))
    return RuleInfo(code=rule.code, name=rule.name, severity=rule.severity, summary=summary(rule),
                    description=" ".join(what.split()), documentation=rule.documentation(),
                    options=dict(rule.options))


def documentation(rule: type[Rule]) -> str:
    """The rule's documentation, with the fixes archlint can propose for it (archlint.fixes)
    after its own sections."""
    from .fixes import fix_documentation

    doc = rule.documentation()
    fixes = fix_documentation(rule.code)
    return doc + ("\n\n" + fixes if fixes else "")


def explain(rule: type[Rule]) -> str:
    """What ``archlint explain CODE`` prints."""
    text = f"# {rule.code} {rule.name} (default severity: {rule.severity})\n\n"
    text += documentation(rule) + "\n"
    if rule.options:
        text += "\n## Defaults\n" + "\n".join(f"- {k}: {v}" for k, v in rule.options.items())
        text += "\n"
    return text


def rules_table(rules: Iterable[type[Rule]]) -> str:
    """What ``archlint rules`` prints: code, name, default severity, summary."""
    return "".join(f"{r.code}  {r.name:<24} {r.severity:<8} {summary(r)}\n" for r in rules)


def rules_json(rules: Iterable[type[Rule]]) -> str:
    return json.dumps([{"code": r.code, "name": r.name, "severity": r.severity,
                        "summary": summary(r), "options": dict(r.options),
                        "documentation": r.documentation()} for r in rules], indent=2) + "\n"


def _anchor(rule: type[Rule]) -> str:
    return f"{rule.code.lower()}-{rule.name}"


def markdown_reference(rules: Iterable[type[Rule]]) -> str:
    """``docs/rules.md``: an index table, then every rule's own documentation."""
    rules = list(rules)
    out = [
        "<!-- Generated from the rule classes by `" + REFERENCE_COMMAND + "`. -->",
        "<!-- Do not edit by hand: change the rule's docstring and regenerate. -->",
        "",
        "# Rules",
        "",
        "Every rule has a code and a name; both work in `--select`, `--ignore`, "
        "`per-file-ignores`, the config's `rules:` table and suppression comments "
        "(`# archlint: disable=AL101`). "
        "`archlint explain CODE` prints the same text as below.",
        "",
        "| Code | Name | Default severity | What it does |",
        "| --- | --- | --- | --- |",
    ]
    out += [f"| [{r.code}](#{_anchor(r)}) | `{r.name}` | {r.severity} | "
            f"{summary(r).replace('|', '&#124;')} |" for r in sorted(rules, key=lambda r: r.code)]
    for r in rules:
        line = f"Default severity: **{r.severity}**."
        if r.options:
            line += " Option defaults: " + ", ".join(f"`{k}: {v}`" for k, v in r.options.items())
            line += "."
        out += ["", f"## {r.code} {r.name}", "", line, ""]
        for doc_line in documentation(r).splitlines():
            out.append("#" + doc_line if doc_line.startswith("## ") else doc_line)
    return "\n".join(out).rstrip() + "\n"
