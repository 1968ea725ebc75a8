"""Import target files and build their models, recording where every layer is defined.

Importing a user file never runs its ``if __name__ == "__main__":`` part (the module gets its own
name), prints go to stderr (stdout belongs to the report), and every error becomes a one-line
reason that names the file, the object and the line.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import random
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

from ..guard import StepError, TimeLimitExceeded, guarded, one_line_error
from ..results import Unbuilt
from .sites import SITE_ATTR, recording_module_sites
from .inputs import InputSpec
from .targets import Target, display_path, might_define_models


class LoadError(StepError):
    """A target could not be imported or built; the message is one line for the user."""


@dataclass
class LoadedModel:
    display: str
    model: nn.Module
    input: Optional[InputSpec]
    #: How archlint built it, when it chose arguments itself ("built as UNet(cfg=Config())").
    note: str = ""
    #: Built on the meta device (archlint.loading.meta.MetaBuild), or None.
    meta: Any = None


@dataclass
class LoadFailure:
    display: str
    error: str


@contextlib.contextmanager
def _script_argv(path: Optional[Path]) -> Iterator[None]:
    """``sys.argv`` as ``python file.py`` would set it: a training script that parses its
    options at import time (``opt = parser.parse_args()``) gets its defaults, not archlint's
    command line."""
    argv = sys.argv
    sys.argv = [str(path) if path is not None else argv[0] if argv else ""]
    try:
        yield
    finally:
        sys.argv = argv


@contextlib.contextmanager
def _user_code(extra_path: Optional[Path]) -> Iterator[None]:
    """Run user code: prints to stderr, its folder importable, module sites recorded, and no
    bytecode cache written next to the user's files (archlint writes only its outputs)."""
    added = False
    if extra_path is not None and str(extra_path) not in sys.path:
        sys.path.insert(0, str(extra_path))
        added = True
    no_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        with contextlib.redirect_stdout(sys.stderr), recording_module_sites():
            yield
    finally:
        sys.dont_write_bytecode = no_bytecode
        if added and str(extra_path) in sys.path:
            sys.path.remove(str(extra_path))


