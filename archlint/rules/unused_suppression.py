"""AL900 unused-suppression: a suppression comment that silences nothing."""

from __future__ import annotations

from typing import Iterator

from ..results import Finding
from ..suppressions import Malformed, UnusedSuppression as Unused
from ..paths import display_path
from .base import Rule, RuleContext


class UnusedSuppression(Rule):
    """
    ## What it does
    Reports suppression comments (`# archlint: disable=...`, `# noqa: AL...`,
    `# archlint: disable-file=...`) that silenced no finding in this run, codes in them that are
    not archlint rules, and `# archlint:` comments archlint does not understand.

    It runs only when asked for: `archlint --report-unused-suppressions` (or
    `report-unused-suppressions: true` in the config). A code is judged only where its rule ran
    over the file; a comment that also names `AL900` is never reported, and codes of other tools
    in a `# noqa` comment (`E501`...) are left alone.

    ## Why is this bad?
    A suppression outlives the problem it silenced: once the layer is fixed or moved, the comment
    stays, hides the next real finding on that line, and tells readers something that is no
    longer true. A misspelt code or directive silences nothing while looking as if it did.

    ## Example
    ```python
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)  # archlint: disable=AL104
            nn.init.kaiming_normal_(self.fc.weight)  # fixed since, the comment stayed
    ```

    ## Use instead
    ```python
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)
            nn.init.kaiming_normal_(self.fc.weight)
    ```

    ## Options
    None; set its severity under `rules: {AL900: {severity: warning}}` to fail on it.

    ## References
    - ruff's `RUF100` (unused `noqa` directive) and pylint's `useless-suppression`.
    """

    code = "AL900"
    name = "unused-suppression"
    severity = "info"
    checks_source = True

    bad_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)  # archlint: disable=AL104
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())
"""

    good_example = """
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)  # archlint: disable=AL104
        self.fc2 = nn.Linear(64, 10)
        nn.init.normal_(self.fc1.weight, std=1e-3)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())
"""

    def check(self, ctx: RuleContext) -> Iterator[Finding]:
        """Nothing to see in the graph: the runner calls :meth:`unused` after all rules ran."""
        return iter(())

    def unused(self, item: Unused, severity: str) -> Finding:
        s = item.suppression
        parts = []
        if item.unused == ["*"]:
            parts.append("no archlint finding to silence")
        elif item.unused:
            where = "in this file" if s.file_level else "on this line"
            parts.append(f"no {', '.join(item.unused)} finding {where}")
        if item.unknown:
            parts.append(f"not archlint rule{'s' if len(item.unknown) > 1 else ''}: "
                         f"{', '.join(item.unknown)}")
        kind = "file-level suppression" if s.file_level else "suppression"
        return Finding(code=self.code, name=self.name, severity=severity,
                       message=f"unused {kind} `{s.text}`: {'; '.join(parts)}",
                       path=display_path(s.path), line=s.line, column=s.column,
                       hint="remove the comment, or the codes that no longer match",
                       data={"unused": list(item.unused), "unknown": list(item.unknown)})

    def malformed(self, item: Malformed, severity: str) -> Finding:
        return Finding(code=self.code, name=self.name, severity=severity,
                       message=f"`{item.text}` is not an archlint directive (use "
                               "`# archlint: disable=CODE` or `# archlint: disable-file=CODE`); "
                               "it silences nothing",
                       path=display_path(item.path), line=item.line, column=item.column,
                       hint="fix the spelling of the directive")
