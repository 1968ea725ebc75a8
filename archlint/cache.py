"""The result cache: a target whose inputs did not change is not linted again (``--no-cache``).

Like ruff's, the cache is a folder of the project (``.archlint_cache/`` next to the config, else
in the working directory; ``cache-dir`` in the config), holding a ``.gitignore`` of its own.
Everything in it is plain JSON, never pickles; a corrupt or foreign file is ignored with a note.

What a result depends on, and so what its key holds:

- the run's settings (:class:`RunKey`): archlint's, torch's (read with importlib.metadata, without
  importing torch) and Python's versions, the config file's content and the files of its
  ``local-rules``, the baseline's content, and every command-line option that changes results
  (rules, input, ``--measure``, ``--device``...);
- the target: its file (or module) and name, its kwargs, and the content of every local file it
  imports -- found by reading the import statements of the target's file and, from there, of
  each local module it imports (not by importing them) -- plus the files the analysis read
  (the layers' definitions).

An entry keeps the target's results as the linter gave them and as the report shows them (after
suppression comments, per-file ignores and the baseline). A target with an error result is not
cached (a timeout or a crash may not happen again).

A run whose targets are all cached is answered from here without importing torch
(:func:`cached_report`): this module and what it imports stay free of torch.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from . import __version__
from .results import RuleInfo, TargetResult, Unbuilt, result_from_dict

#: Bumped whenever what an entry holds changes: older entries are then foreign.
FORMAT = 1
FOLDER = ".archlint_cache"
#: Local modules followed from one target's file (a guard against huge trees).
MAX_IMPORTS = 400


def torch_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "none"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hash(path: Path) -> Optional[str]:
    try:
        return _sha(path.read_bytes())
    except OSError:
        return None


def _digest(value: Any) -> str:
    return _sha(json.dumps(value, sort_keys=True, default=str).encode())


# ------------------------------------------------------------------------------------ keys

@dataclass
class RunKey:
    """What every result of a run depends on besides its target (all plain data)."""

    options: dict[str, Any]
    config: Optional[Path] = None
    #: Files the settings depend on (config, local rules, baseline) -> their hashes.
    files: dict[str, Optional[str]] = field(default_factory=dict)

    def digest(self) -> str:
        return _digest({"format": FORMAT, "archlint": __version__, "torch": torch_version(),
                        "python": sys.version.split()[0], "cwd": os.getcwd(),
                        "options": self.options, "config": str(self.config or ""),
                        "files": self.files})


def run_key(options: dict[str, Any], config: Optional[Path], extra_files: Iterable[Path] = ()
            ) -> RunKey:
    """The settings' key: ``options`` (plain data), the config and the files it names."""
    files: dict[str, Optional[str]] = {}
    if config is not None:
        files[str(config.resolve())] = file_hash(config)
        for f in _local_rule_files(config):
            files[str(f)] = file_hash(f)
    for f in extra_files:
        files[str(Path(f).resolve())] = file_hash(Path(f))
    return RunKey(options=options, config=config, files=files)


def raw_config(path: Optional[Path]) -> dict[str, Any]:
    """The config's keys as written (no validation, no torch); {} when it cannot be read."""
    if path is None:
        return {}
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text(errors="replace"))
            data = data.get("tool", {}).get("archlint", {})
        else:
            import yaml

            data = yaml.safe_load(path.read_text(errors="replace"))
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def _local_rule_files(config: Path) -> list[Path]:
    entries = raw_config(config).get("local-rules") or []
    if isinstance(entries, str):
        entries = [e.strip() for e in entries.split(",")]
    out: list[Path] = []
    for e in entries if isinstance(entries, list) else []:
        p = (config.parent / str(e))
        if p.is_dir():
            out.extend(sorted(p.rglob("*.py")))
        elif p.exists():
            out.append(p.resolve())
    return out


def config_baseline(config: Optional[Path]) -> Optional[Path]:
    """The baseline file the config names (``baseline:``), or None."""
    where = raw_config(config).get("baseline")
    if config is None or not isinstance(where, str) or not where.strip():
        return None
    return config.parent / where


def cache_folder(config: Optional[Path]) -> Path:
    raw = raw_config(config)
    where = raw.get("cache-dir")
    root = config.parent if config is not None else Path.cwd()
    if isinstance(where, str) and where.strip():
        return root / where
    return root / FOLDER


def cache_enabled(config: Optional[Path]) -> bool:
    return raw_config(config).get("cache", True) is not False


# ------------------------------------------------------------------------------ local imports

