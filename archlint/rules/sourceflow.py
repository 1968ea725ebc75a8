"""Simple data flow inside the functions of a file, for the source rules (AL108, AL109).

Reads the syntax tree only (nothing is imported or run). Each function (and the module body) is
read statement by statement, in order, into an environment from names to :class:`Val`: what a
value is known to be -- a discriminator's output (and whether its input was detached), a
probability made by a sigmoid or a softmax, a constant label, a loss criterion, an instance of
one of the file's classes -- and, for loss expressions, a sum of signed log terms:
``log D`` and ``log(1 - D)`` of a discriminator output. ``nn.BCELoss`` against label 0 is
``-log(1 - D)``, ``softplus(d)`` is ``-log(1 - sigmoid(d))``, a minus sign flips every term.

What the rules read (:func:`analyse_file`):

- ``saturating``: the statements where a loss first holds ``+log(1 - D)`` of a discriminator
  output that was not detached -- a generator minimising the minimax objective;
- ``probability_logs``: a log or a probability loss (BCELoss, NLLLoss) applied to a sigmoid's or
  a softmax's output.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from .base import ModelFacts
from .sourceclasses import (_SAME, _SIGMOID, _SOFTMAX, _ClassOutputs, _dotted, _name,
                            _number)

#: Names of a discriminator (or critic) module: ``D``, ``netD``, ``self.discriminator``...
_D_NAME = re.compile(r"^(d|net_?d|model_?d|d_?net|d_?model|disc|dis|discriminator\w*|"
                     r"critic\w*|net_?disc\w*|\w*_discriminator)$", re.IGNORECASE)
_D_CLASS = re.compile(r"discriminator|critic", re.IGNORECASE)
_G_NAME = re.compile(r"^(g|net_?g|model_?g|g_?net|gen|generator\w*|\w*_generator)$",
                     re.IGNORECASE)
#: Names of a loss criterion whose kind is not known here (a parameter, an import).
_CRITERION_NAME = re.compile(r"^(criterion\w*|\w*_criterion|adversarial_loss|adv_loss|bce\w*|"
                             r"gan_loss|loss_fn|loss_func)$", re.IGNORECASE)
#: Function parameters that hold a discriminator's output on fakes (``d_fake``, ``fake_logits``).
_D_PARAM = re.compile(r"^(d_?fake\w*|d_?g_?z|dgz|fake_?(logits?|scores?|preds?|outputs?|out|d)"
                      r"|d_?out_?fake|logits?_?fake|scores?_?fake|preds?_?fake|disc_?fake\w*)$",
                      re.IGNORECASE)
_ZEROS = {"zeros", "zeros_like", "new_zeros"}
_ONES = {"ones", "ones_like", "new_ones"}
_CRITERIA = {"BCELoss": "bce", "BCEWithLogitsLoss": "bce_logits", "NLLLoss": "nll",
             "MSELoss": "other", "L1Loss": "other", "CrossEntropyLoss": "ce",
             "SmoothL1Loss": "other", "HingeEmbeddingLoss": "other"}
_LOSS_FUNCTIONS = {"binary_cross_entropy": "bce", "binary_cross_entropy_with_logits": "bce_logits",
                   "nll_loss": "nll"}


@dataclass(frozen=True)
class DOut:
    """A discriminator's output: where the call is, and whether its input was detached."""

    line: int
    what: str
    detached: bool = False


@dataclass(frozen=True)
class Term:
    sign: int
    kind: str  # "log" (log D) or "log1m" (log(1 - D))
    d: DOut


@dataclass
class Val:
    d: Optional[DOut] = None
    #: "sigmoid" / "softmax" when the value is a probability, with the line that made it and
    #: how to say it.
    prob: Optional[str] = None
    prob_line: int = 0
    prob_what: str = ""
    label: Optional[float] = None
    terms: tuple[Term, ...] = ()
    criterion: Optional[str] = None
    criterion_what: str = ""
    model_class: Optional[str] = None
    is_d: bool = False
    is_g: bool = False
    detached: bool = False
    #: The statement that last formed the value's loss terms (where a finding points).
    origin: Optional[ast.stmt] = field(default=None, compare=False)


