"""Suppression comments: silence a finding where the layer is defined.

Forms (read with :mod:`tokenize`, so a ``#`` inside a string is never taken for a comment):

- ``# archlint: disable=AL101,AL104`` -- those codes (or rule names) on this line;
- ``# archlint: disable`` -- every archlint finding on this line;
- ``# noqa: AL101`` -- flake8's form; only codes with the letters of archlint's rules (``AL``,
  and those of the config's local rules, such as ``TEAM``) are archlint's, the others
  (``E501``...) belong to other tools and are left alone. A bare ``# noqa`` does **not** silence
  archlint: it is usually written for a style checker, and a gradient problem should not vanish
  with it;
- ``# archlint: disable-file=AL104`` / ``# archlint: disable-file`` -- anywhere in the file, for the
  whole file.

"This line" is the line a finding points at: where the layer is constructed
(``self.fc = nn.Linear(...)``), or the line in ``forward`` for a functional call.

Detection is kept apart from reporting: this module says which findings a comment silences and
which comments silenced nothing; :mod:`archlint.rules.unused_suppression` words the AL900 finding.
"""

from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .results import Finding

_ARCHLINT = re.compile(
    r"#\s*archlint\s*:\s*(?P<directive>[\w-]+)"
    r"(?:\s*=\s*(?P<codes>[\w-]+(?:\s*,\s*[\w-]+)*))?", re.IGNORECASE)
_NOQA = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Z]+[0-9]+(?:[,\s]+[A-Z]+[0-9]+)*))?",
                   re.IGNORECASE)
_DIRECTIVES = ("disable", "disable-file")
#: The letters of the codes archlint owns in ``# noqa:`` comments when no local rule adds others.
DEFAULT_PREFIXES = frozenset({"AL"})


@dataclass(eq=False)
class Suppression:
    """One suppression comment (one directive of it)."""

    path: Path
    line: int
    column: int
    #: As written, upper-cased (codes) or lower-cased (names); None means every code.
    codes: Optional[tuple[str, ...]]
    file_level: bool = False
    #: The comment text, for messages.
    text: str = ""
    #: The codes it silenced in this run ("*" for a suppression of every code).
    used: set[str] = field(default_factory=set)

    def matches(self, finding: Finding) -> bool:
        if self.codes is None:
            return True
        return finding.code.upper() in self.codes or finding.name in self.codes


@dataclass
class Malformed:
    """A ``# archlint:`` comment archlint does not understand (a typo silences nothing)."""

    path: Path
    line: int
    column: int
    text: str


@dataclass
class FileSuppressions:
    path: Path
    by_line: dict[int, list[Suppression]] = field(default_factory=dict)
    file_level: list[Suppression] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)

    def all(self) -> list[Suppression]:
        out = list(self.file_level)
        for line in sorted(self.by_line):
            out.extend(self.by_line[line])
        return sorted(out, key=lambda s: (s.line, s.column))

    def match(self, finding: Finding) -> Optional[Suppression]:
        """The comment that silences ``finding`` here: its own line first, then the file's."""
        for s in self.by_line.get(finding.line or -1, []):
            if s.matches(finding):
                return s
        for s in self.file_level:
            if s.matches(finding):
                return s
        return None


def _codes(raw: Optional[str]) -> Optional[tuple[str, ...]]:
    if raw is None:
        return None
    out = []
    for part in re.split(r"[,\s]+", raw.strip()):
        if part:
            out.append(part.upper() if re.match(r"^[A-Za-z]+\d+$", part) else part.lower())
    return tuple(out)


def parse_suppressions(source: str, path: Path = Path("<string>"),
                       prefixes: Iterable[str] = DEFAULT_PREFIXES) -> FileSuppressions:
    """Every suppression comment of a source text; ``# noqa:`` codes count when their letters
    are one of ``prefixes``."""
    found = FileSuppressions(path=path)
    ours = re.compile(r"^(?:" + "|".join(sorted(map(re.escape, prefixes))) + r")\d+$",
                      re.IGNORECASE)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                _parse_comment(tok.string, tok.start[0], tok.start[1] + 1, found, ours)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # an unfinished file: keep the comments read so far
    return found


