"""Configuration: ``.archlint.yaml`` / ``archlint.yaml`` / ``[tool.archlint]`` in pyproject.toml.

Found by walking up from the working directory (or given with ``--config``); command-line flags
win over it. Every error names the file, the key and its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .results import SEVERITIES

if TYPE_CHECKING:
    import yaml

    from .loading.inputs import InputSpec
    from .rules import Rule

CONFIG_NAMES = (".archlint.yaml", ".archlint.yml", "archlint.yaml", "archlint.yml")
TOP_KEYS = ("targets", "select", "ignore", "exclude", "fail-on", "rules", "input",
            "per-file-ignores", "baseline", "report-unused-suppressions", "local-rules",
            "timeout", "subprocess", "device", "meta-threshold", "jobs", "cache",
            "cache-dir")
#: Seconds each model may take to build and be analysed (``timeout``; 0: no limit).
DEFAULT_TIMEOUT = 120.0
#: ``device: auto``: models with more parameters than this are analysed on the meta device.
DEFAULT_META_THRESHOLD = 200_000_000
DEVICES = ("auto", "cpu", "meta")
TARGET_KEYS = ("target", "kwargs", "input", "feeds")


class ConfigError(ValueError):
    """A config problem: ``file:line: key: what is wrong``."""


@dataclass
class TargetEntry:
    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input: Optional[InputSpec] = None
    #: The discriminator this target (a GAN's generator) feeds: D(G(z)) is also linted.
    feeds: Optional[str] = None
    #: ``archlint.yaml:7: targets.0.feeds``: where the config says so, for messages.
    feeds_where: Optional[str] = None


@dataclass
class Config:
    path: Optional[Path] = None
    targets: list[TargetEntry] = field(default_factory=list)
    select: Optional[list[str]] = None
    ignore: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    fail_on: str = "warning"
    #: Rule code -> {"severity": ..., option: value}
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    input: Optional[InputSpec] = None
    per_file_ignores: dict[str, list[str]] = field(default_factory=dict)
    #: Baseline file (relative paths are relative to the config's folder).
    baseline: Optional[Path] = None
    report_unused_suppressions: bool = False
    #: The team's own rules, from the modules ``local-rules`` lists.
    local_rules: list[type[Rule]] = field(default_factory=list)
    #: Seconds each model may take to build and be analysed, and a file to be imported
    #: (None: no limit).
    timeout: Optional[float] = DEFAULT_TIMEOUT
    #: Lint each target in a child process (survives sys.exit, os._exit, crashes, C code that
    #: never returns).
    subprocess: bool = False
    #: Where models are built: "cpu", "meta" (weights not allocated) or "auto".
    device: str = "auto"
    #: ``device: auto`` builds on the meta device above this many parameters.
    meta_threshold: int = DEFAULT_META_THRESHOLD
    #: Worker processes (None: one per core).
    jobs: Optional[int] = None
    #: Keep results in a cache folder (``cache-dir``, relative to the config's folder).
    cache: bool = True
    cache_dir: Optional[Path] = None

    @property
    def root(self) -> Path:
        """Folder that relative paths in the config are relative to."""
        return self.path.parent if self.path is not None else Path.cwd()

    @property
    def available_rules(self) -> list[type[Rule]]:
        """Every rule this configuration can use: the built-in ones, those of installed plugins
        and its local rules. Raises :class:`~archlint.rules.RuleError` for a broken plugin."""
        from .rules import ALL_RULES, plugin_rules, rule_set

        return rule_set(ALL_RULES, plugin_rules(), self.local_rules)


# ---------------------------------------------------------------------------- discovery

def find_config(start: Optional[Path] = None) -> Optional[Path]:
    """The nearest config file walking up from ``start`` (default: the working directory)."""
    folder = (start or Path.cwd()).resolve()
    for d in [folder, *folder.parents]:
        for name in CONFIG_NAMES:
            if (d / name).is_file():
                return d / name
        pyproject = d / "pyproject.toml"
        if pyproject.is_file() and _has_tool_section(pyproject):
            return pyproject
    return None


def _has_tool_section(path: Path) -> bool:
    try:
        return re.search(r"^\s*\[tool\.archlint(\]|\.)", path.read_text(errors="replace"),
                         re.MULTILINE) is not None
    except OSError:
        return False


# ---------------------------------------------------------------------------- reading

class _Located:
    """Parsed data plus the line of every key path, for error messages."""

    def __init__(self, path: Path, lines: dict[tuple, int]) -> None:
        self.path = path
        self.lines = lines

    def where(self, keys: tuple) -> str:
        k = keys
        while k and k not in self.lines:
            k = k[:-1]
        line = self.lines.get(k)
        dotted = ".".join(str(x) for x in keys) or "<top level>"
        return f"{self.path}:{line}: {dotted}" if line else f"{self.path}: {dotted}"


def _yaml_value(node: yaml.Node, keys: tuple, lines: dict[tuple, int]) -> Any:
    import yaml

    lines.setdefault(keys, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = _scalar(knode)
            lines[keys + (key,)] = knode.start_mark.line + 1
            if key in out:
                raise ConfigError(f"{{path}}:{knode.start_mark.line + 1}: "
                                  f"{'.'.join(map(str, keys + (key,)))}: duplicate key")
            out[key] = _yaml_value(vnode, keys + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_yaml_value(v, keys + (i,), lines) for i, v in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    import yaml

    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> tuple[dict, _Located]:
    import yaml  # only when there is a YAML config to read

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    lines: dict[tuple, int] = {}
    if root is None:
        return {}, _Located(path, lines)
    try:
        data = _yaml_value(root, (), lines)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("{path}", str(path))) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of keys "
                          f"({', '.join(TOP_KEYS)})")
    return data, _Located(path, lines)


def read_pyproject(path: Path) -> tuple[dict, _Located]:
    import tomllib

    try:
        raw = path.read_bytes()
        doc = tomllib.loads(raw.decode("utf-8", errors="replace"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    data = doc.get("tool", {}).get("archlint", {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [tool.archlint] must be a table")
    # TOML gives no positions: find each top-level key's line inside the [tool.archlint] tables.
    lines: dict[tuple, int] = {}
    text = raw.decode("utf-8", errors="replace").splitlines()
    section = None
    for no, line in enumerate(text, 1):
        m = re.match(r"^\s*\[+\s*([^\]]+?)\s*\]+", line)
        if m:
            section = m.group(1)
            if section.startswith("tool.archlint"):
                sub = tuple(section.split(".")[2:])
                lines.setdefault(sub, no)
            continue
        if section and section.startswith("tool.archlint"):
            km = re.match(r"^\s*([A-Za-z0-9_\-\"']+)\s*=", line)
            if km:
                sub = tuple(section.split(".")[2:])
                lines.setdefault(sub + (km.group(1).strip("\"'"),), no)
    return data, _Located(path, lines)


# ---------------------------------------------------------------------------- validation

def load_config(path: Path) -> Config:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    if path.name == "pyproject.toml" or path.suffix == ".toml":
        data, loc = read_pyproject(path)
    else:
        data, loc = read_yaml(path)
    return validate(data, loc, path)


def _str_list(value: Any, loc: _Located, keys: tuple) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{loc.where(keys)}: expected a list of strings, got {value!r}")


def validate(data: dict, loc: _Located, path: Path) -> Config:
    from .loading.inputs import InputError, parse_input
    from .rules import find_rule, known_selector

    cfg = Config(path=path)
    if "local-rules" in data:
        cfg.local_rules = _load_local_rules(data["local-rules"], loc, cfg.root)
    rules = checked_rules(cfg)
    for key in data:
        if key not in TOP_KEYS:
            if isinstance(key, str) and find_rule(key, rules) is not None:
                raise ConfigError(f"{loc.where((key,))}: unknown key {key!r}; rule options go "
                                  f"under 'rules:' (rules: {{{key}: {{...}}}})")
            raise ConfigError(f"{loc.where((key,))}: unknown key {key!r} (allowed: "
                              f"{', '.join(TOP_KEYS)})")
    for key in ("select", "ignore"):
        if key in data:
            codes = _str_list(data[key], loc, (key,))
            for c in codes:
                if not known_selector(c, rules):
                    raise ConfigError(f"{loc.where((key,))}: unknown rule {c!r}")
            if key == "select":
                cfg.select = codes
            else:
                cfg.ignore = codes
    if "exclude" in data:
        cfg.exclude = _str_list(data["exclude"], loc, ("exclude",))
    if "fail-on" in data:
        cfg.fail_on = _choice(data, "fail-on", SEVERITIES, loc)
    if "input" in data:
        try:
            cfg.input = parse_input(data["input"], loc.where(("input",)))
        except InputError as exc:
            raise ConfigError(str(exc)) from None
    if "rules" in data:
        cfg.rules = validate_rule_options(data["rules"], loc, rules)
    if "per-file-ignores" in data:
        pfi = data["per-file-ignores"]
        if not isinstance(pfi, dict):
            raise ConfigError(f"{loc.where(('per-file-ignores',))}: expected a mapping from "
                              "file pattern to a list of codes")
        for pattern, codes in pfi.items():
            lst = _str_list(codes, loc, ("per-file-ignores", pattern))
            for c in lst:
                if not known_selector(c, rules):
                    raise ConfigError(f"{loc.where(('per-file-ignores', pattern))}: unknown "
                                      f"rule {c!r}")
            cfg.per_file_ignores[str(pattern)] = lst
    if "baseline" in data:
        v = data["baseline"]
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{loc.where(('baseline',))}: expected the path of a baseline "
                              f"file, got {v!r}")
        cfg.baseline = cfg.root / v
    if "report-unused-suppressions" in data:
        cfg.report_unused_suppressions = _flag(data, "report-unused-suppressions", loc)
    if "timeout" in data:
        cfg.timeout = parse_timeout(data["timeout"], loc.where(("timeout",)))
    if "subprocess" in data:
        cfg.subprocess = _flag(data, "subprocess", loc)
    if "device" in data:
        cfg.device = _choice(data, "device", DEVICES, loc)
    if "meta-threshold" in data:
        cfg.meta_threshold = parse_count(data["meta-threshold"], loc.where(("meta-threshold",)))
    if "jobs" in data:
        v = data["jobs"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{loc.where(('jobs',))}: expected a number of worker processes "
                              f"(1 or more), got {v!r}")
        cfg.jobs = v
    if "cache" in data:
        cfg.cache = _flag(data, "cache", loc)
    if "cache-dir" in data:
        v = data["cache-dir"]
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{loc.where(('cache-dir',))}: expected the path of a folder, got "
                              f"{v!r}")
        cfg.cache_dir = cfg.root / v
    if "targets" in data:
        cfg.targets = _validate_targets(data["targets"], loc)
    return cfg


def _flag(data: dict, key: str, loc: _Located) -> bool:
    """A true/false key of the config."""
    v = data[key]
    if not isinstance(v, bool):
        raise ConfigError(f"{loc.where((key,))}: expected true or false, got {v!r}")
    return v


def _choice(data: dict, key: str, choices: Sequence[str], loc: _Located) -> str:
    """A key of the config that takes one of ``choices``."""
    v = data[key]
    if v not in choices:
        raise ConfigError(f"{loc.where((key,))}: expected one of {', '.join(choices)}, got {v!r}")
    return v


_SUFFIXES = {"k": 10 ** 3, "m": 10 ** 6, "b": 10 ** 9, "g": 10 ** 9}


def parse_count(value: Any, where: str) -> int:
    """A parameter count: 200000000, 2e8, "200M", "1.5B"."""
    number: Any = value
    if isinstance(value, str):
        text = value.strip().lower().replace("_", "").replace(",", "")
        scale = _SUFFIXES.get(text[-1:], 1) if text else 1
        try:
            number = float(text[:-1] if scale != 1 else text) * scale
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number != number \
            or number < 0 or number == float("inf"):
        raise ConfigError(f"{where}: expected a number of parameters (e.g. 200000000 or 200M), "
                          f"got {value!r}")
    return int(number)


def parse_timeout(value: Any, where: str) -> Optional[float]:
    """Seconds (a positive number); 0 or none: no limit."""
    if value is None or value is False or (isinstance(value, str) and
                                           value.strip().lower() in ("none", "off")):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
            or value != value:
        raise ConfigError(f"{where}: expected a number of seconds (0: no limit), got {value!r}")
    return float(value) or None


def validate_rule_options(raw: Any, loc: _Located, rules: list[type[Rule]]
                          ) -> dict[str, dict[str, Any]]:
    """The ``rules:`` table: rule code or name -> {severity, option: value}, checked against
    each rule's declared options (their defaults give their types)."""
    from .rules import find_rule

    if not isinstance(raw, dict):
        raise ConfigError(f"{loc.where(('rules',))}: expected a mapping from rule code to "
                          "options")
    out: dict[str, dict[str, Any]] = {}
    for key, opts in raw.items():
        keys = ("rules", key)
        rule = find_rule(str(key), rules)
        if rule is None:
            raise ConfigError(f"{loc.where(keys)}: unknown rule {key!r}")
        if opts is None:
            opts = {}
        if not isinstance(opts, dict):
            raise ConfigError(f"{loc.where(keys)}: expected a mapping of options "
                              f"(severity, {', '.join(rule.options) or 'no other options'})")
        clean: dict[str, Any] = {}
        for name, value in opts.items():
            okeys = keys + (name,)
            if name == "severity":
                if value not in (*SEVERITIES, "off"):
                    raise ConfigError(f"{loc.where(okeys)}: expected one of "
                                      f"{', '.join(SEVERITIES)}, off; got {value!r}")
                clean[name] = value
                continue
            canon = str(name).replace("_", "-")
            if canon not in rule.options:
                allowed = ", ".join(["severity", *rule.options])
                raise ConfigError(f"{loc.where(okeys)}: unknown option {name!r} for "
                                  f"{rule.code} (allowed: {allowed})")
            clean[canon] = coerce_option(value, rule.options[canon], loc.where(okeys))
            problem = rule.check_option(canon, clean[canon])
            if problem is not None:
                raise ConfigError(f"{loc.where(okeys)}: {problem}")
        out[rule.code] = {**out.get(rule.code, {}), **clean}
    return out