@dataclass
class SaturatingLoss:
    line: int
    col: int
    node: ast.AST
    term: Term
    text: str


@dataclass
class ProbabilityLog:
    node: ast.AST
    what: str  # "nn.BCELoss", "torch.log", "NLLLoss"...
    prob: str  # "sigmoid" / "softmax"
    prob_line: int
    prob_what: str


@dataclass
class FileFlow:
    saturating: list[SaturatingLoss] = field(default_factory=list)
    probability_logs: list[ProbabilityLog] = field(default_factory=list)


class _Flow:
    """Statement-by-statement reading of one function body."""

    def __init__(self, outputs: _ClassOutputs, out: FileFlow, env: dict[str, Val],
                 d_classes: set[str], g_classes: set[str], scope: str = "") -> None:
        #: The enclosing class and function names (``GeneratorLoss.forward``), for the role.
        self.scope = scope
        self.outputs = outputs
        self.out = out
        self.env = env
        self.d_classes = d_classes
        self.g_classes = g_classes
        self.reported: set[tuple] = set()
        self.seen_logs: set[tuple] = set()

    # ----------------------------------------------------------------------------- statements
    def body(self, stmts: list[ast.stmt]) -> None:
        for st in stmts:
            self.stmt(st)

    def stmt(self, st: ast.stmt) -> None:
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return
        if isinstance(st, ast.Assign):
            val = self.formed(self.eval(st.value), st)
            for t in st.targets:
                self.bind(t, val, st.value)
            self.assigned(st, [t for t in st.targets], val)
        elif isinstance(st, ast.AnnAssign) and st.value is not None:
            val = self.formed(self.eval(st.value), st)
            self.bind(st.target, val)
            self.assigned(st, [st.target], val)
        elif isinstance(st, ast.AugAssign):
            old = self.eval(st.target)
            new = self.eval(st.value)
            if isinstance(st.op, ast.Sub):
                new = replace(new, terms=_negated(new.terms))
            val = replace(old, terms=old.terms + new.terms) if isinstance(
                st.op, (ast.Add, ast.Sub)) else old
            val = self.formed(val, st)
            self.bind(st.target, val)
            self.assigned(st, [st.target], val)
        elif isinstance(st, ast.Expr):
            self.eval(st.value)  # sinks (x.backward(), G.minimize(x)) are judged in call()
        elif isinstance(st, ast.Return) and st.value is not None:
            val = self.formed(self.eval(st.value), st)
            self.judge(val, self.role_of_scope(), st)
        elif isinstance(st, (ast.If, ast.For, ast.While, ast.AsyncFor)):
            if isinstance(st, (ast.For, ast.AsyncFor)):
                self.bind(st.target, Val())
            self.body(st.body)
            self.body(st.orelse)
        elif isinstance(st, (ast.With, ast.AsyncWith)):
            self.body(st.body)
        elif isinstance(st, ast.Try):
            self.body(st.body)
            for h in st.handlers:
                self.body(h.body)
            self.body(st.orelse)
            self.body(st.finalbody)

    def bind(self, target: ast.AST, val: Val, value: Optional[ast.AST] = None) -> None:
        key = _dotted(target)
        if key and isinstance(target, (ast.Name, ast.Attribute)):
            self.env[key] = val
        elif isinstance(target, (ast.Tuple, ast.List)):
            pairs = isinstance(value, (ast.Tuple, ast.List)) and \
                len(value.elts) == len(target.elts)  # type: ignore[union-attr]
            for k, t in enumerate(target.elts):
                if pairs:  # netG, netD = Generator(), Discriminator()
                    elt = value.elts[k]  # type: ignore[union-attr]
                    self.bind(t, self.eval(elt), elt)
                else:
                    self.bind(t, Val())

    @staticmethod
    def formed(val: Val, st: ast.stmt) -> Val:
        """``val`` with ``st`` as the statement that formed its loss terms, unless it is a
        plain copy of a value formed earlier."""
        if not val.terms:
            return val
        if isinstance(st, (ast.Assign, ast.AnnAssign, ast.Return)) and \
                isinstance(st.value, (ast.Name, ast.Attribute)) and val.origin is not None:
            return val
        return replace(val, origin=st)

    def assigned(self, st: ast.stmt, targets: list[ast.AST], val: Val) -> None:
        """A loss assigned to a generator's loss (``errG``, ``g_loss``, ``loss_G``) is the
        generator's objective."""
        roles = {role_of(_dotted(t)) for t in targets}
        if "G" in roles:
            self.judge(val, "G", st)

    def role_of_scope(self) -> Optional[str]:
        return role_of(self.scope)

    def judge(self, val: Val, role: Optional[str], at: Optional[ast.stmt]) -> None:
        """A minimised loss holding +log(1 - D) of a discriminator output the generator's
        gradient crosses (not detached). The whole minimax value (with +log D(x) as well) is
        the discriminator's objective to maximise unless the loss is the generator's; a lone
        log(1 - D) term is the generator's unless the loss is the discriminator's."""
        bad = [t for t in val.terms if t.sign > 0 and t.kind == "log1m" and not t.d.detached]
        if not bad:
            return
        whole = any(t.sign > 0 and t.kind == "log" for t in val.terms)
        if (whole and role != "G") or (not whole and role == "D"):
            return
        st = val.origin or at
        if st is None:
            return
        for term in bad:
            key = (term.kind, term.d.line, term.d.what)
            if key in self.reported:
                continue
            self.reported.add(key)
            text = ast.unparse(st).split("\n")[0]
            self.out.saturating.append(SaturatingLoss(st.lineno, st.col_offset, st, term,
                                                      text[:80]))

    def sink(self, e: ast.Call, name: str, receiver: Optional[ast.AST]) -> bool:
        """``loss.backward()``, ``torch.autograd.backward(loss)``, ``G.minimize(loss)`` /
        ``D.maximize(loss)``: the value is minimised (or maximised) there."""
        if name == "backward" and receiver is not None and not _is_namespace(receiver):
            val = self.eval(receiver)
            role = role_of(_dotted(receiver)) if isinstance(
                receiver, (ast.Name, ast.Attribute)) else None
            self.judge(val, role or self.role_of_scope(), None)
            return True
        if name in ("minimize", "maximize", "backward") and e.args:
            val = self.eval(e.args[0])
            if name == "maximize":
                val = replace(val, terms=_negated(val.terms))
            owner = role_of(_dotted(receiver)) if receiver is not None and \
                name != "backward" else None
            arg = e.args[0]
            role = owner or (role_of(_dotted(arg)) if isinstance(
                arg, (ast.Name, ast.Attribute)) else None) or self.role_of_scope()
            self.judge(val, role, None)
            return True
        return False

    # ---------------------------------------------------------------------------- expressions
    def lookup(self, e: ast.AST) -> Val:
        key = _dotted(e)
        if key in self.env and self.env[key] != Val():
            return self.env[key]
        name = _name(e)
        if _CRITERION_NAME.match(name):  # a criterion passed in: its sign still counts
            return Val(criterion="unknown", criterion_what=name)
        if _D_NAME.match(name):
            return Val(is_d=True, model_class=_only(self.d_classes))
        if _G_NAME.match(name):
            return Val(is_g=True, model_class=_only(self.g_classes))
        return Val()

    def eval(self, e: Optional[ast.AST]) -> Val:
        if e is None:
            return Val()
        if isinstance(e, (ast.Name, ast.Attribute)):
            return self.lookup(e)
        n = _number(e)
        if n is not None:
            return Val(label=n)
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
            v = self.eval(e.operand)
            return replace(v, terms=_negated(v.terms),
                           label=-v.label if v.label is not None else None)
        if isinstance(e, ast.BinOp):
            return self.binop(e)
        if isinstance(e, ast.Subscript):
            return self.eval(e.value)
        if isinstance(e, ast.Call):
            return self.call(e)
        return Val()

    def binop(self, e: ast.BinOp) -> Val:
        left, right = self.eval(e.left), self.eval(e.right)
        if isinstance(e.op, ast.Add):
            return Val(terms=left.terms + right.terms)
        if isinstance(e.op, ast.Sub):
            return Val(terms=left.terms + _negated(right.terms))
        if isinstance(e.op, (ast.Mult, ast.Div)):
            for a, b in ((left, right), (right, left)) if isinstance(e.op, ast.Mult) \
                    else ((left, right),):
                if b.label is not None and a.terms:
                    return Val(terms=a.terms if b.label > 0 else _negated(a.terms))
            if left.label is not None and right.label is not None:
                return Val(label=left.label * right.label if isinstance(e.op, ast.Mult)
                           else None)
        return Val()

    def call(self, e: ast.Call) -> Val:
        func = e.func
        name = _name(func)
        args = e.args
        arg0 = args[0] if args else None
        receiver = func.value if isinstance(func, ast.Attribute) else None
        if name in ("backward", "minimize", "maximize") and self.sink(e, name, receiver):
            return Val()
        if receiver is not None and not _is_namespace(receiver):
            # calling a value held in an attribute (self.netD(x), self.criterion(o, y))
            fv = self.lookup(func)
            if fv.criterion is not None or fv.is_d or fv.is_g or fv.model_class is not None:
                return self.call_value(e, fv)
            return self.function(e, name, receiver, receiver)  # a method: x.sigmoid()
        if isinstance(func, ast.Name) and func.id in self.outputs.classes \
                and func.id not in self.env:
            return Val(model_class=func.id, is_d=func.id in self.d_classes,
                       is_g=func.id in self.g_classes)
        if isinstance(func, ast.Name):
            fv = self.lookup(func)
            if fv.criterion is not None or fv.is_d or fv.is_g or fv.model_class is not None:
                return self.call_value(e, fv)
        if isinstance(func, ast.Call):  # nn.BCELoss()(x, y), nn.Sigmoid()(x)
            fv = self.eval(func)
            if fv.criterion is not None:
                return self.call_value(e, fv)
            if _name(func.func) == "Sigmoid" and arg0 is not None:
                return self.function(e, "sigmoid", arg0, None)
            if _name(func.func) == "Softmax" and arg0 is not None:
                return self.function(e, "softmax", arg0, None)
            return Val()
        return self.function(e, name, arg0, None)

    def call_value(self, e: ast.Call, fv: Val) -> Val:
        """Calling a criterion, a discriminator, a generator or a model of the file."""
        args = e.args
        if fv.criterion is not None:
            return self.criterion(e, fv.criterion, f"{fv.criterion_what} ({_dotted(e.func)})")
        if fv.is_d:
            detached = any(self.eval(a).detached for a in args)
            d = DOut(e.lineno, ast.unparse(e)[:60], detached)
            out = self.outputs.output(fv.model_class)
            if out is not None:
                return Val(d=d, prob=out[0], prob_line=out[1], prob_what=out[2])
            return Val(d=d)
        out = self.outputs.output(fv.model_class)
        if out is not None:
            return Val(prob=out[0], prob_line=out[1], prob_what=out[2])
        return Val()

    def function(self, e: ast.Call, name: str, subject: Optional[ast.AST],
                 receiver: Optional[ast.AST]) -> Val:
        """A function (``torch.log(x)``: ``subject`` is ``x``) or a method of a value
        (``x.log()``: ``subject`` and ``receiver`` are ``x``)."""
        args = e.args
        arg0 = args[0] if args else None
        if name in ("detach", "detach_") and receiver is not None:
            v = self.eval(receiver)
            return replace(v, detached=True,
                           d=replace(v.d, detached=True) if v.d is not None else None)
        if name in _SAME and subject is not None:
            return self.eval(subject)
        if name in _CRITERIA:
            return Val(criterion=_CRITERIA[name], criterion_what=f"nn.{name}")
        if name in self.outputs.classes and receiver is None:
            return Val(model_class=name, is_d=name in self.d_classes,
                       is_g=name in self.g_classes)
        if name in _ZEROS:
            return Val(label=0.0)
        if name in _ONES:
            return Val(label=1.0)
        if name in ("full", "full_like", "new_full") and len(args) >= 2:
            return Val(label=self.eval(args[1]).label)
        if name in ("fill_", "fill") and receiver is not None:
            label = self.eval(arg0).label if arg0 is not None else None
            key = _dotted(receiver)
            if key and isinstance(receiver, (ast.Name, ast.Attribute)):
                self.env[key] = replace(self.env.get(key, Val()), label=label)
            return Val(label=label)
        if name == "tensor" and arg0 is not None:
            return Val(label=self.eval(arg0).label)
        if name in _SIGMOID and subject is not None:
            v = self.eval(subject)
            return Val(d=v.d, detached=v.detached, prob="sigmoid", prob_line=e.lineno,
                       prob_what=f"the sigmoid on line {e.lineno}")
        if name in _SOFTMAX and subject is not None:
            return Val(prob="softmax", prob_line=e.lineno,
                       prob_what=f"the softmax on line {e.lineno}")
        if name in ("log", "log2", "log10") and subject is not None:
            return self.log(e, subject)
        if name == "log1p" and subject is not None:
            inner = subject.operand if isinstance(subject, ast.UnaryOp) and \
                isinstance(subject.op, ast.USub) else None
            if inner is not None:
                v = self.eval(inner)
                self.probability_log(e, "torch.log1p", v)
                if v.d is not None:
                    return Val(terms=(Term(1, "log1m", v.d),))
            return Val()
        if name == "logsigmoid" and subject is not None:
            neg, v = self._maybe_negated(subject)
            if v.d is not None:
                return Val(terms=(Term(1, "log1m" if neg else "log", v.d),))
            return Val()
        if name == "softplus" and subject is not None:
            neg, v = self._maybe_negated(subject)
            if v.d is not None:
                return Val(terms=(Term(-1, "log" if neg else "log1m", v.d),))
            return Val()
        if name in _LOSS_FUNCTIONS and receiver is None:
            return self.criterion(e, _LOSS_FUNCTIONS[name], f"F.{name}")
        if name == "Variable" and arg0 is not None:
            return self.eval(arg0)
        return Val()

    def _maybe_negated(self, e: ast.AST) -> tuple[bool, Val]:
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
            return True, self.eval(e.operand)
        return False, self.eval(e)

    def log(self, e: ast.Call, subject: ast.AST) -> Val:
        subject = _without_epsilon(subject)
        # log(1 - d)
        if isinstance(subject, ast.BinOp) and isinstance(subject.op, ast.Sub) and \
                _number(subject.left) == 1.0:
            v = self.eval(subject.right)
            self.probability_log(e, "torch.log", v)
            if v.d is not None:
                return Val(terms=(Term(1, "log1m", v.d),))
            return Val()
        v = self.eval(subject)
        self.probability_log(e, "torch.log", v)
        if v.d is not None:
            return Val(terms=(Term(1, "log", v.d),))
        return Val()

    def criterion(self, e: ast.Call, kind: str, what: str) -> Val:
        inp = e.args[0] if e.args else next((k.value for k in e.keywords if k.arg == "input"),
                                            None)
        tgt = e.args[1] if len(e.args) > 1 else next(
            (k.value for k in e.keywords if k.arg == "target"), None)
        v = self.eval(inp)
        if kind in ("bce", "nll"):
            self.probability_log(e, what, v, loss=kind)
        if kind in ("bce", "bce_logits", "unknown") and v.d is not None and tgt is not None:
            label = self.eval(tgt).label
            if label is not None:
                return Val(terms=(Term(-1, "log" if label >= 0.5 else "log1m", v.d),))
        return Val()

    def probability_log(self, e: ast.Call, what: str, v: Val, loss: Optional[str] = None
                        ) -> None:
        if v.prob is None:
            return
        if loss == "bce" and v.prob != "sigmoid":
            return
        if loss == "nll" and v.prob != "softmax":
            return
        key = (e.lineno, e.col_offset)
        if key in self.seen_logs:
            return
        self.seen_logs.add(key)
        self.out.probability_logs.append(ProbabilityLog(e, what, v.prob, v.prob_line,
                                                        v.prob_what))


