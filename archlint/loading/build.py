"""Import target files and build their models, recording where every layer is defined.

Importing a user file never runs its ``if __name__ == "__main__":`` part (the module gets its own
name), prints go to stderr (stdout belongs to the report), and every error becomes a one-line
reason that names the file, the object and the line.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from .sites import SITE_ATTR, recording_module_sites
from .inputs import InputSpec
from .targets import Target, display_path, might_define_models


_ARCHLINT_DIR = str(Path(__file__).resolve().parent.parent)


class LoadError(Exception):
    """A target could not be imported or built; the message is one line for the user."""


@dataclass
class LoadedModel:
    display: str
    model: nn.Module
    input: Optional[InputSpec]


@dataclass
class LoadFailure:
    display: str
    error: str


def one_line_error(exc: BaseException, user_file: Optional[Path] = None) -> str:
    """``ValueError: bad width (net.py:12)`` -- the innermost frame in the user's file."""
    if isinstance(exc, SyntaxError):
        where = f" ({display_path(Path(exc.filename))}:{exc.lineno})" if exc.filename else ""
        return f"SyntaxError: {exc.msg}{where}"
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(_ARCHLINT_DIR)]
    if user_file is not None:
        mine = [f for f in frames if Path(f.filename).resolve() == user_file]
        if mine:
            frames = mine
    if frames:
        last = frames[-1]
        if "site-packages" not in last.filename or user_file is None:
            text += f" ({display_path(Path(last.filename))}:{last.lineno})"
    return text[:400]


@contextlib.contextmanager
def _user_code(extra_path: Optional[Path]) -> Iterator[None]:
    """Run user code: prints to stderr, its folder importable, module sites recorded."""
    added = False
    if extra_path is not None and str(extra_path) not in sys.path:
        sys.path.insert(0, str(extra_path))
        added = True
    try:
        with contextlib.redirect_stdout(sys.stderr), recording_module_sites():
            yield
    finally:
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


def _package_root(path: Path) -> tuple[Path, str]:
    """The folder to put on sys.path and the dotted module name for a file inside packages."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").exists() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    return folder, ".".join(parts)


def import_file(path: Path) -> ModuleType:
    """Import a file by path (once per process); raises LoadError with a one-line reason."""
    path = path.resolve()
    if path in _modules:
        return _modules[path]
    root, dotted = _package_root(path)
    try:
        with _user_code(root):
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
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise LoadError(f"cannot import {display_path(path)}: {one_line_error(exc, path)}") \
            from None
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


def _build(obj: Any, what: str, kwargs: dict, user_file: Optional[Path]) -> nn.Module:
    torch.manual_seed(0)
    try:
        with _user_code(None):
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


def _needs_arguments(cls: type) -> bool:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    return any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                   p.KEYWORD_ONLY)
               for p in sig.parameters.values())


def _has_forward(cls: type) -> bool:
    return getattr(cls, "forward", None) is not nn.Module.forward


def load_target(target: Target) -> list[LoadedModel | LoadFailure]:
    """Build the models of one target. Failures are returned, never raised."""
    try:
        if target.import_path is not None:
            module = _import_module(target.import_path, target.search_path)
            return [_load_named(module, target, None)]
        assert target.path is not None
        if target.name is None and not target.explicit and not might_define_models(target.path):
            return []
        module = import_file(target.path)
        if target.name is not None:
            return [_load_named(module, target, target.path)]
        return _load_file_models(module, target)
    except LoadError as exc:
        return [LoadFailure(target.display, str(exc))]


def _load_named(module: ModuleType, target: Target, user_file: Optional[Path]) -> LoadedModel:
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
        return LoadedModel(target.display, obj, target.input)
    if not callable(obj):
        raise LoadError(f"{target.display} is a {type(obj).__name__}, not an nn.Module, class "
                        "or factory function")
    return LoadedModel(target.display, _build(obj, target.display, target.kwargs, user_file),
                       target.input)


def _load_file_models(module: ModuleType, target: Target) -> list[LoadedModel | LoadFailure]:
    assert target.path is not None
    path = target.path.resolve()
    disp = display_path(path)
    classes: list[tuple[str, type]] = []
    instances: list[tuple[str, nn.Module]] = []
    # ``model = make()`` / ``model = torchvision.models.resnet18()``: built by code in another
    # file, but bound here -- unlike ``from other import model``, which is that file's.
    assigned = _assigned_at_top_level(path)
    for attr, obj in vars(module).items():
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            if obj.__module__ == module.__name__ and _has_forward(obj) \
                    and not inspect.isabstract(obj) and not _needs_arguments(obj):
                classes.append((attr, obj))
        elif isinstance(obj, nn.Module):
            site = obj.__dict__.get(SITE_ATTR)
            if (site is not None and Path(site.path).resolve() == path) or attr in assigned:
                instances.append((attr, obj))
    results: list[tuple[str, nn.Module | LoadFailure]] = []
    instance_types = {type(m) for _, m in instances}
    for attr, obj in instances:
        results.append((attr, obj))
    for attr, cls in classes:
        if cls in instance_types:
            continue  # the module-level instance is linted instead
        display = f"{disp}:{attr}"
        try:
            results.append((attr, _build(cls, display, {}, path)))
        except LoadError as exc:
            results.append((attr, LoadFailure(display, str(exc))))
    # Blocks that only appear inside another model of this file are not linted on their own.
    built = [m for _, m in results if isinstance(m, nn.Module)]
    inner_types: set[type] = set()
    inner_ids: set[int] = set()
    for m in built:
        for sub in m.modules():
            if sub is not m:
                inner_types.add(type(sub))
                inner_ids.add(id(sub))
    out: list[LoadedModel | LoadFailure] = []
    for attr, m in results:
        if isinstance(m, LoadFailure):
            out.append(m)
            continue
        is_instance = any(m is inst for _, inst in instances)
        if (is_instance and id(m) in inner_ids) or (not is_instance and type(m) in inner_types):
            continue
        out.append(LoadedModel(f"{disp}:{attr}", m, target.input))
    return out


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