def _load_local_rules(raw: Any, loc: _Located, root: Path) -> list[type[Rule]]:
    """Import every module ``local-rules`` lists (paths relative to the config's folder) and
    register the rules they define; every problem is a ConfigError naming the entry."""
    from .loading.build import LoadError, import_file
    from .loading.rule_modules import rule_module_files
    from .rules import ALL_RULES, RuleError, checked, plugin_rules, rule_set, rules_in_module

    found: list[type[Rule]] = []
    for i, entry in enumerate(_str_list(raw, loc, ("local-rules",))):
        where = loc.where(("local-rules", i))
        path = root / entry
        if not path.exists():
            raise ConfigError(f"{where}: {entry}: no such file or folder")
        files = rule_module_files(path)
        if not files:
            raise ConfigError(f"{where}: {entry}: no Python file to import")
        for file in files:
            try:
                module = import_file(file)
            except LoadError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            try:
                rules = checked(rules_in_module(module))
            except RuleError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            if not rules and path.is_file():
                raise ConfigError(f"{where}: {entry} defines no Rule subclass with a code")
            found.extend(r for r in rules if r not in found)
    try:
        rule_set(ALL_RULES, plugin_rules(), found)
    except RuleError as exc:
        raise ConfigError(f"{loc.where(('local-rules',))}: {exc}") from None
    return found