_G_TOKENS = {"g", "gen", "generator", "netg"}
_D_TOKENS = {"d", "dis", "disc", "discriminator", "critic", "netd"}


def role_of(name: str) -> Optional[str]:
    """"G" when a name says generator (``errG``, ``g_loss``, ``loss_G``, ``GeneratorLoss``,
    ``optimize_G``), "D" when it says discriminator, else None (the innermost part wins:
    ``GAN.generator_step``)."""
    for part in reversed([p for p in name.split(".") if p]):
        tokens = {t.lower() for t in re.split(r"[_\W\d]+|(?<=[a-z])(?=[A-Z])", part) if t}
        g, d = bool(tokens & _G_TOKENS), bool(tokens & _D_TOKENS)
        if g != d:
            return "G" if g else "D"
    return None


_EPS_NAME = re.compile(r"^(eps\w*|epsilon|tiny|EPS\w*|EPSILON)$", re.IGNORECASE)


def _without_epsilon(e: ast.AST) -> ast.AST:
    """``1 - d + 1e-8``, ``(1 - d).clamp(min=eps)``, ``torch.clamp(d, 1e-7, 1)`` -> the
    value the log is really of."""
    for _ in range(4):
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
            small = [side for side in (e.left, e.right) if _tiny(side)]
            if len(small) == 1:
                e = e.right if small[0] is e.left else e.left
                continue
        if isinstance(e, ast.Call) and _name(e.func) in ("clamp", "clamp_min", "clip", "clamp_"):
            receiver = e.func.value if isinstance(e.func, ast.Attribute) else None
            if receiver is not None and not _is_namespace(receiver):
                e = receiver
                continue
            if e.args:
                e = e.args[0]
                continue
        break
    return e