@contextlib.contextmanager
def _user_path(folder: Optional[Path]) -> Iterator[None]:
    """Also import from ``folder`` (the config's folder for config-listed import paths)."""
    entry = str(folder) if folder is not None else None
    if entry is None or entry in sys.path:
        yield
        return
    sys.path.insert(1, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


_modules: dict[Path, ModuleType] = {}
#: Modules that user files imported (``from utils import ...``): name -> their file.
_user_modules: dict[str, Path] = {}


def _package_root(path: Path) -> tuple[Path, str]:
    """The folder to put on sys.path and the dotted module name for a file inside packages."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").exists() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    return folder, ".".join(parts)


@functools.lru_cache(maxsize=1)
def _stdlib_dirs() -> tuple[str, ...]:
    import sysconfig

    return tuple({sysconfig.get_path(k) for k in ("stdlib", "platstdlib")} - {None})


_LIBRARY_PARTS = frozenset(("site-packages", "dist-packages"))


def _library_file(file: str) -> bool:
    """A file of an installed package or of the standard library (asked of every module in
    sys.modules, once or twice per target: plain string work, no Path objects)."""
    parts = file.replace(os.altsep, os.sep).split(os.sep) if os.altsep else file.split(os.sep)
    if not _LIBRARY_PARTS.isdisjoint(parts):
        return True
    return file.startswith(_stdlib_dirs())


def _record_user_modules(before: set[str]) -> None:
    for name in set(sys.modules) - before:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and not name.startswith("archlint_target_") and not _library_file(file):
            _user_modules[name] = Path(file).resolve()


def _evict_shadowed(root: Path) -> None:
    """Forget the user modules an earlier target imported that ``root`` has its own file for:
    ``b/net.py``'s ``from utils import ...`` must get ``b/utils.py``, not the ``a/utils.py``
    that ``a/net.py`` imported first (the earlier target's module keeps its own reference)."""
    for name, file in list(_user_modules.items()):
        if "." in name:
            continue
        own = next((c for c in (root / f"{name}.py", root / name / "__init__.py")
                    if c.is_file()), None)
        if own is None or own.resolve() == file:
            continue
        for other in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
            del sys.modules[other]
            _user_modules.pop(other, None)


def _host_shadowed(root: Path) -> dict[str, ModuleType]:
    """Modules of the process running archlint (a test suite's ``helpers``, a notebook's
    ``utils``) that ``root`` has its own file for: set aside while the user's code imports,
    so that its ``from helpers import ...`` gets its own file; put back afterwards."""
    out: dict[str, ModuleType] = {}
    for name, module in list(sys.modules.items()):
        if "." in name or name in _user_modules or name.startswith("archlint"):
            continue
        file = getattr(module, "__file__", None)
        if not file or _library_file(file):
            continue
        own = next((c for c in (root / f"{name}.py", root / name / "__init__.py")
                    if c.is_file()), None)
        if own is None or own.resolve() == Path(file).resolve():
            continue
        for other in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
            out[other] = sys.modules.pop(other)
    return out


def import_file(path: Path) -> ModuleType:
    """Import a file by path (once per process); raises LoadError with a one-line reason."""
    path = path.resolve()
    if path in _modules:
        return _modules[path]
    root, dotted = _package_root(path)
    _evict_shadowed(root)
    host = _host_shadowed(root)
    before = set(sys.modules)
    try:
        with _user_code(root), _script_argv(path):
            if "." in dotted:
                module = importlib.import_module(dotted)
                if Path(getattr(module, "__file__", "") or "").resolve() != path:
                    raise ImportError(f"{dotted} resolves to {module.__file__}")
            else:
                name = f"archlint_target_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot import {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
    except LoadError:
        raise
    except SystemExit as exc:
        raise LoadError(f"importing {display_path(path)} called sys.exit({exc.code})") from None
    except (KeyboardInterrupt, TimeLimitExceeded):
        raise
    except BaseException as exc:
        raise LoadError(f"cannot import {display_path(path)}: {one_line_error(exc, path)}") \
            from None
    finally:
        _record_user_modules(before)
        for name, module_ in host.items():  # the host's own modules back in place
            sys.modules[name] = module_
            _user_modules.pop(name, None)
    _modules[path] = module
    return module


def _import_module(dotted: str, search_path: Optional[Path] = None) -> ModuleType:
    try:
        with _user_code(Path.cwd()), _user_path(search_path):
            return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        raise LoadError(f"cannot import {dotted}: {exc}") from None
    except SystemExit as exc:
        raise LoadError(f"importing {dotted} called sys.exit({exc.code})") from None
    except Exception as exc:
        raise LoadError(f"cannot import {dotted}: {one_line_error(exc)}") from None


def seed_everything(seed: int = 0) -> None:
    """The random streams user code and the analysis draw from: the same every run, and the
    same for a target whichever targets ran before it."""
    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        try:
            numpy.random.seed(seed)
        except Exception:  # pragma: no cover - an odd numpy
            pass


def _build(obj: Any, what: str, kwargs: dict, user_file: Optional[Path]) -> nn.Module:
    seed_everything()
    try:
        with _user_code(None), _script_argv(user_file):
            model = obj(**kwargs)
    except LoadError:
        raise
    except SystemExit as exc:
        raise LoadError(f"building {what} called sys.exit({exc.code})") from None
    except Exception as exc:
        raise LoadError(f"cannot build {what}: {one_line_error(exc, user_file)}") from None
    if not isinstance(model, nn.Module):
        raise LoadError(f"{what} returned {type(model).__name__}, not an nn.Module")
    return model


def required_arguments(cls: type) -> Optional[list[str]]:
    """The constructor arguments ``cls`` cannot be built without (None: it builds without
    any). A torch.nn layer subclass that takes ``*args, **kwargs`` needs its base's."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    names = [p.name for p in params if p.default is p.empty and
             p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not names and any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        base = _torch_layer_base(cls)
        if base is not None:
            return required_arguments(base)
    return names or None


def _torch_layer_base(cls: type) -> Optional[type]:
    """The torch.nn layer ``cls`` extends (nn.Conv2d, nn.Linear...), or None (containers and
    nn.Module itself are not layers)."""
    for base in cls.__mro__[1:]:
        if base.__module__.startswith("torch.nn.modules") and base not in (
                nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict):
            return base
    return None


def _has_forward(cls: type) -> bool:
    return getattr(cls, "forward", None) is not nn.Module.forward


# ------------------------------------------------------------------------------------------
# What to build for a target
# ------------------------------------------------------------------------------------------

@dataclass
class Candidate:
    """One model of a target, before it is built."""

    display: str
    obj: Any  # a class or factory to call, or a module-level instance
    input: Optional[InputSpec]
    kwargs: dict = field(default_factory=dict)
    user_file: Optional[Path] = None
    #: Found in the file (not named): a failure to build it may be a block of another model.
    found: bool = False
    note: str = ""

    @property
    def built(self) -> bool:
        return isinstance(self.obj, nn.Module)

    def build(self) -> nn.Module:
        """The model (user code runs here); raises LoadError."""
        if isinstance(self.obj, nn.Module):
            return self.obj
        return _build(self.obj, self.display, self.kwargs, self.user_file)


@dataclass
class Plan:
    """The models of one target, after importing its file."""

    target: Target
    candidates: list[Candidate] = field(default_factory=list)
    #: Classes of the file that need constructor arguments: (class, "ResNet(cfg)").
    need_arguments: list[tuple[type, str]] = field(default_factory=list)
    #: Functions of the file that might build a model (``build``), for the hint.
    factories: list[str] = field(default_factory=list)
    #: The discriminator the config's ``feeds:`` names (to build), or why it cannot be found.
    feeds: Optional[Candidate] = None
    feeds_error: Optional[str] = None

    def keep(self, built: list[tuple[Candidate, Union[nn.Module, LoadFailure]]]
             ) -> tuple[list[Union[LoadedModel, LoadFailure]], list[Unbuilt]]:
        """What to lint of what was built: blocks that only appear inside another model of
        this file are not linted on their own (nor reported when they cannot be built alone),
        and classes needing arguments are listed unless they are such blocks."""
        models = [m for _, m in built if isinstance(m, nn.Module)]
        inner_types: set[type] = set()
        inner_ids: set[int] = set()
        for m in models:
            for sub in m.modules():
                if sub is not m:
                    inner_types.add(type(sub))
                    inner_ids.add(id(sub))
        out: list[Union[LoadedModel, LoadFailure]] = []
        for cand, m in built:
            if isinstance(m, LoadFailure):
                if not (cand.found and cand.obj in inner_types):
                    out.append(m)
                continue
            if cand.found and ((cand.built and id(m) in inner_ids)
                               or (not cand.built and type(m) in inner_types)):
                continue
            out.append(LoadedModel(cand.display, m, cand.input, cand.note))
        path = display_path(self.target.path) if self.target.path is not None else ""
        unbuilt = [Unbuilt(path=path, name=cls.__name__, call=call,
                           reason="its constructor needs arguments", hint=self.hint())
                   for cls, call in self.need_arguments if cls not in inner_types]
        return out, unbuilt

    def hint(self) -> str:
        """How to lint the classes that need arguments."""
        disp = display_path(self.target.path) if self.target.path is not None else ""
        factory = self.factories[0] if self.factories else "build"
        return f"name a factory ({disp}:{factory}) or give kwargs in the config"


def plan_target(target: Target) -> Plan:
    """Import the target's file or module (user code runs here) and list its models; raises
    LoadError. A file that cannot define a model (no class, nothing built at top level) is
    not imported and has no model."""
    plan = Plan(target)
    if target.import_path is not None:
        module = _import_module(target.import_path, target.search_path)
        plan.candidates.append(_named(module, target, None))
        return plan
    assert target.path is not None
    if target.name is None and not target.explicit and not might_define_models(target.path):
        return plan
    module = import_file(target.path)
    if target.name is not None:
        plan.candidates.append(_named(module, target, target.path))
    else:
        _file_models(module, target, plan)
    if target.feeds:
        _feeds(plan, module, target)
    return plan


def _feeds(plan: Plan, module: ModuleType, target: Target) -> None:
    """The discriminator named by the config's ``feeds:``: a name of the target's file, or
    ``file.py:Name`` (relative to the working directory)."""
    assert target.path is not None and target.feeds is not None
    left, _, name = target.feeds.rpartition(":")
    path = target.path
    try:
        if left:
            path = Path(left)
            if not path.is_file():
                plan.feeds_error = f"{left}: no such file"
                return
            module = import_file(path.resolve())
        spec = Target(display=f"{display_path(path)}:{name}", path=path.resolve(), name=name,
                      explicit=True)
        plan.feeds = _named(module, spec, path.resolve())
    except LoadError as exc:
        plan.feeds_error = f"{exc} (the discriminator {target.feeds!r} it names)"


def load_target(target: Target) -> list[Union[LoadedModel, LoadFailure]]:
    """Build the models of one target (plan, build, keep) in one go. Failures are returned,
    never raised. The runner does the same step by step, each step guarded."""
    try:
        plan = guarded(lambda: plan_target(target), f"cannot import {target.display}")
    except StepError as exc:
        return [LoadFailure(target.display, str(exc))]
    built: list[tuple[Candidate, Union[nn.Module, LoadFailure]]] = []
    for cand in plan.candidates:
        try:
            built.append((cand, guarded(cand.build, f"cannot build {cand.display}",
                                        user_file=cand.user_file)))
        except StepError as exc:
            built.append((cand, LoadFailure(cand.display, str(exc))))
    return plan.keep(built)[0]


def _named(module: ModuleType, target: Target, user_file: Optional[Path]) -> Candidate:
    name = target.name or ""
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            where = display_path(user_file) if user_file else target.import_path
            raise LoadError(f"{where} has no attribute {name!r}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        if target.kwargs:
            raise LoadError(f"{target.display} is an nn.Module instance; it takes no kwargs")
        return Candidate(target.display, obj, target.input)
    if not callable(obj):
        raise LoadError(f"{target.display} is a {type(obj).__name__}, not an nn.Module, class "
                        "or factory function")
    return Candidate(target.display, obj, target.input, kwargs=dict(target.kwargs),
                     user_file=user_file)


def _file_models(module: ModuleType, target: Target, plan: Plan) -> None:
    assert target.path is not None
    path = target.path.resolve()
    disp = display_path(path)
    classes: list[tuple[str, type]] = []
    configs: list[tuple[str, Callable[[], nn.Module], str]] = []
    instances: list[tuple[str, nn.Module]] = []
    # ``model = make()`` / ``model = torchvision.models.resnet18()``: built by code in another
    # file, but bound here -- unlike ``from other import model``, which is that file's.
    assigned = _assigned_at_top_level(path)
    for attr, obj in vars(module).items():
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            if obj.__module__ == module.__name__ and _has_forward(obj) \
                    and not inspect.isabstract(obj):
                needed = required_arguments(obj)
                defaults = _default_arguments(obj, needed) if needed else None
                if needed is None:
                    classes.append((attr, obj))
                elif defaults is not None:
                    call = ", ".join(f"{n}={c.__name__}()" for n, c in defaults.items())
                    configs.append((attr, _with_defaults(obj, defaults),
                                    f"built as {obj.__name__}({call}): its constructor needs "
                                    f"{', '.join(needed)}; name a factory or give kwargs in "
                                    f"the config to lint another configuration"))
                else:
                    plan.need_arguments.append((obj, f"{obj.__name__}({', '.join(needed)})"))
        elif isinstance(obj, nn.Module):
            if isinstance(obj, _Loss):
                continue  # ``criterion = nn.BCELoss()`` in a training script: not a model
            site = obj.__dict__.get(SITE_ATTR)
            if (site is not None and Path(site.path).resolve() == path) or attr in assigned:
                instances.append((attr, obj))
        elif inspect.isfunction(obj) and obj.__module__ == module.__name__ \
                and not attr.startswith("_") and _FACTORY_WORDS.search(attr) \
                and required_arguments(obj) is None:
            plan.factories.append(attr)  # only a hint: never called unless named
    plan.need_arguments.sort(key=_models_first(path))
    instance_types = {type(m) for _, m in instances}
    for attr, obj in instances:
        plan.candidates.append(Candidate(f"{disp}:{attr}", obj, target.input, found=True))
    for attr, cls in classes:
        if cls in instance_types:
            continue  # the module-level instance is linted instead
        plan.candidates.append(Candidate(f"{disp}:{attr}", cls, target.input, user_file=path,
                                         found=True))
    for attr, make, note in configs:
        if getattr(make, "model_class", None) in instance_types:
            continue
        plan.candidates.append(Candidate(f"{disp}:{attr}", make, target.input, user_file=path,
                                         found=True, note=note))


def _default_arguments(cls: type, needed: list[str]) -> Optional[dict[str, type]]:
    """For a model whose every required constructor argument is annotated with a class of the
    user's code that builds without arguments (``def __init__(self, cfg: GPTConfig)`` with a
    dataclass of defaults): those classes by argument name; else None."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: nothing to go by
        return None
    out: dict[str, type] = {}
    for name in needed:
        hint = hints.get(name)
        if hint is None and _CONFIG_NAME.fullmatch(name):
            hint = _config_class(sys.modules.get(cls.__module__))
        if not inspect.isclass(hint) or hint.__module__ in ("builtins", "typing") \
                or issubclass(hint, nn.Module):
            return None
        file = getattr(sys.modules.get(hint.__module__), "__file__", None)
        if not file or _library_file(file) or required_arguments(hint) is not None:
            return None
        out[name] = hint
    return out


#: Unannotated constructor arguments that conventionally take the file's config object.
_CONFIG_NAME = re.compile(r"config|cfg|conf|hparams|model_args|args|params", re.IGNORECASE)


def _config_class(module: Optional[ModuleType]) -> Optional[type]:
    """The one config class of a file (``GPTConfig``, ``ModelArgs``: a class named *Config,
    *Cfg or *Args defined there), or None when there is none or more than one."""
    if module is None:
        return None
    found = [obj for name, obj in vars(module).items()
             if inspect.isclass(obj) and obj.__module__ == module.__name__
             and re.search(r"(Config|Cfg|Args)$", name) and not issubclass(obj, nn.Module)]
    return found[0] if len(found) == 1 else None


def _with_defaults(cls: type, defaults: dict[str, type]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        return cls(**{name: config() for name, config in defaults.items()})
    make.model_class = cls  # type: ignore[attr-defined]
    return make


#: Function names that look like model factories (``build``, ``make_model``, ``resnet18``...).
_FACTORY_WORDS = re.compile(r"build|make|create|model|net|get", re.IGNORECASE)


def _models_first(path: Path) -> Callable[[tuple[type, str]], tuple]:
    """Sort key: classes no other class of the file uses (the models) before the blocks they
    use, each in the file's order."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, OSError, ValueError):
        tree = ast.Module(body=[], type_ignores=[])
    used: set[str] = set()
    order: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            order.setdefault(node.name, node.lineno)
            used.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                        and n.id != node.name)
    return lambda item: (item[0].__name__ in used, order.get(item[0].__name__, 0))


def _assigned_at_top_level(path: Path) -> set[str]:
    """Names bound by assignments in a file's module body (outside functions and classes)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, OSError, ValueError):
        return set()
    names: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        else:
            targets = []
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    stack.append(child)
        for t in targets:
            names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def call_user(fn: Callable[[], Any]) -> Any:  # pragma: no cover - convenience for the API
    with _user_code(None):
        return fn()
