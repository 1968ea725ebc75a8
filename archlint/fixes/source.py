"""``--diff``: the fixes that are plain source substitutions, as a unified diff (never applied).

In the spirit of ruff's unsafe fixes: shown, never written. A fix is a plain substitution when
every place it changes is a call the source spells out at the line (and column) the graph
recorded:

- an activation: ``nn.Sigmoid()`` -> ``nn.ReLU()`` where the layer is built, ``torch.sigmoid(x)``
  / ``F.sigmoid(x)`` / ``x.sigmoid()`` / ``x.tanh_()`` -> ``torch.relu(x)`` / ``F.relu(x)`` /
  ``x.relu()`` / ``x.relu_()`` where ``forward`` calls it;
- an initialisation: ``nn.init.kaiming_normal_(<layer>.weight, nonlinearity="relu")`` (He),
  ``nonlinearity="linear"`` (LeCun), ``nn.init.orthogonal_(..., gain=g)`` or
  ``nn.init.zeros_(...)`` on the line after the statement that builds the layer, naming it the
  way that statement does: ``self.fc = nn.Linear(...)`` -> ``self.fc``; ``layers += [nn.Linear(...),
  nn.Sigmoid()]`` -> ``layers[-2]``; ``self.body = nn.Sequential(nn.Linear(...), ...)`` ->
  ``self.body[0]``.

A site that builds other layers too (a loop that also builds layers the fix leaves alone), or a
layer built inside a comprehension, is not a plain substitution: that fix gets no diff.

Source edits go through libcst (a concrete syntax tree: the rest of the file keeps its exact
formatting, comments included -- as in TorchFix). It is an optional dependency (``pip install
archlint[diff]``); without it ``--diff`` says so.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Optional

_FUNCTIONS = {"sigmoid", "tanh", "hardtanh", "hardsigmoid", "softsign", "logsigmoid",
              "expit", "sigmoid_", "tanh_"}


class NoDiff(Exception):
    """The fix is not a plain source substitution (the message says why)."""


def available() -> bool:
    try:
        import libcst  # noqa: F401
    except ImportError:
        return False
    return True


def diff_for(entries: list[dict[str, Any]], root: Optional[Path] = None) -> str:
    """The unified diff of the substitutions ``entries`` (a candidate's ``source``)."""
    if not entries:
        raise NoDiff("not a source substitution")
    by_file: dict[str, list[dict]] = {}
    for e in entries:
        if not e.get("whole"):
            raise NoDiff(f"{e['path']}:{e['line']} also builds layers the fix leaves alone")
        by_file.setdefault(e["path"], []).append(e)
    out = []
    for path, items in sorted(by_file.items()):
        p = Path(path)
        if "site-packages" in p.parts or "dist-packages" in p.parts or not p.is_file():
            raise NoDiff(f"{path}: not a file of yours")
        before = p.read_text()
        after = _edit(before, items)
        shown = _shown(p, root)
        out += difflib.unified_diff(before.splitlines(keepends=True),
                                    after.splitlines(keepends=True),
                                    fromfile=f"a/{shown.lstrip('/')}",
                                    tofile=f"b/{shown.lstrip('/')}")
    return "".join(out)


def _shown(p: Path, root: Optional[Path]) -> str:
    root = (root or Path.cwd()).resolve()
    try:
        return p.resolve().relative_to(root).as_posix()
    except ValueError:
        return p.resolve().as_posix()


def _edit(text: str, entries: list[dict]) -> str:
    import libcst as cst
    from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

    wrapper = MetadataWrapper(cst.parse_module(text))
    pos = wrapper.resolve(PositionProvider)
    parents = wrapper.resolve(ParentNodeProvider)
    calls: dict[tuple[int, int], list[cst.Call]] = {}
    for node, where in pos.items():
        if isinstance(node, cst.Call):
            calls.setdefault((where.start.line, where.start.column), []).append(node)
    nn = _nn_alias(wrapper.module)
    renames: dict[cst.CSTNode, str] = {}
    inserts: dict[cst.CSTNode, list[str]] = {}
    for e in entries:
        found = calls.get((e["line"], e["column"] - 1), [])
        if e["edit"] == "activation":
            call, attr = _activation_call(found, e)
            renames[attr] = _new_name(e, attr.value)
        else:
            call = _layer_call(found, e)
            stmt, name = _named(call, parents)
            line = _init_line(nn, name, e)
            if line not in inserts.setdefault(stmt, []):  # a loop builds several layers there
                inserts[stmt].append(line)

    class Edit(cst.CSTTransformer):
        def leave_Name(self, original, updated):
            return updated.with_changes(value=renames[original]) if original in renames \
                else updated

        def _body(self, original, updated):
            body = []
            for old, new in zip(original.body, updated.body):
                body.append(new)
                for line in inserts.get(old, ()):
                    body.append(cst.parse_statement(line))
            return updated.with_changes(body=body)

        def leave_IndentedBlock(self, original, updated):
            return self._body(original, updated)

        def leave_Module(self, original, updated):
            return self._body(original, updated)

    return wrapper.module.visit(Edit()).code


def _activation_call(found: list, e: dict):
    """The call that makes the activation, and the name in it to change."""
    import libcst as cst

    for call in found:
        func = call.func
        attr = func.attr if isinstance(func, cst.Attribute) else func if isinstance(
            func, cst.Name) else None
        if attr is None:
            continue
        if e.get("class") is not None and attr.value == e["class"] and not call.args:
            return call, attr  # nn.Sigmoid() -> nn.ReLU()
        if e.get("class") is None and attr.value in _FUNCTIONS | {"relu", "relu6"} and \
                attr.value.rstrip("_") in (e["function"] or "", e["op"]):
            if e["to"] != "relu":
                raise NoDiff(f"torch has no function for {e['to']} to call here")
            return call, attr
    raise NoDiff(f"{e['path']}:{e['line']}: the activation is not spelt out there")


def _new_name(e: dict, old: str) -> str:
    if e.get("class") is not None:
        return {"relu": "ReLU", "gelu": "GELU", "leaky_relu": "LeakyReLU"}[e["to"]]
    return "relu_" if old.endswith("_") else "relu"


def _layer_call(found: list, e: dict):
    import libcst as cst

    for call in found:
        func = call.func
        name = func.attr.value if isinstance(func, cst.Attribute) else (
            func.value if isinstance(func, cst.Name) else None)
        if e.get("class") is not None and name == e["class"]:
            return call
    raise NoDiff(f"{e['path']}:{e['line']}: the layer is not built by a plain call there")


def _named(call, parents) -> tuple[Any, str]:
    """The statement that builds the layer, and how the layer is named after it."""
    import libcst as cst

    parent = parents[call]
    index = None
    container = None
    if isinstance(parent, cst.Element) or isinstance(parent, cst.Arg):
        holder = parents[parent]
        if isinstance(parent, cst.Arg) and isinstance(holder, cst.Call) and \
                _final_name(holder.func) == "Sequential" and parent.keyword is None and \
                not any(a.star for a in holder.args):
            index = holder.args.index(parent)
            container = holder
        elif isinstance(parent, cst.Element) and isinstance(holder, (cst.List, cst.Tuple)) and \
                not any(isinstance(el, cst.StarredElement) for el in holder.elements):
            index = holder.elements.index(parent) - len(holder.elements)
            container = holder
        else:
            raise NoDiff("the layer is built inside an expression archlint cannot name")
        value = container
    else:
        value = call
    stmt = parents[value]
    if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0].target
        if index is not None and index < 0 and isinstance(container, cst.Tuple) and \
                isinstance(target, (cst.Tuple, cst.List)):
            # self.a, self.b = nn.Linear(...), nn.Linear(...): the matching target
            if len(target.elements) != len(container.elements):
                raise NoDiff("cannot name the layer")
            target = target.elements[len(target.elements) + index].value
            index = None
        elif index is not None and index < 0:
            index = len(container.elements) + index  # layers = [...]: from the front
    elif isinstance(stmt, cst.AugAssign) and index is not None and \
            isinstance(stmt.operator, cst.AddAssign):
        target = stmt.target  # layers += [...]: from the end
        if index >= 0:
            raise NoDiff("cannot name the layer")
    elif isinstance(stmt, cst.AnnAssign) and stmt.value is value:
        target = stmt.target
    else:
        raise NoDiff("the layer is not assigned to a name")
    name = cst.Module(body=[]).code_for_node(target)
    if index is not None:
        name = f"{name}[{index}]"
    line = parents[stmt]
    if not isinstance(line, cst.SimpleStatementLine):
        raise NoDiff("the layer is built in a compound statement")
    _no_later_init(line, parents)
    return line, name