def local_imports(path: Path, roots: Iterable[Path]) -> list[Path]:
    """``path`` and the local files it imports, directly or through other local files, found
    by reading their import statements: a module is local when it resolves to a file under one
    of ``roots`` (and not in an installed package)."""
    roots = [r.resolve() for r in roots if r is not None]
    seen: dict[Path, None] = {}
    stack = [path.resolve()]
    while stack and len(seen) < MAX_IMPORTS:
        f = stack.pop()
        if f in seen or not f.is_file():
            continue
        seen[f] = None
        try:
            tree = ast.parse(f.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        here = _package_parts(f)
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - node.level + 1] if node.level <= len(here) else []
                    mod = ".".join(base + ([node.module] if node.module else []))
                    names = [mod] + [f"{mod}.{a.name}" if mod else a.name for a in node.names]
                    for name in names:
                        stack.extend(_module_files(name, [_package_root(f)]))
                    continue
                if node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                stack.extend(_module_files(name, [f.parent, _package_root(f), *roots]))
    return list(seen)


def _package_parts(f: Path) -> list[str]:
    """The dotted parts of the package ``f`` is in (``[]`` outside a package)."""
    parts: list[str] = []
    d = f.parent
    while (d / "__init__.py").is_file():
        parts.insert(0, d.name)
        d = d.parent
    return parts


def _package_root(f: Path) -> Path:
    d = f.parent
    while (d / "__init__.py").is_file():
        d = d.parent
    return d


def _module_files(name: str, roots: Iterable[Path]) -> list[Path]:
    if not name:
        return []
    rel = Path(*name.split("."))
    out = []
    for root in roots:
        for cand in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
            if cand.is_file() and not _installed(cand):
                out.append(cand.resolve())
        # the packages on the way: their __init__ runs too
        for k in range(1, len(rel.parts)):
            init = root / Path(*rel.parts[:k]) / "__init__.py"
            if init.is_file() and not _installed(init):
                out.append(init.resolve())
        if out:
            return out
    return out


def _installed(path: Path) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in path.parts)


# ------------------------------------------------------------------------------------ entries

@dataclass
class Entry:
    """One target's cached results."""

    #: What the linter gave (results as dicts, before suppressions and ignores), in order:
    #: {"outcome": result, "files": [...]} or {"unbuilt": {...}}.
    items: list[dict[str, Any]]
    #: The results as the report shows them, and the findings suppressions and the baseline
    #: took out.
    shown: list[dict[str, Any]]
    suppressed: int
    baselined: int
    #: Files the results depend on -> their hashes.
    files: dict[str, Optional[str]]
    #: The baseline's entries the target's findings matched: [[key...], count].
    matched: list = field(default_factory=list)


class Cache:
    """The cache folder of one run (``key``: the run's :class:`RunKey`)."""

    def __init__(self, folder: Path, key: RunKey) -> None:
        self.folder = folder
        self.key = key
        self.run_digest = key.digest()
        self.notes: list[str] = []
        self._broken = False

    # ---- files
    def _path(self, name: str) -> Path:
        return self.folder / f"v{FORMAT}" / f"{name}.json"

    def _read(self, name: str) -> Optional[dict[str, Any]]:
        path = self._path(name)
        try:
            text = path.read_text()
        except OSError:
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("archlint-cache") != FORMAT:
                raise ValueError("not an archlint cache entry")
            return data
        except ValueError as exc:
            self.notes.append(f"cache: ignored {path} ({str(exc)[:80]})")
            return None

    def _write(self, name: str, data: dict[str, Any]) -> None:
        if self._broken:
            return
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            ignore = self.folder / ".gitignore"
            if not ignore.exists():
                ignore.write_text("# Automatically created by archlint.\n*\n")
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"archlint-cache": FORMAT, **data}, default=str))
            os.replace(tmp, path)
        except OSError as exc:
            self._broken = True
            self.notes.append(f"cache: cannot write to {self.folder} ({exc.strerror}); results "
                              "are not cached")

    # ---- targets
    def target_key(self, identity: dict[str, Any]) -> str:
        return _digest({"run": self.run_digest, "target": identity})

    def load(self, identity: dict[str, Any]) -> Optional[Entry]:
        data = self._read(self.target_key(identity))
        if data is None:
            return None
        try:
            entry = Entry(items=data["items"], shown=data["shown"],
                          suppressed=int(data["suppressed"]), baselined=int(data["baselined"]),
                          files=dict(data["files"]), matched=list(data.get("matched") or []))
        except (KeyError, TypeError, ValueError):
            self.notes.append(f"cache: ignored an entry of {self.folder} (not of this format)")
            return None
        for f, digest in entry.files.items():
            if file_hash(Path(f)) != digest:
                return None
        return entry

    def store(self, identity: dict[str, Any], entry: Entry) -> None:
        self._write(self.target_key(identity), {
            "items": entry.items, "shown": entry.shown, "suppressed": entry.suppressed,
            "baselined": entry.baselined, "files": entry.files, "matched": entry.matched})

    # ---- the run's settings (for answering without torch)
    def store_settings(self, data: dict[str, Any]) -> None:
        self._write("settings-" + self.run_digest, data)

    def load_settings(self) -> Optional[dict[str, Any]]:
        return self._read("settings-" + self.run_digest)


