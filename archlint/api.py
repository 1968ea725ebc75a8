"""The Python API: lint a model object in a notebook or in your own tests, no file needed.

    import archlint

    report = archlint.lint(model, example_input=torch.randn(8, 3, 32, 32))
    print(report)                # what the CLI prints
    assert not report.findings   # in a pytest test

The report is the object the CLI renders (``report.render("json")``, ``"sarif"``, ``"github"``).
Findings point at the lines that define the layers: recorded when ``model`` is a class or factory
that archlint builds, recovered from the classes' source for a model built beforehand
(:mod:`archlint.loading.static_sites`). Suppression comments on those lines apply as in the CLI.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from .config import ConfigError, _Located, validate_rule_options
from .engine import Settings, lint_model
from .guard import StepError, guarded
from .loading.infer import infer_input
from .loading.inputs import (ArgList, DictArg, InputError, InputSpec, TensorSpec,
                             all_forward_parameters, forward_parameters, parse_input,
                             parse_tensor_spec, uninferable_input)
from .results import TargetResult
from .report.model import Report
from .rule_docs import rule_info
from .rules import (ALL_RULES, Rule, RuleError, checked, code_prefixes, known_selector,
                    plugin_rules, rule_set, selected_rules)
from .loading.static_sites import in_torch, recovered_sites
from .suppressions import SuppressionIndex

ExampleInput = Union[torch.Tensor, tuple, list, Mapping[str, Any], InputSpec, None]


def lint(model: Union[nn.Module, Callable[[], nn.Module]], example_input: ExampleInput = None, *,
         select: Optional[Iterable[str] | str] = None, ignore: Optional[Iterable[str] | str] = None,
         options: Optional[Mapping[str, Mapping[str, Any]]] = None, name: Optional[str] = None,
         fail_on: str = "warning", suppressions: bool = True,
         local_rules: Iterable[type[Rule]] = (), fixes: bool = True,
         timeout: Optional[float] = None) -> Report:
    """Lint one model and return the report.

    ``model``: an ``nn.Module``, or a class / factory taking no arguments (archlint builds it and
    records exactly where each layer is constructed).

    ``example_input``: a tensor; a tuple of tensors (``forward``'s positional arguments); a dict
    from ``forward`` argument name to tensor; an input spec like
    ``{"shape": [8, 3, 32, 32], "dtype": "float32"}`` (or a dict of such specs by argument name);
    a shape ``(8, 3, 32, 32)``; or None to infer it from the first layer. archlint reads the shape,
    the dtype and the id range of integer tensors, not the values.

    ``select`` / ``ignore``: rule codes, prefixes or names (as on the command line);
    ``options``: per-rule options as in the config's ``rules:`` table, e.g.
    ``{"AL101": {"max-chain": 6, "severity": "error"}}``. ``name`` labels the target in the
    report (default: the class name). ``local_rules``: your own rule classes, usable like the
    built-in ones (as the config's ``local-rules`` makes them). ``fixes``: propose fixes for
    the findings with their effect predicted (``finding.fixes``). Raises ``ValueError`` on a bad
    argument; a model that cannot be traced -- or whose code raises, calls ``sys.exit`` or runs
    past ``timeout`` seconds (None: no limit) -- gives a report whose target has
    ``status == "error"``. The model's prints go to stderr while it is linted.
    """
    rules = _rules(local_rules)
    sel, ign = _codes(select, "select", rules), _codes(ignore, "ignore", rules) or []
    rule_options = _rule_options(options, rules)
    if not isinstance(model, nn.Module):
        model = _build(model)
    given = to_input_spec(example_input, model)
    settings = Settings(rules=selected_rules(sel, ign, rules), rule_options=rule_options,
                        fixes=fixes)
    display = name or type(model).__name__

    def work() -> TargetResult:
        spec = given or infer_input(model)
        if spec is None and uninferable_input(model) is not None:
            return TargetResult(target=display, status="error", error=uninferable_input(model))
        with recovered_sites(model):
            return lint_model(model, display, spec, settings)

    try:  # whatever the model's code does (sys.exit included) is the target's error
        result = guarded(work, "cannot analyse", timeout)
    except StepError as exc:
        result = TargetResult(target=display, status="error", error=str(exc))
    for f in result.findings:
        if in_torch(f.path):  # a location inside torch says nothing: keep the module path only
            f.path = f.line = f.column = None
    for layer in result.layers:
        if in_torch(layer.path):
            layer.path = layer.line = None
    report = Report(fail_on=fail_on, rules=[rule_info(r) for r in rules])
    if suppressions:
        index = SuppressionIndex(code_prefixes(rules))
        result.findings, report.suppressed = index.filter(result.findings)
    report.targets.append(result)
    return report


def _rules(local_rules: Iterable[type[Rule]]) -> list[type[Rule]]:
    """The built-in rules, those of installed plugins and ``local_rules``."""
    try:
        return rule_set(ALL_RULES, plugin_rules(), checked(local_rules))
    except RuleError as exc:
        raise ValueError(f"local_rules: {exc}") from None


def _codes(value: Optional[Iterable[str] | str], what: str, rules: list[type[Rule]]
           ) -> Optional[list[str]]:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out = [c.strip() for item in items for c in str(item).split(",") if c.strip()]
    for c in out:
        if not known_selector(c, rules):
            raise ValueError(f"{what}: unknown rule {c!r} (see 'archlint rules')")
    return out


def _rule_options(options: Optional[Mapping[str, Mapping[str, Any]]], rules: list[type[Rule]]
                  ) -> dict[str, dict[str, Any]]:
    if not options:
        return {}
    from pathlib import Path

    try:
        return validate_rule_options(dict(options), _Located(Path("options"), {}), rules)
    except ConfigError as exc:
        raise ValueError(str(exc).replace("options: rules.", "options: ", 1)) from None


def _build(factory: Callable[[], nn.Module]) -> nn.Module:
    from .loading.sites import recording_module_sites

    if not callable(factory):
        raise TypeError(f"lint() needs an nn.Module, or a class or factory that builds one; got "
                        f"{type(factory).__name__}")
    with torch.random.fork_rng(devices=[]), recording_module_sites():
        torch.manual_seed(0)
        model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{getattr(factory, '__name__', factory)!r} returned "
                        f"{type(model).__name__}, not an nn.Module")
    return model


def tensor_spec(t: torch.Tensor, origin: str = "example_input") -> TensorSpec:
    """The spec of a real tensor: its shape, dtype, and for integer ids their range."""
    spec = TensorSpec(shape=tuple(int(s) for s in t.shape), dtype=t.dtype, origin=origin)
    if not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        if t.numel():
            spec.low = min(0, int(t.min()))
            spec.high = max(int(t.max()) + 1, spec.low + 1)
        else:
            spec.high = 2
    return spec


def _is_shape(value: Any) -> bool:
    return isinstance(value, torch.Size) or (
        isinstance(value, (tuple, list)) and bool(value)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in value))


def to_input_spec(example: ExampleInput, model: nn.Module) -> Optional[InputSpec]:
    """Turn what a user passes as ``example_input`` into the spec the tracer builds inputs from."""
    where = "example_input"
    try:
        if example is None or isinstance(example, InputSpec):
            return example
        if isinstance(example, torch.Tensor):
            return InputSpec({None: tensor_spec(example)})
        if _is_shape(example):
            return parse_input({"shape": list(example)}, where, origin=where)
        if isinstance(example, Mapping):
            if "shape" in example:
                return parse_input(dict(example), where, origin=where)
            specs: dict[Optional[str], TensorSpec] = {}
            for key, value in example.items():
                specs[str(key)] = _one(value, f"{where}[{key!r}]")
            if not specs:
                raise InputError(f"{where}: empty mapping")
            return InputSpec(specs)
        if isinstance(example, (tuple, list)) and any(
                p.kind == p.VAR_POSITIONAL for p in all_forward_parameters(model)):
            items = [_one(v, f"{where}[{i}]") for i, v in enumerate(example)]
            return InputSpec({None: items[0] if len(items) == 1 else
                              ArgList(items, origin=where)})  # type: ignore[arg-type]
        if isinstance(example, (tuple, list)):
            names = [p.name for p in forward_parameters(model)]
            if len(example) > len(names):
                raise InputError(f"{where}: {len(example)} inputs but "
                                 f"{type(model).__name__}.forward() takes {len(names)}")
            specs = {names[i]: _one(v, f"{where}[{i}]") for i, v in enumerate(example)}
            if len(specs) == 1:  # the first argument, described as a plain input
                return InputSpec({None: next(iter(specs.values()))})
            return InputSpec(specs)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    raise ValueError(f"{where}: expected a tensor, a tuple or dict of tensors, or "
                     f"{{'shape': [...], 'dtype': ...}}; got {type(example).__name__}")


def _one(value: Any, where: str) -> TensorSpec:
    if isinstance(value, torch.Tensor):
        return tensor_spec(value)
    if isinstance(value, Mapping) and value and not set(value) & {"shape", "dtype", "high",
                                                                   "low", "value"}:
        # a mapping argument (forward(self, batch) reading batch["ids"]): a spec per key
        return DictArg({str(k): _one(v, f"{where}[{k!r}]") for k, v in value.items()},
                       origin="example_input")  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return parse_tensor_spec(value, where, origin="example_input")
    if _is_shape(value):
        return parse_tensor_spec({"shape": list(value)}, where, origin="example_input")
    raise InputError(f"{where}: expected a tensor or {{'shape': [...], 'dtype': ...}}, got "
                     f"{type(value).__name__}")