def _parse_comment(comment: str, line: int, column: int, out: FileSuppressions,
                   ours: re.Pattern) -> None:
    for m in _ARCHLINT.finditer(comment):
        directive = m.group("directive").lower()
        col = column + m.start()
        if directive not in _DIRECTIVES:
            out.malformed.append(Malformed(out.path, line, col, m.group(0)))
            continue
        s = Suppression(path=out.path, line=line, column=col, codes=_codes(m.group("codes")),
                        file_level=directive == "disable-file", text=m.group(0))
        if s.file_level:
            out.file_level.append(s)
        else:
            out.by_line.setdefault(line, []).append(s)
    for m in _NOQA.finditer(comment):
        codes = _codes(m.group("codes"))
        if codes is None:
            continue  # a bare "# noqa" is for other tools (see the module docstring)
        mine = tuple(c for c in codes if ours.match(c))
        if mine:
            out.by_line.setdefault(line, []).append(Suppression(
                path=out.path, line=line, column=column + m.start(), codes=mine,
                text=m.group(0)))


def read_suppressions(path: Path, prefixes: Iterable[str] = DEFAULT_PREFIXES
                      ) -> FileSuppressions:
    """The suppressions of a file; an unreadable file has none."""
    try:
        with tokenize.open(path) as fh:
            source = fh.read()
    except (OSError, SyntaxError, UnicodeDecodeError):
        return FileSuppressions(path=path)
    return parse_suppressions(source, path, prefixes)


@dataclass
class UnusedSuppression:
    """A comment (or some of its codes) that silenced nothing in a run."""

    suppression: Suppression
    #: Codes of rules that ran over this line and found nothing to silence; ["*"] for a
    #: suppression of every code.
    unused: list[str]
    #: Codes or names that are not archlint rules at all.
    unknown: list[str]


class SuppressionIndex:
    """The suppression comments of every file findings point into, read once per run.

    ``prefixes``: the letters of the run's rule codes (``AL``, and those of local rules).
    """

    def __init__(self, prefixes: Iterable[str] = DEFAULT_PREFIXES) -> None:
        self._files: dict[Path, FileSuppressions] = {}
        self._prefixes = frozenset(prefixes)

    def for_file(self, path: Path) -> FileSuppressions:
        key = path.resolve()
        if key not in self._files:
            self._files[key] = read_suppressions(key, self._prefixes)
        return self._files[key]

    def filter(self, findings: Iterable[Finding]) -> tuple[list[Finding], int]:
        """The findings no comment silences, and how many were silenced."""
        kept: list[Finding] = []
        silenced = 0
        for f in findings:
            s = self.for_file(Path(f.path)).match(f) if f.path else None
            if s is None:
                kept.append(f)
                continue
            s.used.add("*" if s.codes is None else f.code)
            silenced += 1
        return kept, silenced

    def unused(self, rules_run: dict[Path, set[str]], known: dict[str, str]
               ) -> tuple[list[UnusedSuppression], list[Malformed]]:
        """Comments that silenced nothing, in files every rule of ``rules_run[file]`` checked.

        ``known`` maps every rule code and name to its code. A code whose rule did not run over
        the file (not selected, needs an input it lacked, failed) is not judged; a code that is no
        archlint rule at all is reported as unknown. A comment that also names AL900 (the code of
        this check) is left alone.
        """
        out: list[UnusedSuppression] = []
        malformed: list[Malformed] = []
        for path, ran in sorted(rules_run.items()):
            fs = self.for_file(path)
            malformed.extend(fs.malformed)
            if any(s.codes is not None and "AL900" in s.codes for s in fs.file_level):
                continue
            for s in fs.all():
                if s.codes is None:
                    if not s.used and ran:
                        out.append(UnusedSuppression(s, ["*"], []))
                    continue
                line_codes = {c for other in fs.by_line.get(s.line, []) for c in other.codes or ()}
                if not s.file_level and "AL900" in line_codes:
                    continue
                unused, unknown = [], []
                for c in s.codes:
                    code = known.get(c.upper(), known.get(c.lower()))
                    if code is None:
                        unknown.append(c)
                    elif code != "AL900" and code in ran and code not in s.used:
                        unused.append(c)
                if unused or unknown:
                    out.append(UnusedSuppression(s, unused, unknown))
        return out, malformed
