"""What the source rules know of the classes a file defines or imports from files beside it:
which produce a sigmoid's or a softmax's output (from the analysed graph when the model was
linted, else from the class source), and the small syntax helpers the data flow shares."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

from .base import ModelFacts

#: Methods and functions that pass a value through unchanged for our purposes.
_SAME = {"view", "reshape", "squeeze", "unsqueeze", "flatten", "mean", "sum", "contiguous",
         "to", "float", "double", "half", "cuda", "cpu", "view_as", "reshape_as", "type_as",
         "clone", "apply", "train", "eval", "Variable", "squeeze_", "unsqueeze_", "requires_grad_",
         "expand_as", "expand", "permute", "transpose", "t"}
_SIGMOID = {"sigmoid", "sigmoid_", "expit"}
_SOFTMAX = {"softmax"}

def _name(func: ast.AST) -> str:
    """``torch.nn.functional.sigmoid`` -> ``sigmoid``; ``self.netD`` -> ``netD``."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _dotted(e: ast.AST) -> str:
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Attribute):
        base = _dotted(e.value)
        return f"{base}.{e.attr}" if base else e.attr
    return ""


def _number(e: ast.AST) -> Optional[float]:
    if isinstance(e, ast.Constant) and isinstance(e.value, (int, float)) \
            and not isinstance(e.value, bool):
        return float(e.value)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
        v = _number(e.operand)
        return -v if v is not None else None
    return None


def imported_classes(tree: ast.Module, path: Optional[Path]) -> dict[str, ast.ClassDef]:
    """Classes the file imports from files beside it (``from models import Discriminator``,
    ``from .nets import D``), read from their source (never imported)."""
    out: dict[str, ast.ClassDef] = {}
    if path is None:
        return out
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom) or not node.module or node.level > 1:
            continue
        file = path.parent.joinpath(*node.module.split(".")).with_suffix(".py")
        if not file.is_file():
            continue
        try:
            other = ast.parse(file.read_bytes(), filename=str(file))
        except (SyntaxError, ValueError, OSError):
            continue
        wanted = {a.name: a.asname or a.name for a in node.names}
        for cls in other.body:
            if isinstance(cls, ast.ClassDef) and cls.name in wanted:
                out[wanted[cls.name]] = cls
    return out


class _ClassOutputs:
    """Which of the file's classes produce a sigmoid's or a softmax's output: from the analysed
    graph when the model was linted, else from the class source (the last layer of a
    ``nn.Sequential`` attribute, a ``torch.sigmoid`` in the value ``forward`` returns)."""

    def __init__(self, tree: ast.Module, models: dict[str, ModelFacts],
                 path: Optional[Path] = None) -> None:
        self.classes = imported_classes(tree, path)
        self.classes.update({n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)})
        self.models = models
        self._cache: dict[str, Optional[tuple[str, int, str]]] = {}

    def output(self, cls: Optional[str]) -> Optional[tuple[str, int, str]]:
        """(``"sigmoid"`` | ``"softmax"``, line, description) of ``cls``'s output, or None."""
        if cls is None:
            return None
        if cls not in self._cache:
            self._cache[cls] = None  # no recursion through itself
            self._cache[cls] = self._output(cls)
        return self._cache[cls]

    def _output(self, cls: str) -> Optional[tuple[str, int, str]]:
        node = self.classes.get(cls)
        source = self._source_output(node, cls) if node is not None else None
        facts = self.models.get(cls)
        if facts is None or facts.output_op is None:
            return source
        kind = facts.output_op if facts.output_op in ("sigmoid", "softmax") else None
        if kind is None:
            return None  # the analysed graph knows better than the source
        if source is not None and source[0] == kind:
            return source
        line = node.lineno if node is not None else 0
        return kind, line, f"{cls}'s analysed graph ends in a {kind}"

    def _source_output(self, node: ast.ClassDef, cls: str) -> Optional[tuple[str, int, str]]:
        attrs: dict[str, ast.AST] = {}
        forward = None
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                for st in ast.walk(item):
                    if isinstance(st, ast.Assign) and len(st.targets) == 1 and \
                            isinstance(st.targets[0], ast.Attribute) and \
                            isinstance(st.targets[0].value, ast.Name) and \
                            st.targets[0].value.id == "self":
                        attrs[st.targets[0].attr] = st.value
            elif isinstance(item, ast.FunctionDef) and item.name == "forward":
                forward = item
        if forward is None:
            return None
        local: dict[str, ast.AST] = {}
        result = None
        for st in forward.body:
            if isinstance(st, ast.Assign) and len(st.targets) == 1 and \
                    isinstance(st.targets[0], ast.Name):
                local[st.targets[0].id] = st.value
            elif isinstance(st, ast.Return) and st.value is not None:
                result = self._expr_output(st.value, attrs, local, cls, 0)
        return result

    def _module_output(self, e: ast.AST, cls: str) -> Optional[tuple[str, int, str]]:
        """The output of a module constructed by ``e`` (``nn.Sigmoid()``, ``nn.Sequential(...,
        nn.Sigmoid())``, ``Discriminator()``)."""
        if not isinstance(e, ast.Call):
            return None
        name = _name(e.func)
        if name == "Sigmoid":
            return "sigmoid", e.lineno, f"{cls} ends in nn.Sigmoid (line {e.lineno})"
        if name == "Softmax":
            return "softmax", e.lineno, f"{cls} ends in nn.Softmax (line {e.lineno})"
        if name == "Sequential" and e.args and not isinstance(e.args[-1], ast.Starred):
            return self._module_output(e.args[-1], cls)
        if name in self.classes and name != cls:
            out = self.output(name)
            return out
        return None

    def _expr_output(self, e: ast.AST, attrs: dict, local: dict, cls: str,
                     depth: int) -> Optional[tuple[str, int, str]]:
        if depth > 8:
            return None
        if isinstance(e, ast.Name) and e.id in local:
            return self._expr_output(local[e.id], attrs, local, cls, depth + 1)
        if not isinstance(e, ast.Call):
            return None
        name = _name(e.func)
        if name in _SIGMOID:
            return "sigmoid", e.lineno, f"{cls}.forward returns a sigmoid (line {e.lineno})"
        if name in _SOFTMAX:
            return "softmax", e.lineno, f"{cls}.forward returns a softmax (line {e.lineno})"
        if isinstance(e.func, ast.Attribute):
            if name in _SAME:
                return self._expr_output(e.func.value, attrs, local, cls, depth + 1)
            if isinstance(e.func.value, ast.Name) and e.func.value.id == "self" and \
                    name in attrs:
                return self._module_output(attrs[name], cls)
        return None