def checked_rules(config: Config) -> list[type[Rule]]:
    """``config.available_rules``, a broken plugin reported as a ConfigError."""
    from .rules import RuleError

    try:
        return config.available_rules
    except RuleError as exc:
        raise ConfigError(str(exc)) from None


def coerce_option(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}")


def _validate_targets(raw: Any, loc: _Located) -> list[TargetEntry]:
    from .loading.inputs import InputError, parse_input

    if not isinstance(raw, list):
        raise ConfigError(f"{loc.where(('targets',))}: expected a list of targets")
    out = []
    for i, item in enumerate(raw):
        keys = ("targets", i)
        if isinstance(item, str):
            out.append(TargetEntry(target=item))
            continue
        if not isinstance(item, dict):
            raise ConfigError(f"{loc.where(keys)}: expected a string or a mapping with "
                              "'target'")
        for k in item:
            if k not in TARGET_KEYS:
                raise ConfigError(f"{loc.where(keys + (k,))}: unknown key {k!r} (allowed: "
                                  f"{', '.join(TARGET_KEYS)})")
        if not isinstance(item.get("target"), str) or not item.get("target"):
            raise ConfigError(f"{loc.where(keys)}: missing 'target' (a path or "
                              "package.module:callable)")
        kwargs = item.get("kwargs") or {}
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ConfigError(f"{loc.where(keys + ('kwargs',))}: expected a mapping of "
                              "keyword arguments")
        spec = None
        if "input" in item:
            try:
                spec = parse_input(item["input"], loc.where(keys + ("input",)))
            except InputError as exc:
                raise ConfigError(str(exc)) from None
        feeds, where = item.get("feeds"), None
        if "feeds" in item:
            where = loc.where(keys + ("feeds",))
            if not isinstance(feeds, str) or not _FEEDS.match(feeds):
                raise ConfigError(f"{where}: expected the discriminator's name in the target's "
                                  f"file (Discriminator, netD) or file.py:Name, got {feeds!r}")
            left = item["target"].rpartition(":")[0] if ":" in item["target"] else \
                item["target"]
            if not left.endswith(".py"):
                raise ConfigError(f"{where}: 'feeds' needs a target that is a file "
                                  f"(gan.py:Generator), not {item['target']!r}")
        out.append(TargetEntry(target=item["target"], kwargs=dict(kwargs), input=spec,
                               feeds=feeds, feeds_where=where))
    return out


#: ``feeds:``: a (dotted) name, optionally after ``file.py:``.
_FEEDS = re.compile(r"^([^:]+\.py:)?[A-Za-z_][\w.]*$")