def hashes(files: Iterable[Path]) -> dict[str, Optional[str]]:
    return {str(Path(f).resolve()): file_hash(Path(f)) for f in files}


def identity_of(target: Any) -> dict[str, Any]:
    """A target as plain data (archlint.loading.targets.Target), for its key."""
    return {"display": target.display, "path": str(target.path) if target.path else None,
            "name": target.name, "import_path": target.import_path,
            "kwargs": target.kwargs, "explicit": target.explicit,
            "search_path": str(target.search_path) if target.search_path else None}


def target_files(target: Any) -> Optional[list[Path]]:
    """The files a target's results depend on before it is linted (its file and the local
    files it imports); None when they cannot be known (a module found on sys.path)."""
    roots = [Path.cwd()] + ([target.search_path] if target.search_path else [])
    if target.path is not None:
        return local_imports(Path(target.path), roots)
    if target.import_path:
        module = target.import_path
        found = _module_files(module, roots)
        if not found:
            return None
        return [p for f in found for p in local_imports(f, roots)]
    return None


def entry_items(items: list[Any]) -> list[dict[str, Any]]:
    import dataclasses

    out = []
    for item in items:
        if isinstance(item, Unbuilt):
            out.append({"unbuilt": dataclasses.asdict(item)})
        else:
            out.append({"outcome": dataclasses.asdict(item.result), "files": item.files})
    return out


def items_from(entry: Entry) -> list[Any]:
    """The linter's items again (archlint.pipeline.Outcome / Unbuilt)."""
    from .results import Outcome

    out: list[Any] = []
    for d in entry.items:
        if "unbuilt" in d:
            out.append(Unbuilt(**d["unbuilt"]))
        else:
            out.append(Outcome(result_from_dict(d["outcome"]), list(d.get("files") or [])))
    return out


def shown_results(entry: Entry) -> tuple[list[TargetResult], list[Unbuilt]]:
    results, unbuilt = [], []
    for d in entry.shown:
        if "unbuilt" in d:
            unbuilt.append(Unbuilt(**d["unbuilt"]))
        else:
            results.append(result_from_dict(d["result"]))
    return results, unbuilt


def rule_infos(data: list[dict[str, Any]]) -> list[RuleInfo]:
    return [RuleInfo(**d) for d in data]


# ------------------------------------------------------------------ answering without torch

def cached_report(cache: Cache, paths: list[str], baseline: Any = None) -> Any:
    """The report of a run whose targets are all cached, or None (a target to lint, a path
    that names nothing, a setting only a full run applies). Imports no torch."""
    from .loading.targets import NO_MODELS, TargetError, config_relative, resolve, split_spec
    from .report.model import Report

    settings = cache.load_settings()
    if settings is None or settings.get("report_unused"):
        return None  # unused suppressions are judged over the whole run
    try:
        excludes = list(settings["exclude"])
        root = Path(settings["root"])
        entries = list(settings["entries"])
        rules = rule_infos(settings["rules"])
        fail_on = str(settings["fail_on"])
    except (KeyError, TypeError, ValueError):
        return None
    targets: list[Any] = []
    try:
        if paths:
            for p in paths:
                targets.extend(resolve(p, excludes))
            by_key = {}
            for e in entries:
                left, name = split_spec(e["target"])
                by_key[((root / left).resolve(), name)] = e
            for t in targets:  # a command-line file the config lists takes its kwargs
                e = by_key.get((t.path, t.name)) if t.path is not None else None
                if e is not None and not t.kwargs:
                    t.kwargs = dict(e["kwargs"])
        else:
            if not entries:
                return None
            for e in entries:
                found = resolve(config_relative(e["target"], root), excludes,
                                kwargs=e["kwargs"], explicit=True)
                for t in found:
                    if t.import_path is not None:
                        t.search_path = root
                targets.extend(found)
    except (TargetError, OSError):
        return None
    report = Report(fail_on=fail_on, rules=rules)
    for t in targets:
        entry = cache.load(identity_of(t))
        if entry is None:
            return None
        results, unbuilt = shown_results(entry)
        report.targets.extend(results)
        report.unbuilt.extend(unbuilt)
        report.suppressed += entry.suppressed
        report.baselined += entry.baselined
        if baseline is not None:
            for key, n in entry.matched:
                key = tuple(key)
                baseline.matched[key] = baseline.matched.get(key, 0) + int(n)
    if baseline is not None:
        stale = baseline.stale(t.target for t in report.targets)
        if stale:
            report.notes.append(f"{stale} finding{'s' if stale != 1 else ''} of "
                                f"{baseline.path} no longer occur; shrink the baseline "
                                "with --update-baseline")
    if not report.targets and paths:
        report.notes.append(NO_MODELS)
    report.notes.extend(cache.notes)
    return report
