"""Where the layers of an already-built model are defined, recovered from its classes' source.

When archlint builds a model itself it records the line that constructs every layer
(:mod:`archlint.graph.sites`). A model handed to :func:`archlint.lint` in a notebook or a test was
built before archlint could watch, so its layers are located from source instead:

- ``self.fc = nn.Linear(...)`` (or ``self.add_module("fc", ...)``) in the class of the parent
  module, or in one of its base classes;
- the n-th element of an inline ``nn.Sequential(a, b, ...)`` / ``nn.ModuleList([a, b])``, or the
  element expression of ``nn.ModuleList([Block() for _ in range(n)])``;
- otherwise the site of the parent (the line that built the container).

The sites are attached for the time of one lint and removed afterwards.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import os
from functools import lru_cache
from typing import Iterator, Optional

import torch
from torch import nn

from ..results import Site
from .sites import SITE_ATTR

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def in_torch(path: Optional[str]) -> bool:
    return bool(path) and os.path.abspath(str(path)).startswith(_TORCH_DIR)


@lru_cache(maxsize=64)
def _parse(path: str, mtime: float) -> Optional[ast.Module]:
    try:
        with open(path, "rb") as fh:
            return ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None


def _tree(path: str) -> Optional[ast.Module]:
    try:
        return _parse(path, os.path.getmtime(path))
    except OSError:
        return None


@lru_cache(maxsize=1024)
def _class_node(cls: type) -> tuple[Optional[str], Optional[ast.ClassDef]]:
    """The source file of a user class and its ``class`` statement."""
    try:
        path = inspect.getsourcefile(cls)
        _, start = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return None, None
    if path is None or in_torch(path):
        return None, None
    path = os.path.abspath(path)
    tree = _tree(path)
    if tree is None:
        return path, None
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if start in (node.lineno, first):
                return path, node
    return path, None


def _site(path: str, node: ast.AST) -> Site:
    return Site(path=path, line=node.lineno, column=node.col_offset + 1)


def _is_self_attr(target: ast.AST, attr: str) -> bool:
    return (isinstance(target, ast.Attribute) and target.attr == attr
            and isinstance(target.value, ast.Name) and target.value.id == "self")


@lru_cache(maxsize=8192)
def _attribute_site(cls: type, attr: str) -> Optional[Site]:
    """Where a class (or a base class) assigns ``self.<attr>``."""
    for klass in cls.__mro__:
        if klass is nn.Module or not issubclass(klass, nn.Module):
            break
        path, node = _class_node(klass)
        if node is None or path is None:
            continue
        for sub in ast.walk(node):
            value = _assigned_value(sub, attr)
            if value is not None:
                return _site(path, value)
    return None


def _assigned_value(node: ast.AST, attr: str) -> Optional[ast.AST]:
    if isinstance(node, ast.Assign):
        for target in node.targets:
            if _is_self_attr(target, attr):
                return node.value
            if isinstance(target, (ast.Tuple, ast.List)) and \
                    isinstance(node.value, (ast.Tuple, ast.List)) and \
                    len(target.elts) == len(node.value.elts):
                for t, v in zip(target.elts, node.value.elts):
                    if _is_self_attr(t, attr):
                        return v
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        if _is_self_attr(node.target, attr):
            return node.value
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr in ("add_module", "register_module") and len(node.args) == 2:
        name = node.args[0]
        if isinstance(name, ast.Constant) and name.value == attr:
            return node.args[1]
    return None


def _element_site(parent_site: Site, index: int) -> Optional[Site]:
    """The ``index``-th module written inline in the container call at ``parent_site``."""
    every, elements = _container_elements(parent_site)
    if every is not None:
        return every
    return elements[index] if index < len(elements) else None


@lru_cache(maxsize=1024)
def _container_elements(site: Site) -> tuple[Optional[Site], tuple[Site, ...]]:
    """(the site of every element of a comprehension, or the sites of the inline elements up to
    the first ``*args``) of the call at ``site``."""
    tree = _tree(site.path)
    if tree is None:
        return None, ()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.lineno == site.line and \
                node.col_offset + 1 == site.column:
            break
    else:
        return None, ()
    elements: list[ast.AST] = list(node.args)
    if len(elements) == 1 and isinstance(elements[0], (ast.List, ast.Tuple)):
        elements = list(elements[0].elts)
    if len(elements) == 1 and isinstance(elements[0], (ast.ListComp, ast.GeneratorExp)):
        return _site(site.path, elements[0].elt), ()
    sites: list[Site] = []
    for e in elements:
        if isinstance(e, ast.Starred):
            break
        sites.append(_site(site.path, e))
    return None, tuple(sites)


def _recover(parent: nn.Module, parent_site: Optional[Site], attr: str) -> Optional[Site]:
    site = _attribute_site(type(parent), attr)
    if site is not None:
        return site
    if parent_site is None:
        return None
    if attr.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList)):
        site = _element_site(parent_site, int(attr))
        if site is not None:
            return site
    return parent_site


@contextlib.contextmanager
def recovered_sites(model: nn.Module) -> Iterator[None]:
    """Attach a recovered construction site to every module of ``model`` that has none."""
    added: list[nn.Module] = []

    def known(m: nn.Module) -> Optional[Site]:
        site = m.__dict__.get(SITE_ATTR)
        if site is None and m is model:
            path, node = _class_node(type(m))
            if path is not None and node is not None:
                return _site(path, node)
        return site

    def visit(parent: nn.Module, parent_site: Optional[Site]) -> None:
        for attr, child in parent.named_children():
            if child is None:
                continue
            site = child.__dict__.get(SITE_ATTR)
            if site is None:
                site = _recover(parent, parent_site, attr)
                if site is not None:
                    child.__dict__[SITE_ATTR] = site
                    added.append(child)
            visit(child, site)

    try:
        visit(model, known(model))
        yield
    finally:
        for m in added:
            m.__dict__.pop(SITE_ATTR, None)