def _no_later_init(line, parents) -> None:
    """An init call after the statement would be undone by a later ``self.apply(init)`` or
    ``nn.init...`` call of the same function: then the fix is no plain substitution."""
    import libcst as cst

    func = line
    while func is not None and not isinstance(func, cst.FunctionDef):
        func = parents.get(func)
    if func is None:
        return
    code = cst.Module(body=[]).code_for_node(func)
    here = cst.Module(body=[]).code_for_node(line)
    after = code[code.find(here) + len(here):] if here in code else ""
    if ".apply(" in after or "init." in after:
        raise NoDiff("the layers are initialised again later in the same function")


def _final_name(func) -> Optional[str]:
    import libcst as cst

    if isinstance(func, cst.Attribute):
        return func.attr.value
    if isinstance(func, cst.Name):
        return func.value
    return None


def _init_line(nn: str, layer: str, e: dict) -> str:
    w = f"{layer}.{e.get('parameter', 'weight')}"
    scheme = e.get("scheme")
    if scheme == "he":
        return f'{nn}.init.kaiming_normal_({w}, nonlinearity="relu")'
    if scheme == "lecun":
        return f'{nn}.init.kaiming_normal_({w}, nonlinearity="linear")'
    if scheme == "orthogonal":
        return f"{nn}.init.orthogonal_({w}, gain={float(e.get('gain', 1.0)):.4g})"
    if scheme == "zeros":
        return f"{nn}.init.zeros_({w})"
    raise NoDiff(f"no init call for {scheme!r}")


def _nn_alias(module) -> str:
    """How the file names torch.nn (``nn`` for ``import torch.nn as nn`` or ``from torch
    import nn``)."""
    import libcst as cst

    for stmt in module.body:
        if not isinstance(stmt, cst.SimpleStatementLine):
            continue
        for small in stmt.body:
            if isinstance(small, cst.Import):
                for alias in small.names:
                    dotted = cst.Module(body=[]).code_for_node(alias.name)
                    if dotted == "torch.nn" and alias.asname is not None:
                        return alias.asname.name.value
            if isinstance(small, cst.ImportFrom) and small.module is not None and \
                    cst.Module(body=[]).code_for_node(small.module) == "torch" and \
                    not isinstance(small.names, cst.ImportStar):
                for alias in small.names:
                    if alias.name.value == "nn":
                        return alias.asname.name.value if alias.asname else "nn"
    return "torch.nn"