def _tiny(e: ast.AST) -> bool:
    n = _number(e)
    if n is not None:
        return 0 < abs(n) < 0.01
    return isinstance(e, (ast.Name, ast.Attribute)) and bool(_EPS_NAME.match(_name(e)))


def _negated(terms: tuple[Term, ...]) -> tuple[Term, ...]:
    return tuple(replace(t, sign=-t.sign) for t in terms)


def _only(names: set[str]) -> Optional[str]:
    return next(iter(names)) if len(names) == 1 else None


def _is_namespace(e: ast.AST) -> bool:
    """``torch``, ``F``, ``nn``, ``torch.nn.functional``: a module, not a value."""
    return _dotted(e).split(".")[0] in ("torch", "F", "nn", "functional", "np", "math",
                                        "autograd", "special")


def analyse_file(tree: ast.Module, models: Optional[dict[str, ModelFacts]] = None,
                 path: Optional[Path] = None) -> FileFlow:
    """Read every function of the file (and its module body) for the source rules; classes
    imported from files beside ``path`` are read too."""
    outputs = _ClassOutputs(tree, models or {}, path)
    d_classes = {c for c in outputs.classes if _D_CLASS.search(c)}
    g_classes = {c for c in outputs.classes if re.search("generator", c, re.IGNORECASE)}
    out = FileFlow()
    module_env: dict[str, Val] = {}
    _Flow(outputs, out, module_env, d_classes, g_classes).body(tree.body)

    def function(fn: ast.AST, env: dict[str, Val], scope: str) -> None:
        env = dict(env)
        args = fn.args  # type: ignore[attr-defined]
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
            if _D_PARAM.match(a.arg):
                env[a.arg] = Val(d=DOut(fn.lineno, f"parameter {a.arg}"))  # type: ignore
            elif isinstance(a.annotation, ast.Name) and a.annotation.id in outputs.classes:
                cls = a.annotation.id  # ``model: Classifier``
                env[a.arg] = Val(model_class=cls, is_d=cls in d_classes, is_g=cls in g_classes)
            elif a.arg in env:
                del env[a.arg]
        _Flow(outputs, out, env, d_classes, g_classes, scope).body(fn.body)  # type: ignore

    def visit(node: ast.AST, env: dict[str, Val], scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                class_env = dict(env)
                for item in child.body:  # self.* bound in __init__, for the other methods
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        flow = _Flow(outputs, FileFlow(), class_env, d_classes, g_classes)
                        flow.body(item.body)
                visit(child, class_env, f"{scope}.{child.name}".strip("."))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = f"{scope}.{child.name}".strip(".")
                function(child, env, inner)
                visit(child, env, inner)
            elif isinstance(child, ast.stmt):
                visit(child, env, scope)

    visit(tree, module_env, "")
    out.saturating.sort(key=lambda s: s.line)
    out.probability_logs.sort(key=lambda p: p.node.lineno)  # type: ignore[attr-defined]
    return out
