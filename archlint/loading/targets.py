"""What to lint: resolve command-line paths and config entries into :class:`Target` objects."""

from __future__ import annotations

import ast
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..paths import display_path, split_spec

if TYPE_CHECKING:  # importing torch is slow: keep it out of the path that finds nothing to lint
    from .inputs import InputSpec

#: Folders never searched when a directory is linted.
DEFAULT_EXCLUDES = (".git", ".hg", ".svn", ".venv", "venv", "env", ".env", "__pycache__",
                    "build", "dist", "site-packages", "node_modules", ".tox", ".nox",
                    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".eggs")


#: The note of a run that found nothing to lint.
NO_MODELS = ("no models found (archlint lints nn.Module classes that build without arguments, "
             "module-level nn.Module instances, and named factories file.py:build)")


class TargetError(ValueError):
    """A target that cannot even be resolved (missing file, bad syntax of the spec)."""


@dataclass
class Target:
    """One thing to lint.

    - ``path`` set, ``name`` None: every model found in that file;
    - ``path`` and ``name``: that class, factory function or instance of the file;
    - ``import_path`` and ``name``: ``package.module:callable``.
    """

    display: str
    path: Optional[Path] = None
    name: Optional[str] = None
    import_path: Optional[str] = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    input: Optional[InputSpec] = None
    #: True when named explicitly (CLI ``file.py:Name``, or a config entry).
    explicit: bool = False
    #: Folder to import ``import_path`` from besides the working directory (the config's).
    search_path: Optional[Path] = None
    #: The config's ``feeds:``: the discriminator this target's generator feeds (a name of the
    #: same file, or ``file.py:Name``), and where the config says so (for messages).
    feeds: Optional[str] = None
    feeds_where: Optional[str] = None


def is_excluded(path: Path, patterns: list[str]) -> bool:
    rel = display_path(path)
    parts = Path(rel).parts
    for pat in patterns:
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(path.name, pat):
            return True
        if any(fnmatch.fnmatch(part, pat) for part in parts[:-1]):
            return True
        if fnmatch.fnmatch(rel, pat + "/*") or rel.startswith(pat + "/"):
            return True
    return False


def _python_files(directory: Path, excludes: list[str]) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(directory):
        rootp = Path(root)
        dirs[:] = sorted(d for d in dirs if d not in DEFAULT_EXCLUDES and not d.startswith(".")
                         and not is_excluded(rootp / d, excludes))
        for f in sorted(files):
            p = rootp / f
            if f.endswith(".py") and not is_excluded(p, excludes):
                found.append(p)
    return found


def resolve(spec: str, excludes: list[str], kwargs: Optional[dict] = None,
            input_spec: Optional[InputSpec] = None, explicit: bool = False) -> list[Target]:
    """Targets for one command-line argument or config ``target:`` entry."""
    left, name = split_spec(spec)
    kwargs = dict(kwargs or {})
    path = Path(left)
    if left.endswith(".py") or path.exists() or os.sep in left or "/" in left:
        if not path.exists():
            raise TargetError(f"{left}: no such file or directory")
        if path.is_dir():
            if name is not None:
                raise TargetError(f"{spec}: a directory cannot be combined with ':{name}'")
            return [Target(display=display_path(p), path=p.resolve(), kwargs=kwargs,
                           input=input_spec, explicit=explicit)
                    for p in _python_files(path, excludes)]
        if not left.endswith(".py"):
            raise TargetError(f"{left}: not a Python file")
        disp = display_path(path) + (f":{name}" if name else "")
        return [Target(display=disp, path=path.resolve(), name=name, kwargs=kwargs,
                       input=input_spec, explicit=explicit or name is not None)]
    if name is None:
        raise TargetError(f"{spec}: not a file or directory (an import path needs ':callable', "
                          "e.g. torchvision.models:resnet50)")
    if not all(part.isidentifier() for part in left.split(".")):
        raise TargetError(f"{spec}: {left!r} is neither a path nor a dotted module name")
    return [Target(display=spec, import_path=left, name=name, kwargs=kwargs, input=input_spec,
                   explicit=True)]


#: Words without which a file cannot hold what the built-in source rules look for (a loss, a
#: log, a sigmoid, a softmax): a script without them and without models is not even parsed.
SOURCE_CUES = ("log", "loss", "sigmoid", "softmax", "bce", "binary_cross_entropy", "nll",
               "softplus", "criterion")


def might_need_source_rules(path: Path) -> bool:
    """Cheap check: could the built-in source rules (AL108, AL109) find anything in the file?"""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace").lower()
    except OSError:
        return True
    return any(cue in text for cue in SOURCE_CUES)


def config_relative(spec: str, root: Path) -> str:
    """A config ``target:`` entry as a path relative to the working directory (entries are
    relative to the config's folder)."""
    left, name = split_spec(spec)
    candidate = root / left
    if not Path(left).is_absolute() and (left.endswith(".py") or candidate.exists()):
        rel = display_path(candidate)
        return rel + (f":{name}" if name else "")
    return spec


def might_define_models(path: Path) -> bool:
    """Cheap check before importing: does the file define classes or build objects at top level?

    Files with neither (scripts, utilities) cannot hold a model to lint and are never imported.
    """
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError:
        return True  # let the import report the error with its line
    except (OSError, ValueError):
        return True
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.bases:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
            return True
    return False
